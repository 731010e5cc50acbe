"""Without iptables (a local mesh, ``tether run``) the inbound proxy has no original destination: it
forwards to ``--inbound-app-port``, and without one it refuses, saying why. A real proxy in this process
and a real HTTP/1.1 application (Python's http.server) on loopback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tether.proxy.config import ProxyConfig
from tether.proxy.proxy import Proxy
from tether.shared.config import IdentityClientConfig


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"app saw {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def app_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


async def get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".encode())
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def inbound_proxy(app_port: int) -> Proxy:
    config = ProxyConfig(
        outbound_addr="127.0.0.1:0",
        inbound_addr="127.0.0.1:0",
        admin_addr="127.0.0.1:0",
        destination_addr="",
        identity=IdentityClientConfig(disabled=True),
        inbound_app_port=app_port,
    )
    proxy = Proxy(config, original_dst=lambda _sock: None)  # no iptables: nothing was redirected
    await proxy.start()
    return proxy


async def test_the_inbound_side_forwards_to_the_configured_application_port(app_port: int) -> None:
    proxy = await inbound_proxy(app_port)
    try:
        answer = await get(proxy.inbound_port, "/hello")
    finally:
        await proxy.stop(0.1)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"app saw /hello"), answer


async def test_without_an_application_port_the_request_is_refused_with_the_reason(app_port: int) -> None:
    proxy = await inbound_proxy(0)
    try:
        answer = await get(proxy.inbound_port, "/hello")
    finally:
        await proxy.stop(0.1)
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n"), answer
    assert b"--inbound-app-port" in answer  # the proxy's error header names the fix
