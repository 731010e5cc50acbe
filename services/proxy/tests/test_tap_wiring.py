"""Tap wired into a real in-process proxy: subscriptions applied through :class:`Reporting` (as the report
client does), HTTP/1.1 requests through both directions of one proxy (app -> outbound -> inbound -> app),
and the events that reach the report stream (a recording stand-in for the reporter)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import cast

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tether.proxy.config import ProxyConfig
from tether.proxy.proxy import Proxy
from tether.proxy.reporter import TelemetryReporter, new_instance, proxy_hello
from tether.proxy.reporting import Reporting
from tether.proxy.tap import NO_GRPC_STATUS
from tether.shared.config import IdentityClientConfig
from tether.shared.proto.telemetry.v1 import telemetry_pb2 as pb
from tether.shared.testing import eventually

HOST = "127.0.0.1"
BODY = b"hello, tap"
SECRET = "Bearer s3cr3t-never-captured"
DIRECTIONS = {"outbound": pb.DIRECTION_OUTBOUND, "inbound": pb.DIRECTION_INBOUND}


class FakeChannel:
    identity_mismatches = 0

    async def close(self) -> None:
        pass


class FakeReporter:
    """What :class:`Reporting` uses of the report client: callbacks in, tap events out."""

    def __init__(self) -> None:
        self.channel = FakeChannel()
        self.on_tap: object = None
        self.on_stream_lost: object = None
        self.sent: list[pb.TapEvent] = []
        self.tap_events_sent = 0
        self.connected = True
        self.flushed: float | None = None

    def send_tap_event(self, event: pb.TapEvent) -> bool:
        if not self.connected:
            return False
        self.sent.append(event)
        self.tap_events_sent += 1
        return True

    def render_metrics(self) -> str:
        return ""

    async def flush(self, timeout: float) -> bool:
        """The final report on shutdown: nothing is pending here."""
        self.flushed = timeout
        return True


async def _app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            status = b"404 Not Found" if b" /missing " in head else b"200 OK"
            writer.write(b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status, len(BODY), BODY))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class Rig:
    def __init__(self, proxy: Proxy, reporting: Reporting, reporter: FakeReporter) -> None:
        self.proxy = proxy
        self.reporting = reporting
        self.reporter = reporter

    async def get(self, path: str, method: str = "GET", authority: str = "web.test:80") -> bytes:
        reader, writer = await asyncio.open_connection(HOST, self.proxy.outbound_port)
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: {SECRET}\r\n"
            f"Cookie: c={SECRET}\r\nX-Secret: {SECRET}\r\nX-Trace: t-1\r\nX-Trace: t-2\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        response = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
        return response

    def subscribe(self, tap_id: str = "t1", *, expires_in: float = 10.0, **fields: object) -> None:
        wall = time.time() + expires_in
        match = {k: fields.pop(k) for k in ("method", "authority", "path_prefix") if k in fields}
        sub = pb.TapSubscription(
            tap_id=tap_id,
            active=bool(fields.pop("active", True)),
            match=pb.TapMatch(**match),  # type: ignore[arg-type]
            max_events_per_second=cast(float, fields.pop("rate", 1e6)),
            expires_at=Timestamp(seconds=math.floor(wall), nanos=int((wall % 1) * 1e9)),
            header_names=cast(list[str], fields.pop("header_names", [])),
        )
        assert not fields
        self.reporting.apply(sub)

    def metric(self, name: str) -> float:
        for line in self.proxy.render_metrics().splitlines():
            if line.startswith(name + " "):
                return float(line.rpartition(" ")[2])
        raise AssertionError(f"no {name} on /metrics")

    async def events(self, count: int) -> list[pb.TapEvent]:
        """Wait until ``count`` events were sent (and a little longer: no more come)."""

        def phases() -> list[str | None]:
            return [e.WhichOneof("phase") for e in self.reporter.sent]

        await eventually(
            lambda: len(self.reporter.sent) >= count, 5.0, lambda: f"{count} tap events: {phases()}", 0.01
        )
        await asyncio.sleep(0.1)
        assert len(self.reporter.sent) == count, phases()
        events, self.reporter.sent = self.reporter.sent, []
        return events


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    app = await asyncio.start_server(_app, HOST, 0)
    app_port = app.sockets[0].getsockname()[1]
    inbound: list[tuple[str, int]] = []
    config = ProxyConfig(
        outbound_addr=f"{HOST}:0",
        inbound_addr=f"{HOST}:0",
        admin_addr=f"{HOST}:0",
        identity=IdentityClientConfig(disabled=True),
        destination_addr="",
        telemetry_addr="",
        pod_namespace="shop",
        pod_name="web-0",
        workload_labels=("deployment=web",),
        tap_sensitive_headers=("X-Secret",),
    )
    proxy = Proxy(
        config,
        original_dst=lambda _sock: inbound[0],
        inbound_original_dst=lambda _sock: (HOST, app_port),
    )
    await proxy.start()
    inbound.append((HOST, proxy.inbound_port))
    # Reporting off (no identity): wire the taps as the proxy does when it reports.
    reporter = FakeReporter()
    reporting = Reporting(
        cast(TelemetryReporter, reporter), sensitive_headers=config.tap_sensitive_headers, clock=proxy.clock
    )
    proxy.outbound_router.taps = proxy.inbound_router.taps = reporting.taps
    proxy.registry.add_collector(reporting.render_metrics)
    sender = proxy.supervisor.spawn("tap-sender", reporting.send_events, critical=False)
    try:
        yield Rig(proxy, reporting, reporter)
    finally:
        await sender.stop()
        await proxy.stop(grace=0.1)
        app.close()


def test_every_proxy_has_an_idle_observer_and_the_routers_check_one_flag() -> None:
    from tether.proxy.tap import Taps

    taps = Taps()
    assert taps.capturing is False
    taps.apply(
        pb.TapSubscription(
            tap_id="x", active=True, max_events_per_second=1, expires_at=Timestamp(seconds=2**32)
        ),
        1.0,
        time.time(),
    )
    assert taps.capturing is True
    taps.reset()
    assert taps.capturing is False


async def test_no_tap_no_events(rig: Rig) -> None:
    for _ in range(3):
        assert (await rig.get("/api/items")).endswith(BODY)
    assert await rig.events(0) == []
    assert rig.metric("proxy_tap_events_total") == 0
    assert rig.metric("proxy_tap_active") == 0
    assert rig.reporting.taps.streams_tracked == 0


async def test_matching_requests_produce_three_phases_in_both_directions(rig: Rig) -> None:
    rig.subscribe(path_prefix="/api/", method="get", header_names=["x-trace", "authorization", "cookie"])
    assert rig.metric("proxy_tap_active") == 1
    response = await rig.get("/api/items?id=1")
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(BODY)
    events = await rig.events(6)
    by_direction: dict[int, list[pb.TapEvent]] = {}
    for event in events:
        by_direction.setdefault(event.direction, []).append(event)
    assert set(by_direction) == {pb.DIRECTION_OUTBOUND, pb.DIRECTION_INBOUND}
    inbound_port = rig.proxy.inbound_port
    for direction, phases in by_direction.items():
        assert [e.WhichOneof("phase") for e in phases] == ["request_init", "response_init", "response_end"]
        init, start, end = phases
        assert {e.tap_id for e in phases} == {"t1"}
        assert len({e.stream_id for e in phases}) == 1
        request = init.request_init
        assert (request.method, request.scheme, request.authority, request.path) == (
            "GET",
            "http",
            "web.test:80",
            "/api/items?id=1",
        )
        # Only the allowed names asked for; repeated fields joined.
        assert dict(init.headers) == {"x-trace": "t-1, t-2"}
        assert start.response_init.status_code == 200
        assert end.response_end.response_bytes == len(BODY)
        assert end.response_end.grpc_status == NO_GRPC_STATUS
        assert end.response_end.reset_error_code == 0
        assert end.response_end.since_request_init_us >= start.response_init.since_request_init_us
        assert init.tls == "disabled"  # identity is off in this proxy
        assert abs(init.at.ToNanoseconds() / 1e9 - time.time()) < 5
        own = {"namespace": "shop", "pod": "web-0", "deployment": "web"}
        if direction == pb.DIRECTION_OUTBOUND:
            assert dict(init.source_labels) == own
            assert init.destination.port == inbound_port  # the original destination
        else:
            assert dict(init.destination_labels) == own
            assert init.source.port != 0
    assert SECRET not in repr(events) and "s3cr3t" not in "".join(e.SerializeToString().hex() for e in events)
    assert rig.metric("proxy_tap_requests_total") == 2
    assert rig.metric("proxy_tap_events_total") == 6
    assert rig.metric("proxy_tap_events_sent_total") == 6


async def test_only_exactly_matching_requests_are_captured(rig: Rig) -> None:
    rig.subscribe(method="POST", path_prefix="/api/")
    await rig.get("/api/items")  # GET: no
    await rig.get("/other", method="POST")  # path: no
    await rig.get("/api/orders", method="POST")
    events = await rig.events(6)
    assert {e.request_init.path for e in events if e.WhichOneof("phase") == "request_init"} == {"/api/orders"}
    rig.subscribe("t1", active=False)  # explicit stop
    assert rig.metric("proxy_tap_active") == 0
    await rig.get("/api/orders", method="POST")
    assert await rig.events(0) == []


async def test_status_of_a_not_found_and_a_configured_sensitive_header(rig: Rig) -> None:
    rig.subscribe(header_names=["x-secret", "X-Trace"])
    response = await rig.get("/missing")
    assert response.startswith(b"HTTP/1.1 404")
    events = await rig.events(6)
    assert {e.response_init.status_code for e in events if e.WhichOneof("phase") == "response_init"} == {404}
    for event in events:
        if event.WhichOneof("phase") == "request_init":
            assert dict(event.headers) == {"x-trace": "t-1, t-2"}  # x-secret is configured sensitive
    assert "s3cr3t" not in repr(events)


async def test_rate_share_limits_captured_requests(rig: Rig) -> None:
    rig.subscribe(rate=0.01)  # a bucket of one request, refilled every 100 s
    for _ in range(4):
        await rig.get("/api/items")
    events = await rig.events(3)  # one request captured, on its outbound side (inbound: no token left)
    assert [e.direction for e in events] == [pb.DIRECTION_OUTBOUND] * 3
    assert rig.metric("proxy_tap_requests_total") == 1
    assert rig.metric("proxy_tap_rate_limited_total") == 7


async def test_expiry_stops_capture_and_shows_on_metrics(rig: Rig) -> None:
    rig.subscribe(expires_in=0.6)
    await rig.get("/api/items")
    assert len(await rig.events(6)) == 6
    await asyncio.sleep(0.8)
    rig.reporting.expire(rig.proxy.clock())  # what the sweeper does every second
    assert rig.metric("proxy_tap_active") == 0
    await rig.get("/api/items")
    assert await rig.events(0) == []
    assert rig.metric("proxy_tap_events_total") == 6


async def test_the_sweeper_expires_taps(rig: Rig) -> None:
    rig.proxy.reporting = rig.reporting  # as when the proxy reports
    rig.subscribe(expires_in=0.3)
    assert rig.metric("proxy_tap_active") == 1
    await eventually(lambda: rig.metric("proxy_tap_active") == 0, 3.0, "the sweeper to expire the tap", 0.05)


async def test_stream_lost_forgets_taps_and_unsent_events_are_counted(rig: Rig) -> None:
    rig.subscribe()
    rig.reporter.connected = False
    await rig.get("/api/items")
    await asyncio.sleep(0.1)
    assert rig.metric("proxy_tap_events_unsent_total") == 6
    assert callable(rig.reporter.on_stream_lost)
    rig.reporter.on_stream_lost()
    assert rig.metric("proxy_tap_active") == 0


def test_hello_carries_one_random_instance_per_reporter() -> None:
    first, second = new_instance(), new_instance()
    assert len(first) == 16 and int(first, 16) >= 0 and first != second

    class Identity:
        class identity:
            serviceaccount = "web"
            dns_name = "web.shop.serviceaccount.identity.cluster.local"

        manager = None

    config = ProxyConfig(identity=IdentityClientConfig(disabled=True), pod_name="web-0")
    hello = proxy_hello(config, Identity(), first)  # type: ignore[arg-type]
    assert hello.instance == first
    assert proxy_hello(config, Identity(), first).instance == first  # type: ignore[arg-type]


def test_tap_sensitive_headers_must_be_header_names() -> None:
    with pytest.raises(ValueError, match="tap_sensitive_headers"):
        ProxyConfig(identity=IdentityClientConfig(disabled=True), tap_sensitive_headers=("bad name",))
