"""Reports as the aggregation core holds them, and their validation against the hello and the bounds.

A decoded ``IntervalReport`` becomes a :class:`Contribution` (scope key → counts). What is refused:

* **the whole report** (:class:`ReportRefused`, INVALID_ARGUMENT, nothing folded, the stream ends) when it is
  oversized or its sequence numbering is broken: more than ``MAX_SCOPES`` scopes, a scope with more than
  ``MAX_RESPONSES_PER_SCOPE`` responses, ``sequence`` or ``first_sequence`` 0, ``first_sequence >
  sequence``, ``end`` before ``start``, ``dropped_scopes`` above ``MAX_COUNT``. Such a client is broken or
  hostile, and cutting it off costs nobody else anything.
* **one scope** (dropped, counted by reason, the rest folded and acknowledged) when its content is bad:
  an unknown label, a label longer than ``MAX_LABEL_LENGTH``, no direction, a count above ``MAX_COUNT``, a
  histogram whose length is not ``HISTOGRAM_LENGTH`` or whose buckets do not add up to the count, a latency
  sum negative, NaN or infinite, or a response repeated within the scope. One corrupted counter must not stall
  a proxy's whole telemetry: the proxy merges unacknowledged deltas, so a refused report would come back
  forever.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tether.shared.identity_names import is_dns1123_label
from tether.shared.proto.telemetry.v1 import telemetry_pb2 as pb
from tether.shared.telemetry_scopes import (
    HISTOGRAM_LENGTH,
    MAX_COUNT,
    MAX_LABEL_LENGTH,
    MAX_RESPONSES_PER_SCOPE,
    MAX_SCOPES,
    SCOPE_LABELS,
)
from tether.telemetry.errors import HelloRefused, ReportRefused

INBOUND = pb.DIRECTION_INBOUND
OUTBOUND = pb.DIRECTION_OUTBOUND
DIRECTIONS: dict[int, str] = {INBOUND: "inbound", OUTBOUND: "outbound"}
#: Workload kinds taken from the hello's labels, in this order; else the pod itself.
WORKLOAD_KINDS = ("deployment", "statefulset", "daemonset", "job")
#: The longest ``ProxyHello.instance`` accepted (a random id per proxy process).
MAX_INSTANCE_LENGTH = 128
MAX_PROXY_VERSION_LENGTH = 64

#: (direction, sorted label items)
ScopeKey = tuple[int, tuple[tuple[str, str], ...]]
#: (status_code, grpc_status, success)
ResponseKey = tuple[int, int, bool]


@dataclass(slots=True)
class ResponseCounts:
    count: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_LENGTH)
    latency_sum_ms: float = 0.0

    def add(self, other: ResponseCounts) -> None:
        self.count += other.count
        mine = self.buckets
        for index, value in enumerate(other.buckets):
            mine[index] += value
        self.latency_sum_ms += other.latency_sum_ms

    def copy(self) -> ResponseCounts:
        return ResponseCounts(self.count, list(self.buckets), self.latency_sum_ms)


@dataclass(slots=True)
class ScopeCounts:
    requests: int = 0
    tcp_opened: int = 0
    tcp_closed: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    responses: dict[ResponseKey, ResponseCounts] = field(default_factory=dict)

    def add(self, other: ScopeCounts) -> None:
        self.requests += other.requests
        self.tcp_opened += other.tcp_opened
        self.tcp_closed += other.tcp_closed
        self.bytes_read += other.bytes_read
        self.bytes_written += other.bytes_written
        for key, counts in other.responses.items():
            mine = self.responses.get(key)
            if mine is None:
                self.responses[key] = counts.copy()
            else:
                mine.add(counts)

    def copy(self) -> ScopeCounts:
        result = ScopeCounts()
        result.add(self)
        return result


Contribution = dict[ScopeKey, ScopeCounts]


def add_into(target: Contribution, other: Contribution) -> None:
    for key, counts in other.items():
        mine = target.get(key)
        if mine is None:
            target[key] = counts.copy()
        else:
            mine.add(counts)


# Latency sums are floats added in another order by the proxy: allow rounding, never a real decrease.
_SUM_SLACK = 1e-6


def subtract(total: Contribution, part: Contribution) -> Contribution | None:
    """``total - part``, or None unless every count of ``part`` is within ``total`` (not a superset)."""
    result: Contribution = {}
    if any(key not in total for key in part):
        return None
    for key, whole in total.items():
        taken = part.get(key)
        if taken is None:
            result[key] = whole.copy()
            continue
        scope = ScopeCounts(
            whole.requests - taken.requests,
            whole.tcp_opened - taken.tcp_opened,
            whole.tcp_closed - taken.tcp_closed,
            whole.bytes_read - taken.bytes_read,
            whole.bytes_written - taken.bytes_written,
        )
        if min(scope.requests, scope.tcp_opened, scope.tcp_closed, scope.bytes_read, scope.bytes_written) < 0:
            return None
        if any(rkey not in whole.responses for rkey in taken.responses):
            return None
        for rkey, response in whole.responses.items():
            taken_response = taken.responses.get(rkey)
            if taken_response is None:
                scope.responses[rkey] = response.copy()
                continue
            buckets = [a - b for a, b in zip(response.buckets, taken_response.buckets, strict=True)]
            latency = response.latency_sum_ms - taken_response.latency_sum_ms
            if min(buckets) < 0 or latency < -_SUM_SLACK * max(1.0, response.latency_sum_ms):
                return None
            if response.count - taken_response.count:
                scope.responses[rkey] = ResponseCounts(
                    response.count - taken_response.count, buckets, max(0.0, latency)
                )
        counters = (scope.requests, scope.tcp_opened, scope.tcp_closed, scope.bytes_read, scope.bytes_written)
        if any(counters) or scope.responses:
            result[key] = scope
    return result


@dataclass(frozen=True, slots=True)
class WorkloadKey:
    namespace: str
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class ProxyKey:
    """One report stream at a time per proxy: its (verified) identity and its pod."""

    identity: str
    pod: str


@dataclass(frozen=True, slots=True)
class ProxyAbout:
    """What a proxy says about itself in its hello, passed on in the rollups for ``ListWorkloads``."""

    proxy_version: str = ""
    #: NotAfter of its certificate when the stream opened (Unix seconds; 0: none).
    certificate_expiry: float = 0.0


@dataclass(frozen=True, slots=True)
class Hello:
    proxy: ProxyKey
    workload: WorkloadKey
    #: The proxy process's random id (``ProxyHello.instance``); empty from proxies that predate it.
    instance: str = ""
    about: ProxyAbout = field(default_factory=ProxyAbout)


def _subject_token(value: str) -> bool:
    return 0 < len(value) <= 253 and all(ch.isalnum() or ch in "-_" for ch in value) and value.isascii()


def workload_of(namespace: str, pod: str, labels: dict[str, str]) -> WorkloadKey:
    for kind in WORKLOAD_KINDS:
        name = labels.get(kind, "")
        if name and _subject_token(name):
            return WorkloadKey(namespace, kind, name)
    return WorkloadKey(namespace, "pod", pod)


def check_hello(hello: pb.ProxyHello, peer_identity: str | None) -> Hello:
    """The hello against the client certificate's identity (None: no verification, identity disabled)."""
    from tether.shared.identity_names import InvalidIdentityName, parse_identity

    if not is_dns1123_label(hello.namespace):
        raise HelloRefused("INVALID_ARGUMENT", "bad_hello", "namespace must be a DNS-1123 label")
    if not _subject_token(hello.pod):
        raise HelloRefused("INVALID_ARGUMENT", "bad_hello", "pod must be a name of [A-Za-z0-9_-]")
    try:
        claimed = parse_identity(hello.identity)
    except InvalidIdentityName as exc:
        raise HelloRefused("INVALID_ARGUMENT", "bad_hello", f"identity: {exc}") from None
    if peer_identity is not None and hello.identity != peer_identity:
        raise HelloRefused(
            "PERMISSION_DENIED", "identity_mismatch", "the hello's identity is not the client certificate's"
        )
    if claimed.namespace != hello.namespace:
        raise HelloRefused(
            "PERMISSION_DENIED", "namespace_mismatch", "the hello's namespace is not its identity's"
        )
    if len(hello.instance) > MAX_INSTANCE_LENGTH:
        raise HelloRefused(
            "INVALID_ARGUMENT", "bad_hello", f"instance: at most {MAX_INSTANCE_LENGTH} characters"
        )
    if len(hello.proxy_version) > MAX_PROXY_VERSION_LENGTH or not hello.proxy_version.isprintable():
        raise HelloRefused(
            "INVALID_ARGUMENT",
            "bad_hello",
            f"proxy_version: at most {MAX_PROXY_VERSION_LENGTH} printable characters",
        )
    serviceaccount = hello.labels.get("serviceaccount")
    if serviceaccount is not None and serviceaccount != claimed.serviceaccount:
        raise HelloRefused(
            "PERMISSION_DENIED", "serviceaccount_mismatch", "the hello's serviceaccount is not its identity's"
        )
    return Hello(
        ProxyKey(hello.identity, hello.pod),
        workload_of(hello.namespace, hello.pod, dict(hello.labels)),
        hello.instance,
        ProxyAbout(
            hello.proxy_version,
            hello.certificate_expiry.ToNanoseconds() / 1e9 if hello.HasField("certificate_expiry") else 0.0,
        ),
    )


