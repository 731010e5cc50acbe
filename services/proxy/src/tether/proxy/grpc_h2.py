"""A minimal gRPC client over the proxy's own h2 stack, plaintext or TLS with a verified peer identity.

The proxy talks gRPC to destination (server streaming), identity (unary) and telemetry (bidirectional
streaming) without grpcio, which would add ~35 MB to every sidecar. The framing of a gRPC message is a
5-byte prefix; everything else is HTTP/2. Request messages go out as the server's flow-control windows
allow. All calls to one target share one connection, replaced when it fails. A TLS connection is accepted
only when the server's certificate chains to the trust anchors and names exactly the expected identity."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import cast

import structlog
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import ProtocolError

from tether.proxy.core.h2conn import new_client_connection
from tether.proxy.errors import GrpcCallError
from tether.proxy.tlsconfig import ClientTls, IdentityMismatch, verify_peer_identity
from tether.shared.supervisor import SupervisedTask, TaskFactory

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# gRPC status codes used here.
CANCELLED = 1
DEADLINE_EXCEEDED = 4
RESOURCE_EXHAUSTED = 8
INTERNAL = 13
UNAVAILABLE = 14

Spawn = Callable[..., SupervisedTask]
_END = object()


class _Call:
    """One call: received messages (raw bytes) or its final status, queued for the reader."""

    __slots__ = (
        "buffer",
        "finished",
        "grpc_message",
        "grpc_status",
        "half_close",
        "outbox",
        "queue",
        "stream_id",
    )

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.buffer = bytearray()
        #: Request bytes the peer's flow-control windows do not admit yet (client streaming only).
        self.outbox = bytearray()
        self.half_close = False
        self.grpc_status: int | None = None
        self.grpc_message = ""
        self.finished = False

    def headers(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            if name == b":status" and value != b"200":
                self.grpc_status = UNAVAILABLE
                self.grpc_message = f"HTTP status {value.decode('ascii', 'replace')}"
            elif name == b"grpc-status":
                self.grpc_status = int(value) if value.isdigit() else INTERNAL
            elif name == b"grpc-message":
                self.grpc_message = value.decode("utf-8", "replace")

    def feed(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 5:
            if buffer[0] != 0:
                self.fail(INTERNAL, "compressed messages are not supported")
                return
            length = int.from_bytes(buffer[1:5], "big")
            if length > MAX_MESSAGE_BYTES:
                self.fail(RESOURCE_EXHAUSTED, "message too large")
                return
            if len(buffer) < 5 + length:
                return
            self.queue.put_nowait(bytes(buffer[5 : 5 + length]))
            del buffer[: 5 + length]

    def end(self) -> None:
        if self.finished:
            return
        self.finished = True
        status = self.grpc_status
        if status is None:
            status, self.grpc_message = INTERNAL, "stream ended without grpc-status"
        if status == 0:
            self.queue.put_nowait(_END)
        else:
            self.queue.put_nowait(GrpcCallError(status, self.grpc_message))

    def fail(self, status: int, message: str) -> None:
        if not self.finished:
            self.finished = True
            self.queue.put_nowait(GrpcCallError(status, message))


class _Connection(asyncio.Protocol):
    def __init__(self, authority: bytes, keepalive: float, spawn: Spawn, tls: ClientTls | None) -> None:
        self.h2 = new_client_connection()
        self.authority = authority
        self.scheme = b"https" if tls is not None else b"http"
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, _Call] = {}
        self.usable = True
        #: No new calls; closed once its last call is over (``GrpcChannel.retire``).
        self.retired = False
        self._tls = tls
        self._keepalive = keepalive
        self._last_read = time.monotonic()
        self._ping_outstanding = False
        self._spawn = spawn
        self._keepalive_task: SupervisedTask | None = None
        #: Why the connection was refused at the handshake (identity mismatch), if it was.
        self.refused: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self._tls is not None:
            try:
                verify_peer_identity(transport.get_extra_info("ssl_object"), self._tls.expected_identity)
            except IdentityMismatch as exc:
                self.refused = str(exc)
                self.usable = False
                self.transport.abort()
                return
        self._flush()
        keep_alive: TaskFactory = self._keep_alive
        self._keepalive_task = self._spawn("grpc-keepalive", keep_alive, critical=False)

    def start_call(self, path: bytes, request: bytes | None, timeout: float | None) -> _Call:
        """Open a call; ``request`` is its only message (None: messages follow, see ``send_message``)."""
        h2 = self.h2
        stream_id = h2.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", self.scheme),
            (b":path", path),
            (b":authority", self.authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        if timeout is not None:
            headers.append((b"grpc-timeout", f"{max(1, int(timeout * 1000))}m".encode()))
        h2.send_headers(stream_id, headers)
        call = self.calls[stream_id] = _Call(stream_id)
        if request is not None:
            self.send_message(call, request, end=True)
        self._flush()
        return call

    def send_message(self, call: _Call, message: bytes, end: bool = False) -> None:
        """Queue one request message (and, with ``end``, the end of the requests) and send what the
        windows allow; the rest goes as the server opens its windows."""
        if call.finished or call.half_close or self.transport is None:
            raise GrpcCallError(UNAVAILABLE, "the call is over")
        call.outbox += b"\x00" + len(message).to_bytes(4, "big") + message
        call.half_close = end
        self._pump(call)
        self._flush()

    def end_requests(self, call: _Call) -> None:
        if not (call.finished or call.half_close or self.transport is None):
            call.half_close = True
            self._pump(call)
            self._flush()

    def _pump(self, call: _Call) -> None:
        h2 = self.h2
        outbox = call.outbox
        try:
            while outbox:
                size = min(
                    h2.local_flow_control_window(call.stream_id), h2.max_outbound_frame_size, len(outbox)
                )
                if size <= 0:
                    return
                h2.send_data(call.stream_id, bytes(outbox[:size]))
                del outbox[:size]
            if call.half_close:
                h2.end_stream(call.stream_id)
        except ProtocolError:
            outbox.clear()
            call.fail(UNAVAILABLE, "the stream closed while sending")

    def cancel(self, call: _Call) -> None:
        self.calls.pop(call.stream_id, None)
        if not call.finished and self.transport is not None:
            call.finished = True
            with contextlib.suppress(ProtocolError):
                self.h2.reset_stream(call.stream_id, ErrorCodes.CANCEL)
            self._flush()
        self._close_if_retired()

    def retire(self) -> None:
        """Take no new calls; the calls in progress go on, and the connection closes after the last."""
        self.usable = False
        self.retired = True
        self._close_if_retired()

    def _close_if_retired(self) -> None:
        if self.retired and not self.calls:
            self.close()

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        self._ping_outstanding = False
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            log.warning("grpc_peer_protocol_error", authority=self.authority.decode(errors="replace"))
            self._abort()
            return
        calls = self.calls
        for event in events:
            if isinstance(event, DataReceived):
                stream_id = event.stream_id
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
                call = calls.get(stream_id)
                if call is not None and event.data:
                    call.feed(event.data)
            elif isinstance(event, ResponseReceived | TrailersReceived):
                call = calls.get(event.stream_id)
                if call is not None and event.headers is not None:
                    call.headers(event.headers)
            elif isinstance(event, StreamEnded):
                call = calls.pop(event.stream_id, None)
                if call is not None:
                    call.end()
            elif isinstance(event, StreamReset):
                call = calls.pop(event.stream_id, None)
                if call is not None:
                    cancelled = event.error_code == ErrorCodes.CANCEL
                    call.fail(CANCELLED if cancelled else UNAVAILABLE, "stream reset")
            elif isinstance(event, ConnectionTerminated):
                self.usable = False
                last = event.last_stream_id or 0
                for stream_id, other in list(calls.items()):
                    if stream_id > last:
                        other.fail(UNAVAILABLE, "the server went away")
        for call in calls.values():
            if call.outbox and not call.finished:
                self._pump(call)  # windows may have opened (WINDOW_UPDATE, SETTINGS)
        self._flush()
        self._close_if_retired()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.usable = False
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        for call in self.calls.values():
            call.fail(UNAVAILABLE, "connection lost")
        self.calls.clear()

    async def _keep_alive(self) -> None:
        # A server that vanished without closing the connection must still be noticed, or calls would
        # wait forever on streams that cannot update.
        while self.transport is not None:
            await asyncio.sleep(self._keepalive)
            if time.monotonic() - self._last_read < self._keepalive:
                continue
            if self._ping_outstanding:
                log.warning("grpc_keepalive_timeout", authority=self.authority.decode(errors="replace"))
                self._abort()
                return
            self._ping_outstanding = True
            self.h2.ping(b"tetherka")
            self._flush()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _abort(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.close()


class GrpcChannel:
    """Calls to one gRPC server over one shared HTTP/2 connection (TLS when ``tls`` gives a config)."""

    def __init__(
        self,
        target: str,
        *,
        spawn: Spawn,
        tls: Callable[[], ClientTls | None] = lambda: None,
        connect_timeout: float = 1.0,
        keepalive: float = 10.0,
    ) -> None:
        host, _, port = target.rpartition(":")
        self.target = target
        self._host = host.strip("[]")
        self._port = int(port)
        self._authority = target.encode("ascii")
        self._spawn = spawn
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        #: Connections refused because the server's certificate named another identity.
        self.identity_mismatches = 0

    async def _connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            connection = self._connection
            if connection is not None and connection.usable:
                return connection
            tls = self._tls()
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._connect_timeout):
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self._authority, self._keepalive, self._spawn, tls),
                        self._host,
                        self._port,
                        ssl=tls.context if tls is not None else None,
                        server_hostname=tls.expected_identity if tls is not None else None,
                    )
            except (OSError, TimeoutError) as exc:
                raise GrpcCallError(UNAVAILABLE, f"connecting to {self.target}: {exc!r}") from None
            if connection.refused is not None:
                self.identity_mismatches += 1
                raise GrpcCallError(UNAVAILABLE, f"{self.target}: {connection.refused}")
            self._connection = connection
            return connection

    async def _open(
        self, path: bytes, request: bytes | None, timeout: float | None
    ) -> tuple[_Connection, _Call]:
        connection = await self._connect()
        try:
            return connection, connection.start_call(path, request, timeout)
        except ProtocolError as exc:
            connection.close()
            raise GrpcCallError(UNAVAILABLE, f"cannot open a stream to {self.target}: {exc}") from None

    async def stream(
        self, path: bytes, request: bytes, *, retire_on_end: bool = False
    ) -> AsyncGenerator[bytes, None]:
        """A server-streaming call: each response message's bytes; raises GrpcCallError when it fails.

        ``retire_on_end``: when the server ends the call with OK, retire its connection (see ``_retire``)."""
        connection, call = await self._open(path, request, None)
        try:
            while True:
                item = await call.queue.get()
                if item is _END:
                    if retire_on_end:
                        self._retire(connection)
                    return
                if isinstance(item, GrpcCallError):
                    raise item
                yield cast(bytes, item)
        finally:
            connection.cancel(call)

    async def unary(self, path: bytes, request: bytes, timeout: float) -> bytes:
        """A unary call's response message; raises GrpcCallError (DEADLINE_EXCEEDED after ``timeout``)."""
        try:
            async with asyncio.timeout(timeout):
                connection, call = await self._open(path, request, timeout)
                try:
                    response: bytes | None = None
                    while True:
                        item = await call.queue.get()
                        if item is _END:
                            break
                        if isinstance(item, GrpcCallError):
                            raise item
                        response = cast(bytes, item)
                finally:
                    connection.cancel(call)
        except TimeoutError:
            raise GrpcCallError(
                DEADLINE_EXCEEDED, f"{self.target} did not answer within {timeout:g}s"
            ) from None
        if response is None:
            raise GrpcCallError(INTERNAL, f"{self.target} answered without a message")
        return response

    async def bidi(self, path: bytes) -> BidiStream:
        """A bidirectional-streaming call (also fits client streaming); ``cancel()`` it when done."""
        connection, call = await self._open(path, None, None)
        return BidiStream(connection, call)

    def _retire(self, connection: _Connection) -> None:
        """Calls after this one open a new connection (which may reach another server behind the same
        address); the calls still on ``connection`` go on until they end, then it closes."""
        connection.retire()
        if self._connection is connection:
            self._connection = None

    def reset(self) -> None:
        """Drop the connection (new TLS configuration, say): the next call connects again."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        self.reset()


class BidiStream:
    """One bidirectional call: ``send`` messages whenever (never blocks: what the server's windows do not
    admit yet waits in ``buffered`` bytes), ``receive`` the server's. Cancel it when done with it."""

    def __init__(self, connection: _Connection, call: _Call) -> None:
        self._connection = connection
        self._call = call

    def send(self, message: bytes) -> None:
        """Raises GrpcCallError (UNAVAILABLE) once the call is over."""
        try:
            self._connection.send_message(self._call, message)
        except ProtocolError as exc:
            raise GrpcCallError(UNAVAILABLE, f"cannot send: {exc}") from None

    def end_requests(self) -> None:
        """No more requests (half-close); responses may still come."""
        self._connection.end_requests(self._call)

    @property
    def buffered(self) -> int:
        """Request bytes waiting for the server's flow-control window."""
        return len(self._call.outbox)

    async def receive(self) -> bytes | None:
        """The next response message; None when the server ended the call with OK; raises GrpcCallError
        when it ended otherwise (or the connection was lost)."""
        item = await self._call.queue.get()
        if item is _END:
            self._call.queue.put_nowait(_END)  # so that every later receive says the same
            return None
        if isinstance(item, GrpcCallError):
            self._call.queue.put_nowait(item)
            raise item
        return cast(bytes, item)

    def cancel(self) -> None:
        """Reset the call (if it is still open) and forget it."""
        self._connection.cancel(self._call)
