"""The telemetry replicas' rollups, merged exactly: a pure store, time passed in.

Every replica publishes its own partial rollup of a workload per interval; counts add and histograms add
bucket by bucket, so their sum is exact once each proxy's report range is counted once (docs/events.md). The
store does incrementally what ``tether.telemetry.rollups.merge_rollups`` does for a batch: a rollup whose
every range was counted already (a redelivery) is skipped, one overlapping counted ranges in part is a
conflict and not counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tether.shared.events import RollupScope, TelemetryRollup
from tether.shared.telemetry_scopes import HISTOGRAM_LENGTH, LATENCY_BUCKETS_MS

#: How long rollups are kept: the stream's age.
RETENTION_SECONDS = 3600.0
#: The windows a StatSummary may ask for.
WINDOWS_SECONDS = (10.0, 60.0, 600.0, 3600.0)
WORKLOAD_KINDS = ("deployment", "statefulset", "daemonset", "job", "pod")


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    pod: str
    identity: str
    kind: str
    name: str
    last_report: float
    proxy_version: str = ""
    #: NotAfter of its certificate (Unix seconds) as of its latest hello; 0: unknown.
    certificate_expiry: float = 0.0


@dataclass(frozen=True)
class Kept:
    """One counted rollup, with the wall-clock end of its interval."""

    end: float
    rollup: TelemetryRollup


@dataclass
class Totals:
    """Merged counts of some scopes."""

    requests: int = 0
    success: int = 0
    failure: int = 0
    tls_requests: int = 0
    tcp_opened: int = 0
    tcp_closed: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_LENGTH)

    def add(self, scope: RollupScope) -> None:
        self.requests += scope.requests
        if scope.labels.get("tls") == "true":
            self.tls_requests += scope.requests
        self.tcp_opened += scope.tcp_opened
        self.tcp_closed += scope.tcp_closed
        for response in scope.responses:
            if response.success:
                self.success += response.count
            else:
                self.failure += response.count
            for index, count in enumerate(response.latency_buckets):
                self.buckets[index] += count

    def quantile_ms(self, q: float) -> float:
        """The q-quantile of the merged histogram, interpolated linearly within its bucket (as Prometheus'
        histogram_quantile); responses slower than the last bound count as the last bound."""
        total = sum(self.buckets)
        if total == 0:
            return 0.0
        rank = q * total
        seen = 0
        for index, count in enumerate(self.buckets):
            if count and seen + count >= rank:
                if index >= len(LATENCY_BUCKETS_MS):
                    return float(LATENCY_BUCKETS_MS[-1])
                lower = 0.0 if index == 0 else float(LATENCY_BUCKETS_MS[index - 1])
                upper = float(LATENCY_BUCKETS_MS[index])
                return lower + (upper - lower) * max(0.0, rank - seen) / count
            seen += count
        return float(LATENCY_BUCKETS_MS[-1])


def _overlaps(spans: list[tuple[int, int, float]], first: int, last: int) -> bool:
    return any(first <= b and a <= last for a, b, _ in spans)


def _within(spans: list[tuple[int, int, float]], first: int, last: int) -> bool:
    return any(a <= first and last <= b for a, b, _ in spans)


class RollupStore:
    def __init__(self, retention: float = RETENTION_SECONDS) -> None:
        self.retention = retention
        self._kept: list[Kept] = []
        self._counted: dict[tuple[str, str, str], list[tuple[int, int, float]]] = {}
        self.conflicts = 0
        self.duplicates = 0
        self.kept_total = 0

    def add(self, rollup: TelemetryRollup, now: float) -> bool:
        """Count ``rollup`` unless its ranges were counted (whole: a duplicate; in part: a conflict)."""
        end = rollup.interval_end.timestamp()
        if end < now - self.retention:
            return False
        keys = [(r.identity, r.pod, r.instance) for r in rollup.ranges]
        spans = [self._counted.get(key, []) for key in keys]
        pairs = list(zip(spans, rollup.ranges, strict=True))
        if rollup.ranges and all(_within(done, r.first, r.last) for done, r in pairs):
            self.duplicates += 1
            return False
        if any(_overlaps(done, r.first, r.last) for done, r in pairs):
            self.conflicts += 1
            return False
        for key, r in zip(keys, rollup.ranges, strict=True):
            self._counted.setdefault(key, []).append((r.first, r.last, end))
        self._kept.append(Kept(end, rollup))
        self.kept_total += 1
        return True

    def prune(self, now: float) -> None:
        cutoff = now - self.retention
        self._kept = [k for k in self._kept if k.end >= cutoff]
        for key in list(self._counted):
            spans = [s for s in self._counted[key] if s[2] >= cutoff]
            if spans:
                self._counted[key] = spans
            else:
                del self._counted[key]

    def within(self, now: float, window: float) -> list[Kept]:
        """The rollups whose interval ended in ``(now - window, now]`` (a little clock skew tolerated)."""
        return [k for k in self._kept if now - window < k.end <= now + 5.0]

    def pods(self, now: float) -> list[PodInfo]:
        """Every proxy (namespace, pod) that reported within the retention, with its latest report."""
        latest: dict[tuple[str, str], PodInfo] = {}
        for kept in self.within(now, self.retention):
            r = kept.rollup
            for span in r.ranges:
                key = (r.namespace, span.pod)
                seen = latest.get(key)
                if seen is None or seen.last_report <= kept.end:
                    latest[key] = PodInfo(
                        r.namespace,
                        span.pod,
                        span.identity,
                        r.kind,
                        r.name,
                        kept.end,
                        span.proxy_version,
                        span.certificate_expiry.timestamp() if span.certificate_expiry else 0.0,
                    )
        return sorted(latest.values(), key=lambda p: (p.namespace, p.kind, p.name, p.pod))


# --- resources: which scopes of which rollups count for a resource -------------------------------------

Key = tuple[str, str, str]  # namespace, kind, name
ScopeFilter = Callable[[TelemetryRollup, RollupScope], Key | None]


def dst_matches(scope: RollupScope, namespace: str, kind: str, name: str) -> bool:
    """Whether an outbound scope's destination is the resource (an empty name or namespace: any)."""
    labels = scope.labels
    if namespace and labels.get("dst_namespace", "") != namespace:
        return False
    if kind == "namespace":
        return not name or labels.get("dst_namespace", "") == name
    if kind == "service":
        value = labels.get("dst_service", "")
    elif kind == "pod":
        value = labels.get("dst_pod", "") or (
            labels.get("dst_name", "") if labels.get("dst_kind") == "pod" else ""
        )
    else:
        if labels.get("dst_kind", "") != kind:
            return False
        value = labels.get("dst_name", "")
    return bool(value) and (not name or value == name)


