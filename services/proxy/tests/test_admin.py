"""The admin listener over real loopback sockets, with raw HTTP/1.1 bytes from the client side."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tether.proxy.admin import shutdown_routes
from tether.proxy.metrics import MetricsRegistry
from tether.shared.admin import AdminServer, Routes, health_routes, is_loopback


class Probe:
    """The callbacks an admin server is built with, recording what it was asked."""

    def __init__(self) -> None:
        self.registry = MetricsRegistry()
        self.is_ready = False
        self.shutdowns = 0
        self.metrics_fail = False

    def render(self) -> str:
        if self.metrics_fail:
            raise RuntimeError("collector broke")
        return self.registry.render(now=0.0)

    def ready(self) -> bool:
        return self.is_ready

    def shutdown(self) -> None:
        self.shutdowns += 1

    def routes(self) -> Routes:
        """The table the process runtime builds for the proxy: health routes plus POST /shutdown."""
        return Routes(
            {**health_routes(self.ready, lambda: self.render().encode()), **shutdown_routes(self.shutdown)}
        )


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def admin(probe: Probe) -> AsyncIterator[AdminServer]:
    async with AdminServer(probe.routes(), host="127.0.0.1", port=0) as server:
        yield server


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


async def read_reply(reader: asyncio.StreamReader, head_request: bool = False) -> Reply:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = 0 if head_request else int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    return Reply(int(status_line.split()[1]), headers, body)


async def exchange(server: AdminServer, raw: bytes, replies: int = 1) -> list[Reply]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(raw)
        await writer.drain()
        return [await read_reply(reader, head_request=raw.startswith(b"HEAD")) for _ in range(replies)]
    finally:
        writer.close()
        await writer.wait_closed()


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: admin\r\n\r\n".encode()


async def test_metrics_served_in_prometheus_text_format(admin: AdminServer, probe: Probe) -> None:
    probe.registry.route("inbound", "web:80").request()
    (reply,) = await exchange(admin, get("/metrics"))
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'request_total{direction="inbound",authority="web:80"} 1\n' in reply.body.decode()


async def test_live_and_ready_follow_the_callback(admin: AdminServer, probe: Probe) -> None:
    live, not_ready = await exchange(admin, get("/live") + get("/ready"), replies=2)
    assert (live.status, live.body) == (200, b"live\n")
    assert (not_ready.status, not_ready.body) == (503, b"not ready\n")
    probe.is_ready = True
    (ready,) = await exchange(admin, get("/ready?verbose=1"))
    assert (ready.status, ready.body) == (200, b"ready\n")


async def test_head_gets_headers_without_a_body(admin: AdminServer) -> None:
    (reply,) = await exchange(admin, get("/live", method="HEAD") + get("/live"), replies=1)
    assert reply.status == 200 and reply.headers["content-length"] == "5" and reply.body == b""


async def test_shutdown_from_loopback_is_accepted_after_the_reply(admin: AdminServer, probe: Probe) -> None:
    (reply,) = await exchange(admin, b"POST /shutdown HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert reply.status == 202
    assert probe.shutdowns == 1


def test_shutdown_from_another_address_is_forbidden(probe: Probe) -> None:
    """Real sockets from a non-loopback peer are covered in tests/netns/test_admin_netns.py."""
    response, after = probe.routes().handle("POST", "/shutdown", "10.0.0.7")
    assert response.status == 403 and after is None
    assert probe.shutdowns == 0


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.7", False),
        ("::ffff:10.0.0.7", False),
        ("fe80::1%eth0", False),
        ("", False),
        ("not-an-ip", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


async def test_wrong_method_and_unknown_path(admin: AdminServer, probe: Probe) -> None:
    get_shutdown, post_metrics, missing = await exchange(
        admin,
        get("/shutdown") + b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi" + get("/nope"),
        replies=3,
    )
    assert (get_shutdown.status, get_shutdown.headers["allow"]) == (405, "POST")
    assert (post_metrics.status, post_metrics.headers["allow"]) == (405, "GET, HEAD")
    assert missing.status == 404
    assert probe.shutdowns == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /live HTTP/1.1\r\nHost: a\r\nBad Header Line\r\n\r\n",
        b"GET /live HTTP/1.1\r\nHost: a\r\nContent-Length: banana\r\n\r\n",
        b"GET /live HTTP/1.1\r\n\r\n",  # HTTP/1.1 requires Host
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",  # a TLS ClientHello
    ],
)
async def test_malformed_requests_get_400_and_the_server_keeps_serving(
    admin: AdminServer, garbage: bytes
) -> None:
    (reply,) = await exchange(admin, garbage)
    assert reply.status == 400
    assert reply.headers["connection"] == "close"
    (live,) = await exchange(admin, get("/live"))
    assert live.status == 200


async def test_oversized_headers_and_bodies_are_refused(admin: AdminServer) -> None:
    (big_header,) = await exchange(
        admin, b"GET /live HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    )
    assert big_header.status == 431
    body = b"x" * 70_000
    (big_body,) = await exchange(
        admin, b"POST /shutdown HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    assert big_body.status == 413


async def test_a_failing_metrics_callback_gives_500_not_a_crash(admin: AdminServer, probe: Probe) -> None:
    probe.metrics_fail = True
    (reply,) = await exchange(admin, get("/metrics"))
    assert reply.status == 500
    probe.metrics_fail = False
    (reply,) = await exchange(admin, get("/metrics"))
    assert reply.status == 200


async def test_peer_vanishing_mid_request_leaves_the_server_up(admin: AdminServer) -> None:
    for partial in (
        b"GET /metr",
        b"POST /shutdown HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
        b"",
    ):
        _reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
        writer.write(partial)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    (live,) = await exchange(admin, get("/live"))
    assert live.status == 200


async def test_connection_close_is_honoured(admin: AdminServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    writer.write(b"GET /live HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    reply = await read_reply(reader)
    assert reply.status == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()
