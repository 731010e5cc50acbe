"""The proxy's tap core: subscriptions, matching, rate limits over simulated time, header capture."""

from __future__ import annotations

import ipaddress
import itertools
import math
from collections.abc import Hashable, Iterator, Mapping

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tether.proxy.tap import (
    MAX_HEADER_VALUE,
    NO_GRPC_STATUS,
    HeaderPairs,
    TapObserver,
    Taps,
    TokenBucket,
    tcp_address,
)
from tether.shared.proto.telemetry.v1 import telemetry_pb2

# The monotonic clock starts at 100 s; the wall clock is 1.7e9 s ahead of it.
T0 = 100.0
WALL_OFFSET = 1_700_000_000.0
SECRET = "s3cr3t-value-never-captured"


def subscription(
    tap_id: str = "tap1",
    *,
    rate: float = 100.0,
    expires_in: float = 10.0,
    now: float = T0,
    active: bool = True,
    max_requests: int = 0,
    header_names: tuple[str, ...] = (),
    method: str = "",
    authority: str = "",
    path_prefix: str = "",
    destination_namespace: str = "",
    destination_service: str = "",
) -> telemetry_pb2.TapSubscription:
    wall = now + WALL_OFFSET + expires_in
    return telemetry_pb2.TapSubscription(
        tap_id=tap_id,
        active=active,
        match=telemetry_pb2.TapMatch(
            method=method,
            authority=authority,
            path_prefix=path_prefix,
            destination_namespace=destination_namespace,
            destination_service=destination_service,
        ),
        max_requests=max_requests,
        max_events_per_second=rate,
        expires_at=Timestamp(seconds=math.floor(wall), nanos=int((wall % 1) * 1e9)),
        header_names=list(header_names),
    )


def apply(taps: Taps, sub: telemetry_pb2.TapSubscription, now: float = T0) -> bool:
    return taps.apply(sub, now, now + WALL_OFFSET)


def start(
    taps: TapObserver,
    key: Hashable = 1,
    *,
    now: float = T0,
    method: str = "GET",
    authority: str = "web.default.svc.cluster.local:8080",
    path: str = "/api/items",
    headers: HeaderPairs = (),
    direction: str = "outbound",
    destination_labels: Mapping[str, str] | None = None,
) -> bool:
    return taps.request_started(
        key,
        direction,
        method,
        "http",
        authority,
        path,
        headers,
        ("10.0.0.1", 40000),
        ("10.0.0.2", 8080),
        {"namespace": "default", "deployment": "client"},
        destination_labels if destination_labels is not None else {"namespace": "default", "service": "web"},
        "client.default.serviceaccount.identity.cluster.local",
        "web.default.serviceaccount.identity.cluster.local",
        "true",
        now,
    )


def phases(events: list[telemetry_pb2.TapEvent]) -> list[str]:
    return [event.WhichOneof("phase") or "" for event in events]


# --- no tap: nothing per request ----------------------------------------------------------------------------


class Exploding(Mapping[str, str]):
    """A mapping (and header list) the data path must not even look at when no tap is active."""

    def __getitem__(self, key: str) -> str:
        raise AssertionError("looked at the request with no tap active")

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("looked at the request with no tap active")

    def __len__(self) -> int:
        raise AssertionError("looked at the request with no tap active")


class ExplodingHeaders:
    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        raise AssertionError("looked at the headers with no tap active")


def test_no_tap_keeps_nothing_and_looks_at_nothing() -> None:
    taps = Taps()
    for key in range(1000):
        assert not taps.request_started(
            key, "outbound", "GET", "http", "a", "/", ExplodingHeaders(), None, None,
            Exploding(), Exploding(), "", "", "", T0 + key,
        )  # fmt: skip
        taps.response_started(key, 200, T0 + key)
        taps.finished(key, 0, None, 10, T0 + key)
    assert taps.streams_tracked == 0
    assert taps.outbox_size == 0
    assert taps.drain() == []
    assert (taps.requests_captured, taps.events_captured, taps.rate_limited) == (0, 0, 0)
    assert taps.taps_active == 0


