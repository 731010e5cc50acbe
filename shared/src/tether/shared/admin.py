"""The admin HTTP/1.1 listener every Tether process runs: /live, /ready, /metrics and process-specific routes.

HTTP parsing is h11's sans-IO state machine; :class:`AdminServer` is only the asyncio adapter, and routing is
a pure function of (method, path, peer) in :class:`Routes`. Malformed requests get a 4xx and the connection is
closed; nothing a peer sends can stop the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable, Mapping
from typing import Protocol

import h11
import msgspec
import structlog

from tether.shared.aio import cancel_and_wait

log = structlog.get_logger(__name__)

# The Prometheus text exposition format.
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
TEXT_CONTENT_TYPE = b"text/plain; charset=utf-8"
MAX_BODY_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024
READ_TIMEOUT_SECONDS = 30.0
# Small reads keep h11's header-size limit meaningful: it only judges data it could not parse yet.
READ_CHUNK_BYTES = 8192


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


class AdminServer:
    """asyncio listener feeding each connection's bytes through an h11 state machine."""

    def __init__(self, routes: AdminHandler, host: str, port: int) -> None:
        #: The route table; replaceable while serving (a component adds its routes once started).
        self.routes = routes
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("admin server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self._host, self._port)
        log.info("admin_listening", host=self._host, port=self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await cancel_and_wait(*self._connections)

    async def __aenter__(self) -> AdminServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        peer_host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        try:
            await self._serve(reader, writer, peer_host)
        except (ConnectionError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # close() cancels open connections. Ending normally: on Python 3.11 asyncio's stream callback
            # logs a cancelled connection task as an error ("Exception in callback ... CancelledError").
            pass
        except Exception:
            log.exception("admin_connection_failed", peer=peer_host)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_host: str
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        request: h11.Request | None = None
        body_size = 0
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                log.info("admin_bad_request", peer=peer_host, error=str(exc))
                await self._send_error(conn, writer, exc.error_status_hint, b"bad request\n")
                return
            if event is h11.NEED_DATA:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
                # arrives as data does, and a busy keep-alive client then holds close() (and shutdown).
                async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                    data = await reader.read(READ_CHUNK_BYTES)
                conn.receive_data(data)  # b"" marks the peer's EOF
                if not data and conn.their_state is h11.IDLE:
                    return
                continue
            if isinstance(event, h11.Request):
                request, body_size = event, 0
            elif isinstance(event, h11.Data):
                body_size += len(event.data)
                if body_size > MAX_BODY_BYTES:
                    await self._send_error(conn, writer, 413, b"request body too large\n")
                    return
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                after = await self._respond(conn, writer, request, peer_host)
                if after is not None:
                    after()
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
                request = None
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return

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
        await self._send(conn, writer, response, include_body=method != "HEAD")
        return after

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        response: AdminResponse,
        include_body: bool = True,
    ) -> None:
        headers = [
            (b"content-type", response.content_type),
            (b"content-length", str(len(response.body)).encode()),
            *response.headers,
        ]
        data = conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
        if include_body and response.body:
            data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        writer.write(data)
        await writer.drain()

    async def _send_error(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, body: bytes
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            await self._send(
                conn,
                writer,
                AdminResponse(status, body, headers=((b"connection", b"close"),)),
                include_body=True,
            )
        except h11.LocalProtocolError:
            # The request was too broken for h11 to frame a response; closing is all that is left.
            return
