"""What the proxy reports to telemetry: per traffic scope, the counters ``/metrics`` renders, as deltas.

Pure (no I/O; wall time is passed in). It reads the registry's own handles (``metrics.RouteHandle`` and
``metrics.TcpHandle``), never resets them, and remembers per handle what it has already taken, so the
Prometheus view and the reports always agree.

* A **scope** is a direction plus the series' labels restricted to ``telemetry_scopes.SCOPE_LABELS``
  (``dst_<kind>=<name>`` becomes ``dst_kind``/``dst_name``; values are cut at ``MAX_LABEL_LENGTH``). Its
  responses are keyed by status code, grpc-status (-1: none) and Linkerd's classification; a stream that
  ended without a response (reset, no response) counts as status 0, failure, its latency the time until it
  failed (so that every histogram adds up to its count, as telemetry checks). TCP counters
  come from the connections that name the peer: accepted ones inbound (``peer="src"``: the client's
  identity) and dialled ones outbound (``peer="dst"``: the endpoint's labels).
* **Reset detection**: what was taken is remembered per handle object, not per label set. A series that
  expired gives its last increments before it is forgotten, and one that comes back (a new handle for the
  same labels, or the overflow series created again) starts from zero: no delta is ever negative, lost or
  counted twice. Such returns are counted (``resets``).
* **Acknowledgements**: deltas are taken into ``fresh`` (one merged set, however many intervals pass while
  telemetry is unreachable). ``build`` turns them into the next report (sequence numbers per proxy process,
  from 1, so they stay meaningful to whichever replica a reconnect lands on) and keeps it until
  ``acknowledge``. Reports on one stream never overlap. When a stream is lost, the unacknowledged reports
  are kept until the next stream's first acknowledgement (``resume``: what a replica published of them
  although the acknowledgement never came), then what remains is merged back into ``fresh``: the next
  report carries it all, as ``[first_sequence, sequence]``.
* **Bounds**: at most ``max_scopes`` scope deltas are held (fresh plus unacknowledged); a new scope beyond
  that is dropped and counted (``dropped_scopes`` in the next report, and ``dropped_total``), as is a
  response kind beyond ``MAX_RESPONSES_PER_SCOPE`` in one scope. At most ``max_in_flight`` reports wait for
  an acknowledgement; meanwhile deltas accumulate in ``fresh``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tether.proxy.metrics import Labels, RouteHandle, TcpHandle, classify
from tether.shared.proto.telemetry.v1 import telemetry_pb2
from tether.shared.telemetry_scopes import (
    HISTOGRAM_LENGTH,
    MAX_LABEL_LENGTH,
    MAX_RESPONSES_PER_SCOPE,
    SCOPE_LABELS,
)

ScopeKey = tuple[str, Labels]
"""A direction (``inbound``/``outbound``) and the scope's labels, sorted by name."""
ResponseKey = tuple[int, int, bool]
"""Status code (0: no response), grpc-status (-1: none), success."""

DIRECTIONS = {"inbound": telemetry_pb2.DIRECTION_INBOUND, "outbound": telemetry_pb2.DIRECTION_OUTBOUND}
#: The TCP series whose labels name the peer of each direction (the others are the local application's).
_TCP_PEER = {"inbound": "src", "outbound": "dst"}
_NO_RESPONSE: ResponseKey = (0, -1, False)
_GONE_MEMORY = 4096


@dataclass(slots=True)
class ResponseCounts:
    count: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_LENGTH)
    sum_ms: float = 0.0

    def add(self, other: ResponseCounts) -> None:
        self.count += other.count
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.sum_ms += other.sum_ms


@dataclass(slots=True)
class ScopeCounts:
    requests: int = 0
    responses: dict[ResponseKey, ResponseCounts] = field(default_factory=dict)
    tcp_opened: int = 0
    tcp_closed: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    def add(self, other: ScopeCounts) -> int:
        """Add ``other`` in; returns how many of its response kinds did not fit (dropped)."""
        self.requests += other.requests
        self.tcp_opened += other.tcp_opened
        self.tcp_closed += other.tcp_closed
        self.bytes_read += other.bytes_read
        self.bytes_written += other.bytes_written
        dropped = 0
        for key, counts in other.responses.items():
            mine = self.responses.get(key)
            if mine is None:
                if len(self.responses) >= MAX_RESPONSES_PER_SCOPE:
                    dropped += 1
                    continue
                mine = self.responses[key] = ResponseCounts()
            mine.add(counts)
        return dropped

    def empty(self) -> bool:
        return not (
            self.requests
            or self.responses
            or self.tcp_opened
            or self.tcp_closed
            or self.bytes_read
            or self.bytes_written
        )