def test_a_request_no_tap_matches_keeps_nothing() -> None:
    taps = Taps()
    assert apply(taps, subscription(method="POST"))
    for key in range(100):
        assert not start(taps, key, method="GET")
    assert taps.streams_tracked == 0
    assert taps.outbox_size == 0


# --- the three phases ---------------------------------------------------------------------------------------


def test_captured_request_reports_three_phases() -> None:
    taps = Taps()
    assert apply(taps, subscription())
    assert taps.taps_active == 1
    assert start(taps, "s1", now=T0 + 1.0)
    taps.response_started("s1", 200, T0 + 1.25)
    taps.finished("s1", 0, None, 1234, T0 + 1.5)
    events = taps.drain()
    assert phases(events) == ["request_init", "response_init", "response_end"]
    init, response, end = events
    assert {event.tap_id for event in events} == {"tap1"}
    assert len({event.stream_id for event in events}) == 1
    assert init.request_init == telemetry_pb2.TapEvent.RequestInit(
        method="GET", scheme="http", authority="web.default.svc.cluster.local:8080", path="/api/items"
    )
    assert response.response_init.status_code == 200
    assert response.response_init.since_request_init_us == 250_000
    assert end.response_end.grpc_status == 0
    assert end.response_end.since_request_init_us == 500_000
    assert end.response_end.response_bytes == 1234
    assert end.response_end.reset_error_code == 0
    for event in events:
        assert event.direction == telemetry_pb2.DIRECTION_OUTBOUND
        assert dict(event.source_labels) == {"namespace": "default", "deployment": "client"}
        assert dict(event.destination_labels) == {"namespace": "default", "service": "web"}
        assert event.source_identity == "client.default.serviceaccount.identity.cluster.local"
        assert event.destination_identity == "web.default.serviceaccount.identity.cluster.local"
        assert event.tls == "true"
        assert event.source.ip.ipv4 == int(ipaddress.IPv4Address("10.0.0.1"))
        assert event.source.port == 40000
        assert event.destination.port == 8080
    # `at` is the wall clock: the monotonic time plus the offset learnt when the subscription was applied.
    assert init.at.seconds == math.floor(T0 + 1.0 + WALL_OFFSET)
    assert end.at.ToNanoseconds() == pytest.approx((T0 + 1.5 + WALL_OFFSET) * 1e9, abs=1e3)
    assert taps.streams_tracked == 0
    assert (taps.requests_captured, taps.events_captured) == (1, 3)


def test_reset_and_missing_grpc_status() -> None:
    taps = Taps()
    apply(taps, subscription())
    assert start(taps, "s", direction="inbound")
    taps.finished("s", None, 8, 0, T0 + 0.1)
    init, end = taps.drain()
    assert init.direction == telemetry_pb2.DIRECTION_INBOUND
    assert end.response_end.grpc_status == NO_GRPC_STATUS
    assert end.response_end.reset_error_code == 8


def test_each_stream_gets_its_own_stream_id() -> None:
    taps = Taps()
    apply(taps, subscription())
    assert start(taps, "a", now=T0)
    assert start(taps, "b", now=T0 + 0.1)
    taps.finished("b", 0, None, 0, T0 + 0.2)
    taps.finished("a", 0, None, 0, T0 + 0.2)
    a_init, b_init, b_end, a_end = taps.drain()
    assert a_init.stream_id == a_end.stream_id != b_init.stream_id == b_end.stream_id


def test_addresses() -> None:
    v6 = tcp_address(("2001:db8::1", 443))
    assert v6 is not None
    assert v6.ip.ipv6 == ipaddress.IPv6Address("2001:db8::1").packed
    assert v6.port == 443
    assert tcp_address(("not-an-ip", 80)) is None
    assert tcp_address(("10.0.0.1", 0)) is None
    assert tcp_address(None) is None


