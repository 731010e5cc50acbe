"""The proxy metrics registry: exact Prometheus text, bounds on label sets, and idle expiry."""

from __future__ import annotations

import pytest

from tether.proxy.metrics import (
    MetricsRegistry,
    classify,
    dst_labels,
    escape_label_value,
)
from tether.shared.telemetry_scopes import LATENCY_BUCKETS_MS

WEB = dst_labels(
    namespace="shop", service="web", pod="web-7f9c-abcde", workload_kind="Deployment", workload_name="web"
)
WEB_LABELS = (
    'direction="outbound",authority="web.shop.svc.cluster.local:80",dst_namespace="shop",'
    'dst_service="web",dst_pod="web-7f9c-abcde",dst_deployment="web",tls="true"'
)


def family(text: str, name: str) -> list[str]:
    """The sample lines of one metric family (its name followed by `{`, `_bucket{`, ...)."""
    return [
        line
        for line in text.splitlines()
        if not line.startswith("#")
        and line.split("{", 1)[0] in (name, f"{name}_bucket", f"{name}_sum", f"{name}_count")
    ]


def test_dst_labels_follow_linkerd_names_and_skip_empty_values() -> None:
    assert WEB == (
        ("dst_namespace", "shop"),
        ("dst_service", "web"),
        ("dst_pod", "web-7f9c-abcde"),
        ("dst_deployment", "web"),
    )
    assert dst_labels(namespace="shop", workload_kind="StatefulSet", workload_name="db") == (
        ("dst_namespace", "shop"),
        ("dst_statefulset", "db"),
    )


@pytest.mark.parametrize(
    ("status", "grpc", "expected"),
    [
        (200, None, "success"),
        (404, None, "success"),
        (499, None, "success"),
        (500, None, "failure"),
        (503, None, "failure"),
        (200, 0, "success"),
        (200, 2, "failure"),
        (200, 14, "failure"),
    ],
)
def test_classification(status: int, grpc: int | None, expected: str) -> None:
    assert classify(status, grpc) == expected


def test_exact_counts_by_status_and_classification() -> None:
    registry = MetricsRegistry()
    route = registry.route("outbound", "web.shop.svc.cluster.local:80", WEB, tls="true")
    for _ in range(7):
        route.request()
    for _ in range(4):
        route.response(200, None, 3.0)
    route.response(503, None, 12.0)
    route.response(200, 14, 1.0)
    route.failed("stream reset")
    text = registry.render(now=0.0)
    assert family(text, "request_total") == [f"request_total{{{WEB_LABELS}}} 7"]
    assert family(text, "response_total") == [
        f'response_total{{{WEB_LABELS},status_code="200",classification="success"}} 4',
        f'response_total{{{WEB_LABELS},status_code="200",grpc_status="14",classification="failure"}} 1',
        f'response_total{{{WEB_LABELS},status_code="503",classification="failure"}} 1',
        f'response_total{{{WEB_LABELS},classification="failure",error="stream reset"}} 1',
    ]


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count() -> None:
    registry = MetricsRegistry()
    route = registry.route("inbound", "api:8080")
    # Boundaries are inclusive (le): 1 -> le=1, 1.5 -> le=2, 50000 -> le=50000, beyond -> +Inf only.
    for latency in (0.2, 1, 1.5, 7, 50000, 60000):
        route.response(200, None, latency)
    lines = family(registry.render(now=0.0), "response_latency_ms")
    labels = 'direction="inbound",authority="api:8080",status_code="200"'
    expected_cumulative = {1: 2, 2: 3, 3: 3, 4: 3, 5: 3, 10: 4, 40000: 4, 50000: 5}
    buckets = {line.split('le="')[1].split('"')[0]: int(line.rsplit(" ", 1)[1]) for line in lines[:-2]}
    assert list(buckets) == [str(b) for b in LATENCY_BUCKETS_MS] + ["+Inf"]
    for bound, count in expected_cumulative.items():
        assert buckets[str(bound)] == count, bound
    assert buckets["+Inf"] == 6
    assert lines[0] == f'response_latency_ms_bucket{{{labels},le="1"}} 2'
    assert lines[-3] == f'response_latency_ms_bucket{{{labels},le="+Inf"}} 6'
    assert lines[-2] == f"response_latency_ms_sum{{{labels}}} 110009.7"
    assert lines[-1] == f"response_latency_ms_count{{{labels}}} 6"


