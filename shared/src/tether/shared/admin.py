"""The admin HTTP/1.1 listener every Tether process runs: /live, /ready, /metrics and process-specific routes.

HTTP parsing is h11's sans-IO state machine under :mod:`tether.shared.http1`'s adapter, and routing is
a pure function of (method, path, peer) in :class:`Routes`. Malformed requests get a 4xx and the connection is
closed; nothing a peer sends can stop the listener.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Mapping
from typing import Protocol

import h11
import msgspec
import structlog

from tether.shared import http1

log = structlog.get_logger(__name__)

# The Prometheus text exposition format.
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
TEXT_CONTENT_TYPE = b"text/plain; charset=utf-8"
MAX_BODY_BYTES = 64 * 1024


class AdminResponse(msgspec.Struct, frozen=True):
    status: int
    body: bytes
    content_type: bytes = TEXT_CONTENT_TYPE
    headers: tuple[tuple[bytes, bytes], ...] = ()


# Runs once the response has been written (e.g. a shutdown requested over the admin port).
AfterResponse = Callable[[], None]
# A route gets the peer's address and answers; it may also ask for an action after the reply.
Route = Callable[[str], "AdminResponse | tuple[AdminResponse, AfterResponse | None]"]


class AdminHandler(Protocol):
    def handle(self, method: str, target: str, peer_host: str) -> tuple[AdminResponse, AfterResponse | None]:
        """The response to a request, and an optional action to run once it has been sent."""
        ...


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything unparsable."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def text(status: int, body: str) -> AdminResponse:
    return AdminResponse(status, (body + "\n").encode())


class Routes:
    """A route table: path → method → route. HEAD is answered by the GET route, without the body."""

    def __init__(self, table: Mapping[str, Mapping[str, Route]]) -> None:
        self._table = {path: dict(methods) for path, methods in table.items()}

    def handle(self, method: str, target: str, peer_host: str) -> tuple[AdminResponse, AfterResponse | None]:
        methods = self._table.get(target.split("?", 1)[0])
        if methods is None:
            return text(404, "not found"), None
        route = methods.get("GET" if method == "HEAD" else method)
        if route is None:
            allow = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
            return AdminResponse(405, b"method not allowed\n", headers=((b"allow", allow.encode()),)), None
        answer = route(peer_host)
        return answer if isinstance(answer, tuple) else (answer, None)


def _render_prometheus_registry() -> bytes:
    # Imported on first scrape: the proxy serves its own registry and never loads prometheus_client.
    from prometheus_client import REGISTRY, generate_latest

    return generate_latest(REGISTRY)


def health_routes(
    ready: Callable[[], bool], render_metrics: Callable[[], bytes] | None = None
) -> dict[str, dict[str, Route]]:
    """``/live`` (the process is up), ``/ready`` (``ready()``), ``/metrics`` (prometheus_client default)."""
    render = render_metrics or _render_prometheus_registry

    def live(_peer: str) -> AdminResponse:
        return text(200, "live")

    def readiness(_peer: str) -> AdminResponse:
        return text(200, "ready") if ready() else text(503, "not ready")

    def metrics(_peer: str) -> AdminResponse:
        return AdminResponse(200, render(), METRICS_CONTENT_TYPE)

    return {"/live": {"GET": live}, "/ready": {"GET": readiness}, "/metrics": {"GET": metrics}}


class AdminServer(http1.Listener):
    """The admin listener: each connection's requests answered by ``routes``."""

    def __init__(self, routes: AdminHandler, host: str, port: int) -> None:
        super().__init__(host, port, name="admin")
        #: The route table; replaceable while serving (a component adds its routes once started).
        self.routes = routes

    async def start(self) -> None:
        await self._listen(self._host)
        log.info("admin_listening", host=self._host, port=self.port)

    async def __aenter__(self) -> AdminServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_host: str
    ) -> None:
        conn = http1.server_connection()

        async def respond(request: h11.Request, _body: bytes) -> bool:
            after = await self._respond(conn, writer, request, peer_host)
            if after is not None:
                after()
            return True

        refusal = await http1.serve_requests(conn, reader, respond, max_body_bytes=MAX_BODY_BYTES)
        if refusal is not None:
            if refusal.detail is not None:
                log.info("admin_bad_request", peer=peer_host, error=refusal.detail)
            body = (refusal.reason + "\n").encode()
            headers = _head(TEXT_CONTENT_TYPE, body, http1.CLOSE)
            await http1.write_refusal(conn, writer, refusal.status, headers, body)

    async def _respond(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, peer_host: str
    ) -> Callable[[], None] | None:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        try:
            response, after = self.routes.handle(method, target, peer_host)
        except Exception:
            log.exception("admin_handler_failed", path=target)
            response, after = AdminResponse(500, b"internal error\n"), None
        headers = _head(response.content_type, response.body, response.headers)
        await http1.write_response(
            conn, writer, response.status, headers, response.body, include_body=method != "HEAD"
        )
        return after


def _head(content_type: bytes, body: bytes, extra: http1.Headers) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]