# --- matching -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "request_fields", "captured"),
    [
        ({"method": "GET"}, {"method": "GET"}, True),
        ({"method": "get"}, {"method": "GET"}, True),
        ({"method": "POST"}, {"method": "GET"}, False),
        ({"authority": "WEB.default.svc.cluster.local:8080"}, {}, True),
        ({"authority": "web.default.svc.cluster.local"}, {}, False),
        ({"path_prefix": "/api/"}, {"path": "/api/items"}, True),
        ({"path_prefix": "/api/"}, {"path": "/apix"}, False),
        ({"destination_namespace": "default"}, {}, True),
        ({"destination_namespace": "other"}, {}, False),
        ({"destination_service": "web"}, {}, True),
        ({"destination_service": "web"}, {"destination_labels": {"namespace": "default"}}, False),
        ({"method": "GET", "path_prefix": "/api", "destination_service": "web"}, {}, True),
        ({"method": "GET", "path_prefix": "/admin", "destination_service": "web"}, {}, False),
    ],
)
def test_matching(match: dict[str, str], request_fields: dict[str, object], captured: bool) -> None:
    taps = Taps()
    apply(taps, subscription(**match))  # type: ignore[arg-type]
    assert start(taps, **request_fields) is captured  # type: ignore[arg-type]
    assert taps.streams_tracked == int(captured)


def test_several_taps_capture_one_request_each_with_its_own_headers() -> None:
    taps = Taps()
    apply(taps, subscription("a", header_names=("x-a",)))
    apply(taps, subscription("b", header_names=("x-b",), method="GET"))
    apply(taps, subscription("c", method="POST"))
    headers = [(b"x-a", b"1"), (b"x-b", b"2")]
    assert start(taps, "s", headers=headers)
    taps.finished("s", 0, None, 0, T0)
    events = taps.drain()
    assert sorted((e.tap_id, e.WhichOneof("phase")) for e in events) == [
        ("a", "request_init"),
        ("a", "response_end"),
        ("b", "request_init"),
        ("b", "response_end"),
    ]
    by_tap = {e.tap_id: dict(e.headers) for e in events if e.HasField("request_init")}
    assert by_tap == {"a": {"x-a": "1"}, "b": {"x-b": "2"}}
    assert taps.requests_captured == 1


# --- rate limits over simulated time ------------------------------------------------------------------------


def run_requests(taps: Taps, start_at: float, duration: float, interval: float) -> list[float]:
    """Requests every ``interval`` seconds; returns the times of the captured ones."""
    captured = []
    steps = round(duration / interval)
    for step in range(steps):
        now = start_at + step * interval
        if start(taps, step, now=now):
            captured.append(now)
            taps.finished(step, 0, None, 0, now)
    return captured


def assert_never_more_than(times: list[float], rate: float, windows: tuple[float, ...]) -> None:
    """In any window of each length ``T``, at most ``max(1, rate) + rate * T`` captures."""
    burst = max(1.0, rate)
    for length in windows:
        j = 0
        for i, t in enumerate(times):
            while times[j] < t - length:
                j += 1
            assert i - j + 1 <= burst + rate * length + 1e-9, (length, t)


@pytest.mark.parametrize("rate", [1.0, 5.0, 37.5, 200.0])
def test_rate_limit_never_exceeds_the_share(rate: float) -> None:
    taps = Taps()
    apply(taps, subscription(rate=rate, expires_in=30.0))
    times = run_requests(taps, T0, duration=20.0, interval=0.001)
    assert len(times) <= max(1.0, rate) + rate * 20.0
    # ... and it is not starved either: all but the first second's burst worth are captured.
    assert len(times) >= rate * 20.0 - 1
    assert_never_more_than(times, rate, (0.1, 1.0, 5.0))
    assert taps.rate_limited == 20_000 - len(times)


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.1])
def test_fractional_rate_one_event_per_period_never_a_burst(rate: float) -> None:
    taps = Taps()
    apply(taps, subscription(rate=rate, expires_in=29.0))
    times = run_requests(taps, T0, duration=120.0, interval=0.05)
    # The first is captured at once, then one per 1/rate seconds, never two closer together.
    assert times[0] == T0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 1 / rate - 1e-6 for gap in gaps), gaps
    assert_never_more_than(times, rate, (1.0, 4.0, 10.0, 60.0))


