"""Live taps on a telemetry replica: which taps live, which connected proxies they run on, and each proxy's
share of a tap's rate. Pure and I/O-free, time passed in.

The wiring feeds :class:`TapRegistry` what arrives and carries out the :class:`Changes` it returns:

* NATS ``tether.v1.tap.requests`` → :meth:`TapRegistry.request` (start, renew, cancel);
* NATS ``tether.v1.tap.matches.>`` → :meth:`TapRegistry.match_count` (other replicas' counts);
* a proxy's ``Report`` stream opening with a verified hello → :meth:`TapRegistry.proxy_connected`, and its
  end → :meth:`TapRegistry.proxy_disconnected`;
* a timer → :meth:`TapRegistry.tick` (renewals missed, requested expiries, stale counts, re-publishing the
  local counts), due at :meth:`TapRegistry.next_deadline`;
* then: each :class:`Send` goes down that proxy's stream as ``ReportResponse(tap_subscription=...)``, each
  :class:`~tether.shared.tap_requests.TapMatchCount` is published on ``tap_matches(tap_id)``.

A tap lives while renewed: its deadline is the last renewal plus ``missed_renewals * renew_interval`` plus a
grace of half an interval (2 s renewals: 7 s), so three missed renewals end it; a cancel ends it at once.
Each subscription sent to a proxy expires at that same deadline (or the requested expiry, if sooner), so a
proxy stops by itself if this replica dies; every renewal re-sends it with the new expiry.

Rate: ``share = max_events_per_second / total``, where total is this replica's matching proxies plus the
fresh counts the other replicas publish (a count not refreshed within ``count_ttl`` is dropped). Until the
other replicas' counts arrive a replica over-estimates its share; the public API drops any excess.

``now`` is the wall clock (Unix seconds): it is compared with requested expiries and becomes the
subscriptions' absolute ``expires_at``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from google.protobuf.timestamp_pb2 import Timestamp

from tether.shared.proto.telemetry.v1 import telemetry_pb2
from tether.shared.tap_requests import (
    MATCH_COUNT_INTERVAL_SECONDS,
    MISSED_RENEWALS,
    RENEW_INTERVAL_SECONDS,
    SENSITIVE_HEADERS,
    TapMatchCount,
    TapRequest,
    TapTarget,
)

ProxyKey = Hashable
"""The server's key for one proxy's report stream, e.g. ``(identity, pod)`` (one stream per proxy)."""

EndReason = Literal["cancelled", "lapsed", "expired"]

DEFAULT_MAX_TAPS = 64
#: Taps this replica keeps other replicas' counts for without knowing the tap itself (yet).
DEFAULT_MAX_REMOTE_TAPS = 1024
DEFAULT_MAX_REPLICAS_PER_TAP = 256


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """A connected proxy, as its (verified) hello describes it."""

    namespace: str
    pod: str
    labels: Mapping[str, str]
    identity: str = ""

    @classmethod
    def from_hello(cls, hello: telemetry_pb2.ProxyHello) -> ProxyInfo:
        return cls(
            namespace=hello.namespace, pod=hello.pod, labels=dict(hello.labels), identity=hello.identity
        )


def target_matches(target: TapTarget, proxy: ProxyInfo) -> bool:
    """Whether ``proxy`` is one of the target's: same namespace, and the pod's name, the workload's label
    (``<kind>=<name>``, kind lowercased) or a name in its ``service`` label (comma-separated)."""
    if proxy.namespace != target.namespace:
        return False
    if target.pod is not None:
        return proxy.pod == target.pod
    if target.workload is not None:
        return proxy.labels.get(target.workload.kind.lower()) == target.workload.name
    if target.service is not None:
        services = proxy.labels.get("service", "")
        return target.service in {name.strip() for name in services.split(",")}
    return False


@dataclass(frozen=True, slots=True)
class Send:
    """A subscription to send down one proxy's Report stream."""

    proxy: ProxyKey
    subscription: telemetry_pb2.TapSubscription


@dataclass(frozen=True, slots=True)
class Ended:
    tap_id: str
    reason: EndReason


@dataclass(frozen=True, slots=True)
class Refused:
    tap_id: str
    reason: Literal["too_many_taps"]