@dataclass(slots=True)
class ValidReport:
    first: int
    last: int
    start: float
    end: float
    contribution: Contribution
    dropped_scopes: int
    #: Scopes dropped by this replica, by reason.
    rejected: dict[str, int]
    #: The report as received (serialized): the core keeps these bytes rather than the contribution while it
    #: may need it again (a superset report), and decodes them again only then.
    serialized: bytes = b""

    @staticmethod
    def contribution_of(serialized: bytes) -> Contribution:
        return validate_report(pb.IntervalReport.FromString(serialized)).contribution


def _scope_problem(scope: pb.ScopeStats) -> str | None:
    if scope.direction not in DIRECTIONS:
        return "bad_direction"
    for name, value in scope.labels.items():
        if name not in SCOPE_LABELS:
            return "unknown_label"
        if len(value) > MAX_LABEL_LENGTH:
            return "label_too_long"
    if (
        max(scope.requests, scope.tcp_opened, scope.tcp_closed, scope.bytes_read, scope.bytes_written)
        > MAX_COUNT
    ):
        return "count_overflow"
    for response in scope.responses:
        if response.count > MAX_COUNT or response.status_code > 999:
            return "count_overflow"
        buckets = response.latency_buckets
        if len(buckets) != HISTOGRAM_LENGTH:
            return "histogram_length"
        if max(buckets) > MAX_COUNT:
            return "count_overflow"
        if sum(buckets) != response.count:
            return "histogram_mismatch"
        latency = response.latency_sum_ms
        if math.isnan(latency) or math.isinf(latency) or latency < 0.0:
            return "bad_latency_sum"
    return None