class _Taken:
    """What was already taken from one handle (cumulative values at the last ``take``)."""

    __slots__ = ("failures", "histograms", "requests", "responses", "scope", "tcp")

    def __init__(self, scope: ScopeKey | None) -> None:
        self.scope = scope
        self.requests = 0
        self.responses: dict[tuple[int, int | None], int] = {}
        self.histograms: dict[tuple[int, int | None], tuple[list[int], float]] = {}
        self.failures: tuple[list[int] | None, float] = (None, 0.0)
        self.tcp = (0, 0, 0, 0)


def scope_of(handle: RouteHandle | TcpHandle) -> ScopeKey | None:
    """The scope a series counts in; None for TCP series of the local application's side."""
    pairs = handle.pairs
    if isinstance(handle, TcpHandle) and ("peer", _TCP_PEER.get(handle.direction)) not in pairs:
        return None
    labels: dict[str, str] = {}
    for name, value in pairs:
        if name in SCOPE_LABELS:
            labels[name] = value[:MAX_LABEL_LENGTH]
        elif name.startswith("dst_"):
            labels["dst_kind"], labels["dst_name"] = name[4:], value[:MAX_LABEL_LENGTH]
    return handle.direction, tuple(sorted(labels.items()))


def _route_delta(handle: RouteHandle, taken: _Taken | None) -> ScopeCounts:
    delta = ScopeCounts(requests=handle.requests - (taken.requests if taken else 0))
    for key, count in handle.responses.items():
        moved = count - (taken.responses.get(key, 0) if taken else 0)
        if moved <= 0:
            continue
        status, grpc = key
        histogram = handle.latencies[key]
        before, before_sum = taken.histograms.get(key, (None, 0.0)) if taken else (None, 0.0)
        buckets = _minus(histogram.counts, before)
        grpc_code = -1 if grpc is None else grpc
        delta.responses[(status, grpc_code, classify(status, grpc) == "success")] = ResponseCounts(
            moved, buckets, histogram.total - before_sum
        )
        if taken is not None:
            taken.responses[key] = count
            taken.histograms[key] = (list(histogram.counts), histogram.total)
    failures = handle.failure_latency
    if failures is not None:
        before, before_sum = taken.failures if taken else (None, 0.0)
        buckets = _minus(failures.counts, before)
        if any(buckets):
            delta.responses[_NO_RESPONSE] = ResponseCounts(sum(buckets), buckets, failures.total - before_sum)
        if taken is not None:
            taken.failures = (list(failures.counts), failures.total)
    if taken is not None:
        taken.requests = handle.requests
    return delta


def _minus(counts: list[int], before: list[int] | None) -> list[int]:
    return list(counts) if before is None else [a - b for a, b in zip(counts, before, strict=True)]


def _tcp_delta(handle: TcpHandle, taken: _Taken | None) -> ScopeCounts:
    now = (handle.opens, handle.opens - handle.open_connections, handle.read_bytes, handle.write_bytes)
    before = taken.tcp if taken else (0, 0, 0, 0)
    if taken is not None:
        taken.tcp = now
    opened, closed, read, written = (a - b for a, b in zip(now, before, strict=True))
    return ScopeCounts(tcp_opened=opened, tcp_closed=closed, bytes_read=read, bytes_written=written)


def _delta(handle: RouteHandle | TcpHandle, taken: _Taken | None) -> ScopeCounts:
    return _route_delta(handle, taken) if isinstance(handle, RouteHandle) else _tcp_delta(handle, taken)