def row_key(rollup: TelemetryRollup, scope: RollupScope, kind: str) -> Key | None:
    """The resource of ``kind`` that an inbound scope of ``rollup`` is traffic of (for StatSummary rows)."""
    if kind == "namespace":
        return (rollup.namespace, "namespace", rollup.namespace)
    if kind == "authority":
        authority = scope.labels.get("authority", "")
        return (rollup.namespace, "authority", authority) if authority else None
    if kind == "pod":  # telemetry labels every scope with the pod that reported it
        pod = scope.labels.get("pod", "") or (rollup.name if rollup.kind == "pod" else "")
        return (rollup.namespace, "pod", pod) if pod else None
    if kind == rollup.kind:
        return (rollup.namespace, rollup.kind, rollup.name)
    return None


def outbound_service_key(scope: RollupScope) -> Key | None:
    service = scope.labels.get("dst_service", "")
    namespace = scope.labels.get("dst_namespace", "")
    return (namespace, "service", service) if service and namespace else None


def selected(key: Key, namespace: str, name: str) -> bool:
    return (not namespace or key[0] == namespace) and (not name or key[2] == name)


def resource_of_rollup(rollup: TelemetryRollup) -> Key:
    return (rollup.namespace, rollup.kind, rollup.name)


def matches_resource(rollup: TelemetryRollup, namespace: str, kind: str, name: str) -> bool:
    """Whether the rollup's workload is (or, for a namespace, lies in) the resource."""
    if kind == "namespace":
        return rollup.namespace == (name or namespace) or not (name or namespace)
    return (
        rollup.kind == kind
        and (not namespace or rollup.namespace == namespace)
        and (not name or rollup.name == name)
    )


def identities(rollups: Iterable[TelemetryRollup]) -> set[str]:
    return {span.identity for r in rollups for span in r.ranges}


def finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