def validate_report(report: pb.IntervalReport, serialized: bytes = b"") -> ValidReport:
    """The report as the core folds it; raises ReportRefused for report-level faults (module docstring)."""
    if report.sequence == 0 or report.first_sequence == 0 or report.first_sequence > report.sequence:
        raise ReportRefused(
            "bad_sequence",
            f"need 1 <= first_sequence <= sequence, got [{report.first_sequence}, {report.sequence}]",
        )
    if len(report.scopes) > MAX_SCOPES:
        raise ReportRefused("too_many_scopes", f"{len(report.scopes)} scopes, at most {MAX_SCOPES}")
    if report.dropped_scopes > MAX_COUNT:
        raise ReportRefused("count_overflow", "dropped_scopes is out of range")
    start = report.start.seconds + report.start.nanos / 1e9
    end = report.end.seconds + report.end.nanos / 1e9
    if end < start:
        raise ReportRefused("bad_interval", "end is before start")
    contribution: Contribution = {}
    rejected: dict[str, int] = {}
    for scope in report.scopes:
        if len(scope.responses) > MAX_RESPONSES_PER_SCOPE:
            raise ReportRefused(
                "too_many_responses",
                f"a scope has {len(scope.responses)} responses, at most {MAX_RESPONSES_PER_SCOPE}",
            )
        problem = _scope_problem(scope)
        key: ScopeKey = (scope.direction, tuple(sorted(scope.labels.items())))
        if problem is None and key in contribution:
            problem = "duplicate_scope"
        responses: dict[ResponseKey, ResponseCounts] = {}
        if problem is None:
            for response in scope.responses:
                rkey = (response.status_code, max(-1, response.grpc_status), response.success)
                if rkey in responses:
                    problem = "duplicate_response"
                    break
                responses[rkey] = ResponseCounts(
                    response.count, list(response.latency_buckets), response.latency_sum_ms
                )
        if problem is not None:
            rejected[problem] = rejected.get(problem, 0) + 1
            continue
        contribution[key] = ScopeCounts(
            scope.requests,
            scope.tcp_opened,
            scope.tcp_closed,
            scope.bytes_read,
            scope.bytes_written,
            responses,
        )
    return ValidReport(
        report.first_sequence,
        report.sequence,
        start,
        end,
        contribution,
        report.dropped_scopes,
        rejected,
        serialized,
    )
