"""Bidirectional streaming over the proxy's own gRPC client (grpc_h2), against a real grpc.aio server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from tether.proxy.errors import GrpcCallError
from tether.proxy.grpc_h2 import GrpcChannel
from tether.shared.testing import RecordingSupervisor

SERVICE = "test.Bidi"


async def echo(requests: Any, context: grpc.aio.ServicerContext) -> Any:
    async for message in requests:
        yield b"echo:" + message


async def sizes(requests: Any, context: grpc.aio.ServicerContext) -> Any:
    async for message in requests:
        yield str(len(message)).encode()


async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> Any:
    async for _ in requests:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not you")
    yield b"unreachable"


async def once(requests: Any, context: grpc.aio.ServicerContext) -> Any:
    yield b"bye"


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = grpc.aio.server()
    handlers = {
        name: grpc.stream_stream_rpc_method_handler(handler)
        for name, handler in (("Echo", echo), ("Sizes", sizes), ("Refuse", refuse), ("Once", once))
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield bound
    await server.stop(0)


@pytest.fixture
async def channel(port: int, supervisor: RecordingSupervisor) -> AsyncIterator[GrpcChannel]:
    channel = GrpcChannel(f"127.0.0.1:{port}", spawn=supervisor.spawn)
    yield channel
    await channel.close()


def path(method: str) -> bytes:
    return f"/{SERVICE}/{method}".encode()


async def test_messages_go_both_ways_interleaved_and_the_call_ends_with_ok(channel: GrpcChannel) -> None:
    stream = await channel.bidi(path("Echo"))
    try:
        for word in (b"one", b"two", b"three"):
            stream.send(word)
            assert await asyncio.wait_for(stream.receive(), 5) == b"echo:" + word
        stream.end_requests()
        assert await asyncio.wait_for(stream.receive(), 5) is None
        assert await stream.receive() is None  # and stays ended
    finally:
        stream.cancel()


async def test_large_messages_wait_for_the_servers_flow_control_windows(channel: GrpcChannel) -> None:
    stream = await channel.bidi(path("Sizes"))
    try:
        big = b"x" * (1024 * 1024)  # far beyond the initial 64 KiB windows
        stream.send(big)
        assert stream.buffered > 0
        stream.send(b"small")
        assert await asyncio.wait_for(stream.receive(), 10) == str(len(big)).encode()
        assert await asyncio.wait_for(stream.receive(), 10) == b"5"
        assert stream.buffered == 0
        # A unary-sized message on another stream of the same connection is not held up either.
        other = await channel.bidi(path("Echo"))
        other.send(b"hi")
        assert await asyncio.wait_for(other.receive(), 5) == b"echo:hi"
        other.cancel()
    finally:
        stream.cancel()


async def test_a_status_from_the_server_is_raised_with_its_code(channel: GrpcChannel) -> None:
    stream = await channel.bidi(path("Refuse"))
    try:
        stream.send(b"me")
        with pytest.raises(GrpcCallError) as raised:
            await asyncio.wait_for(stream.receive(), 5)
        assert (raised.value.code, raised.value.message) == (
            grpc.StatusCode.PERMISSION_DENIED.value[0],
            "not you",
        )
        with pytest.raises(GrpcCallError):
            await stream.receive()
        with pytest.raises(GrpcCallError):
            stream.send(b"again")
    finally:
        stream.cancel()


async def test_a_server_that_ends_first_ends_the_call(channel: GrpcChannel) -> None:
    stream = await channel.bidi(path("Once"))
    try:
        assert await asyncio.wait_for(stream.receive(), 5) == b"bye"
        assert await asyncio.wait_for(stream.receive(), 5) is None
        with pytest.raises(GrpcCallError):
            stream.send(b"late")
    finally:
        stream.cancel()


async def test_a_lost_connection_fails_the_call(port: int, supervisor: RecordingSupervisor) -> None:
    channel = GrpcChannel(f"127.0.0.1:{port}", spawn=supervisor.spawn)
    stream = await channel.bidi(path("Echo"))
    stream.send(b"x")
    assert await asyncio.wait_for(stream.receive(), 5) == b"echo:x"
    channel.reset()  # the connection goes away under the call
    with pytest.raises(GrpcCallError) as raised:
        await asyncio.wait_for(stream.receive(), 5)
    assert raised.value.code == 14
    stream.cancel()
    await channel.close()
