"""After a lost stream, reports resume where telemetry says (regression test for the e2e partition fault,
tests/e2e/test_faults_during_rotation.py: a replica published reports whose acknowledgement the partition
swallowed; resent whole to another replica, they were counted twice, and consumers dropped a rollup).

The reports a lost stream left unacknowledged are kept as sent until the next stream's first
``ReportAck``: what it covers is forgotten, only the rest is resent (merged).
"""

from __future__ import annotations

from tether.proxy.metrics import MetricsRegistry, RouteHandle, TcpHandle, dst_labels
from tether.proxy.reportstate import Report, ReportState

WEB = dst_labels(namespace="shop", service="web", workload_kind="Deployment", workload_name="web")


def _handles(registry: MetricsRegistry) -> list[RouteHandle | TcpHandle]:
    return [*registry.route_handles(), *registry.tcp_handles()]


def _requests(report: Report) -> int:
    return sum(counts.requests for counts in report.scopes.values())


def _three_reports() -> tuple[ReportState, RouteHandle, MetricsRegistry]:
    """Reports 1, 2 and 3 sent, one request each, none acknowledged; then the stream is lost."""
    registry = MetricsRegistry()
    route = registry.route("outbound", "web.shop.svc.cluster.local:80", WEB, "true", "h2")
    state = ReportState(0.0, max_scopes=10)
    for now in (10.0, 20.0, 30.0):
        route.request()
        route.response(200, None, 1.0)
        state.take(_handles(registry))
        assert state.build(now) is not None
    state.stream_lost()
    return state, route, registry


def test_what_another_replica_published_is_forgotten_and_only_the_rest_resent() -> None:
    state, route, registry = _three_reports()
    assert state.resuming and state.carrying
    assert [r.sequence for r in state.in_flight] == [1, 2, 3], "kept as sent until told where to resume"
    route.request()
    route.response(200, None, 1.0)
    state.take(_handles(registry))  # counted while disconnected
    state.resume(2)  # the new stream's first message: reports up to 2 are in a published rollup
    assert not state.resuming and state.acknowledged == 2
    resent = state.build(40.0)
    assert resent is not None
    assert (resent.first_sequence, resent.sequence, resent.start) == (3, 4, 20.0)
    assert _requests(resent) == 2, "report 3 and what came after it, once each"


def test_everything_published_leaves_nothing_to_resend() -> None:
    state, _, _ = _three_reports()
    state.resume(3)
    assert not state.carrying and state.in_flight == []
    fresh = state.build(40.0)
    assert fresh is not None and (fresh.first_sequence, fresh.sequence, _requests(fresh)) == (4, 4, 0)


def test_nothing_published_resends_everything_merged() -> None:
    state, _, _ = _three_reports()
    state.resume(0)
    merged = state.build(40.0)
    assert merged is not None
    assert (merged.first_sequence, merged.sequence, _requests(merged)) == (1, 4, 3)


def test_a_stream_lost_again_before_resuming_keeps_waiting_for_where_to_resume() -> None:
    state, _, _ = _three_reports()
    state.stream_lost()
    assert state.resuming and [r.sequence for r in state.in_flight] == [1, 2, 3]
    state.resume(1)
    resent = state.build(40.0)
    assert resent is not None and (resent.first_sequence, resent.sequence, _requests(resent)) == (2, 4, 2)
