"""One proxied request/response: a downstream stream paired with an upstream stream.

Each direction is a :class:`Pipe` that moves DATA from the stream it was
received on to the stream it is sent on, never faster than the receiving peer's
flow-control window allows. Received bytes are acknowledged to their sender
only once they have been handed on, so a slow reader slows the writer and what
the proxy holds per stream is bounded by the window it advertised.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TYPE_CHECKING, Protocol

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError

from tether.proxy.core.headers import (
    GRPC_UNAVAILABLE,
    Headers,
    error_response,
    grpc_status_of,
    request_target,
    status_of,
    strip_hop_by_hop,
)

if TYPE_CHECKING:
    from typing import TypeAlias

    from tether.proxy.core.connection import DownstreamConnection, Http2Connection, UpstreamConnection
    from tether.proxy.core.h1connection import H1DownstreamConnection, H1UpstreamConnection

    AnyDownstream: TypeAlias = DownstreamConnection | H1DownstreamConnection
    AnyUpstream: TypeAlias = UpstreamConnection | H1UpstreamConnection


class ExchangeListener(Protocol):
    """Observes an exchange's progress (load balancing, metrics)."""

    def response_started(self, exchange: Exchange, now: float) -> None: ...

    def exchange_finished(self, exchange: Exchange, now: float) -> None: ...


class State(enum.Enum):
    ROUTING = "routing"
    OPEN = "open"
    CLOSED = "closed"


class Pipe:
    """Buffered DATA (plus END_STREAM and trailers) travelling in one direction."""

    __slots__ = ("buffered", "chunks", "done", "dst", "dst_sid", "ended", "src", "src_sid", "trailers")

    def __init__(self, src: Http2Connection | None, src_sid: int) -> None:
        self.src = src
        self.src_sid = src_sid
        self.dst: Http2Connection | None = None
        self.dst_sid = 0
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        #: The sender has ended its side of the stream (END_STREAM seen).
        self.ended = False
        self.trailers: Headers | None = None
        #: END_STREAM has been passed on to the receiver.
        self.done = False

    def push(self, data: bytes, flow_controlled_length: int) -> None:
        if data:
            self.chunks.append(data)
            self.buffered += len(data)
        padding = flow_controlled_length - len(data)
        if padding and self.src is not None:
            self.src.acknowledge(self.src_sid, padding)

    def discard(self) -> None:
        """Drop buffered data, returning its flow-control credit to the sender's connection."""
        src = self.src
        if self.buffered and src is not None:
            src.acknowledge(self.src_sid, self.buffered)
            src.mark_dirty()
        self.chunks.clear()
        self.buffered = 0

    def flush(self, exchange: Exchange) -> None:
        dst = self.dst
        if dst is None:
            return
        sid = self.dst_sid
        chunks = self.chunks
        if chunks:
            if not dst.writable:
                dst.wait_to_send(sid, exchange)
                return
            window = dst.send_window(sid)
            max_frame = dst.max_frame_size
            src = self.src
            assert src is not None
            src_sid = self.src_sid
            while chunks:
                if window <= 0:
                    dst.wait_to_send(sid, exchange)
                    dst.mark_dirty()
                    src.mark_dirty()
                    return
                chunk = chunks[0]
                size = len(chunk)
                if size > window or size > max_frame:
                    size = min(window, max_frame)
                    chunks[0] = chunk[size:]
                    chunk = chunk[:size]
                else:
                    chunks.popleft()
                window -= size
                self.buffered -= size
                last = not chunks and self.ended and self.trailers is None
                dst.send_data(sid, chunk, last)
                src.acknowledge(src_sid, size)
                if last:
                    self.done = True
            src.mark_dirty()
        if self.ended and not self.done:
            if self.trailers is not None:
                dst.send_headers(sid, self.trailers, end_stream=True)
            else:
                dst.end_stream(sid)
            self.done = True
        dst.mark_dirty()


class CountingPipe(Pipe):
    """A :class:`Pipe` that also counts the body bytes it received: a tapped response, whose size the tap
    reports. Only tapped exchanges pay for the count (see :meth:`Exchange.count_response_bytes`)."""

    __slots__ = ("received",)

    def __init__(self, src: Http2Connection | None, src_sid: int) -> None:
        super().__init__(src, src_sid)
        self.received = 0

    def push(self, data: bytes, flow_controlled_length: int) -> None:
        self.received += len(data)
        super().push(data, flow_controlled_length)