def test_fractional_rate_long_run_average() -> None:
    taps = Taps(max_lease=1e9)
    apply(taps, subscription(rate=0.25, expires_in=10_000.0))
    times = run_requests(taps, T0, duration=400.0, interval=0.1)
    # 0.25/s for 400 s: 100 captures, plus the one the bucket starts with.
    assert 100 <= len(times) <= 101


def test_token_bucket_burst_is_one_below_rate_one() -> None:
    bucket = TokenBucket(0.25, 0.0)
    assert bucket.burst == 1.0
    assert bucket.take(0.0)
    assert not bucket.take(3.99)
    assert bucket.take(4.0)
    # An idle hour earns no more than one token.
    assert bucket.take(3604.0)
    assert not bucket.take(3604.0)


def test_renewal_changes_the_rate_without_refilling_the_bucket() -> None:
    taps = Taps()
    apply(taps, subscription(rate=1.0))
    assert start(taps, 1, now=T0)
    assert not start(taps, 2, now=T0 + 0.5)
    # Renewed with a quarter of the rate: the half token earned so far is kept, the rest comes at 0.25/s.
    apply(taps, subscription(rate=0.25, now=T0 + 0.5), now=T0 + 0.5)
    assert not start(taps, 3, now=T0 + 2.0)
    assert start(taps, 4, now=T0 + 2.5)


# --- subscriptions: renew, stop, expire, max_requests -------------------------------------------------------


def test_renewal_with_the_same_id_replaces_the_match() -> None:
    taps = Taps()
    apply(taps, subscription(method="GET"))
    assert start(taps, 1, method="GET")
    apply(taps, subscription(method="POST"))
    assert taps.tap_ids == {"tap1"}
    assert not start(taps, 2, method="GET", now=T0 + 1)
    assert start(taps, 3, method="POST", now=T0 + 1)


def test_stop_ends_capture_and_the_later_phases_of_its_streams() -> None:
    taps = Taps()
    apply(taps, subscription())
    assert start(taps, "s")
    taps.drain()
    assert apply(taps, telemetry_pb2.TapSubscription(tap_id="tap1", active=False))
    assert taps.taps_active == 0
    assert taps.streams_tracked == 0
    taps.response_started("s", 200, T0)
    taps.finished("s", 0, None, 0, T0)
    assert not start(taps, "t")
    assert taps.drain() == []


def test_stop_of_one_tap_keeps_the_other_taps_phases() -> None:
    taps = Taps()
    apply(taps, subscription("a"))
    apply(taps, subscription("b"))
    assert start(taps, "s")
    taps.drain()
    apply(taps, telemetry_pb2.TapSubscription(tap_id="a", active=False))
    taps.finished("s", 0, None, 0, T0)
    assert [event.tap_id for event in taps.drain()] == ["b"]


def test_expires_at_expires_at() -> None:
    taps = Taps()
    apply(taps, subscription(expires_in=5.0))
    assert start(taps, 1, now=T0 + 4.9)
    taps.finished(1, 0, None, 0, T0 + 4.9)
    # The data path itself notices the expiry: no timer needed.
    assert not start(taps, 2, now=T0 + 5.0)
    assert taps.taps_active == 0
    assert taps.tap_ids == frozenset()


def test_expire_called_by_a_timer() -> None:
    taps = Taps()
    apply(taps, subscription(expires_in=5.0))
    assert start(taps, "in-flight", now=T0 + 1)
    taps.expire(T0 + 4.99)
    assert taps.taps_active == 1
    taps.expire(T0 + 5.0)
    assert taps.taps_active == 0
    assert taps.streams_tracked == 0


