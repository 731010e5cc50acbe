"""The HTTP/1.1 server pieces Tether's small listeners share (the admin port, the dashboard).

HTTP parsing is h11's sans-IO state machine. :class:`Listener` is the asyncio side: it accepts, tracks each
connection's task so that ``close()`` can end it, and keeps a misbehaving peer from reaching the caller.
:func:`serve_requests` runs one connection's request/response cycles, handing each complete request to the
caller and saying why when a request is refused; :func:`write_response` and :func:`write_refusal` put a
response on the wire. What a listener answers, and which headers it adds, stays with the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import h11
import structlog

from tether.shared.aio import cancel_and_wait

log = structlog.get_logger(__name__)

Headers = Sequence[tuple[bytes, bytes]]

MAX_HEADER_BYTES = 16 * 1024
READ_TIMEOUT_SECONDS = 30.0
# Small reads keep h11's header-size limit meaningful: it only judges data it could not parse yet.
READ_CHUNK_BYTES = 8192
CLOSE: tuple[tuple[bytes, bytes], ...] = ((b"connection", b"close"),)

# Answers one complete request (its body already read); False ends the connection after it.
Respond = Callable[[h11.Request, bytes], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a peer's request got no answer from the listener: the status and reason to send it, then close."""

    status: int
    reason: str
    #: h11's account of a malformed request, for the log (None for an oversized body).
    detail: str | None = None


def server_connection() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)


async def serve_requests(
    conn: h11.Connection, reader: asyncio.StreamReader, respond: Respond, *, max_body_bytes: int
) -> Refusal | None:
    """Feeds the peer's bytes through ``conn`` and each complete request to ``respond``, keep-alive included.

    Returns when the connection is done: ``None`` after a clean end (EOF between requests, ``Connection:
    close``, ``respond`` saying so), or the :class:`Refusal` the caller is to send before closing.
    """
    request: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return Refusal(exc.error_status_hint, "bad request", str(exc))
        if event is h11.NEED_DATA:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
            # arrives as data does, and a busy keep-alive client then holds close() (and shutdown).
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                data = await reader.read(READ_CHUNK_BYTES)
            conn.receive_data(data)  # b"" marks the peer's EOF
            if not data and conn.their_state is h11.IDLE:
                return None
            continue
        if isinstance(event, h11.Request):
            request, body = event, bytearray()
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body_bytes:
                return Refusal(413, "request body too large")
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            if not await respond(request, bytes(body)):
                return None
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return None
            conn.start_next_cycle()
            request = None
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


async def write_response(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    status: int,
    headers: Headers,
    body: bytes,
    include_body: bool = True,
) -> None:
    """One whole response; ``headers`` as they go on the wire (content-length included by the caller)."""
    data = conn.send(h11.Response(status_code=status, headers=list(headers))) or b""
    if include_body and body:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    writer.write(data)
    await writer.drain()


async def write_refusal(
    conn: h11.Connection, writer: asyncio.StreamWriter, status: int, headers: Headers, body: bytes
) -> None:
    """The error response to a refused request, where one can still be sent (the caller closes after it)."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    # The request may be too broken for h11 to frame a response; closing is all that is left then.
    with contextlib.suppress(h11.LocalProtocolError):
        await write_response(conn, writer, status, headers, body)


class Listener:
    """An asyncio listener whose connections are served by :meth:`_serve` and ended by :meth:`close`.

    ``name`` prefixes its log events; ``max_connections`` (if set) closes a connection beyond it at once.
    """

    def __init__(self, host: str, port: int, *, name: str, max_connections: int | None = None) -> None:
        self._host = host
        self._port = port
        self._name = name
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError(f"{self._name} server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def _listen(self, host: str) -> None:
        self._server = await asyncio.start_server(self._accept, host, self._port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Open connections (a keep-alive client, a stream left open) end here; on Python 3.12+ wait_closed
        # would wait for them otherwise.
        await cancel_and_wait(*self._connections)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_host: str
    ) -> None:
        """Serves one connection until it is done; the caller closes it."""
        raise NotImplementedError

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._max_connections is not None and len(self._connections) >= self._max_connections:
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
            # close() cancels open connections. Ending normally: on Python 3.11 asyncio's stream callback
            # logs a cancelled connection task as an error ("Exception in callback ... CancelledError").
            pass
        except Exception:
            log.exception(f"{self._name}_connection_failed", peer=peer_host)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)
