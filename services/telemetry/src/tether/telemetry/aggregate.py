"""The aggregation core: folds validated reports into per-workload partial rollups, exactly once per range.

Pure: no I/O, time passed in. One :class:`Aggregator` per replica.

**Sequence ranges.** Each report covers the proxy's reports ``[first_sequence, sequence]`` (a proxy merges
what a lost stream did not acknowledge into its next report). Per proxy (identity and pod) the core keeps
the reports it folded that are not acknowledged yet or that the latest two acknowledgements cover
(``history``, as the reports' bytes), and folds each sequence once:

* ``sequence`` not above what was folded already: a **duplicate** (a resend) — acknowledged once the rollup
  holding it is published, never folded again;
* ``first_sequence`` above everything folded: folded whole (a proxy's reports on one stream do not
  overlap);
* a **superset** of folded reports (the same ``first_sequence`` as the oldest one the proxy has not seen
  acknowledged, e.g. ``[1, 2]`` after ``[1, 1]`` whose ack was still in flight): only the difference
  (report minus what was folded for ``[first_sequence, ...]``) is folded, and the rollup records the new
  range ``(folded, sequence]``; so ranges in this replica's rollups never overlap;
* any other **overlap** (a range that starts inside a folded one, or a report that is not a superset count by
  count) cannot be split: refused (counted ``overlap``), nothing folded.

Sequences are per proxy process (they survive its reconnects). The hello's ``instance`` (a random id per
proxy process) tells the two apart: a stream of the same (identity, pod) with a **different instance** is a
restarted proxy counting from 1 again (its history is reset when the stream opens); the **same instance** is
a reconnect, never reset (what it resends is a duplicate or a superset, as above) — so a reconnect resending
``[1, k]`` with ``k`` what was folded is a duplicate, not a restart. Proxies that send no instance (older
ones; both the remembered and the new hello empty) get a heuristic: a new stream whose first report starts
at 1 while the core remembers more is either a proxy that never saw an acknowledgement reconnecting (its
report is a superset of what was folded, with a new sequence: the difference is folded) or a restarted proxy
(anything else: its history is reset and the report folded whole).

A proxy that moves to another replica (the first died) resends what was not acknowledged; the new replica
knows nothing of it and folds it whole. What any replica published of it already, although the
acknowledgement was lost (a replica dying right after publishing, a partition), the new stream's first
``ReportAck`` tells the proxy to forget first (:mod:`tether.telemetry.resume`). The one case left that can
count a range twice is a replica that stays up publishing, after the proxy resumed elsewhere, reports of a
stream that broke: consumers see it as overlapping ranges of one proxy in two replicas' rollups.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from tether.telemetry.model import (
    Contribution,
    Hello,
    ProxyAbout,
    ProxyKey,
    ValidReport,
    WorkloadKey,
    add_into,
    subtract,
)


@dataclass(slots=True)
class _Entry:
    """What was counted for the proxy's reports ``[first, last]``: the report itself, kept serialized when it
    came so (a few kB instead of its decoded counts), decoded again only if a superset report arrives."""

    first: int
    last: int
    counted: Contribution | bytes

    @staticmethod
    def of(report: ValidReport) -> _Entry:
        return _Entry(report.first, report.last, report.serialized or report.contribution)

    @property
    def contribution(self) -> Contribution:
        counted = self.counted
        return ValidReport.contribution_of(counted) if isinstance(counted, bytes) else counted


@dataclass(slots=True)
class _ProxyState:
    workload: WorkloadKey
    history: list[_Entry] = field(default_factory=list)
    folded_high: int = 0
    published_high: int = 0
    new_stream: bool = True
    last_seen: float = 0.0
    #: The proxy process's ``ProxyHello.instance`` ("" from proxies that send none).
    instance: str = ""
    #: Its version and certificate expiry as of its latest hello.
    about: ProxyAbout = field(default_factory=ProxyAbout)


@dataclass(slots=True)
class PartialRollup:
    """One workload's folded deltas over ``[start, end)`` on this replica, with the ranges they contain."""

    workload: WorkloadKey
    start: float
    end: float = 0.0
    contribution: Contribution = field(default_factory=dict)
    ranges: dict[ProxyKey, list[list[int]]] = field(default_factory=dict)
    #: The proxy process (``ProxyHello.instance``) each proxy's ``ranges`` belong to.
    instances: dict[ProxyKey, str] = field(default_factory=dict)
    #: What each proxy said about itself in its latest hello.
    abouts: dict[ProxyKey, ProxyAbout] = field(default_factory=dict)
    #: Ranges of proxy processes that have since restarted: published, never acknowledged (the process
    #: that sent them is gone, and its successor counts from 1 again). Keyed by (proxy, instance).
    retired: dict[tuple[ProxyKey, str], list[list[int]]] = field(default_factory=dict)
    dropped_scopes: int = 0

    def add_range(
        self, proxy: ProxyKey, first: int, last: int, instance: str = "", about: ProxyAbout | None = None
    ) -> None:
        ranges = self.ranges.setdefault(proxy, [])
        self.instances[proxy] = instance
        if about is not None:
            self.abouts[proxy] = about
        if ranges and ranges[-1][1] + 1 == first:
            ranges[-1][1] = last
        else:
            ranges.append([first, last])

    def retire(self, proxy: ProxyKey) -> None:
        """The proxy restarted: its ranges here stay in the rollup, under its old instance, unacknowledged."""
        ranges = self.ranges.pop(proxy, None)
        if ranges:
            key = (proxy, self.instances.pop(proxy, ""))
            self.retired[key] = sorted([*self.retired.get(key, []), *ranges])

    def merge(self, other: PartialRollup) -> None:
        """Fold ``other`` (an earlier rollup that could not be published) into this one."""
        self.start = min(self.start, other.start)
        add_into(self.contribution, other.contribution)
        self.dropped_scopes += other.dropped_scopes
        for proxy, ranges in other.ranges.items():
            instance = other.instances.get(proxy, "")
            if proxy in self.ranges and self.instances.get(proxy, "") != instance:
                key = (proxy, instance)  # an older process's: kept apart, never acknowledged
                self.retired[key] = sorted([*self.retired.get(key, []), *(list(r) for r in ranges)])
                continue
            mine = self.ranges.get(proxy, [])
            self.ranges[proxy] = sorted([*(list(r) for r in ranges), *mine])
            self.instances[proxy] = instance
            if proxy in other.abouts:
                self.abouts.setdefault(proxy, other.abouts[proxy])
        for key, ranges in other.retired.items():
            self.retired[key] = sorted([*self.retired.get(key, []), *ranges])


