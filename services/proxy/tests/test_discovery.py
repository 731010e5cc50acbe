"""The discovery client: shared lookups, reconnects with reset, outages, eviction; and its gRPC wire format.

The DestinationClient tests feed it scripted streams (no sockets). The wire tests run the lean h2
client against a real grpc.aio Destination server.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from tether.proxy.core.resolution import Add, Endpoint, NoEndpoints, Status, Update
from tether.proxy.discovery import DestinationClient
from tether.proxy.dstclient import DestinationStreams
from tether.proxy.errors import AuthorityLimitError, GrpcCallError
from tether.proxy.grpc_h2 import GrpcChannel
from tether.proxy.protoconv import update_from_proto
from tether.shared.proto.destination.v1 import destination_pb2 as pb
from tether.shared.proto.destination.v1 import destination_pb2_grpc
from tether.shared.proto.net.v1 import net_pb2
from tether.shared.testing import RecordingSupervisor
from tether.shared.testing import eventually as until


def ep(last_octet: int) -> Endpoint:
    return Endpoint(address=(f"10.0.0.{last_octet}", 8080))


class ScriptedStreams:
    """Each opened stream plays the next script: a list of updates, then an error or a hang."""

    def __init__(self) -> None:
        self.scripts: asyncio.Queue[tuple[list[Update], Exception | None]] = asyncio.Queue()
        self.opened: list[str] = []
        self.closed = 0

    async def open(self, authority: str) -> AsyncGenerator[Update, None]:
        self.opened.append(authority)
        updates, error = await self.scripts.get()
        try:
            for update in updates:
                yield update
            if error is not None:
                raise error
            await asyncio.Event().wait()
        finally:
            self.closed += 1


@pytest.fixture
async def streams() -> ScriptedStreams:
    return ScriptedStreams()


@pytest.fixture
async def client(
    streams: ScriptedStreams, supervisor: RecordingSupervisor
) -> AsyncIterator[DestinationClient]:
    removed: list[Any] = []
    destination = DestinationClient(
        streams.open,
        spawn=supervisor.spawn,
        on_removed=removed.extend,
        rng=random.Random(1),
        backoff_base=0.001,
        backoff_cap=0.01,
    )
    destination.removed = removed  # type: ignore[attr-defined]
    yield destination
    await destination.close()


async def test_one_stream_shared_by_every_lookup(client: DestinationClient, streams: ScriptedStreams) -> None:
    first = client.resolve(b"web.ns:80", now=0.0)
    assert client.resolve(b"web.ns:80", now=1.0) is first
    await streams.scripts.put(([Add([ep(1)])], None))
    await until(lambda: first.usable)
    assert streams.opened == ["web.ns:80"]


async def test_reconnect_keeps_endpoints_then_resets_on_the_first_message(
    client: DestinationClient, streams: ScriptedStreams
) -> None:
    resolution = client.resolve(b"web.ns:80", now=0.0)
    await streams.scripts.put(([Add([ep(1), ep(2)])], GrpcCallError(14, "gone")))
    await until(lambda: len(streams.opened) == 2)
    # Outage: the stream failed and is being retried; the last endpoints stay in use.
    assert set(resolution.endpoints) == {("10.0.0.1", 8080), ("10.0.0.2", 8080)}
    await streams.scripts.put(([Add([ep(3)])], None))
    await until(lambda: ("10.0.0.3", 8080) in resolution.endpoints)
    assert set(resolution.endpoints) == {("10.0.0.3", 8080)}
    assert sorted(client.removed) == [("10.0.0.1", 8080), ("10.0.0.2", 8080)]  # type: ignore[attr-defined]


async def test_invalid_argument_is_treated_as_outside_the_mesh(
    client: DestinationClient, streams: ScriptedStreams
) -> None:
    resolution = client.resolve(b"x" * 300, now=0.0)
    await streams.scripts.put(([], GrpcCallError(3, "authority too long")))
    await until(lambda: resolution.status is Status.NOT_IN_MESH)
    await asyncio.sleep(0.05)
    assert len(streams.opened) == 1  # not retried


async def test_wait_usable_is_bounded(client: DestinationClient, streams: ScriptedStreams) -> None:
    assert await client.wait_usable(b"empty.ns:80", timeout=0.05) is None
    await streams.scripts.put(([NoEndpoints(exists=True)], None))
    assert await client.wait_usable(b"empty.ns:80", timeout=0.05) is None
    ready = asyncio.ensure_future(client.wait_usable(b"late.ns:80", timeout=5))
    await asyncio.sleep(0)
    await streams.scripts.put(([Add([ep(4)])], None))
    resolution = await ready
    assert resolution is not None and set(resolution.endpoints) == {("10.0.0.4", 8080)}


async def test_idle_authorities_are_evicted_and_their_streams_closed(
    client: DestinationClient, streams: ScriptedStreams
) -> None:
    client.resolve(b"a.ns:80", now=0.0)
    client.resolve(b"b.ns:80", now=50.0)
    await streams.scripts.put(([Add([ep(1)])], None))
    await streams.scripts.put(([Add([ep(2)])], None))
    await until(lambda: len(streams.opened) == 2)
    evicted = client.evict_idle(now=70.0, idle_timeout=60.0)
    assert [r.authority for r in evicted] == ["a.ns:80"]
    await until(lambda: streams.closed == 1)
    assert len(client) == 1


async def test_new_authorities_beyond_the_cap_are_refused_and_known_ones_keep_resolving(
    streams: ScriptedStreams, supervisor: RecordingSupervisor
) -> None:
    client = DestinationClient(streams.open, spawn=supervisor.spawn, max_authorities=2)
    try:
        known = client.resolve(b"a.ns:80", now=0.0)
        client.resolve(b"b.ns:80", now=0.0)
        with pytest.raises(AuthorityLimitError, match="limit of 2"):
            client.resolve(b"invented-1.ns:80", now=1.0)
        with pytest.raises(AuthorityLimitError):
            await client.wait_usable(b"invented-2.ns:80", timeout=1.0)
        assert client.rejected == 2 and len(client) == 2
        assert client.resolve(b"a.ns:80", now=30.0) is known
        await until(lambda: len(streams.opened) == 2)
        assert sorted(streams.opened) == ["a.ns:80", "b.ns:80"]  # no lookup for the refused names
        # Once an idle authority is evicted, a new one fits again.
        client.evict_idle(now=61.0, idle_timeout=60.0)
        client.resolve(b"c.ns:80", now=61.0)
        assert len(client) == 2
    finally:
        await client.close()


def test_opaque_ports_are_read_from_the_protocol_hint() -> None:
    def weighted(last_octet: int, hint: pb.ProtocolHint | None) -> pb.WeightedAddr:
        address = net_pb2.TcpAddress(ip=net_pb2.IPAddress(ipv4=0x0A000000 + last_octet), port=6379)
        return pb.WeightedAddr(addr=address, protocol_hint=hint)

    update = update_from_proto(
        pb.Update(
            add=pb.WeightedAddrSet(
                addrs=[
                    weighted(1, pb.ProtocolHint(h2=pb.ProtocolHint.H2(), opaque=True)),
                    weighted(2, pb.ProtocolHint(opaque=True)),
                    weighted(3, pb.ProtocolHint(h2=pb.ProtocolHint.H2())),
                    weighted(4, None),
                ]
            )
        )
    )
    assert isinstance(update, Add)
    assert [(e.address[0], e.h2_hint, e.opaque) for e in update.endpoints] == [
        ("10.0.0.1", True, True),
        ("10.0.0.2", False, True),
        ("10.0.0.3", True, False),
        ("10.0.0.4", False, False),
    ]


class Destination(destination_pb2_grpc.DestinationServicer):
    """A scripted Destination server for the wire tests (follows the contract's message order)."""

    def __init__(self) -> None:
        self.requests: list[pb.GetDestination] = []
        self.hold = asyncio.Event()

    async def Get(self, request: pb.GetDestination, context: grpc.aio.ServicerContext) -> Any:
        self.requests.append(request)
        if not request.authority:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "authority is empty")
        if request.authority.startswith("unknown"):
            yield pb.Update(no_endpoints=pb.NoEndpoints(exists=False))
            return
        address = net_pb2.TcpAddress(ip=net_pb2.IPAddress(ipv4=0x0A000001), port=8080)
        v6 = net_pb2.TcpAddress(ip=net_pb2.IPAddress(ipv6=bytes(15) + b"\x01"), port=9090)
        yield pb.Update(
            add=pb.WeightedAddrSet(
                addrs=[
                    pb.WeightedAddr(addr=address, weight=5, metric_labels={"pod": "web-0"}),
                    pb.WeightedAddr(
                        addr=v6,
                        tls_identity=pb.TlsIdentity(dns_like_identity="web.ns.serviceaccount.identity.x"),
                        protocol_hint=pb.ProtocolHint(h2=pb.ProtocolHint.H2()),
                    ),
                ],
                metric_labels={"namespace": "ns"},
            )
        )
        yield pb.Update(add=pb.WeightedAddrSet())  # keep-alive
        yield pb.Update(remove=pb.AddrSet(addrs=[address]))
        await self.hold.wait()


