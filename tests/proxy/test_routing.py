"""Routing through the outbound proxy: load balancing, endpoint churn, fallback, fail-fast and outages.

The destination service is the real one (local registry source over a real nats-server); endpoint
changes are made by rewriting its registry file.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import grpc
import grpc.aio
import pytest
from proxy_mesh import Mesh, Pod, authority, unary

from tether.proxy.core.resolution import Status
from tether.proxy.discovery import DestinationClient
from tether.shared.testing import eventually


def discovery_of(pod: Pod) -> DestinationClient:
    """The pod's proxy's discovery client; the mesh starts every proxy with a destination address."""
    assert pod.proxy.discovery is not None
    return pod.proxy.discovery


async def test_peak_ewma_sends_clearly_less_to_a_slower_endpoint(mesh: Mesh) -> None:
    fast_a = await mesh.pod("fast-a")
    fast_b = await mesh.pod("fast-b")
    slow = await mesh.pod("slow", delay=0.05)
    client = await mesh.pod()
    await mesh.register("echo", [fast_a, fast_b, slow])
    served: Counter[str] = Counter()
    async with client.channel(authority("echo")) as channel:
        call = unary(channel)

        async def worker() -> None:
            for _ in range(40):
                served[(await call(b"echo:x", timeout=5)).split(b":")[0].decode()] += 1

        await asyncio.gather(*(worker() for _ in range(10)))
    assert sum(served.values()) == 400
    assert served["slow"] < served["fast-a"] / 3
    assert served["slow"] < served["fast-b"] / 3


async def test_removed_endpoint_gets_no_new_requests_and_in_flight_ones_complete(mesh: Mesh) -> None:
    keep = await mesh.pod("keep")
    leave = await mesh.pod("leave")
    client = await mesh.pod()
    await mesh.register("echo", [keep, leave])
    assert keep.app is not None and leave.app is not None
    async with client.channel(authority("echo")) as channel:
        call = unary(channel)
        # Long calls in flight on both endpoints while "leave" is removed.
        slow_calls = [asyncio.ensure_future(call(b"sleep:1.5", timeout=10)) for _ in range(20)]
        await eventually(lambda: leave.app is not None and leave.app.in_flight > 0, 5, "calls on 'leave'")
        removed_at = time.monotonic()
        await mesh.register("echo", [keep])
        resolution = discovery_of(client).resolve(authority("echo").encode(), time.monotonic())
        await eventually(lambda: len(resolution.endpoints) == 1, 1.0, "proxy saw the removal")
        assert time.monotonic() - removed_at < 1.0
        calls_on_leave = leave.app.calls
        answers = await asyncio.gather(*(call(b"echo:after", timeout=5) for _ in range(100)))
        assert answers == [b"keep:after"] * 100
        assert leave.app.calls == calls_on_leave
        assert await asyncio.gather(*slow_calls) == [b"sleep:1.5"] * 20


async def test_endpoint_added_later_starts_receiving(mesh: Mesh) -> None:
    first = await mesh.pod("first")
    client = await mesh.pod()
    await mesh.register("echo", [first])
    async with client.channel(authority("echo")) as channel:
        call = unary(channel)
        assert await call(b"echo:x", timeout=5) == b"first:x"
        second = await mesh.pod("second")
        await mesh.register("echo", [first, second])

        async def second_served() -> bool:
            answer: bytes = await call(b"echo:x", timeout=5)
            return answer.split(b":")[0] == b"second"

        # Back to back, as fast as the calls answer: the endpoint must get traffic within 5 s.
        await eventually(second_served, 5, "traffic to the new endpoint", interval=0)


async def test_unknown_authority_falls_back_to_the_original_destination(mesh: Mesh) -> None:
    outside = await mesh.app("outside")
    client = await mesh.pod(original_dst=(outside.host, outside.port))
    async with client.channel("db.elsewhere.example.com:5432") as channel:
        assert await unary(channel)(b"echo:direct", timeout=5) == b"outside:direct"
    resolution = discovery_of(client).resolve(b"db.elsewhere.example.com:5432", time.monotonic())
    assert resolution.status is Status.NOT_IN_MESH


async def test_service_without_endpoints_fails_fast_with_unavailable(mesh: Mesh) -> None:
    client = await mesh.pod(fail_fast_timeout=0.5)
    await mesh.register("empty", [])
    async with client.channel(authority("empty")) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await unary(channel)(b"echo:x", timeout=10)
        elapsed = time.monotonic() - started
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value.details()
    assert 0.4 < elapsed < 1.5, raised.value.details()


async def test_requests_wait_for_endpoints_that_appear_within_the_bound(mesh: Mesh) -> None:
    client = await mesh.pod(fail_fast_timeout=5.0)
    await mesh.register("late", [])
    async with client.channel(authority("late")) as channel:
        pending = asyncio.ensure_future(unary(channel)(b"echo:x", timeout=10))
        resolution = discovery_of(client).resolve(authority("late").encode(), time.monotonic())
        await eventually(lambda: resolution.status is Status.KNOWN, 5, "service known")
        server = await mesh.pod("late")
        await mesh.register("late", [server])
        assert await pending == b"late:x"


async def test_control_plane_outage_keeps_known_routes_and_fails_new_ones_fast(mesh: Mesh) -> None:
    server = await mesh.pod("echo")
    client = await mesh.pod(fail_fast_timeout=0.5)
    await mesh.register("echo", [server])
    async with client.channel(authority("echo")) as channel:
        call = unary(channel)
        assert await call(b"echo:before", timeout=5) == b"echo:before"
        await mesh.stop_destination()
        # Known routes keep working on the last known endpoints: no failures at all.
        results = await asyncio.gather(*(call(b"echo:during", timeout=5) for _ in range(300)))
        assert results == [b"echo:during"] * 300
    async with client.channel(authority("never-seen")) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await unary(channel)(b"echo:x", timeout=10)
        elapsed = time.monotonic() - started
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert elapsed < 1.5
    # The route learnt before the outage is still in use afterwards, too.
    async with client.channel(authority("echo")) as channel:
        assert await unary(channel)(b"echo:still", timeout=5) == b"echo:still"


async def test_one_shared_lookup_per_authority(mesh: Mesh) -> None:
    server = await mesh.pod("echo")
    client = await mesh.pod()
    await mesh.register("echo", [server])
    channels = [client.channel(authority("echo")) for _ in range(5)]
    try:
        await asyncio.gather(*(unary(c)(b"echo:x", timeout=5) for c in channels for _ in range(20)))
    finally:
        for channel in channels:
            await channel.close()
    assert client.proxy.discovery is not None and len(client.proxy.discovery) == 1


async def test_unreachable_endpoint_fails_with_unavailable(mesh: Mesh) -> None:
    gone = await mesh.pod("gone")
    client = await mesh.pod()
    await mesh.register("echo", [gone])
    await gone.proxy.stop(grace=0)
    async with client.channel(authority("echo")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await unary(channel)(b"echo:x", timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
