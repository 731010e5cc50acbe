"""Tap end to end: two telemetry replicas (the real service in the real runtime, mTLS from the real identity
service), a real nats-server with the generated users, a public-API stand-in publishing tap requests as the
``public-api`` user and reading the events, and four simulated proxies: grpcio Report clients that answer
subscriptions with the proxy's own tap module (``tether.proxy.tap.Taps``) over a scripted request flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import TELEMETRY, Identity, Replica

from tether.proxy.tap import Taps
from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.cloudevents import EventDecoder, source_for
from tether.shared.events import TapEvent, Workload
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.natsserver import EmbeddedNats
from tether.shared.permissions import DEFAULT_USERS
from tether.shared.proto.telemetry.v1 import telemetry_pb2 as pb
from tether.shared.tap_requests import RENEW_INTERVAL_SECONDS, TapFilter, TapRequest, TapTarget
from tether.shared.testing import eventually
from tether.telemetry.testing import ReportClient

WEB = WorkloadIdentity("web", "shop", "cluster.local")
API = WorkloadIdentity("api", "shop", "cluster.local")
SECRET = "Bearer SECRET-TOKEN-9f8e"
COOKIE = "session=SECRET-COOKIE-7a6b"
RATE = 6.0


@pytest.fixture
async def nats(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(tmp_path / "nats", users=DEFAULT_USERS) as server:
        yield server


@dataclass
class SimProxy:
    """A proxy's Report stream and tap module, with its own stream of GET and POST requests."""

    client: ReportClient
    taps: Taps = field(default_factory=Taps)
    requests: int = 0
    task: asyncio.Task[None] | None = None

    def on_subscription(self, subscription: pb.TapSubscription) -> None:
        self.taps.apply(subscription, time.monotonic(), time.time())

    async def run(self, interval: float = 0.02) -> None:
        while True:
            self.requests += 1
            key = self.requests
            method = "GET" if key % 2 else "POST"
            now = time.monotonic()
            headers = [
                ("authorization", SECRET),
                ("cookie", COOKIE),
                ("x-request-id", f"rid-{self.client.pod}-{key}"),
            ]
            if self.taps.request_started(
                key,
                "inbound",
                method,
                "http",
                "web.shop:80",
                "/orders",
                headers,
                ("10.0.0.9", 40000 + key % 1000),
                ("10.0.0.1", 8080),
                {"deployment": "api"},
                {"deployment": "web"},
                API.dns_name,
                WEB.dns_name,
                "true",
                now,
            ):
                self.taps.response_started(key, 200, now + 0.001)
                self.taps.finished(key, 0, None, 42, now + 0.002)
            for event in self.taps.drain():
                await self.client.send_tap(event)
            await asyncio.sleep(interval)

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.client.close()


async def connect(identity: Identity, replica: Replica, workload: WorkloadIdentity, pod: str) -> SimProxy:
    pair = await identity.certificate(workload)
    client = ReportClient(
        namespace=workload.namespace,
        pod=pod,
        identity=workload.dns_name,
        labels={"deployment": workload.serviceaccount, "serviceaccount": workload.serviceaccount},
    )
    proxy = SimProxy(client)
    client.on_subscription = proxy.on_subscription
    await client.connect(replica.target, anchors=identity.anchors, pair=pair, server_name=TELEMETRY.dns_name)
    proxy.start()
    return proxy