@dataclass(slots=True)
class Changes:
    """What to do after an input: subscriptions to send, match counts to publish, and what to log."""

    sends: list[Send] = field(default_factory=list)
    counts: list[TapMatchCount] = field(default_factory=list)
    ended: list[Ended] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    #: Tap ids that started on this replica with this input (first start or first renewal seen).
    started: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.sends or self.counts or self.ended or self.refused or self.started)


@dataclass(slots=True)
class _Remote:
    matching: int
    at: float
    received: float


@dataclass(slots=True)
class _LiveTap:
    request: TapRequest
    renewed_at: float
    requested_expiry: float | None
    #: Local proxies the target matches (insertion-ordered set).
    matching: dict[ProxyKey, None] = field(default_factory=dict)
    #: What each proxy holds: (share, expires_at) of the last active subscription sent to it.
    sent: dict[ProxyKey, tuple[float, float]] = field(default_factory=dict)
    published: int = 0
    published_at: float = -math.inf


def _timestamp(wall: float) -> Timestamp:
    seconds = math.floor(wall)
    return Timestamp(seconds=seconds, nanos=min(999_999_999, max(0, int((wall - seconds) * 1e9))))


class TapRegistry:
    """The live taps of one telemetry replica and the subscriptions of its proxies (module docstring)."""

    def __init__(
        self,
        replica: str,
        *,
        renew_interval: float = RENEW_INTERVAL_SECONDS,
        missed_renewals: int = MISSED_RENEWALS,
        count_interval: float = MATCH_COUNT_INTERVAL_SECONDS,
        count_ttl: float | None = None,
        max_taps: int = DEFAULT_MAX_TAPS,
        max_remote_taps: int = DEFAULT_MAX_REMOTE_TAPS,
        max_replicas_per_tap: int = DEFAULT_MAX_REPLICAS_PER_TAP,
        sensitive_headers: Iterable[str] = (),
    ) -> None:
        self.replica = replica
        #: A tap (and every subscription sent for it) ends this long after its last renewal.
        self.lease = missed_renewals * renew_interval + renew_interval / 2
        self.count_interval = count_interval
        self.count_ttl = (
            count_ttl if count_ttl is not None else missed_renewals * count_interval + count_interval / 2
        )
        self.max_taps = max_taps
        self.max_remote_taps = max_remote_taps
        self.max_replicas_per_tap = max_replicas_per_tap
        self.sensitive_headers = SENSITIVE_HEADERS | {name.strip().lower() for name in sensitive_headers}
        self._taps: dict[str, _LiveTap] = {}
        self._proxies: dict[ProxyKey, ProxyInfo] = {}
        self._remote: dict[str, dict[str, _Remote]] = {}
        # Cancelled tap ids, until when a late start or renewal for them is ignored.
        self._cancelled: dict[str, float] = {}

    # --- introspection -------------------------------------------------------------------------------------

    @property
    def live_taps(self) -> frozenset[str]:
        return frozenset(self._taps)

    @property
    def proxies(self) -> int:
        return len(self._proxies)

    def local_matches(self, tap_id: str) -> int:
        tap = self._taps.get(tap_id)
        return len(tap.matching) if tap is not None else 0

    def total_matches(self, tap_id: str, now: float) -> int:
        """This replica's matching proxies plus the fresh counts of the others."""
        return self.local_matches(tap_id) + self._remote_total(tap_id, now)

    def share(self, tap_id: str, now: float) -> float:
        """Each matching proxy's rate (0.0 for a tap that is not live or matches nothing)."""
        tap = self._taps.get(tap_id)
        if tap is None or not tap.matching:
            return 0.0
        return self._share(tap, now)

    def accepts_event(self, proxy: ProxyKey, tap_id: str) -> bool:
        """Whether a ``TapEvent`` for ``tap_id`` from ``proxy`` belongs to a live tap that proxy was sent:
        anything else is dropped, so a proxy cannot publish into another tap."""
        tap = self._taps.get(tap_id)
        return tap is not None and proxy in tap.sent

    def header_names(self, tap_id: str) -> frozenset[str]:
        """The header names whose values a live tap's events may carry: those it asked for, minus the
        sensitive ones (empty for a tap that is not live)."""
        tap = self._taps.get(tap_id)
        if tap is None:
            return frozenset()
        return frozenset(name.lower() for name in tap.request.header_names) - self.sensitive_headers

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do (``inf``: nothing pending)."""
        deadline = math.inf
        for tap in self._taps.values():
            deadline = min(deadline, tap.renewed_at + self.lease)
            if tap.requested_expiry is not None:
                deadline = min(deadline, tap.requested_expiry)
            if tap.matching:
                deadline = min(deadline, tap.published_at + self.count_interval)
        for counts in self._remote.values():
            for remote in counts.values():
                deadline = min(deadline, remote.received + self.count_ttl)
        for until in self._cancelled.values():
            deadline = min(deadline, until)
        return deadline

    # --- inputs --------------------------------------------------------------------------------------------

    def request(self, message: TapRequest, now: float) -> Changes:
        """A start, renewal or cancel from ``tether.v1.tap.requests``. A renewal of a tap this replica does
        not know starts it; a start of a live tap renews it."""
        changes = Changes()
        tap_id = message.tap_id
        if message.action == "cancel":
            self._cancelled[tap_id] = now + self.lease
            self._end(tap_id, "cancelled", now, changes)
            self._remote.pop(tap_id, None)
            return changes
        target = message.target
        if target is None or tap_id in self._cancelled:
            return changes
        requested_expiry = message.expires_at.timestamp() if message.expires_at is not None else None
        if requested_expiry is not None and requested_expiry <= now:
            self._end(tap_id, "expired", now, changes)
            return changes
        tap = self._taps.get(tap_id)
        if tap is None:
            if len(self._taps) >= self.max_taps:
                changes.refused.append(Refused(tap_id, "too_many_taps"))
                return changes
            tap = self._taps[tap_id] = _LiveTap(message, now, requested_expiry)
            changes.started.append(tap_id)
            retarget = True
        else:
            retarget = tap.request.target != target
            tap.request = message
            tap.renewed_at = now
            tap.requested_expiry = requested_expiry
        if retarget:
            tap.matching = {key: None for key, info in self._proxies.items() if target_matches(target, info)}
        self._sync(tap, now, changes)
        self._publish_if_changed(tap, now, changes)
        return changes

    def match_count(self, message: TapMatchCount, now: float) -> Changes:
        """Another replica's count for a tap (its own are ignored; older than the last seen: ignored)."""
        changes = Changes()
        if message.replica == self.replica or message.tap_id in self._cancelled:
            return changes
        counts = self._remote.get(message.tap_id)
        if counts is None:
            if message.tap_id not in self._taps and len(self._remote) >= self.max_remote_taps:
                return changes
            counts = self._remote[message.tap_id] = {}
        at = message.at.timestamp()
        previous = counts.get(message.replica)
        if previous is not None and at < previous.at:
            return changes
        if previous is None and len(counts) >= self.max_replicas_per_tap:
            return changes
        counts[message.replica] = _Remote(message.matching, at, now)
        tap = self._taps.get(message.tap_id)
        if tap is not None:
            self._sync(tap, now, changes)
        return changes

    def proxy_connected(self, proxy: ProxyKey, info: ProxyInfo, now: float) -> Changes:
        """A proxy's Report stream is open (its hello verified): it joins every live tap that targets it.
        A second stream under the same key replaces the first, and is sent every subscription afresh."""
        changes = Changes()
        if proxy in self._proxies:
            self._forget(proxy, now, changes, resync=False)
        self._proxies[proxy] = info
        for tap in self._taps.values():
            target = tap.request.target
            if target is not None and target_matches(target, info):
                tap.matching[proxy] = None
        for tap in self._taps.values():
            self._sync(tap, now, changes)
            self._publish_if_changed(tap, now, changes)
        return changes

    def proxy_disconnected(self, proxy: ProxyKey, now: float) -> Changes:
        """A proxy's Report stream ended: nothing is sent to it, the others' shares grow."""
        changes = Changes()
        if proxy in self._proxies:
            self._forget(proxy, now, changes, resync=True)
        return changes

    def tick(self, now: float) -> Changes:
        """Ends taps whose renewals lapsed or whose requested expiry passed, drops stale counts (shares are
        recomputed), and re-publishes local counts every ``count_interval``."""
        changes = Changes()
        for tap_id, tap in list(self._taps.items()):
            if now >= tap.renewed_at + self.lease:
                self._end(tap_id, "lapsed", now, changes)
            elif tap.requested_expiry is not None and now >= tap.requested_expiry:
                self._end(tap_id, "expired", now, changes)
        for tap_id, counts in list(self._remote.items()):
            stale = [replica for replica, remote in counts.items() if now >= remote.received + self.count_ttl]
            for replica in stale:
                del counts[replica]
            if not counts:
                del self._remote[tap_id]
            if stale and tap_id in self._taps:
                self._sync(self._taps[tap_id], now, changes)
        for tap in self._taps.values():
            count = len(tap.matching)
            if count != tap.published or (count and now >= tap.published_at + self.count_interval):
                self._publish(tap, now, changes)
        for tap_id, until in list(self._cancelled.items()):
            if now >= until:
                del self._cancelled[tap_id]
        return changes

    # --- internals -----------------------------------------------------------------------------------------

    def _remote_total(self, tap_id: str, now: float) -> int:
        counts = self._remote.get(tap_id)
        if not counts:
            return 0
        return sum(remote.matching for remote in counts.values() if now < remote.received + self.count_ttl)

    def _share(self, tap: _LiveTap, now: float) -> float:
        total = len(tap.matching) + self._remote_total(tap.request.tap_id, now)
        return tap.request.max_events_per_second / max(1, total)

    def _expires_at(self, tap: _LiveTap) -> float:
        deadline = tap.renewed_at + self.lease
        if tap.requested_expiry is not None:
            deadline = min(deadline, tap.requested_expiry)
        return deadline

    def _subscription(self, tap: _LiveTap, share: float, expires: float) -> telemetry_pb2.TapSubscription:
        request = tap.request
        match = request.match
        names = sorted({name.lower() for name in request.header_names} - self.sensitive_headers)
        return telemetry_pb2.TapSubscription(
            tap_id=request.tap_id,
            active=True,
            match=telemetry_pb2.TapMatch(
                authority=match.authority,
                path_prefix=match.path_prefix,
                method=match.method,
                destination_namespace=match.destination_namespace,
                destination_service=match.destination_service,
            ),
            max_requests=request.max_requests,
            max_events_per_second=share,
            expires_at=_timestamp(expires),
            header_names=names,
        )

    def _sync(self, tap: _LiveTap, now: float, changes: Changes) -> None:
        """Send each matching proxy what it must hold now, and a stop to any that no longer matches."""
        share = self._share(tap, now)
        expires = self._expires_at(tap)
        wanted = (share, expires)
        subscription: telemetry_pb2.TapSubscription | None = None
        for proxy in tap.matching:
            if tap.sent.get(proxy) == wanted:
                continue
            if subscription is None:
                subscription = self._subscription(tap, share, expires)
            changes.sends.append(Send(proxy, subscription))
            tap.sent[proxy] = wanted
        for proxy in [proxy for proxy in tap.sent if proxy not in tap.matching]:
            del tap.sent[proxy]
            changes.sends.append(Send(proxy, self._stop(tap.request.tap_id)))

    @staticmethod
    def _stop(tap_id: str) -> telemetry_pb2.TapSubscription:
        return telemetry_pb2.TapSubscription(tap_id=tap_id, active=False)

    def _end(self, tap_id: str, reason: EndReason, now: float, changes: Changes) -> None:
        tap = self._taps.pop(tap_id, None)
        if tap is None:
            return
        stop = self._stop(tap_id)
        changes.sends.extend(Send(proxy, stop) for proxy in tap.sent)
        changes.ended.append(Ended(tap_id, reason))
        if tap.published:
            # Tell the other replicas at once that these proxies no longer take part.
            changes.counts.append(self._count_message(tap_id, 0, now))

    def _forget(self, proxy: ProxyKey, now: float, changes: Changes, *, resync: bool) -> None:
        del self._proxies[proxy]
        for tap in self._taps.values():
            if proxy not in tap.matching:
                continue
            del tap.matching[proxy]
            tap.sent.pop(proxy, None)
            if resync:
                self._sync(tap, now, changes)
                self._publish_if_changed(tap, now, changes)

    def _publish_if_changed(self, tap: _LiveTap, now: float, changes: Changes) -> None:
        if len(tap.matching) != tap.published:
            self._publish(tap, now, changes)

    def _publish(self, tap: _LiveTap, now: float, changes: Changes) -> None:
        tap.published = len(tap.matching)
        tap.published_at = now
        changes.counts.append(self._count_message(tap.request.tap_id, tap.published, now))

    def _count_message(self, tap_id: str, matching: int, now: float) -> TapMatchCount:
        return TapMatchCount(
            replica=self.replica,
            tap_id=tap_id,
            matching=matching,
            at=datetime.fromtimestamp(max(0.0, now), UTC),
        )
