"""Report deltas from the metrics registry: exact, merged until acknowledged, reset-proof and bounded."""

from __future__ import annotations

from tether.proxy.metrics import MetricsRegistry, RouteHandle, TcpHandle, dst_labels
from tether.proxy.reportstate import ReportState, ScopeCounts, ScopeKey, cumulative
from tether.shared.proto.telemetry.v1 import telemetry_pb2
from tether.shared.telemetry_scopes import HISTOGRAM_LENGTH, LATENCY_BUCKETS_MS, MAX_RESPONSES_PER_SCOPE

WEB = dst_labels(namespace="shop", service="web", workload_kind="Deployment", workload_name="web")
SERVER = (("server_id", "web.shop.serviceaccount.identity.cluster.local"),)
WEB_SCOPE: ScopeKey = (
    "outbound",
    (
        ("authority", "web.shop.svc.cluster.local:80"),
        ("dst_kind", "deployment"),
        ("dst_name", "web"),
        ("dst_namespace", "shop"),
        ("dst_service", "web"),
        ("protocol", "h2"),
        ("server_id", "web.shop.serviceaccount.identity.cluster.local"),
        ("tls", "true"),
    ),
)


def handles(registry: MetricsRegistry) -> list[RouteHandle | TcpHandle]:
    return [*registry.route_handles(), *registry.tcp_handles()]


def web_route(registry: MetricsRegistry) -> RouteHandle:
    return registry.route("outbound", "web.shop.svc.cluster.local:80", (*WEB, *SERVER), "true", "h2")


def answered(route: RouteHandle) -> None:
    route.request()
    route.response(200, None, 1.0)


def bucket(latency_ms: float) -> int:
    return next(
        (i for i, bound in enumerate(LATENCY_BUCKETS_MS) if latency_ms <= bound), len(LATENCY_BUCKETS_MS)
    )


def test_a_report_carries_exact_deltas_per_scope_and_the_next_one_only_what_is_new() -> None:
    registry = MetricsRegistry()
    route = web_route(registry)
    for _ in range(5):
        route.request()
    for _ in range(3):
        route.response(200, 0, 4.0)
    route.response(200, 14, 250.0)
    route.failed("CANCEL", 7.0)
    state = ReportState(100.0, max_scopes=10)
    state.take(handles(registry))
    report = state.build(110.0)
    assert report is not None
    assert (report.first_sequence, report.sequence, report.start, report.end) == (1, 1, 100.0, 110.0)
    scope = report.scopes[WEB_SCOPE]
    assert scope.requests == 5
    assert {key: r.count for key, r in scope.responses.items()} == {
        (200, 0, True): 3,
        (200, 14, False): 1,
        (0, -1, False): 1,
    }
    ok = scope.responses[(200, 0, True)]
    assert ok.buckets[bucket(4.0)] == 3 and sum(ok.buckets) == 3 and ok.sum_ms == 12.0
    assert scope.responses[(200, 14, False)].buckets[bucket(250.0)] == 1
    # No response: a failure, its latency the time until it failed (every histogram adds up to its count).
    assert scope.responses[(0, -1, False)].buckets[bucket(7.0)] == 1
    for proto in report.to_proto().scopes:
        assert all(sum(r.latency_buckets) == r.count for r in proto.responses)

    route.request()
    route.response(503, None, 1.5)
    state.take(handles(registry))
    second = state.build(120.0)
    assert second is not None and (second.first_sequence, second.sequence) == (2, 2)
    assert second.scopes[WEB_SCOPE].requests == 1
    assert {key: r.count for key, r in second.scopes[WEB_SCOPE].responses.items()} == {(503, -1, False): 1}
    # /metrics still shows the totals: the report view never resets the shared counters.
    assert cumulative(handles(registry))[WEB_SCOPE].requests == 6
    assert 'request_total{direction="outbound",authority="web.shop.svc.cluster.local:80"' in registry.render(
        0.0
    )


