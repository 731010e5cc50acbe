"""Limits on what clients can hold in the proxy: idle client connections, distinct authorities.

Real proxies on loopback sockets. Raw clients are written with hyperframe so that what they send (a
silent socket, half a frame) is exact and what the proxy answers is read off the wire.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import grpc
import grpc.aio
import pytest
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, SettingsFrame
from proxy_mesh import Mesh, Pod, authority, unary

from tether.shared.testing import eventually

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
IDLE_TIMEOUT = 0.3


def parse_frames(data: bytes) -> list[Frame]:
    frames: list[Frame] = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


def metric(pod: Pod, name: str) -> float:
    """One sample of the pod's proxy's /metrics text (the same text the admin endpoint serves)."""
    text = pod.proxy.registry.render(time.monotonic())
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in metrics"
    return float(match.group(1))


async def until_closed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, dribble: bytes = b"", timeout: float = 5.0
) -> tuple[bytes, float]:
    """Read until the proxy closes the connection (writing ``dribble`` one byte per read); returns what
    was read and when the close was seen."""
    received = b""
    async with asyncio.timeout(timeout):
        for index in range(10**6):
            if index < len(dribble):
                try:
                    writer.write(dribble[index : index + 1])
                    await writer.drain()
                except ConnectionError:
                    pass
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.05)
            except TimeoutError:
                continue
            except ConnectionError:
                break
            if not chunk:
                break
            received += chunk
    return received, time.monotonic()


async def call_allowing_one_refusal(call: Any, request: bytes) -> bytes:
    """Retry once a call its connection's idle close refused before processing it.

    With a 0.3 s timeout on a loaded machine, a fresh connection can reach the timeout before its
    first request arrives; the GOAWAY (last stream 0) then tells the client the stream was not
    processed and is safe to retry, which grpc does not do itself with retries disabled.
    """
    try:
        answer: bytes = await call(request, timeout=5)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.UNAVAILABLE or "GOAWAY" not in (error.details() or ""):
            raise
        answer = await call(request, timeout=5)
    return answer


async def test_a_silent_client_of_the_outbound_listener_is_closed_after_the_detect_timeout(
    mesh: Mesh,
) -> None:
    """Nothing within the detection timeout means TCP; a client that dialled the proxy itself has no
    original destination to be relayed to (no open relay), so it is closed, saying nothing."""
    pod = await mesh.pod(detect_timeout=IDLE_TIMEOUT)
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection(pod.host, pod.proxy.outbound_port)
    try:
        received, closed = await until_closed(reader, writer)
    finally:
        writer.close()
    assert closed - opened >= IDLE_TIMEOUT
    assert received == b""
    failed = 'proxy_tcp_forward_failed_total{direction="outbound",reason="no_original_destination"}'
    await eventually(lambda: metric(pod, failed) == 1)
    assert metric(pod, 'proxy_protocol_detected_total{direction="outbound",protocol="opaque"}') == 1


async def test_a_silent_client_of_the_inbound_listener_is_relayed_to_the_application(mesh: Mesh) -> None:
    """A client that waits for the server to speak first reaches the application after the detection
    timeout, as TCP: the application (here an HTTP/2 server) answers with its own preface."""
    pod = await mesh.pod("echo", detect_timeout=IDLE_TIMEOUT)
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection(pod.host, pod.proxy.inbound_port)
    try:
        first = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
    assert time.monotonic() - opened >= IDLE_TIMEOUT
    assert any(isinstance(f, SettingsFrame) for f in parse_frames(first)), first  # grpc's server preface
    assert metric(pod, 'proxy_protocol_detected_total{direction="inbound",protocol="opaque"}') == 1


async def test_half_a_frame_after_the_preface_gets_goaway_then_close(mesh: Mesh) -> None:
    pod = await mesh.pod(downstream_idle_timeout=IDLE_TIMEOUT)
    reader, writer = await asyncio.open_connection(pod.host, pod.proxy.outbound_port)
    opened = time.monotonic()
    headers = HeadersFrame(1)
    headers.data = b"\x82" * 64
    headers.flags.add("END_HEADERS")
    writer.write(PREFACE + bytes(SettingsFrame(0).serialize()) + bytes(headers.serialize())[:20])
    try:
        received, closed = await until_closed(reader, writer)
    finally:
        writer.close()
    assert closed - opened >= IDLE_TIMEOUT
    (goaway,) = [f for f in parse_frames(received) if isinstance(f, GoAwayFrame)]
    assert goaway.error_code == 0 and goaway.last_stream_id == 0


async def test_bytes_that_never_complete_a_request_do_not_keep_a_connection(mesh: Mesh) -> None:
    pod = await mesh.pod(downstream_idle_timeout=IDLE_TIMEOUT)
    reader, writer = await asyncio.open_connection(pod.host, pod.proxy.outbound_port)
    writer.write(PREFACE + bytes(SettingsFrame(0).serialize()))
    headers = HeadersFrame(1)
    headers.data = b"\x82" * 1000
    headers.flags.add("END_HEADERS")
    try:
        # One byte of a frame roughly every 50 ms, far more often than the timeout.
        received, _ = await until_closed(reader, writer, dribble=bytes(headers.serialize()))
    finally:
        writer.close()
    assert any(isinstance(f, GoAwayFrame) for f in parse_frames(received))


async def test_connections_with_a_request_in_flight_stay_open_past_the_idle_timeout(mesh: Mesh) -> None:
    server = await mesh.pod("echo", downstream_idle_timeout=IDLE_TIMEOUT)
    client = await mesh.pod(downstream_idle_timeout=IDLE_TIMEOUT)
    await mesh.register("echo", [server])
    assert server.app is not None
    app = server.app
    outbound_closed = 'proxy_downstream_idle_closed_total{direction="outbound"}'
    inbound_closed = 'proxy_downstream_idle_closed_total{direction="inbound"}'
    async with client.channel(authority("echo")) as channel:
        call = asyncio.ensure_future(unary(channel)(b"hold:", timeout=10))
        await eventually(lambda: app.in_flight == 1, 5, "call held by the app")
        held_since = time.monotonic()
        # Time passing is what is under test: watch for four timeouts' worth of sweeps.
        while time.monotonic() - held_since < 4 * IDLE_TIMEOUT:
            assert not call.done()
            assert metric(client, outbound_closed) == 0  # the app's connection to its proxy
            assert metric(server, inbound_closed) == 0  # the client proxy's connection to the server's
            await asyncio.sleep(0.02)
        app.release.set()
        assert await call == b"hold:"
        # With the stream gone both connections are idle and are closed in their turn.
        await eventually(lambda: metric(client, outbound_closed) == 1, 5, "client connection closed")
        await eventually(lambda: metric(server, inbound_closed) == 1, 5, "proxy connection closed")
        # The channel reconnects for the next call as it would after any GOAWAY.
        assert await call_allowing_one_refusal(unary(channel), b"echo:again") == b"echo:again"


async def test_new_authorities_beyond_the_cap_fail_fast_and_known_ones_keep_working(mesh: Mesh) -> None:
    server = await mesh.pod("echo")
    client = await mesh.pod(max_authorities=2, fail_fast_timeout=3.0)
    await mesh.register("echo", [server])
    await mesh.register("echo-two", [server])
    for service in ("echo", "echo-two"):
        async with client.channel(authority(service)) as channel:
            assert await unary(channel)(b"echo:x", timeout=5) == b"echo:x"
    async with client.channel(authority("invented")) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await unary(channel)(b"echo:x", timeout=5)
        elapsed = time.monotonic() - started
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "limit of 2 distinct authorities" in (raised.value.details() or "")
    assert elapsed < 1.0  # refused at once, not after the fail-fast timeout
    assert metric(client, "proxy_authority_limit_rejected_total") == 1
    assert metric(client, "proxy_authorities_resolved") == 2
    async with client.channel(authority("echo")) as channel:
        assert await unary(channel)(b"echo:still", timeout=5) == b"echo:still"