def test_full_render_of_one_route_and_one_connection() -> None:
    registry = MetricsRegistry()
    route = registry.route("outbound", "web:80", (("dst_namespace", "shop"),), tls="true")
    route.request()
    route.response(200, None, 4.5)
    conn = registry.tcp("outbound", "dst", (("dst_namespace", "shop"),), tls="true")
    conn.opened()
    conn.read(100)
    conn.wrote(40)
    conn.opened()
    conn.closed()
    conn.opened()
    conn.closed("ECONNRESET")
    route_labels = 'direction="outbound",authority="web:80",dst_namespace="shop",tls="true"'
    tcp_labels = 'direction="outbound",peer="dst",dst_namespace="shop",tls="true"'
    cumulative = [0, 0, 0, 0, 1] + [1] * (len(LATENCY_BUCKETS_MS) - 5) + [1]
    les = [str(b) for b in LATENCY_BUCKETS_MS] + ["+Inf"]
    expected = "\n".join(
        [
            "# HELP request_total Total count of HTTP requests.",
            "# TYPE request_total counter",
            f"request_total{{{route_labels}}} 1",
            "# HELP response_total Total count of HTTP responses.",
            "# TYPE response_total counter",
            f'response_total{{{route_labels},status_code="200",classification="success"}} 1',
            "# HELP response_latency_ms Elapsed times between a request's headers and its response's first"
            " byte.",
            "# TYPE response_latency_ms histogram",
            *(
                f'response_latency_ms_bucket{{{route_labels},status_code="200",le="{le}"}} {n}'
                for le, n in zip(les, cumulative, strict=True)
            ),
            f'response_latency_ms_sum{{{route_labels},status_code="200"}} 4.5',
            f'response_latency_ms_count{{{route_labels},status_code="200"}} 1',
            "# HELP tcp_open_total Total count of opened connections.",
            "# TYPE tcp_open_total counter",
            f"tcp_open_total{{{tcp_labels}}} 3",
            "# HELP tcp_open_connections Number of currently-open connections.",
            "# TYPE tcp_open_connections gauge",
            f"tcp_open_connections{{{tcp_labels}}} 1",
            "# HELP tcp_read_bytes_total Total count of bytes read from peers.",
            "# TYPE tcp_read_bytes_total counter",
            f"tcp_read_bytes_total{{{tcp_labels}}} 100",
            "# HELP tcp_write_bytes_total Total count of bytes written to peers.",
            "# TYPE tcp_write_bytes_total counter",
            f"tcp_write_bytes_total{{{tcp_labels}}} 40",
            "# HELP tcp_close_total Total count of closed connections.",
            "# TYPE tcp_close_total counter",
            f'tcp_close_total{{{tcp_labels},errno=""}} 1',
            f'tcp_close_total{{{tcp_labels},errno="ECONNRESET"}} 1',
            "# HELP proxy_metrics_overflow_total Lookups of new label sets beyond the series cap.",
            "# TYPE proxy_metrics_overflow_total counter",
            'proxy_metrics_overflow_total{family="route"} 0',
            'proxy_metrics_overflow_total{family="tcp"} 0',
        ]
    )
    assert registry.render(now=0.0) == expected + "\n"


def test_label_values_are_escaped() -> None:
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    registry = MetricsRegistry()
    registry.route("inbound", 'evil"host\\\n:80').request()
    assert family(registry.render(now=0.0), "request_total") == [
        'request_total{direction="inbound",authority="evil\\"host\\\\\\n:80"} 1'
    ]


@pytest.mark.parametrize(
    "labels",
    [(("bad-name", "x"),), (("tls", "x"),), (("status_code", "1"),), (("dst_pod", "a"), ("dst_pod", "b"))],
)
def test_invalid_or_clashing_label_names_are_rejected(labels: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(ValueError, match="label"):
        MetricsRegistry().route("inbound", "a:80", labels)


def test_same_label_set_returns_the_same_handle() -> None:
    registry = MetricsRegistry()
    assert registry.route("outbound", "a:80", WEB, "true") is registry.route("outbound", "a:80", WEB, "true")
    assert registry.route("outbound", "a:80", WEB, "true") is not registry.route(
        "inbound", "a:80", WEB, "true"
    )
    assert registry.tcp("outbound", "dst", WEB) is registry.tcp("outbound", "dst", WEB)


def test_label_sets_beyond_the_cap_share_a_catch_all_and_are_counted() -> None:
    registry = MetricsRegistry(max_series=2)
    for i in range(5):
        registry.route("outbound", f"svc-{i}:80").request()
        registry.tcp("outbound", "dst", (("dst_pod", f"p{i}"),)).opened()
    text = registry.render(now=0.0)
    assert family(text, "request_total") == [
        'request_total{direction="outbound",authority="svc-0:80"} 1',
        'request_total{direction="outbound",authority="svc-1:80"} 1',
        'request_total{direction="outbound",authority="overflow"} 3',
    ]
    assert 'tcp_open_total{direction="outbound",peer="dst",authority="overflow"} 3' in text
    assert 'proxy_metrics_overflow_total{family="route"} 3' in text
    assert 'proxy_metrics_overflow_total{family="tcp"} 3' in text
    assert registry.series_count == 4


def test_idle_series_expire_and_busy_ones_do_not() -> None:
    registry = MetricsRegistry(idle_timeout=60.0)
    idle = registry.route("outbound", "idle:80")
    idle.request()
    idle.response(200, None, 1.0)
    in_flight = registry.route("outbound", "slow:80")
    in_flight.request()
    open_conn = registry.tcp("inbound", "src")
    open_conn.opened()
    active = registry.route("outbound", "active:80")

    assert registry.expire(now=100.0) == 0  # first sighting starts every idle clock
    active.request()
    active.response(200, None, 1.0)
    assert registry.expire(now=159.0) == 0
    active.request()
    active.response(200, None, 1.0)
    assert registry.expire(now=160.0) == 1  # idle:80 unchanged for 60 s
    assert idle.expired and not active.expired
    text = registry.render(now=161.0)
    assert "idle:80" not in text
    assert "slow:80" in text and "active:80" in text
    assert registry.expire(now=10_000.0) == 1  # active:80 went quiet; the busy series stay
    assert not in_flight.expired and not open_conn.expired

    in_flight.response(200, None, 5.0)
    open_conn.closed()
    assert registry.expire(now=10_001.0) == 0  # activity restarts their idle clocks
    assert registry.expire(now=10_061.0) == 2
    assert registry.series_count == 0

    again = registry.route("outbound", "idle:80")
    assert again is not idle and not again.expired and again.requests == 0


def test_collectors_are_appended_to_the_scrape() -> None:
    registry = MetricsRegistry()
    registry.add_collector(lambda: "# TYPE extra gauge\nextra 1\n")
    assert registry.render(now=0.0).endswith("\nextra 1\n")