@pytest.fixture
async def destination() -> AsyncIterator[tuple[Destination, int]]:
    server = grpc.aio.server()
    servicer = Destination()
    destination_pb2_grpc.add_DestinationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, port
    servicer.hold.set()
    await server.stop(0)


async def test_h2_client_speaks_grpc_to_a_real_server(
    destination: tuple[Destination, int], supervisor: RecordingSupervisor
) -> None:
    servicer, port = destination
    streams = DestinationStreams(GrpcChannel(f"127.0.0.1:{port}", spawn=supervisor.spawn), '{"ns":"ns"}')
    try:
        updates = streams.open("web.ns:80")
        first = await anext(updates)
        assert isinstance(first, Add)
        assert [(e.address, e.weight, e.h2_hint, e.tls_identity) for e in first.endpoints] == [
            (("10.0.0.1", 8080), 5, False, None),
            (("::1", 9090), 0, True, "web.ns.serviceaccount.identity.x"),
        ]
        assert first.endpoints[0].labels == {"pod": "web-0"}
        assert first.set_labels == {"namespace": "ns"}
        assert await anext(updates) == Add([], {})
        removal = await anext(updates)
        assert removal.addresses == [("10.0.0.1", 8080)]  # type: ignore[union-attr]
        assert servicer.requests[0].context_token == '{"ns":"ns"}'
        # A second stream shares the connection.
        unknown = [u async for u in streams.open("unknown.example.com:80")]
        assert unknown == [NoEndpoints(exists=False)]
        with pytest.raises(GrpcCallError) as raised:
            await anext(streams.open(""))
        assert raised.value.code == 3
        await updates.aclose()
    finally:
        await streams.close()


async def test_h2_client_reports_an_unreachable_destination(supervisor: RecordingSupervisor) -> None:
    streams = DestinationStreams(
        GrpcChannel("127.0.0.1:1", spawn=supervisor.spawn, connect_timeout=0.5), "{}"
    )
    with pytest.raises(GrpcCallError) as raised:
        await anext(streams.open("web.ns:80"))
    assert raised.value.code == 14