def test_renewal_pushes_the_expiry_back() -> None:
    taps = Taps()
    apply(taps, subscription(expires_in=7.0))
    for renewal in range(1, 20):
        now = T0 + 2.0 * renewal
        apply(taps, subscription(expires_in=7.0, now=now), now=now)
        assert start(taps, renewal, now=now + 1.0)
        taps.finished(renewal, 0, None, 0, now + 1.0)
    # Renewals stop at T0 + 38: the tap runs until T0 + 45 and not a moment longer.
    assert start(taps, "last", now=T0 + 44.9)
    assert not start(taps, "after", now=T0 + 45.0)


def test_a_far_expiry_is_capped_by_the_lease() -> None:
    taps = Taps(max_lease=30.0)
    apply(taps, subscription(expires_in=86_400.0))
    assert start(taps, 1, now=T0 + 29.9)
    assert not start(taps, 2, now=T0 + 30.0)


def test_an_already_expired_subscription_stops_the_tap() -> None:
    taps = Taps()
    apply(taps, subscription())
    assert apply(taps, subscription(expires_in=-1.0))
    assert taps.tap_ids == frozenset()


def test_the_expiry_is_read_against_the_wall_clock() -> None:
    taps = Taps()
    # The same absolute expiry, applied when the proxy's wall clock says it is 3 s later.
    sub = subscription(expires_in=5.0)
    taps.apply(sub, T0, T0 + WALL_OFFSET + 3.0)
    assert start(taps, 1, now=T0 + 1.9)
    assert not start(taps, 2, now=T0 + 2.0)


def test_max_requests_stops_capture_but_finishes_the_streams_in_flight() -> None:
    taps = Taps()
    apply(taps, subscription(max_requests=2))
    assert start(taps, 1, now=T0)
    assert start(taps, 2, now=T0 + 0.1)
    assert taps.taps_active == 0
    assert not start(taps, 3, now=T0 + 1)
    taps.finished(1, 0, None, 0, T0 + 1)
    taps.finished(2, 0, None, 0, T0 + 1)
    assert phases(taps.drain()) == ["request_init", "request_init", "response_end", "response_end"]
    # A renewal (telemetry re-sends every 2 s) does not start the count again.
    apply(taps, subscription(max_requests=2, now=T0 + 2), now=T0 + 2)
    assert taps.taps_active == 0
    assert not start(taps, 4, now=T0 + 2)


# --- refusals and bounds ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        subscription(rate=0.0),
        subscription(rate=-1.0),
        subscription(rate=math.nan),
        subscription(rate=math.inf),
        subscription(tap_id=""),
        subscription(tap_id="x" * 254),
        telemetry_pb2.TapSubscription(tap_id="t", active=True, max_events_per_second=1.0),
    ],
)
def test_invalid_subscriptions_are_refused(bad: telemetry_pb2.TapSubscription) -> None:
    taps = Taps()
    assert not apply(taps, bad)
    assert taps.subscriptions_refused == 1
    assert taps.taps_active == 0


def test_too_many_taps() -> None:
    taps = Taps(max_taps=2)
    assert apply(taps, subscription("a"))
    assert apply(taps, subscription("b"))
    assert not apply(taps, subscription("c"))
    assert apply(taps, subscription("a", rate=3.0))  # a renewal still works
    assert taps.taps_active == 2


def test_outbox_is_bounded_and_notifies_once_per_fill() -> None:
    woken: list[int] = []
    taps = Taps(max_outbox=3, notify=lambda: woken.append(1))
    apply(taps, subscription())
    for key in range(5):
        assert start(taps, key, now=T0 + key * 0.1)
    assert taps.outbox_size == 3
    assert taps.outbox_dropped == 2
    assert len(woken) == 1
    assert len(taps.drain(2)) == 2
    assert len(taps.drain()) == 1
    assert start(taps, 99, now=T0 + 1)
    assert len(woken) == 2