def cumulative(handles: Iterable[RouteHandle | TcpHandle]) -> dict[ScopeKey, ScopeCounts]:
    """Every scope's counters since its series were created (the totals /metrics shows, by scope)."""
    scopes: dict[ScopeKey, ScopeCounts] = {}
    for handle in handles:
        scope = scope_of(handle)
        if scope is not None:
            scopes.setdefault(scope, ScopeCounts()).add(_delta(handle, None))
    return scopes


@dataclass(slots=True)
class Report:
    """One report: deltas over [start, end) (wall seconds) covering sequences [first_sequence, sequence]."""

    first_sequence: int
    sequence: int
    start: float
    end: float
    scopes: dict[ScopeKey, ScopeCounts]
    dropped_scopes: int

    def to_proto(self) -> telemetry_pb2.IntervalReport:
        message = telemetry_pb2.IntervalReport(
            sequence=self.sequence, first_sequence=self.first_sequence, dropped_scopes=self.dropped_scopes
        )
        message.start.FromNanoseconds(int(self.start * 1e9))
        message.end.FromNanoseconds(int(self.end * 1e9))
        for (direction, labels), counts in self.scopes.items():
            message.scopes.append(
                telemetry_pb2.ScopeStats(
                    direction=DIRECTIONS.get(direction, telemetry_pb2.DIRECTION_UNSPECIFIED),
                    labels=dict(labels),
                    requests=counts.requests,
                    responses=[
                        telemetry_pb2.ResponseStats(
                            status_code=status,
                            grpc_status=grpc,
                            success=success,
                            count=response.count,
                            latency_buckets=response.buckets,
                            latency_sum_ms=response.sum_ms,
                        )
                        for (status, grpc, success), response in sorted(counts.responses.items())
                    ],
                    tcp_opened=counts.tcp_opened,
                    tcp_closed=counts.tcp_closed,
                    bytes_read=counts.bytes_read,
                    bytes_written=counts.bytes_written,
                )
            )
        return message


