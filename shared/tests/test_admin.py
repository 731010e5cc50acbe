"""The shared admin listener over real sockets, with the control-plane health routes.

The listener's handling of hostile input (garbage, oversized headers and bodies, vanishing peers, HEAD,
keep-alive) is exercised in services/proxy/tests/test_admin.py through the proxy's routes.
"""

from __future__ import annotations

import asyncio

from tether.shared.admin import AdminResponse, AdminServer, Routes, health_routes, text


async def _http(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


async def test_live_ready_metrics_and_extra_routes() -> None:
    state = {"ready": False}
    table = health_routes(lambda: state["ready"])
    table["/whoami"] = {"POST": lambda peer: AdminResponse(200, peer.encode())}
    server = AdminServer(Routes(table), "127.0.0.1", 0)
    await server.start()
    try:
        assert b" 200 " in await _http(server.port, _get("/live"))
        assert b" 503 " in await _http(server.port, _get("/ready"))
        state["ready"] = True
        assert b" 200 " in await _http(server.port, _get("/ready"))
        metrics = await _http(server.port, _get("/metrics"))
        assert b"text/plain; version=0.0.4" in metrics and b"python_info" in metrics
        assert b" 404 " in await _http(server.port, _get("/nope"))
        wrong_method = await _http(
            server.port, b"POST /live HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        assert b" 405 " in wrong_method and b"allow: GET, HEAD" in wrong_method
        whoami = await _http(
            server.port, b"POST /whoami HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        assert whoami.endswith(b"127.0.0.1")
        assert b" 400 " in await _http(server.port, b"NOT HTTP AT ALL\r\n\r\n")
        assert b" 200 " in await _http(server.port, b"GET /live HTTP/1.0\r\n\r\n"), (
            "still serving after garbage"
        )
    finally:
        await server.close()


def test_routes_are_pure() -> None:
    routes = Routes({"/x": {"GET": lambda _peer: text(200, "x")}})
    assert routes.handle("GET", "/x?debug=1", "10.0.0.1")[0].status == 200
    assert routes.handle("HEAD", "/x", "10.0.0.1")[0].status == 200
    assert routes.handle("PUT", "/x", "10.0.0.1")[0].status == 405
    assert routes.handle("GET", "/y", "10.0.0.1")[0].status == 404