def test_captured_streams_are_bounded() -> None:
    taps = Taps(max_streams=10)
    apply(taps, subscription(rate=1000.0))
    for key in range(25):
        assert start(taps, key, now=T0 + key * 0.01)
    assert taps.streams_tracked == 10
    assert taps.streams_dropped == 15
    taps.drain()
    taps.finished(0, 0, None, 0, T0)  # forgotten: no event
    taps.finished(24, 0, None, 0, T0)
    assert phases(taps.drain()) == ["response_end"]


def test_reset_forgets_everything() -> None:
    taps = Taps()
    apply(taps, subscription())
    start(taps, 1)
    taps.reset()
    assert (taps.taps_active, taps.streams_tracked, taps.outbox_size) == (0, 0, 0)
    assert not start(taps, 2)


# --- headers ------------------------------------------------------------------------------------------------

REQUEST_HEADERS = [
    (b":method", b"GET"),
    (b":path", b"/api/items"),
    (b"authorization", f"Bearer {SECRET}-auth".encode()),
    (b"Cookie", f"session={SECRET}-cookie".encode()),
    (b"set-cookie", f"{SECRET}-set-cookie".encode()),
    (b"Proxy-Authorization", f"Basic {SECRET}-proxy".encode()),
    (b"x-api-key", f"{SECRET}-api-key".encode()),
    (b"x-request-id", b"req-42"),
    (b"user-agent", b"curl/8.0"),
    (b"x-not-requested", f"{SECRET}-other".encode()),
    (b"accept", b"text/html"),
    (b"Accept", b"application/json"),
]


def test_sensitive_headers_are_never_captured_even_when_asked_for() -> None:
    taps = Taps(sensitive_headers=["X-API-Key"])
    asked = (
        "authorization",
        "COOKIE",
        "Set-Cookie",
        "proxy-authorization",
        "x-api-key",
        "x-request-id",
        ":path",
    )
    apply(taps, subscription(header_names=asked))
    assert start(taps, "s", headers=REQUEST_HEADERS)
    taps.response_started("s", 200, T0)
    taps.finished("s", 0, None, 0, T0)
    events = taps.drain()
    assert dict(events[0].headers) == {"x-request-id": "req-42"}
    for event in events:
        assert SECRET.encode() not in event.SerializeToString()
        assert SECRET not in str(event)


def test_only_requested_headers_are_captured() -> None:
    taps = Taps()
    apply(taps, subscription(header_names=("user-agent", "accept", "x-absent")))
    assert start(taps, "s", headers=REQUEST_HEADERS)
    taps.finished("s", 0, None, 0, T0)
    init, end = taps.drain()
    assert dict(init.headers) == {"user-agent": "curl/8.0", "accept": "text/html, application/json"}
    assert dict(end.headers) == {}
    for event in (init, end):
        assert SECRET.encode() not in event.SerializeToString()
        assert b"req-42" not in event.SerializeToString()


def test_no_header_values_without_header_names() -> None:
    taps = Taps()
    apply(taps, subscription())
    assert start(taps, "s", headers=REQUEST_HEADERS)
    (init,) = taps.drain()
    assert dict(init.headers) == {}
    assert SECRET.encode() not in init.SerializeToString()
    assert b"req-42" not in init.SerializeToString()


def test_text_headers_and_long_values() -> None:
    taps = Taps()
    apply(taps, subscription(header_names=("X-Long",)))
    assert start(taps, "s", headers=[("x-long", "v" * 5000), ("authorization", SECRET)])
    (init,) = taps.drain()
    assert init.headers["x-long"] == "v" * MAX_HEADER_VALUE


def test_a_reused_stream_key_does_not_report_the_old_streams_phases() -> None:
    taps = Taps()
    apply(taps, subscription(method="GET"))
    assert start(taps, "k", method="GET")
    taps.drain()
    # The same key for a new request that no tap captures (the old one never finished).
    assert not start(taps, "k", method="POST", now=T0 + 1)
    taps.response_started("k", 200, T0 + 1)
    taps.finished("k", 0, None, 0, T0 + 1)
    assert taps.drain() == []
    assert taps.streams_tracked == 0
