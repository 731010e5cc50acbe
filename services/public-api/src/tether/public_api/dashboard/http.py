"""The dashboard's HTTP/1.1 listener: h11's sans-IO state machine under the asyncio adapter it shares with the
admin listener (:mod:`tether.shared.http1`), plus what that one does not need: asynchronous handlers that
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
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

import h11
import structlog

from tether.shared import http1
from tether.shared.listen import bind_failure

log = structlog.get_logger(__name__)

TEXT = b"text/plain; charset=utf-8"
MAX_BODY_BYTES = 16 * 1024
MAX_CONNECTIONS = 128
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


def parse_request(event: h11.Request, body: bytes, peer: str) -> Request | Response:
    """The handler's view of a request, or the 400 it gets (and the connection closed)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in event.headers:
        name, value = raw_name.decode("ascii", "replace").lower(), raw_value.decode("latin-1")
        if name in headers:
            if name == "host":
                return text(400, "bad request: more than one Host field", http1.CLOSE)
            headers[name] = f"{headers[name]}, {value}"
        else:
            headers[name] = value
    target = event.target.decode("ascii", "replace")
    if not target.startswith("/"):
        return text(400, "bad request: expected an origin-form target (/path)", http1.CLOSE)
    path, _, query = target.partition("?")
    try:
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, max_num_fields=32))
    except ValueError:
        return text(400, "bad request: too many query parameters", http1.CLOSE)
    return Request(event.method.decode("ascii", "replace"), path, params, headers, body, peer)


class HttpServer(http1.Listener):
    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        *,
        common_headers: tuple[tuple[bytes, bytes], ...] = (),
        option: str = "--dashboard-addr",
    ) -> None:
        super().__init__(host, port, name="dashboard", max_connections=MAX_CONNECTIONS)
        self._handler = handler
        self._common = common_headers
        self._option = option

    async def start(self) -> None:
        host = self._host.strip("[]")
        try:
            await self._listen(host)
        except OSError as exc:
            addr = f"[{host}]:{self._port}" if ":" in host else f"{host}:{self._port}"
            raise bind_failure(self._option, addr, exc) from None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        conn = http1.server_connection()

        async def respond(request: h11.Request, body: bytes) -> bool:
            parsed = parse_request(request, body, peer)
            answer = parsed if isinstance(parsed, Response) else await self._handle(parsed)
            if isinstance(answer, Stream):
                await self._stream(conn, reader, writer, answer)
                return False
            await self._send(conn, writer, answer, include_body=request.method != b"HEAD")
            return True

        refusal = await http1.serve_requests(conn, reader, respond, max_body_bytes=MAX_BODY_BYTES)
        if refusal is not None:
            error = text(refusal.status, refusal.reason, http1.CLOSE)
            await http1.write_refusal(conn, writer, error.status, self._response_head(error), error.body)

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

    def _response_head(self, response: Response) -> list[tuple[bytes, bytes]]:
        return [
            *self._head(response.content_type, response.headers),
            (b"content-length", str(len(response.body)).encode()),
        ]

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        response: Response,
        include_body: bool = True,
    ) -> None:
        headers = self._response_head(response)
        await http1.write_response(conn, writer, response.status, headers, response.body, include_body)

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
