"""The admin HTTP listener over real sockets."""

from __future__ import annotations

import asyncio

from tether.shared.admin import AdminServer, Request, Response, health_routes


async def _http(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_live_ready_metrics_and_errors() -> None:
    state = {"ready": False}

    async def echo(request: Request) -> Response:
        return Response(200, request.body + request.peer.encode())

    routes = dict(health_routes(lambda: state["ready"]))
    routes[("POST", "/echo")] = echo
    server = AdminServer("127.0.0.1", 0, routes)
    await server.start()
    port = server.bound_port
    try:
        assert b" 200 " in await _http(port, b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b" 503 " in await _http(port, b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        state["ready"] = True
        assert b" 200 " in await _http(port, b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        metrics = await _http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"text/plain; version=0.0.4" in metrics and b"python_info" in metrics
        assert b" 404 " in await _http(port, b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b" 405 " in await _http(
            port, b"POST /live HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        echoed = await _http(
            port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
        )
        assert echoed.endswith(b"abc127.0.0.1")
        assert b" 400 " in await _http(port, b"NOT HTTP AT ALL\r\n\r\n")
        # Still serving after garbage.
        assert b" 200 " in await _http(port, b"GET /live HTTP/1.0\r\n\r\n")
    finally:
        await server.stop()
