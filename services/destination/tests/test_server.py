"""The gRPC edge over real grpc.aio sockets, fed straight from the store (no NATS needed here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tether.destination.metrics import DestinationMetrics
from tether.destination.model import Endpoint, EndpointSet, ServicePort, encode
from tether.destination.server import GRPC_SERVER_OPTIONS, DestinationServicer, peer_host
from tether.destination.state import Applied, EndpointStore, SubscriptionRegistry
from tether.shared.grpcserver import start_grpc_server
from tether.shared.proto.destination.v1 import destination_pb2 as pb
from tether.shared.proto.destination.v1 import destination_pb2_grpc
from tether.shared.testing import eventually


class Harness:
    def __init__(self, keepalive: float = 30.0, per_peer: int = 100) -> None:
        self.store = EndpointStore()
        self.registry = SubscriptionRegistry(self.store)
        self.metrics = DestinationMetrics()
        synced = asyncio.Event()
        synced.set()
        self.servicer = DestinationServicer(self.registry, self.metrics, synced, keepalive, per_peer)
        self.revision = 0
        self.server: Any = None
        self.port = 0

    async def start(self) -> None:
        def register(server: Any) -> None:
            destination_pb2_grpc.add_DestinationServicer_to_server(self.servicer, server)

        self.server, self.port = await start_grpc_server(
            "127.0.0.1:0", register, extra_options=GRPC_SERVER_OPTIONS
        )

    def set(self, *addresses: str, service: str = "web") -> None:
        self.revision += 1
        value = EndpointSet(
            namespace="ns",
            service=service,
            generation=self.revision,
            ports=(ServicePort(name="http", port=80),),
            endpoints=tuple(Endpoint(address=a, ports={"http": 8080}) for a in sorted(addresses)),
        )
        self.store.apply(f"ns.{service}", self.revision, encode(value))
        self.registry.publish(f"ns.{service}")

    def channel(self, small_window: bool = False) -> grpc.aio.Channel:
        # A fixed, small receive window makes a client that stops reading push back quickly.
        options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16_384)]
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=options if small_window else [])


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness(keepalive=0.2, per_peer=3)
    await h.start()
    yield h
    await h.server.stop(0)


def ip_text(addr: Any) -> str:
    ipv4 = addr.ip.ipv4
    return ".".join(str((ipv4 >> s) & 255) for s in (24, 16, 8, 0))


async def next_update(call: Any) -> pb.Update:
    return await asyncio.wait_for(call.read(), 5.0)


async def test_first_message_then_ordered_diffs_then_keepalive(harness: Harness) -> None:
    harness.set("10.0.0.1", "10.0.0.2")
    async with harness.channel() as channel:
        call = destination_pb2_grpc.DestinationStub(channel).Get(pb.GetDestination(authority="web.ns:80"))
        first = await next_update(call)
        assert [ip_text(a.addr) for a in first.add.addrs] == ["10.0.0.1", "10.0.0.2"]
        assert first.add.addrs[0].addr.port == 8080
        assert first.add.addrs[0].weight == 10_000
        assert dict(first.add.metric_labels) == {"namespace": "ns", "service": "web"}
        harness.set("10.0.0.2", "10.0.0.3")
        added, removed = await next_update(call), await next_update(call)
        assert [ip_text(a.addr) for a in added.add.addrs] == ["10.0.0.3"]
        assert [ip_text(a) for a in removed.remove.addrs] == ["10.0.0.1"]
        keepalive = await next_update(call)
        assert keepalive.WhichOneof("update") == "add" and not keepalive.add.addrs
        call.cancel()
    assert harness.metrics.updates_sent.labels("keepalive")._value.get() >= 1


async def test_unknown_and_malformed_authorities_get_no_endpoints(harness: Harness) -> None:
    async with harness.channel() as channel:
        stub = destination_pb2_grpc.DestinationStub(channel)
        for authority in ("nothing.ns:80", "web:80", "1.2.3.4:80", "web.ns:notaport"):
            call = stub.Get(pb.GetDestination(authority=authority))
            first = await next_update(call)
            assert first.WhichOneof("update") == "no_endpoints"
            assert first.no_endpoints.exists is False
            call.cancel()
        # The service appears later: the open stream learns about it.
        call = stub.Get(pb.GetDestination(authority="later.ns:80"))
        assert (await next_update(call)).no_endpoints.exists is False
        harness.set("10.0.0.9", service="later")
        update = await next_update(call)
        assert [ip_text(a.addr) for a in update.add.addrs] == ["10.0.0.9"]
        call.cancel()


@pytest.mark.parametrize(
    "request_message",
    [
        pb.GetDestination(authority=""),
        pb.GetDestination(authority="a" * 300),
        pb.GetDestination(authority="web.ns:80", context_token="x" * 5000),
    ],
)
async def test_invalid_requests_fail_with_invalid_argument(
    harness: Harness, request_message: pb.GetDestination
) -> None:
    async with harness.channel() as channel:
        call = destination_pb2_grpc.DestinationStub(channel).Get(request_message)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await next_update(call)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_per_peer_stream_limit(harness: Harness) -> None:
    harness.set("10.0.0.1")
    async with harness.channel() as channel:
        stub = destination_pb2_grpc.DestinationStub(channel)
        calls = [stub.Get(pb.GetDestination(authority="web.ns:80")) for _ in range(3)]
        for call in calls:
            await next_update(call)
        extra = stub.Get(pb.GetDestination(authority="web.ns:80"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await next_update(extra)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        calls[0].cancel()
        await eventually(
            lambda: harness.servicer.open_streams <= 2, 5, "the cancelled stream closed", interval=0.01
        )
        again = stub.Get(pb.GetDestination(authority="web.ns:80"))
        assert (await next_update(again)).add.addrs
        for call in [*calls[1:], again]:
            call.cancel()


async def test_slow_stream_coalesces_and_does_not_delay_others() -> None:
    harness = Harness(keepalive=30.0, per_peer=100)
    await harness.start()
    try:
        harness.set(*[f"10.1.0.{i}" for i in range(50)])
        async with harness.channel(small_window=True) as slow_channel, harness.channel() as fast_channel:
            slow = destination_pb2_grpc.DestinationStub(slow_channel).Get(
                pb.GetDestination(authority="web.ns:80")
            )
            fast = destination_pb2_grpc.DestinationStub(fast_channel).Get(
                pb.GetDestination(authority="web.ns:80")
            )
            await next_update(slow)
            await next_update(fast)
            # The slow client stops reading; each change replaces all 50 addresses, so its flow-control
            # window fills after a few dozen updates, while the fast client keeps up with every one.
            changes = 400
            for round_ in range(1, changes + 1):
                harness.set(*[f"10.{round_ % 250 + 2}.{round_ // 250}.{i}" for i in range(50)])
                add = await next_update(fast)
                assert len(add.add.addrs) == 50
                await next_update(fast)  # the matching remove
            # Now drain the slow client: it must converge on the latest state in far fewer messages.
            state: dict[str, int] = {}
            received = 0
            expected = {f"10.{changes % 250 + 2}.{changes // 250}.{i}" for i in range(50)}
            while set(state) != expected:
                update = await next_update(slow)
                received += 1
                for a in update.add.addrs:
                    state[ip_text(a.addr)] = a.addr.port
                for r in update.remove.addrs:
                    state.pop(ip_text(r), None)
            assert received < changes // 4, "a slow stream must coalesce, not queue every change"
            slow.cancel()
            fast.cancel()
    finally:
        await harness.server.stop(0)


async def test_drain_ends_streams_with_unavailable(harness: Harness) -> None:
    harness.set("10.0.0.1")
    async with harness.channel() as channel:
        stub = destination_pb2_grpc.DestinationStub(channel)
        call = stub.Get(pb.GetDestination(authority="web.ns:80"))
        await next_update(call)
        harness.servicer.drain()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while True:
                await next_update(call)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "reconnect" in (caught.value.details() or "")
        late = stub.Get(pb.GetDestination(authority="web.ns:80"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await next_update(late)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_peer_host() -> None:
    assert peer_host("ipv4:10.0.0.1:5555") == "10.0.0.1"
    assert peer_host("ipv6:[::1]:5555") == "::1"
    assert peer_host("unix:/tmp/x") == "unix:/tmp/x"


REDIS_ID = "redis.ns.serviceaccount.identity.cluster.local"


def put_redis(harness: Harness, *addresses: str, vips: tuple[str, ...] = ("10.96.0.10", "fd00::10")) -> None:
    harness.revision += 1
    value = EndpointSet(
        namespace="ns",
        service="redis",
        generation=harness.revision,
        ports=(ServicePort(name="redis", port=6379, opaque=True),),
        endpoints=tuple(
            Endpoint(address=a, ports={"redis": 7000}, identity=REDIS_ID, protocol_hint="h2")
            for a in addresses
        ),
        addresses=vips,
    )
    result = harness.store.apply("ns.redis", harness.revision, encode(value))
    assert isinstance(result, Applied)
    harness.registry.publish("ns.redis", result.addresses)


async def test_address_authorities_get_endpoints_then_updates() -> None:
    harness = Harness(keepalive=30.0, per_peer=100)
    await harness.start()
    try:
        put_redis(harness, "10.0.0.1")
        async with harness.channel() as channel:
            stub = destination_pb2_grpc.DestinationStub(channel)
            vip4 = stub.Get(pb.GetDestination(authority="10.96.0.10:6379"))
            vip6 = stub.Get(pb.GetDestination(authority="[fd00::10]:6379"))
            pod = stub.Get(pb.GetDestination(authority="10.0.0.2:7000"))
            unknown = stub.Get(pb.GetDestination(authority="10.0.0.99:6379"))
            for call in (vip4, vip6):
                first = await next_update(call)
                (addr,) = first.add.addrs
                assert (ip_text(addr.addr), addr.addr.port) == ("10.0.0.1", 7000)
                assert addr.tls_identity.dns_like_identity == REDIS_ID
                assert addr.protocol_hint.HasField("h2") and addr.protocol_hint.opaque
                assert dict(first.add.metric_labels) == {"namespace": "ns", "service": "redis"}
            assert (await next_update(pod)).no_endpoints.exists is False  # not yet an endpoint
            assert (await next_update(unknown)).no_endpoints.exists is False

            put_redis(harness, "10.0.0.1", "10.0.0.2")
            for call in (vip4, vip6):
                assert [ip_text(a.addr) for a in (await next_update(call)).add.addrs] == ["10.0.0.2"]
            (pod_addr,) = (await next_update(pod)).add.addrs
            assert (ip_text(pod_addr.addr), pod_addr.addr.port) == ("10.0.0.2", 7000)
            assert pod_addr.tls_identity.dns_like_identity == REDIS_ID and pod_addr.protocol_hint.opaque

            put_redis(harness, "10.0.0.2", vips=("10.96.0.10",))  # 10.0.0.1 leaves; the IPv6 address goes
            assert [ip_text(a) for a in (await next_update(vip4)).remove.addrs] == ["10.0.0.1"]
            assert (await next_update(vip6)).no_endpoints.exists is False
            for call in (vip4, vip6, pod, unknown):
                call.cancel()
    finally:
        await harness.server.stop(0)