@dataclass
class PublicApi:
    """The public API's side: publishes tap requests (renewing them) and reads the events, raw."""

    bus: Bus
    payloads: list[tuple[float, str, bytes]] = field(default_factory=list)
    renewers: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def listen(self) -> None:
        async def on_message(msg: Any) -> None:
            self.payloads.append((time.time(), msg.subject, msg.data))

        await self.bus.client.subscribe(subjects.TAP_EVENTS_ALL, cb=on_message)
        await self.bus.flush()

    def events(self, tap_id: str, since: float = 0.0) -> list[tuple[float, TapEvent]]:
        decoder = EventDecoder(TapEvent)
        found = []
        for at, subject, payload in list(self.payloads):
            if subject == subjects.tap_events(tap_id) and at >= since:
                found.append((at, decoder.decode(payload)[1]))
        return found

    def start(self, request: TapRequest) -> None:
        async def renew() -> None:
            await self.bus.publish(subjects.TAP_REQUESTS, request)
            renewal = TapRequest(
                action="renew",
                tap_id=request.tap_id,
                target=request.target,
                match=request.match,
                max_events_per_second=request.max_events_per_second,
                header_names=request.header_names,
            )
            while True:
                await asyncio.sleep(RENEW_INTERVAL_SECONDS)
                await self.bus.publish(subjects.TAP_REQUESTS, renewal)

        self.renewers[request.tap_id] = asyncio.create_task(renew())

    async def stop_renewing(self, tap_id: str) -> None:
        task = self.renewers.pop(tap_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def cancel(self, tap_id: str) -> None:
        await self.stop_renewing(tap_id)
        await self.bus.publish(subjects.TAP_REQUESTS, TapRequest(action="cancel", tap_id=tap_id))

    async def close(self) -> None:
        for tap_id in list(self.renewers):
            await self.stop_renewing(tap_id)
        await self.bus.close()


def tap(tap_id: str) -> TapRequest:
    return TapRequest(
        action="start",
        tap_id=tap_id,
        target=TapTarget(namespace="shop", workload=Workload("deployment", "web")),
        match=TapFilter(method="GET"),
        max_events_per_second=RATE,
        header_names=("x-request-id", "authorization", "cookie"),
    )


def metric(replica: Replica, line_start: str) -> float:
    for line in replica.service.render_metrics().decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def shares(proxy: SimProxy, tap_id: str) -> list[float]:
    return [s.max_events_per_second for s in proxy.client.subscriptions if s.tap_id == tap_id and s.active]


async def test_tap_with_two_replicas_and_four_proxies(nats: EmbeddedNats, identity: Identity) -> None:
    a, b = Replica("telemetry-a", nats, identity), Replica("telemetry-b", nats, identity)
    await a.start()
    await b.start()
    api = PublicApi(
        await Bus.connect(
            nats.settings("public-api"), name="public-api", source=source_for("public-api", "papi-1")
        )
    )
    proxies: dict[str, SimProxy] = {}
    try:
        await api.listen()
        proxies["web-1"] = await connect(identity, a, WEB, "web-1")
        proxies["web-2"] = await connect(identity, a, WEB, "web-2")
        proxies["web-3"] = await connect(identity, b, WEB, "web-3")
        proxies["api-1"] = await connect(identity, b, API, "api-1")  # not the tap's workload

        # --- a tap on deployment/web, GET only: the rate split across the three web proxies, mesh-wide.
        api.start(tap("t1"))
        web = ["web-1", "web-2", "web-3"]
        await eventually(
            lambda: all(shares(proxies[pod], "t1")[-1:] == [RATE / 3] for pod in web),
            10.0,
            "every web proxy holding its share of the mesh-wide rate",
        )
        assert not proxies["api-1"].client.subscriptions
        assert a.service.taps is not None and b.service.taps is not None
        assert a.service.taps.registry.total_matches("t1", time.time()) == 3
        assert b.service.taps.registry.total_matches("t1", time.time()) == 3

        # A proxy that was not sent the tap cannot publish into it.
        forged = pb.TapEvent(tap_id="t1", request_init=pb.TapEvent.RequestInit(method="GET", path="/x"))
        await proxies["api-1"].client.send_tap(forged)
        await eventually(
            lambda: metric(b, 'tether_telemetry_tap_events_refused_total{reason="not_subscribed"}') == 1.0,
            5.0,
            "the forged event refused",
        )

        measured_from = time.time()
        await asyncio.sleep(4.0)
        measured_to = time.time()
        events = [event for at, event in api.events("t1") if measured_from <= at < measured_to]
        starts = [event for event in events if event.request_init is not None]
        assert starts, "no tap event arrived"
        assert {event.request_init.method for event in starts if event.request_init} == {"GET"}
        assert {event.pod for event in events} == set(web)
        assert {event.replica for event in events} == {"telemetry-a", "telemetry-b"}
        assert {event.namespace for event in events} == {"shop"}
        # The proxies' buckets hold at most one token each beyond the rate (the public API drops that excess):
        # across both replicas, per second and over the whole run, no more than the requested rate plus it.
        span = measured_to - measured_from
        assert len(starts) <= RATE * span + len(web), len(starts)
        assert len(starts) >= RATE * span * 0.5, len(starts)
        for second in range(int(span)):
            window = [
                e for e in starts if measured_from + second <= e.at.timestamp() < measured_from + second + 1
            ]
            assert len(window) <= RATE + len(web), (second, len(window))
        # Headers: only the requested, allowed one; never an authorization or cookie value, anywhere.
        assert all(set(event.headers) <= {"x-request-id"} for event in events)
        assert any(event.headers.get("x-request-id", "").startswith("rid-") for event in starts)
        for _at, _subject, payload in api.payloads:
            assert b"SECRET" not in payload and b"authorization" not in payload.lower()
        phases = {
            (e.request_init is not None, e.response_init is not None, e.response_end is not None)
            for e in events
        }
        assert phases == {(True, False, False), (False, True, False), (False, False, True)}

        # --- a proxy connecting after the tap started joins it; the shares shrink.
        proxies["web-4"] = await connect(identity, b, WEB, "web-4")
        web.append("web-4")
        await eventually(
            lambda: all(shares(proxies[pod], "t1")[-1:] == [RATE / 4] for pod in web),
            10.0,
            "the late proxy joining and every share shrinking",
        )
        joined = time.time()
        await eventually(
            lambda: any(event.pod == "web-4" for _at, event in api.events("t1", joined)),
            10.0,
            "events from the late proxy",
        )
        assert proxies["web-4"].taps.taps_active == 1

        # --- cancel: the replicas end it, the proxies stop capturing, the events cease.
        assert (
            metric(a, "tether_telemetry_taps_live") == 1.0 and metric(b, "tether_telemetry_taps_live") == 1.0
        )
        await api.cancel("t1")
        await eventually(
            lambda: all(proxies[pod].taps.taps_active == 0 for pod in web),
            5.0,
            "every proxy stopping on cancel",
        )
        for replica in (a, b):
            assert replica.service.taps is not None and replica.service.taps.registry.live_taps == frozenset()
            assert metric(replica, "tether_telemetry_taps_live") == 0.0
            assert metric(replica, 'tether_telemetry_taps_ended_total{reason="cancelled"}') == 1.0
            assert metric(replica, "tether_telemetry_tap_subscriptions_sent_total") >= 2
            assert metric(replica, "tether_telemetry_tap_events_published_total") > 0
        captured = {pod: proxies[pod].taps.requests_captured for pod in web}
        await asyncio.sleep(0.5)  # events already on their way
        quiet_from = time.time()
        await asyncio.sleep(1.5)
        assert api.events("t1", quiet_from) == []
        assert {pod: proxies[pod].taps.requests_captured for pod in web} == captured

        # --- letting the renewals lapse: three missed renewals end it everywhere.
        api.start(tap("t2"))
        started = time.time()
        await eventually(lambda: bool(api.events("t2", started)), 10.0, "events of the second tap")
        await asyncio.sleep(RENEW_INTERVAL_SECONDS + 0.5)  # at least one renewal went out
        await api.stop_renewing("t2")
        stopped = time.time()
        await eventually(
            lambda: all(proxies[pod].taps.taps_active == 0 for pod in web),
            15.0,
            "every proxy stopping once the renewals lapsed",
        )
        lapsed_after = time.time() - stopped
        assert lapsed_after >= 3 * RENEW_INTERVAL_SECONDS - 0.5, lapsed_after
        for replica in (a, b):
            assert replica.service.taps is not None and replica.service.taps.registry.live_taps == frozenset()
            assert metric(replica, 'tether_telemetry_taps_ended_total{reason="lapsed"}') == 1.0
        await asyncio.sleep(0.5)
        quiet_from = time.time()
        await asyncio.sleep(1.5)
        assert api.events("t2", quiet_from) == []
    finally:
        for proxy in proxies.values():
            await proxy.close()
        await api.close()
        await a.stop()
        await b.stop()