class Exchange:
    """The forwarding state of one request; created by a downstream connection, routed by a Router."""

    __slots__ = (
        "_reset_after_response",
        "attached_at",
        "authority",
        "downstream",
        "downstream_sid",
        "failed_by_proxy",
        "grpc_status",
        "is_grpc",
        "listener",
        "request",
        "request_headers",
        "reset_code",
        "responded_at",
        "response",
        "response_started",
        "route_state",
        "started_at",
        "state",
        "status",
        "upgrade",
        "upstream",
        "upstream_sid",
    )

    def __init__(self, downstream: AnyDownstream, stream_id: int, headers: Headers, now: float) -> None:
        self.downstream = downstream
        self.downstream_sid = stream_id
        self.request_headers: Headers = headers
        self.authority, self.is_grpc = request_target(headers)
        self.upstream: AnyUpstream | None = None
        self.upstream_sid = 0
        #: The protocol an HTTP/1.1 client asked to switch to (``Upgrade``; hop-by-hop, so kept aside).
        self.upgrade: bytes | None = None
        #: When the upstream stream was opened.
        self.attached_at = now
        self.request = Pipe(downstream, stream_id)
        self.response = Pipe(None, 0)
        self.response.dst = downstream
        self.response.dst_sid = stream_id
        self.state = State.ROUTING
        self.started_at = now
        self.response_started = False
        #: When the response's headers (its first byte) were sent on, from upstream or by the proxy itself:
        #: latency is measured to here, as Linkerd does. None until then.
        self.responded_at: float | None = None
        self.listener: ExchangeListener | None = None
        #: Opaque per-exchange data owned by the router (e.g. the chosen endpoint).
        self.route_state: object = None
        self.status = 0
        self.grpc_status: int | None = None
        self.reset_code: int | None = None
        self.failed_by_proxy = False
        self._reset_after_response: int | None = None

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def protocol(self) -> str:
        """The client's protocol: ``h2`` or ``http/1.1``."""
        return self.downstream.protocol

    def count_response_bytes(self) -> None:
        """Count the response's body bytes (:attr:`response_bytes`); only before the upstream stream opens."""
        old = self.response
        if self.state is not State.ROUTING or isinstance(old, CountingPipe):
            return
        pipe = CountingPipe(None, 0)
        pipe.dst = old.dst
        pipe.dst_sid = old.dst_sid
        self.response = pipe

    @property
    def response_bytes(self) -> int:
        """Response body bytes received from upstream (0 unless :meth:`count_response_bytes` was called)."""
        response = self.response
        return response.received if isinstance(response, CountingPipe) else 0

    def attach(self, upstream: AnyUpstream, now: float) -> None:
        """Open the upstream stream and start forwarding; the upstream must have capacity."""
        if self.state is not State.ROUTING:
            return
        request = self.request
        end = request.ended and not request.chunks and request.trailers is None
        sid = upstream.open_stream(self, strip_hop_by_hop(self.request_headers), end)
        self.upstream = upstream
        self.upstream_sid = sid
        self.attached_at = now
        self.state = State.OPEN
        request.dst = upstream
        request.dst_sid = sid
        request.done = end
        self.response.src = upstream
        self.response.src_sid = sid
        if not end:
            self.pump(now)

    def fail(self, http_status: int, message: str, now: float) -> None:
        """Answer the request from the proxy itself (no upstream could be used)."""
        if self.state is State.CLOSED:
            return
        self.failed_by_proxy = True
        self.responded_at = now
        self.status = 200 if self.is_grpc else http_status
        self.grpc_status = GRPC_UNAVAILABLE if self.is_grpc else None
        down = self.downstream
        try:
            down.send_headers(
                self.downstream_sid, error_response(self.is_grpc, http_status, message), end_stream=True
            )
            if not self.request.ended:
                # Tell the client to stop sending a body nobody will read.
                down.reset(self.downstream_sid, ErrorCodes.NO_ERROR)
        except ProtocolError:
            pass
        down.mark_dirty()
        self._abort(now)

    def pump(self, now: float) -> None:
        """Move whatever the windows allow in both directions; finish when both are done."""
        if self.state is not State.OPEN:
            return
        request = self.request
        response = self.response
        try:
            if not request.done:
                request.flush(self)
            if not response.done:
                response.flush(self)
        except ProtocolError:
            self._reset_both(ErrorCodes.INTERNAL_ERROR, now)
            return
        if request.done and response.done:
            if self._reset_after_response is not None:
                self._reset_downstream(self._reset_after_response)
            self._finish(now)

    def response_headers(self, headers: Headers, ended: bool, now: float) -> None:
        if self.state is not State.OPEN:
            return
        self.response_started = True
        self.responded_at = now
        self.status = status_of(headers)
        if ended and self.is_grpc:
            self.grpc_status = grpc_status_of(headers)
        down = self.downstream
        try:
            down.send_headers(self.downstream_sid, strip_hop_by_hop(headers), end_stream=ended)
        except ProtocolError:
            self._reset_both(ErrorCodes.CANCEL, now)
            return
        down.mark_dirty()
        if self.listener is not None:
            self.listener.response_started(self, now)
        if ended:
            self.response.ended = True
            self.response.done = True
            self.pump(now)

    def informational_headers(self, headers: Headers) -> None:
        if self.state is State.OPEN:
            # A 101 (HTTP/1.1 only) must say what it switched to: its Upgrade and Connection stay.
            switching = self.upgrade is not None and status_of(headers) == 101
            try:
                self.downstream.send_headers(
                    self.downstream_sid, headers if switching else strip_hop_by_hop(headers)
                )
            except ProtocolError:
                return
            self.downstream.mark_dirty()

    def switched_protocols(self, now: float) -> None:
        """The server agreed to switch protocols (101, or 2xx to CONNECT): the request/response exchange is
        over, and the connections carry bytes from now on (their business, not the exchange's)."""
        if self.state is not State.OPEN:
            return
        self.response_started = True
        if self.responded_at is None:
            self.responded_at = now
        self.status = self.status or 101
        self.request.done = self.response.done = True
        self._finish(now)

    def response_trailers(self, headers: Headers) -> None:
        if self.is_grpc:
            self.grpc_status = grpc_status_of(headers)
        self.response.trailers = strip_hop_by_hop(headers)

    def reset_by_downstream(self, error_code: int, now: float) -> None:
        """The client reset its stream: cancel the upstream stream with the same code."""
        if self.state is State.CLOSED:
            return
        self.reset_code = error_code
        self._cancel_upstream(error_code, now)
        self._abort(now)

    def reset_by_upstream(self, error_code: int, now: float) -> None:
        """The server reset its stream: pass the reset (and its code) to the client."""
        if self.state is State.CLOSED:
            return
        if error_code == ErrorCodes.NO_ERROR and self.response.ended:
            # The server has answered in full and wants no more of the request body:
            # deliver the rest of the response, then say the same to the client.
            self.request.discard()
            self.request.done = True
            self._reset_after_response = ErrorCodes.NO_ERROR
            self.pump(now)
            return
        self.reset_code = error_code
        self._reset_downstream(error_code)
        self._abort(now)

    def refused_by_upstream(self, now: float) -> None:
        """The server went away without processing this stream; the client may retry it."""
        if self.state is State.CLOSED:
            return
        self.reset_code = ErrorCodes.REFUSED_STREAM
        self._reset_downstream(ErrorCodes.REFUSED_STREAM)
        self._abort(now)

    def downstream_lost(self, now: float) -> None:
        if self.state is State.CLOSED:
            return
        self.reset_code = ErrorCodes.CANCEL
        self._cancel_upstream(ErrorCodes.CANCEL, now)
        self._abort(now)

    def upstream_lost(self, now: float, reason: str = "upstream connection lost") -> None:
        """The upstream connection (or its stream) failed: answer as an unreachable server would look."""
        if self.state is State.CLOSED:
            return
        if not self.response_started:
            self.fail(502, reason, now)
            return
        self.request.discard()
        self.request.done = True
        response = self.response
        if self.is_grpc and not response.ended:
            # What was received is still delivered, then the stream ends as UNAVAILABLE.
            response.trailers = error_response(True, 502, reason)[2:]
            response.ended = True
            self.grpc_status = GRPC_UNAVAILABLE
            self.pump(now)
        elif not response.done:
            self.reset_code = ErrorCodes.INTERNAL_ERROR
            self._reset_downstream(ErrorCodes.INTERNAL_ERROR)
            self._abort(now)

    def _reset_both(self, error_code: int, now: float) -> None:
        self.reset_code = error_code
        self._reset_upstream(error_code)
        self._reset_downstream(error_code)
        self._abort(now)

    def _cancel_upstream(self, error_code: int, now: float) -> None:
        # The client gave up. A response under way is reset at once (an ordinary cancellation); a stream
        # still waiting for its response is left to the upstream connection to end (see
        # UpstreamConnection.abandon): many clients share that connection, and a burst of young resets
        # on it is what a server's rapid-reset defence cuts connections off for.
        upstream = self.upstream
        if upstream is None or (self.request.done and self.response.ended):
            return
        if self.response_started:
            self._reset_upstream(error_code)
        else:
            upstream.abandon(self.upstream_sid, self.attached_at, now)

    def _reset_upstream(self, error_code: int) -> None:
        upstream = self.upstream
        if upstream is not None and not (self.request.done and self.response.ended):
            try:
                upstream.reset(self.upstream_sid, error_code)
            except ProtocolError:
                return
            upstream.mark_dirty()

    def _reset_downstream(self, error_code: int) -> None:
        down = self.downstream
        try:
            down.reset(self.downstream_sid, error_code)
        except ProtocolError:
            return
        down.mark_dirty()

    def _abort(self, now: float) -> None:
        self.request.discard()
        self.response.discard()
        self._finish(now)

    def _finish(self, now: float) -> None:
        self.state = State.CLOSED
        self.request_headers = ()
        upstream = self.upstream
        if upstream is not None:
            upstream.release(self.upstream_sid, now)
        down = self.downstream
        down.release(self.downstream_sid, now)
        if self.listener is not None:
            self.listener.exchange_finished(self, now)
        if upstream is not None:
            upstream.stream_released()
        down.stream_released()
