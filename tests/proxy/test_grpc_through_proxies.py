"""Real grpcio apps talking through an outbound -> inbound proxy pair, routed by the real destination service.

What the client app sees must be what it would see without the proxies: payloads, statuses, deadlines,
cancellation, metadata and trailers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from proxy_mesh import SERVICE, Mesh, Pod, authority, unary

from tether.shared.testing import eventually

MiB = 1024 * 1024


@pytest.fixture
async def pair(mesh: Mesh) -> tuple[Pod, Pod]:
    server = await mesh.pod("echo")
    client = await mesh.pod()
    await mesh.register("echo", [server])
    return client, server


async def test_unary_call_goes_through_both_proxies(pair: tuple[Pod, Pod]) -> None:
    client, server = pair
    async with client.channel(authority("echo")) as channel:
        call = unary(channel)
        assert await call(b"echo:hello", timeout=5) == b"echo:hello"
    assert server.app is not None and server.app.calls == 1
    # Both hops were proxied: the outbound proxy routed it, the inbound proxy delivered it.
    assert client.proxy.outbound_pools.get((server.host, server.endpoint_port)).connections
    assert server.proxy.inbound_pools.get((server.host, server.app.port)).connections


async def test_server_streaming(pair: tuple[Pod, Pod]) -> None:
    client, _ = pair
    async with client.channel(authority("echo")) as channel:
        call = channel.unary_stream(f"/{SERVICE}/ServerStream")(b"200:1000", timeout=10)
        received = [message async for message in call]
        assert len(received) == 200
        assert [int.from_bytes(m[:4], "big") for m in received] == list(range(200))
        assert all(len(m) == 1000 for m in received)
        assert await call.code() == grpc.StatusCode.OK


async def test_client_streaming(pair: tuple[Pod, Pod]) -> None:
    client, _ = pair

    async def messages() -> AsyncIterator[bytes]:
        for index in range(300):
            yield bytes([index % 256]) * 2000

    async with client.channel(authority("echo")) as channel:
        answer = await channel.stream_unary(f"/{SERVICE}/ClientStream")(messages(), timeout=10)
        assert answer == b"300:600000"


async def test_bidi_streaming_interleaves(pair: tuple[Pod, Pod]) -> None:
    client, _ = pair
    async with client.channel(authority("echo")) as channel:
        call = channel.stream_stream(f"/{SERVICE}/Bidi")(timeout=10)
        for index in range(50):
            await call.write(f"ping-{index}".encode())
            assert await call.read() == f"ping-{index}".encode()
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


async def test_four_mebibyte_messages_both_ways(pair: tuple[Pod, Pod]) -> None:
    client, _ = pair
    payload = bytes(range(256)) * (4 * MiB // 256)
    async with client.channel(authority("echo")) as channel:
        assert await unary(channel)(payload, timeout=20) == payload
        assert len(await unary(channel)(f"big:{4 * MiB}".encode(), timeout=20)) == 4 * MiB
        call = channel.stream_stream(f"/{SERVICE}/Bidi")(timeout=20)
        await call.write(payload)
        assert await call.read() == payload
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


async def test_thousand_concurrent_streams(pair: tuple[Pod, Pod]) -> None:
    client, server = pair
    async with client.channel(authority("echo")) as channel:
        call = unary(channel)
        started = time.monotonic()
        results = await asyncio.gather(*(call(f"echo:{i}".encode(), timeout=30) for i in range(1000)))
        elapsed = time.monotonic() - started
    assert results == [f"echo:{i}".encode() for i in range(1000)]
    assert server.app is not None and server.app.calls == 1000
    assert elapsed < 20


async def test_concurrent_streams_are_really_concurrent_through_the_pair(pair: tuple[Pod, Pod]) -> None:
    client, server = pair
    assert server.app is not None
    async with client.channel(authority("echo")) as channel:
        call = unary(channel)
        # Every call is held by the app until all 1,000 are in flight at once, however slow the machine.
        calls = [asyncio.ensure_future(call(b"hold:", timeout=30)) for _ in range(1000)]
        await eventually(
            lambda: server.app is not None and server.app.in_flight == 1000, 20, "1000 in flight"
        )
        server.app.release.set()
        assert await asyncio.gather(*calls) == [b"hold:"] * 1000


async def test_application_error_status_comes_back_unchanged(pair: tuple[Pod, Pod]) -> None:
    client, _ = pair
    async with client.channel(authority("echo")) as channel:
        for code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INTERNAL):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await unary(channel)(f"status:{code.name}".encode(), timeout=5)
            assert raised.value.code() == code
            assert raised.value.details() == f"asked for {code.name}"


async def test_deadline_exceeded_is_what_the_client_sees(pair: tuple[Pod, Pod]) -> None:
    client, server = pair
    async with client.channel(authority("echo")) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await unary(channel, "Hang")(b"", timeout=0.3)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2
    # The deadline reached the server (grpc-timeout passed through): it gave up too.
    assert server.app is not None
    await eventually(lambda: server.app is not None and server.app.cancelled == 1, 5, "server-side cancel")


async def test_client_cancellation_reaches_the_server(pair: tuple[Pod, Pod]) -> None:
    client, server = pair
    assert server.app is not None
    async with client.channel(authority("echo")) as channel:
        call = unary(channel, "Hang")(b"", timeout=30)
        await eventually(lambda: server.app is not None and server.app.calls == 1, 5, "call arrived")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(server.app.cancelled_event.wait(), 5)
        # The connection stays healthy for the next call.
        assert await unary(channel)(b"echo:after", timeout=5) == b"echo:after"


async def test_metadata_and_trailers_pass_intact(pair: tuple[Pod, Pod]) -> None:
    client, _ = pair
    sent = (("x-request-id", "abc"), ("x-blob-bin", b"\x00\x01\xff"))
    async with client.channel(authority("echo")) as channel:
        call = unary(channel)(b"meta:", timeout=5, metadata=sent)
        assert await call == b"meta:"
        assert await call.code() == grpc.StatusCode.OK
        initial = await call.initial_metadata()
        trailing = await call.trailing_metadata()
    assert initial is not None and trailing is not None
    assert [(k, v) for k, v in initial if k.startswith("x-")] == list(sent)
    assert [(k, v) for k, v in trailing if k.startswith("x-")] == [*sent, ("x-trailer-only", "t")]


async def test_proxy_shutdown_lets_in_flight_calls_finish(pair: tuple[Pod, Pod]) -> None:
    client, server = pair
    async with client.channel(authority("echo")) as channel:
        pending = asyncio.ensure_future(unary(channel)(b"sleep:0.5", timeout=10))
        await eventually(lambda: server.app is not None and server.app.in_flight == 1, 5, "call in flight")
        started = time.monotonic()
        # Both proxies drain: GOAWAY to their clients, in-flight requests complete.
        await asyncio.gather(client.proxy.stop(grace=5), server.proxy.stop(grace=5))
        assert await pending == b"sleep:0.5"
        assert time.monotonic() - started < 3


async def test_garbage_from_a_client_is_rejected_without_harm(pair: tuple[Pod, Pod]) -> None:
    client, _ = pair
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    data_on_stream_zero = b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"
    # HTTP/1.1 with nowhere to go (an unknown name, and no original destination: no open relay) is
    # answered 502; an HTTP/2 protocol error gets GOAWAY; bytes of no protocol are TCP with nowhere to go.
    for junk, answer in (
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"HTTP/1.1 502 "),
        (preface + data_on_stream_zero, b""),
        (b"\x00\x01 not a protocol\r\n", b""),
    ):
        reader, writer = await asyncio.open_connection(client.host, client.proxy.outbound_port)
        writer.write(junk)
        received = await asyncio.wait_for(reader.read(), 5)  # the proxy answers and closes
        assert received.startswith(answer), received
        writer.close()
    async with client.channel(authority("echo")) as channel:
        assert await unary(channel)(b"echo:fine", timeout=5) == b"echo:fine"