def test_scope_labels_are_the_allowed_ones_and_tcp_counts_where_the_peer_is_named() -> None:
    registry = MetricsRegistry()
    inbound = registry.route("inbound", "api:8080", (("client_id", "web.shop.sa"),), "true", "http/1.1")
    inbound.request()
    accepted = registry.tcp("inbound", "src", (("client_id", "web.shop.sa"),), "true")
    accepted.opened()
    accepted.read(100)
    accepted.wrote(40)
    accepted.closed("ECONNRESET")
    registry.tcp("inbound", "dst", (("no_tls_reason", "loopback"),), "no_identity").opened()  # the app's
    dialled = registry.tcp("outbound", "dst", (*WEB, *SERVER), "true")
    dialled.opened()
    dialled.wrote(7)
    registry.tcp("outbound", "src", (("no_tls_reason", "loopback"),), "no_identity").opened()  # the app's
    scopes = cumulative(handles(registry))
    assert set(scopes) == {
        (
            "inbound",
            (
                ("authority", "api:8080"),
                ("client_id", "web.shop.sa"),
                ("protocol", "http/1.1"),
                ("tls", "true"),
            ),
        ),
        ("inbound", (("client_id", "web.shop.sa"), ("tls", "true"))),
        ("outbound", tuple(pair for pair in WEB_SCOPE[1] if pair[0] not in ("authority", "protocol"))),
    }
    tcp = scopes[("inbound", (("client_id", "web.shop.sa"), ("tls", "true")))]
    assert (tcp.tcp_opened, tcp.tcp_closed, tcp.bytes_read, tcp.bytes_written) == (1, 1, 100, 40)
    message = ReportState(0.0, max_scopes=10)
    message.take(handles(registry))
    report = message.build(1.0)
    assert report is not None
    proto = telemetry_pb2.IntervalReport.FromString(report.to_proto().SerializeToString())
    assert {s.direction for s in proto.scopes} == {
        telemetry_pb2.DIRECTION_INBOUND,
        telemetry_pb2.DIRECTION_OUTBOUND,
    }
    assert all("peer" not in s.labels and "direction" not in s.labels for s in proto.scopes)


def test_unacknowledged_reports_merge_into_the_next_after_a_lost_stream() -> None:
    registry = MetricsRegistry()
    route = web_route(registry)
    state = ReportState(0.0, max_scopes=10)
    for now in (10.0, 20.0):
        route.request()
        route.response(200, None, 3.0)
        state.take(handles(registry))
        assert state.build(now) is not None
    # On one stream, reports do not overlap: each carries its own interval.
    assert [(r.first_sequence, r.sequence, r.scopes[WEB_SCOPE].requests) for r in state.in_flight] == [
        (1, 1, 1),
        (2, 2, 1),
    ]
    assert state.acknowledge(1) == 1
    state.stream_lost()  # report 2 was never acknowledged
    route.request()
    route.response(200, None, 3.0)
    state.take(handles(registry))
    assert state.carrying
    merged = state.build(30.0)
    assert merged is not None
    assert (merged.first_sequence, merged.sequence, merged.start, merged.end) == (2, 3, 10.0, 30.0)
    assert merged.scopes[WEB_SCOPE].requests == 2
    assert merged.scopes[WEB_SCOPE].responses[(200, -1, True)].count == 2
    assert state.acknowledge(3) == 1
    assert state.held_scopes == 0 and not state.carrying
    state.stream_lost()  # nothing left unacknowledged: nothing to carry
    state.take(handles(registry))
    empty = state.build(40.0)
    assert empty is not None and (empty.first_sequence, empty.sequence, empty.scopes) == (4, 4, {})
    # Every request was reported exactly once over the acknowledged reports 1 and [2, 3].
    assert 1 + merged.scopes[WEB_SCOPE].requests == route.requests