def with_pod(contribution: Contribution, pod: str) -> Contribution:
    """The contribution with every scope labelled ``pod`` (the reporting proxy's, from its hello): a
    workload's rollup keeps its pods apart, for per-pod stats, and a proxy cannot speak for another pod."""
    labelled: Contribution = {}
    for (direction, labels), counts in contribution.items():
        key = (direction, tuple(sorted({**dict(labels), "pod": pod}.items())))
        mine = labelled.get(key)
        if mine is None:
            labelled[key] = counts.copy()
        else:
            mine.add(counts)
    return labelled


@dataclass(frozen=True, slots=True)
class Folded:
    """What became of a report: ``outcome`` is ``folded``, ``superseded`` (difference folded), ``duplicate``
    or ``overlap`` (refused); ``ack`` is a sequence to acknowledge at once (already published), if any."""

    outcome: str
    ack: int | None = None


class Aggregator:
    def __init__(self, now: float) -> None:
        self._proxies: dict[ProxyKey, _ProxyState] = {}
        self._pending: dict[WorkloadKey, PartialRollup] = {}
        self._interval_start = now

    @property
    def proxies(self) -> int:
        return len(self._proxies)

    def open_stream(self, hello: Hello, now: float) -> None:
        """A stream's hello was accepted: the proxy's state (kept across its reconnects) is marked."""
        state = self._proxies.get(hello.proxy)
        if state is None or state.workload != hello.workload or state.instance != hello.instance:
            # Unknown, moved to another workload, or another process (restarted): sequences from 1 again.
            if state is not None:
                for pending in self._pending.values():
                    pending.retire(hello.proxy)
            state = _ProxyState(hello.workload, instance=hello.instance)
            self._proxies[hello.proxy] = state
        state.about = hello.about
        state.new_stream = True
        state.last_seen = now

    def published_high(self, proxy: ProxyKey, instance: str) -> int:
        """The highest sequence of this proxy process that this replica published (0: none)."""
        state = self._proxies.get(proxy)
        return state.published_high if state is not None and state.instance == instance else 0

    def fold(self, proxy: ProxyKey, report: ValidReport, now: float) -> Folded:
        state = self._proxies[proxy]
        state.last_seen = now
        # Without an instance id: a new stream starting at 1 is a reconnect that never saw an acknowledgement
        # (its report a superset of what was folded, with a new sequence) or a restarted proxy counting from 1
        # again (anything else). With one, open_stream already reset a restarted proxy's state.
        reconnect = state.new_stream
        restarted = reconnect and not state.instance and report.first == 1 and state.folded_high >= 1
        state.new_stream = False
        if report.last <= state.folded_high and not restarted:
            return Folded("duplicate", state.published_high if report.last <= state.published_high else None)
        folded = self._continue(state, report, reconnect) if report.last > state.folded_high else None
        if folded is None and restarted:
            state.history.clear()
            state.folded_high = state.published_high = 0
            folded = self._continue(state, report, reconnect)
        if folded is None:
            return Folded("overlap")
        delta, first, outcome, history = folded
        state.history = history
        state.folded_high = report.last
        rollup = self._pending.get(state.workload)
        if rollup is None:
            rollup = self._pending[state.workload] = PartialRollup(state.workload, self._interval_start)
        add_into(rollup.contribution, with_pod(delta, proxy.pod))
        rollup.add_range(proxy, first, report.last, state.instance, state.about)
        rollup.dropped_scopes += report.dropped_scopes
        return Folded(outcome)

    @staticmethod
    def _continue(
        state: _ProxyState, report: ValidReport, reconnect: bool
    ) -> tuple[Contribution, int, str, list[_Entry]] | None:
        """What to fold for ``report`` after the state's history: (delta, first new sequence, outcome, new
        history), or None when it overlaps what was folded in a way that cannot be split."""
        history = state.history
        if reconnect:
            # The first report of a new stream starts at the lowest sequence the proxy saw unacknowledged.
            history = [entry for entry in history if entry.last >= report.first]
        if report.first > state.folded_high:
            return report.contribution, report.first, "folded", [*history, _Entry.of(report)]
        covered = [entry for entry in history if entry.last >= report.first]
        kept = [entry for entry in history if entry.last < report.first]
        contiguous = all(b.first == a.last + 1 for a, b in itertools.pairwise(covered))
        if not covered or covered[0].first != report.first or not contiguous:
            return None
        base: Contribution = {}
        for entry in covered:
            add_into(base, entry.contribution)
        difference = subtract(report.contribution, base)
        if difference is None:
            return None
        return difference, state.folded_high + 1, "superseded", [*kept, _Entry.of(report)]

    def cut(self, now: float) -> list[PartialRollup]:
        """Ends the interval: the partial rollups to publish (only workloads that received reports)."""
        rollups = list(self._pending.values())
        for rollup in rollups:
            rollup.end = now
        self._pending = {}
        self._interval_start = now
        return rollups

    def published(self, rollup: PartialRollup) -> dict[ProxyKey, int]:
        """The rollup was published: the acknowledgement each of its proxies may now get."""
        acks: dict[ProxyKey, int] = {}
        for proxy, ranges in rollup.ranges.items():
            last = max(r[1] for r in ranges)
            state = self._proxies.get(proxy)
            if state is not None and state.instance != rollup.instances.get(proxy, ""):
                continue  # folded from a process that has since restarted: not this one's to forget
            if state is not None:
                # Kept: what the latest two acknowledgements cover, in case the latest one is lost with
                # its stream (the proxy then resends it merged). Older ones the proxy has had an interval
                # to receive.
                previous = state.published_high
                state.published_high = max(previous, last)
                state.history = [entry for entry in state.history if entry.last > previous]
            acks[proxy] = last
        return acks

    def restore(self, rollup: PartialRollup) -> None:
        """Publishing the rollup failed: its deltas go back into the current interval (not acknowledged)."""
        pending = self._pending.get(rollup.workload)
        if pending is None:
            self._pending[rollup.workload] = rollup
        else:
            pending.merge(rollup)

    def prune(self, now: float, idle: float, connected: set[ProxyKey]) -> int:
        """Forget proxies not connected and not heard of for ``idle`` seconds; how many were forgotten."""
        stale = [
            proxy
            for proxy, state in self._proxies.items()
            if proxy not in connected and now - state.last_seen > idle
        ]
        for proxy in stale:
            del self._proxies[proxy]
        return len(stale)
