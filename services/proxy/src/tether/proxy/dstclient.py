"""A minimal gRPC client for Destination/Get, built on the proxy's own h2 stack.

The data path already speaks HTTP/2; the gRPC framing of a server-streaming
call is a 5-byte prefix per message. Doing it here instead of loading grpcio
keeps the sidecar's resident memory about 14 MB smaller. All Get streams share
one connection, which is replaced when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import cast

import structlog
from google.protobuf.message import DecodeError
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
from tether.proxy.core.resolution import Update
from tether.proxy.errors import DestinationStreamError
from tether.proxy.protoconv import update_from_proto
from tether.shared.proto.destination.v1 import destination_pb2
from tether.shared.supervisor import SupervisedTask, TaskFactory

log = structlog.get_logger(__name__)

GET_PATH = b"/tether.destination.v1.Destination/Get"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# gRPC status codes used here.
UNAVAILABLE = 14
CANCELLED = 1
INTERNAL = 13
RESOURCE_EXHAUSTED = 8

_END = object()


class _GetCall:
    """One Get stream: decoded updates (or the final status) queued for the reader."""

    __slots__ = ("buffer", "finished", "grpc_message", "grpc_status", "queue", "stream_id")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.buffer = bytearray()
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
            try:
                message = destination_pb2.Update.FromString(bytes(buffer[5 : 5 + length]))
            except DecodeError:
                self.fail(INTERNAL, "the destination service sent an undecodable message")
                return
            del buffer[: 5 + length]
            update = update_from_proto(message)
            if update is not None:
                self.queue.put_nowait(update)

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
            self.queue.put_nowait(DestinationStreamError(status, self.grpc_message))

    def fail(self, status: int, message: str) -> None:
        if not self.finished:
            self.finished = True
            self.queue.put_nowait(DestinationStreamError(status, message))


Spawn = Callable[..., SupervisedTask]


class _DestinationConnection(asyncio.Protocol):
    def __init__(self, authority: bytes, keepalive: float, spawn: Spawn) -> None:
        self.h2 = new_client_connection()
        self.authority = authority
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, _GetCall] = {}
        self.usable = True
        self._keepalive = keepalive
        self._last_read = time.monotonic()
        self._ping_outstanding = False
        self._spawn = spawn
        self._keepalive_task: SupervisedTask | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._flush()
        keep_alive: TaskFactory = self._keep_alive
        self._keepalive_task = self._spawn("destination-keepalive", keep_alive, critical=False)

    def start_get(self, request: bytes) -> _GetCall:
        h2 = self.h2
        stream_id = h2.get_next_available_stream_id()
        h2.send_headers(
            stream_id,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", GET_PATH),
                (b":authority", self.authority),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ],
        )
        h2.send_data(stream_id, b"\x00" + len(request).to_bytes(4, "big") + request, end_stream=True)
        call = self.calls[stream_id] = _GetCall(stream_id)
        self._flush()
        return call

    def cancel(self, call: _GetCall) -> None:
        self.calls.pop(call.stream_id, None)
        if not call.finished and self.transport is not None:
            call.finished = True
            with contextlib.suppress(ProtocolError):
                self.h2.reset_stream(call.stream_id, ErrorCodes.CANCEL)
            self._flush()

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        self._ping_outstanding = False
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            log.warning("destination_protocol_error")
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
                        other.fail(UNAVAILABLE, "destination service went away")
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.usable = False
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        for call in self.calls.values():
            call.fail(UNAVAILABLE, "connection to the destination service lost")
        self.calls.clear()

    async def _keep_alive(self) -> None:
        # A control plane that vanished without closing the connection must still be
        # noticed, or the proxy would wait forever on streams that cannot update.
        while self.transport is not None:
            await asyncio.sleep(self._keepalive)
            if time.monotonic() - self._last_read < self._keepalive:
                continue
            if self._ping_outstanding:
                log.warning("destination_keepalive_timeout")
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


class H2DestinationStreams:
    """Opens Destination/Get streams to ``target`` over one shared HTTP/2 connection."""

    def __init__(
        self,
        target: str,
        context_token: str,
        *,
        spawn: Spawn,
        connect_timeout: float = 1.0,
        keepalive: float = 10.0,
    ) -> None:
        self._spawn = spawn
        host, _, port = target.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._authority = target.encode("ascii")
        self._context_token = context_token
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._connection: _DestinationConnection | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connect(self) -> _DestinationConnection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            connection = self._connection
            if connection is not None and connection.usable:
                return connection
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._connect_timeout):
                    _, connection = await loop.create_connection(
                        lambda: _DestinationConnection(self._authority, self._keepalive, self._spawn),
                        self._host,
                        self._port,
                    )
            except (OSError, TimeoutError) as exc:
                raise DestinationStreamError(UNAVAILABLE, f"connecting to destination: {exc!r}") from None
            self._connection = connection
            return connection

    async def open(self, authority: str) -> AsyncGenerator[Update, None]:
        """Updates of one Get stream; raises DestinationStreamError when it fails."""
        connection = await self._connect()
        request = destination_pb2.GetDestination(
            authority=authority, context_token=self._context_token
        ).SerializeToString()
        try:
            call = connection.start_get(request)
        except ProtocolError as exc:
            connection.close()
            raise DestinationStreamError(UNAVAILABLE, f"cannot open stream: {exc}") from None
        try:
            while True:
                item = await call.queue.get()
                if item is _END:
                    return
                if isinstance(item, DestinationStreamError):
                    raise item
                yield cast(Update, item)
        finally:
            connection.cancel(call)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