def test_a_series_that_expires_and_comes_back_is_neither_lost_nor_negative() -> None:
    registry = MetricsRegistry(idle_timeout=60.0)
    state = ReportState(0.0, max_scopes=10)
    route = web_route(registry)
    route.request()
    route.response(200, None, 1.0)
    state.take(handles(registry))
    route.request()
    route.response(200, None, 1.0)  # after the last take, before the series expires
    registry.expire(0.0)
    assert registry.expire(61.0) == 1 and route.expired
    back = web_route(registry)
    assert back is not route
    back.request()
    state.take(handles(registry))
    assert state.resets == 1
    total = ScopeCounts()
    for report in (state.build(1.0),):
        assert report is not None
        total.add(report.scopes[WEB_SCOPE])
    assert total.requests == 3
    assert total.responses[(200, -1, True)].count == 2
    # The overflow series behaves the same: when it expires and comes back it counts from zero.
    small = MetricsRegistry(max_series=1, idle_timeout=60.0)
    other = ReportState(0.0, max_scopes=10)
    for name in ("a:80", "b:80"):  # b goes to the overflow series
        answered(small.route("outbound", name))
    other.take(handles(small))
    small.expire(0.0)
    assert small.expire(61.0) == 2
    for name in ("c:80", "d:80"):  # d goes to a new overflow series
        answered(small.route("outbound", name))
    other.take(handles(small))
    report = other.build(2.0)
    assert report is not None
    counts = {dict(labels)["authority"]: s.requests for (_, labels), s in report.scopes.items()}
    assert counts == {"a:80": 1, "overflow": 2, "c:80": 1}
    assert other.resets == 1


def test_memory_is_bounded_and_what_is_dropped_is_counted() -> None:
    registry = MetricsRegistry()
    state = ReportState(0.0, max_scopes=2)
    for name in ("a:80", "b:80", "c:80"):
        registry.route("outbound", name).request()
    state.take(handles(registry))
    assert state.held_scopes == 2 and state.dropped_total == 1
    first = state.build(1.0)
    assert first is not None and first.dropped_scopes == 1 and len(first.scopes) == 2
    assert telemetry_pb2.IntervalReport.FromString(first.to_proto().SerializeToString()).dropped_scopes == 1
    # Unacknowledged reports count against the bound too; an acknowledgement makes room again.
    registry.route("outbound", "a:80").request()
    state.take(handles(registry))
    assert state.dropped_total == 2
    state.acknowledge(1)
    registry.route("outbound", "a:80").request()
    state.take(handles(registry))
    assert state.held_scopes == 1 and state.dropped_total == 2
    # Dropped counts are carried, like deltas, when their report is lost.
    second = state.build(2.0)
    assert second is not None and second.dropped_scopes == 1
    state.stream_lost()
    carried = state.build(3.0)
    assert carried is not None and carried.dropped_scopes == 1 and carried.first_sequence == 2


def test_reports_wait_while_too_many_are_unacknowledged() -> None:
    state = ReportState(0.0, max_scopes=10, max_in_flight=2)
    assert state.build(1.0) is not None and state.build(2.0) is not None
    assert state.build(3.0) is None
    state.acknowledge(2)
    report = state.build(4.0)
    assert report is not None and report.sequence == 3 and report.start == 2.0


def test_response_kinds_per_scope_are_bounded() -> None:
    registry = MetricsRegistry()
    route = registry.route("outbound", "a:80")
    for code in range(MAX_RESPONSES_PER_SCOPE + 3):
        route.response(200, code, 1.0)
    state = ReportState(0.0, max_scopes=10)
    state.take(handles(registry))
    report = state.build(1.0)
    assert report is not None
    (scope,) = report.scopes.values()
    assert len(scope.responses) == MAX_RESPONSES_PER_SCOPE and state.dropped_responses_total == 3
    assert all(
        len(r.latency_buckets) == HISTOGRAM_LENGTH for s in report.to_proto().scopes for r in s.responses
    )
