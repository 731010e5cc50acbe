"""A small admin HTTP/1.1 listener (``/live``, ``/ready``, ``/metrics`` and service-specific routes).

HTTP parsing is h11's sans-IO state machine; this module is only the asyncio adapter and a route table.
Malformed requests get a 400 and the connection is closed; nothing a peer sends can crash the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

import h11
import msgspec
import structlog
from prometheus_client import REGISTRY, generate_latest

log = structlog.get_logger(__name__)

MAX_BODY = 64 * 1024
READ_TIMEOUT = 10.0
# The Prometheus text exposition format that generate_latest() writes.
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class Request(msgspec.Struct, frozen=True):
    method: str
    path: str
    peer: str
    body: bytes = b""


class Response(msgspec.Struct, frozen=True):
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[Request], Awaitable[Response]]


def text(status: int, body: str) -> Response:
    return Response(status, (body + "\n").encode())


def prometheus_route(registry: object = REGISTRY) -> Route:
    async def metrics(_request: Request) -> Response:
        return Response(200, generate_latest(registry), PROMETHEUS_TEXT)  # type: ignore[arg-type]

    return metrics


def health_routes(ready: Callable[[], bool]) -> dict[tuple[str, str], Route]:
    """``/live`` (the process answers) and ``/ready`` (``ready()`` says it can serve)."""

    async def live(_request: Request) -> Response:
        return text(200, "live")

    async def readiness(_request: Request) -> Response:
        return text(200, "ready") if ready() else text(503, "not ready")

    return {("GET", "/live"): live, ("GET", "/ready"): readiness, ("GET", "/metrics"): prometheus_route()}


class AdminServer:
    def __init__(self, host: str, port: int, routes: Mapping[tuple[str, str], Route]) -> None:
        self.host = host
        self.port = port
        self._routes = dict(routes)
        self._server: asyncio.Server | None = None

    @property
    def bound_port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if peername else ""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            while True:
                request = await self._read_request(conn, reader, peer)
                if request is None:
                    break
                response = await self._dispatch(request)
                writer.write(self._encode(conn, response))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            log.info("admin_bad_request", peer=peer, error=str(exc))
            with contextlib.suppress(h11.LocalProtocolError):
                writer.write(self._encode(conn, text(exc.error_status_hint, "bad request")))
        except (ConnectionError, TimeoutError, h11.LocalProtocolError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, peer: str
    ) -> Request | None:
        method = path = ""
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(16384), READ_TIMEOUT)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                method, path = event.method.decode(), event.target.decode("latin-1").split("?", 1)[0]
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
            elif isinstance(event, h11.EndOfMessage):
                return Request(method=method, path=path, peer=peer, body=bytes(body))
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _dispatch(self, request: Request) -> Response:
        route = self._routes.get((request.method, request.path))
        if route is None:
            if any(path == request.path for _method, path in self._routes):
                return text(405, "method not allowed")
            return text(404, "not found")
        try:
            return await route(request)
        except Exception:
            log.exception("admin_route_failed", path=request.path)
            return text(500, "internal error")

    @staticmethod
    def _encode(conn: h11.Connection, response: Response) -> bytes:
        headers = [("content-type", response.content_type), ("content-length", str(len(response.body)))]
        return b"".join(
            filter(
                None,
                (
                    conn.send(h11.Response(status_code=response.status, headers=headers)),
                    conn.send(h11.Data(data=response.body)) if response.body else b"",
                    conn.send(h11.EndOfMessage()),
                ),
            )
        )
