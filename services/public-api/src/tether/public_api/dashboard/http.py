"""The dashboard's HTTP/1.1 listener: h11's sans-IO state machine under a thin asyncio adapter, in the admin
listener's style (:mod:`tether.shared.admin`), plus what that one does not need: asynchronous handlers that
see the request's headers and body, and streamed responses (server-sent events).

A handler gets a :class:`Request` and answers a :class:`Response` or a :class:`Stream`. A stream's chunks are
written as they come; ``None`` is an idle tick (a chunk source yields one at least every second or so), on
which the adapter notices a client that went away and, after a while, sends a comment line so that proxies
on the way (``kubectl port-forward``) keep the connection. Closing the stream's generator is how its source
learns that the client left. Every response carries ``common_headers`` (the security headers).
Malformed requests get a 4xx and the connection is closed; nothing a peer sends can stop the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

import h11
import structlog

from tether.shared.aio import cancel_and_wait
from tether.shared.listen import bind_failure

log = structlog.get_logger(__name__)

TEXT = b"text/plain; charset=utf-8"
MAX_BODY_BYTES = 16 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_CONNECTIONS = 128
READ_TIMEOUT_SECONDS = 30.0
READ_CHUNK_BYTES = 8192
KEEPALIVE_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    #: Lower-case names; a repeated field's values joined with ", " (a repeated Host is refused earlier).
    headers: dict[str, str]
    body: bytes = b""
    peer: str = ""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: bytes = TEXT
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(slots=True)
class Stream:
    """A response whose body is written as ``chunks`` yields it (``None``: nothing yet, still there)."""

    chunks: AsyncGenerator[bytes | None, None]
    content_type: bytes = b"text/event-stream; charset=utf-8"
    status: int = 200
    headers: tuple[tuple[bytes, bytes], ...] = field(default=())


Handler = Callable[[Request], Awaitable[Response | Stream]]


def text(status: int, body: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Response:
    return Response(status, (body + "\n").encode(), TEXT, headers)


_CLOSE = ((b"connection", b"close"),)


def parse_request(event: h11.Request, body: bytes, peer: str) -> Request | Response:
    """The handler's view of a request, or the 400 it gets (and the connection closed)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in event.headers:
        name, value = raw_name.decode("ascii", "replace").lower(), raw_value.decode("latin-1")
        if name in headers:
            if name == "host":
                return text(400, "bad request: more than one Host field", _CLOSE)
            headers[name] = f"{headers[name]}, {value}"
        else:
            headers[name] = value
    target = event.target.decode("ascii", "replace")
    if not target.startswith("/"):
        return text(400, "bad request: expected an origin-form target (/path)", _CLOSE)
    path, _, query = target.partition("?")
    try:
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, max_num_fields=32))
    except ValueError:
        return text(400, "bad request: too many query parameters", _CLOSE)
    return Request(event.method.decode("ascii", "replace"), path, params, headers, body, peer)


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        *,
        common_headers: tuple[tuple[bytes, bytes], ...] = (),
        option: str = "--dashboard-addr",
    ) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._common = common_headers
        self._option = option
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the dashboard is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        host = self._host.strip("[]")
        try:
            self._server = await asyncio.start_server(self._accept, host, self._port)
        except OSError as exc:
            addr = f"[{host}]:{self._port}" if ":" in host else f"{host}:{self._port}"
            raise bind_failure(self._option, addr, exc) from None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Open streams (a tap page left open) end here; wait_closed would wait for them otherwise.
        await cancel_and_wait(*self._connections)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        peer_host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        try:
            await self._serve(reader, writer, peer_host)
        except (ConnectionError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # close() cancels open connections; ending normally keeps Python 3.11's stream callback quiet.
            pass
        except Exception:
            log.exception("dashboard_connection_failed", peer=peer_host)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        request: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                await self._send_error(conn, writer, exc.error_status_hint, "bad request")
                return
            if event is h11.NEED_DATA:
                async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                    data = await reader.read(READ_CHUNK_BYTES)
                conn.receive_data(data)  # b"" marks the peer's EOF
                if not data and conn.their_state is h11.IDLE:
                    return
                continue
            if isinstance(event, h11.Request):
                request, body = event, bytearray()
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES:
                    await self._send_error(conn, writer, 413, "request body too large")
                    return
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                parsed = parse_request(request, bytes(body), peer)
                answer = parsed if isinstance(parsed, Response) else await self._handle(parsed)
                head = request.method == b"HEAD"
                if isinstance(answer, Stream):
                    await self._stream(conn, reader, writer, answer)
                    return
                await self._send(conn, writer, answer, include_body=not head)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
                request = None
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return

    async def _handle(self, request: Request) -> Response | Stream:
        try:
            return await self._handler(request)
        except Exception:
            log.exception("dashboard_handler_failed", path=request.path[:200])
            return text(500, "internal error")

    def _head(
        self, content_type: bytes, headers: tuple[tuple[bytes, bytes], ...]
    ) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", content_type), *self._common, *headers]

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        response: Response,
        include_body: bool = True,
    ) -> None:
        headers = [
            *self._head(response.content_type, response.headers),
            (b"content-length", str(len(response.body)).encode()),
        ]
        data = conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
        if include_body and response.body:
            data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        writer.write(data)
        await writer.drain()

    async def _stream(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: Stream
    ) -> None:
        headers = [
            *self._head(stream.content_type, stream.headers),
            (b"connection", b"close"),
        ]
        loop = asyncio.get_running_loop()
        try:
            writer.write(conn.send(h11.Response(status_code=stream.status, headers=headers)) or b"")
            await writer.drain()
            quiet_since = loop.time()
            async for chunk in stream.chunks:
                # The client closed its side (the page went away): the source is closed below.
                if reader.at_eof() or writer.is_closing():
                    return
                data = chunk
                if data is None:
                    if loop.time() - quiet_since < KEEPALIVE_SECONDS:
                        continue
                    data = b": keep-alive\n\n"
                quiet_since = loop.time()
                writer.write(conn.send(h11.Data(data=data)) or b"")
                await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        finally:
            await stream.chunks.aclose()

    async def _send_error(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, body: str
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(h11.LocalProtocolError):
            await self._send(conn, writer, text(status, body, _CLOSE))