class ReportState:
    """Deltas taken from the registry, merged until acknowledged (see the module's docstring)."""

    def __init__(self, now: float, *, max_scopes: int, max_in_flight: int = 32) -> None:
        self.max_scopes = max_scopes
        self.max_in_flight = max_in_flight
        self.sequence = 0
        self.fresh: dict[ScopeKey, ScopeCounts] = {}
        self.in_flight: list[Report] = []
        self._fresh_start = now
        self._fresh_dropped = 0
        self._carried_first: int | None = None
        #: A stream was lost with reports unacknowledged: the next stream's first message says which of them
        #: were published after all, before the rest is sent again.
        self.resuming = False
        self._taken: dict[RouteHandle | TcpHandle, _Taken] = {}
        self._gone: dict[ScopeKey, None] = {}
        #: Totals for the proxy's own metrics.
        self.dropped_total = 0
        self.dropped_responses_total = 0
        self.resets = 0
        self.sent = 0
        self.acknowledged = 0

    @property
    def carrying(self) -> bool:
        """Whether reports a lost stream did not acknowledge wait to be sent again."""
        return self._carried_first is not None or self.resuming

    @property
    def held_scopes(self) -> int:
        """Scope deltas held in memory: fresh plus sent and not yet acknowledged."""
        return len(self.fresh) + sum(len(report.scopes) for report in self.in_flight)

    def take(self, handles: Iterable[RouteHandle | TcpHandle]) -> None:
        """Take what the series counted since the last ``take`` into the fresh deltas."""
        current = list(handles)
        live = set(current)
        for handle in [handle for handle in self._taken if handle not in live]:
            # Expired from the registry: its last increments, then it is forgotten.
            taken = self._taken.pop(handle)
            if taken.scope is None:
                continue
            self._merge(taken.scope, _delta(handle, taken))
            self._gone[taken.scope] = None
            if len(self._gone) > _GONE_MEMORY:
                del self._gone[next(iter(self._gone))]
        for handle in current:
            seen = self._taken.get(handle)
            if seen is None:
                scope = scope_of(handle)
                seen = self._taken[handle] = _Taken(scope)
                if scope in self._gone:
                    del self._gone[scope]
                    self.resets += 1
            if seen.scope is not None:
                self._merge(seen.scope, _delta(handle, seen))

    def _merge(self, scope: ScopeKey, delta: ScopeCounts) -> None:
        if delta.empty():
            return
        counts = self.fresh.get(scope)
        if counts is None:
            if self.held_scopes >= self.max_scopes:
                self._fresh_dropped += 1
                self.dropped_total += 1
                return
            counts = self.fresh[scope] = ScopeCounts()
        self.dropped_responses_total += counts.add(delta)

    def build(self, now: float) -> Report | None:
        """The next report (everything fresh, possibly empty), kept until acknowledged; None while
        ``max_in_flight`` reports wait for their acknowledgement."""
        if self.resuming:
            self.resume(0)  # nobody said where to resume: everything unacknowledged is sent again
        if len(self.in_flight) >= self.max_in_flight:
            return None
        self.sequence += 1
        first = self._carried_first if self._carried_first is not None else self.sequence
        report = Report(first, self.sequence, self._fresh_start, now, self.fresh, self._fresh_dropped)
        self.in_flight.append(report)
        self.fresh = {}
        self._fresh_start = now
        self._fresh_dropped = 0
        self._carried_first = None
        self.sent += 1
        return report

    def acknowledge(self, sequence: int) -> int:
        """Forget every report up to ``sequence``; returns how many that was."""
        kept = [report for report in self.in_flight if report.sequence > sequence]
        forgotten = len(self.in_flight) - len(kept)
        self.in_flight = kept
        self.acknowledged += forgotten
        return forgotten

    def stream_lost(self) -> None:
        """The stream ended: what it did not acknowledge stays as it was sent, until the next stream says
        where to resume (:meth:`resume`): a replica may have published some of it before the stream broke."""
        self.resuming = bool(self.in_flight) or self.resuming

    def resume(self, sequence: int) -> None:
        """A new stream's first acknowledgement (``sequence``: what telemetry already published, 0: nothing,
        also when the server says nothing): forget what it covers; the rest goes into the next report,
        merged."""
        self.resuming = False
        self.acknowledge(sequence)
        if not self.in_flight:
            return
        merged: dict[ScopeKey, ScopeCounts] = {}
        for scopes in [*(report.scopes for report in self.in_flight), self.fresh]:
            for scope, counts in scopes.items():
                self.dropped_responses_total += merged.setdefault(scope, ScopeCounts()).add(counts)
        self._carried_first = min(report.first_sequence for report in self.in_flight)
        self._fresh_start = min(report.start for report in self.in_flight)
        self._fresh_dropped += sum(report.dropped_scopes for report in self.in_flight)
        self.fresh = merged
        self.in_flight = []

    def render_metrics(self) -> list[str]:
        return [
            "# HELP proxy_telemetry_reports_total Interval reports sent to telemetry.",
            "# TYPE proxy_telemetry_reports_total counter",
            f"proxy_telemetry_reports_total {self.sent}",
            "# HELP proxy_telemetry_reports_acknowledged_total Reports telemetry acknowledged.",
            "# TYPE proxy_telemetry_reports_acknowledged_total counter",
            f"proxy_telemetry_reports_acknowledged_total {self.acknowledged}",
            "# HELP proxy_telemetry_unacknowledged_scopes Scope deltas held until acknowledged.",
            "# TYPE proxy_telemetry_unacknowledged_scopes gauge",
            f"proxy_telemetry_unacknowledged_scopes {self.held_scopes}",
            "# HELP proxy_telemetry_dropped_scopes_total Scope deltas dropped: more scopes than may be held.",
            "# TYPE proxy_telemetry_dropped_scopes_total counter",
            f"proxy_telemetry_dropped_scopes_total {self.dropped_total}",
            "# HELP proxy_telemetry_dropped_responses_total Response kinds beyond the per-scope bound.",
            "# TYPE proxy_telemetry_dropped_responses_total counter",
            f"proxy_telemetry_dropped_responses_total {self.dropped_responses_total}",
            "# HELP proxy_telemetry_series_resets_total Series that expired and came back (counted from 0).",
            "# TYPE proxy_telemetry_series_resets_total counter",
            f"proxy_telemetry_series_resets_total {self.resets}",
        ]
