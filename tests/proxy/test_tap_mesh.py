"""Live tap end to end with nothing standing in: three real proxies of one workload (and a late fourth)
report to two real telemetry replicas; a tap request on NATS (as the public API sends it, renewed every
2 s) reaches them, they capture matching requests of real grpcio calls, the replicas publish the events,
and cancelling the tap stops capture on every proxy, as their own metrics say."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
from proxy_mesh import SERVICE, Mesh, Pod, authority, metric, ready_pod, unary
from telemetry_harness import TELEMETRY, Replica

from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.cloudevents import EventDecoder
from tether.shared.events import TapEvent, TapFilter, TapRequest, TapTarget, Workload
from tether.shared.tap_requests import RENEW_INTERVAL_SECONDS
from tether.shared.testing import eventually

RATE = 4.0
SECRET = "Bearer s3cr3t-token"


async def web_pod(mesh: Mesh, replica: Replica, index: int) -> Pod:
    return await ready_pod(
        mesh,
        "echo",
        meshed=True,
        serviceaccount="web",
        pod_name=f"web-{index}",
        telemetry_addr=replica.addr,
        telemetry_server_name=TELEMETRY.dns_name,
        report_interval=1.0,
        workload_labels=("deployment=web",),
    )


async def test_a_tap_on_a_workload_across_two_replicas_and_its_cancel(
    meshed: Mesh, replicas: list[Replica]
) -> None:
    first, second = replicas
    webs = [await web_pod(meshed, replica, index) for index, replica in enumerate((first, first, second))]
    await meshed.register("echo", webs)
    client = await ready_pod(meshed, meshed=True, serviceaccount="client")
    api = await Bus.connect(meshed.nats.settings(None), name="public-api")
    payloads: list[tuple[float, bytes]] = []

    async def on_event(msg: Any) -> None:
        payloads.append((time.monotonic(), msg.data))

    await api.client.subscribe(subjects.tap_events("t1"), cb=on_event)
    request = TapRequest(
        action="start",
        tap_id="t1",
        target=TapTarget(
            namespace=(meshed.services and "test") or "test", workload=Workload("deployment", "web")
        ),
        match=TapFilter(path_prefix=f"/{SERVICE}/Unary"),
        max_events_per_second=RATE,
        header_names=("x-request-id", "authorization"),
    )

    async def renew() -> None:
        await api.publish(subjects.TAP_REQUESTS, request)
        renewal = msgspec.structs.replace(request, action="renew")
        while True:
            await asyncio.sleep(RENEW_INTERVAL_SECONDS)
            await api.publish(subjects.TAP_REQUESTS, renewal)

    renewer = asyncio.get_running_loop().create_task(renew())
    metadata = (("authorization", SECRET), ("x-request-id", "r-1"))
    try:
        await eventually(
            lambda: all(metric(web, "proxy_tap_active") == 1 for web in webs), 10.0, "tap on all"
        )
        started = time.monotonic()
        async with client.channel(authority("echo")) as channel:
            call, stream = unary(channel), channel.unary_stream(f"/{SERVICE}/ServerStream")
            while time.monotonic() - started < 4.0:
                assert await call(b"echo:hi", timeout=5, metadata=metadata) == b"echo:hi"
                async for _ in stream(b"1:8", timeout=5, metadata=metadata):
                    pass
            # A proxy of the workload that starts after the tap joins it.
            late = await web_pod(meshed, second, 3)
            await eventually(lambda: metric(late, "proxy_tap_active") == 1, 10.0, "the late proxy joins")
        elapsed = time.monotonic() - started
        await eventually(lambda: len(payloads) > 0, 5.0, "tap events")
        decoder = EventDecoder(TapEvent)
        events = [decoder.decode(data)[1] for _, data in payloads]
        inits = [e for e in events if e.request_init is not None]
        assert inits and all(e.request_init and e.request_init.path.endswith("/Unary") for e in inits)
        assert {e.pod for e in inits} <= {"web-0", "web-1", "web-2", "web-3"}
        assert {e.replica for e in events} <= {"telemetry-a", "telemetry-b"}
        assert all(e.headers.get("x-request-id") == "r-1" for e in inits)
        assert not any(SECRET.encode() in data for _, data in payloads)  # never captured, anywhere
        # Never more than asked for (each proxy's bucket may hold one token to start with).
        assert len(inits) <= RATE * elapsed + len(webs) + 1, (len(inits), elapsed)
        # Cancel: every proxy stops capturing, and no more events come.
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        await api.publish(subjects.TAP_REQUESTS, TapRequest(action="cancel", tap_id="t1"))
        await eventually(lambda: all(metric(web, "proxy_tap_active") == 0 for web in webs), 10.0, "stopped")
        seen = len(payloads)
        async with client.channel(authority("echo")) as channel:
            for _ in range(20):
                await unary(channel)(b"echo:after", timeout=5, metadata=metadata)
        await asyncio.sleep(1.5)  # (two report intervals: events would have been relayed by now)
        assert len(payloads) == seen
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        await api.close()
