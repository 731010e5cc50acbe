"""HTTP/1.1 connections of the proxy: a client's (downstream) and one to a server (upstream).

Each wraps an h1 codec (:mod:`tether.proxy.core.h1codec`) and drives the same :class:`Exchange` as the
HTTP/2 connections do, one request at a time. After a protocol switch (``101``, or a 2xx to ``CONNECT``)
the two connections of the exchange are joined into a byte tunnel. Bytes received but not yet passed on
are bounded: past :data:`READ_BUFFER_HIGH` the connection asks its I/O layer to stop reading.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import h11

from tether.proxy.core.abuse import ClientLimits
from tether.proxy.core.connection import FlushScheduler, Http2Connection, Router, UpstreamConnection
from tether.proxy.core.conninfo import ConnectionInfo
from tether.proxy.core.exchange import Exchange
from tether.proxy.core.h1codec import READ_BUFFER_HIGH, H1ClientCodec, H1ServerCodec, reason_phrase
from tether.proxy.core.h1screen import Refusal, screen_head
from tether.proxy.core.headers import Header, without_internal


class ReadControl(Protocol):
    """The I/O layer's side of back-pressure: stop and restart reading from the peer."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class _NoReads:
    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _H1Connection(Http2Connection):
    """What both directions share: read pausing, and the tunnel after a protocol switch."""

    __slots__ = ("reads", "reads_paused", "tunnel")

    h2: H1ServerCodec | H1ClientCodec

    def _setup(self) -> None:
        self.reads: ReadControl = _NoReads()
        self.reads_paused = False
        #: The other connection of a switched exchange: what arrives here is written there, untouched.
        self.tunnel: _H1Connection | None = None

    def _pause(self) -> None:
        if not self.reads_paused:
            self.reads_paused = True
            self.reads.pause_reading()

    def _resume(self) -> None:
        if self.reads_paused and self.h2.unacknowledged <= READ_BUFFER_HIGH:
            self.reads_paused = False
            self.reads.resume_reading()

    def _to_tunnel(self, data: bytes) -> None:
        peer = self.tunnel
        if peer is None or peer.closing:
            return
        if data:
            peer.h2.write_raw(data)
            peer.mark_dirty()
        if not peer.writable:
            self._pause()

    def set_writable(self, writable: bool, now: float) -> None:
        super().set_writable(writable, now)
        peer = self.tunnel
        if peer is not None:
            if writable:
                peer._resume()
            else:
                peer._pause()

    def join(self, peer: _H1Connection) -> None:
        """Become one end of a byte tunnel: what either side still has buffered goes across now."""
        self.tunnel = peer
        leftover, _ = self.h2.h11.trailing_data
        if leftover:
            self._to_tunnel(bytes(leftover))
        if self.reads_paused and peer.writable:  # (paused while h11 held the bytes after the request)
            self.reads_paused = False
            self.reads.resume_reading()

    @property
    def switched(self) -> bool:
        """A protocol switch (101, or a 2xx to CONNECT) went through: the rest is a byte stream."""
        return self.h2.switched

    def tunnel_closed(self) -> None:
        """The other end closed: close this one once what it sent is written."""
        self.closing = True
        self.mark_dirty()


class H1DownstreamConnection(_H1Connection):
    """A client's HTTP/1.1 connection: each request becomes an :class:`Exchange`."""

    h2: H1ServerCodec
    protocol = "http/1.1"

    __slots__ = (
        "abuse",
        "drain_last_stream_id",
        "guard",
        "idle_since",
        "info",
        "max_header_count",
        "opened_at",
        "peer_gone",
        "preface_received",
        "refusal",
        "router",
    )

    def __init__(
        self,
        scheduler: FlushScheduler,
        router: Router,
        *,
        limits: ClientLimits,
        context: object = None,
        info: ConnectionInfo | None = None,
        now: float = 0.0,
    ) -> None:
        super().__init__(H1ServerCodec(self._drained, limits.max_header_list_size), scheduler, context)
        self._setup()
        self.router = router
        self.info = info
        self.max_header_count = limits.max_header_count
        self.opened_at = now
        self.idle_since = now
        #: A whole request head arrived (the HTTP/1 counterpart of HTTP/2's preface).
        self.preface_received = False
        #: Why the client's request was refused before routing (smuggling defences), once one was.
        self.refusal: Refusal | None = None
        self.peer_gone = False
        self.drain_last_stream_id: int | None = None
        #: HTTP/1.1 has no abuse classes of its own (one request at a time); kept for the I/O layer.
        self.abuse: str | None = None

    def _drained(self) -> None:
        self._resume()

    def receive_data(self, data: bytes, now: float) -> None:
        if self.tunnel is not None:
            self._to_tunnel(data)
            return
        if self.closing:
            return
        if data:
            self.h2.h11.receive_data(data)
        self._process(now)

    def peer_closed(self, now: float) -> None:
        """The client sent its FIN: what it sent is still served, then the connection closes."""
        if self.tunnel is not None:
            peer = self.tunnel
            if not peer.closing:
                peer.tunnel_closed()
            return
        with contextlib.suppress(RuntimeError):
            self.h2.h11.receive_data(b"")
        self._resume_paused()
        self._process(now)
        if not self.exchanges:
            self.closing = True
            self.mark_dirty()

    def _process(self, now: float) -> None:
        codec = self.h2
        conn = codec.h11
        arrived: Exchange | None = None
        exchange = self._current()
        while not self.closing:
            if conn.their_state is h11.IDLE:
                refusal = screen_head(bytes(conn.trailing_data[0]), codec.max_head_bytes)
                if refusal is not None:
                    self._refuse(refusal)
                    return
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                self._refuse(Refusal(status, "malformed_request", str(exc)[:200]))
                if exchange is not None:
                    exchange.downstream_lost(now)
                return
            if event is h11.NEED_DATA:
                break
            if event is h11.PAUSED:
                # A pipelined request waits for the current response; stop reading until then.
                if not codec.switched:
                    self._pause()
                break
            kind = type(event)
            if kind is h11.Request:
                exchange = arrived = self._request(event, now)  # type: ignore[arg-type]
                if exchange is None:
                    return
            elif kind is h11.Data:
                if exchange is not None and not exchange.closed:
                    size = len(event.data)  # type: ignore[union-attr]
                    codec.unacknowledged += size
                    exchange.request.push(bytes(event.data), size)  # type: ignore[union-attr]
                    if codec.unacknowledged > READ_BUFFER_HIGH:
                        self._pause()
            elif kind is h11.EndOfMessage:
                if exchange is not None and not exchange.closed:
                    trailers = without_internal(list(event.headers))  # type: ignore[union-attr]
                    if trailers:
                        exchange.request.trailers = trailers
                    exchange.request.ended = True
            elif kind is h11.ConnectionClosed:
                self.peer_gone = True
                break
        if arrived is not None and not arrived.closed:
            self.router.route(arrived)
        elif exchange is not None:
            exchange.pump(now)
        if self.peer_gone and exchange is None:
            self.closing = True
        self.mark_dirty()

    def _current(self) -> Exchange | None:
        for exchange in self.exchanges.values():
            return exchange
        return None

    def _request(self, event: h11.Request, now: float) -> Exchange | None:
        self.preface_received = True
        codec = self.h2
        method = bytes(event.method)
        fields: list[Header] = []
        host = b""
        upgrade: bytes | None = None
        connection_tokens: set[bytes] = set()
        for name, value in event.headers:
            if name == b"host":
                host = bytes(value)
            else:
                fields.append((bytes(name), bytes(value)))
                if name == b"connection":
                    connection_tokens.update(token.strip().lower() for token in value.split(b","))
                elif name == b"upgrade":
                    upgrade = bytes(value)
        if len(fields) + 1 > self.max_header_count:
            self._refuse(Refusal(431, "too_many_headers", f"more than {self.max_header_count} header fields"))
            return None
        target = bytes(event.target)
        if method == b"CONNECT":
            pseudo = [(b":method", method), (b":authority", target)]
        else:
            path = target
            if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
                parts = urlsplit(target)
                host = parts.netloc or host  # absolute-form: the target names the authority (RFC 9112 §3.2.2)
                path = target[len(parts.scheme) + 3 + len(parts.netloc) :] or b"/"
            if not host:
                host = self._original_authority()
            pseudo = [(b":method", method), (b":scheme", b"http"), (b":authority", host), (b":path", path)]
        stream_id = codec.next_stream(method)
        exchange = Exchange(self, stream_id, [*pseudo, *fields], now)
        if upgrade is not None and b"upgrade" in connection_tokens:
            exchange.upgrade = upgrade
        if self.drain_last_stream_id is not None:
            codec.must_close = True
        self.exchanges[stream_id] = exchange
        return exchange

    def _original_authority(self) -> bytes:
        """For a request without Host (HTTP/1.0): where the client connected, as discovery takes it."""
        original = self.info.original_dst if self.info is not None else None
        if original is None:
            return b""
        host, port = original
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()

    def _refuse(self, refusal: Refusal) -> None:
        self.refusal = refusal
        self.error = f"{refusal.reason}: {refusal.message}"
        body = refusal.message.encode("ascii", "replace") + b"\n"
        head = f"HTTP/1.1 {refusal.status} ".encode() + reason_phrase(refusal.status) + b"\r\n"
        self.h2.write_raw(
            head
            + b"content-type: text/plain\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        self.closing = True
        self.mark_dirty()

    def release(self, stream_id: int, now: float) -> None:
        self.idle_since = now
        self.exchanges.pop(stream_id, None)
        self.blocked.pop(stream_id, None)

    def stream_released(self) -> None:
        if self.exchanges or self.closing:
            return
        codec = self.h2
        if codec.switched:
            return
        conn = codec.h11
        if codec.must_close or self.peer_gone or self.drain_last_stream_id is not None:
            self.closing = True
        elif conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._resume_paused()
            if conn.trailing_data[0]:
                self._process(self.idle_since)
        elif h11.MUST_CLOSE in (conn.our_state, conn.their_state) or h11.ERROR in (
            conn.our_state,
            conn.their_state,
        ):
            self.closing = True
        self.mark_dirty()

    def _resume_paused(self) -> None:
        if self.reads_paused:
            self.reads_paused = False
            self.reads.resume_reading()

    def cut_off(self, reason: str, now: float) -> None:
        self.abuse = reason
        self.closing = True
        self.connection_lost(now)
        self.mark_dirty()

    def start_drain(self) -> None:
        """Requests in flight complete with ``Connection: close``; an idle connection closes now."""
        if self.drain_last_stream_id is None:
            self.drain_last_stream_id = self.h2.stream_id
            self.h2.must_close = True
            self.stream_released()

    def close_if_silent(self, now: float, handshake_timeout: float) -> bool:
        if self.preface_received or self.closing or now - self.opened_at < handshake_timeout:
            return False
        self.closing = True
        self.mark_dirty()
        return True

    def close_if_idle(self, now: float, idle_timeout: float) -> bool:
        if self.exchanges or self.closing or self.tunnel is not None or now - self.idle_since < idle_timeout:
            return False
        self.closing = True
        self.mark_dirty()
        return True

    def connection_lost(self, now: float) -> None:
        self.closing = True
        if self.tunnel is not None:
            self.tunnel.tunnel_closed()
        for exchange in list(self.exchanges.values()):
            exchange.downstream_lost(now)


class H1UpstreamConnection(_H1Connection):
    """The proxy's HTTP/1.1 connection to a server: one exchange at a time, reused while kept alive."""

    h2: H1ClientCodec

    __slots__ = ("draining", "on_capacity", "orphans", "settings_received")

    def __init__(
        self,
        scheduler: FlushScheduler,
        *,
        on_capacity: Callable[[H1UpstreamConnection], None] | None = None,
        context: object = None,
    ) -> None:
        super().__init__(H1ClientCodec(self._drained), scheduler, context)
        self._setup()
        self.draining = False
        self.on_capacity = on_capacity
        #: (HTTP/2's abandoned streams; an HTTP/1.1 request nobody wants is ended by closing.)
        self.orphans: dict[int, float] = {}
        self.settings_received = True

    def _drained(self) -> None:
        self._resume()

    @property
    def has_capacity(self) -> bool:
        codec = self.h2
        return (
            not self.draining
            and not self.closing
            and not self.exchanges
            and self.tunnel is None
            and codec.h11.our_state is h11.IDLE
        )

    def attach_upgrade(self, upgrade: bytes | None) -> None:
        """The next request asks to switch to ``upgrade`` (the exchange strips hop-by-hop fields)."""
        self.h2.upgrade = upgrade

    def abandon(self, stream_id: int, opened_at: float, now: float) -> None:
        self._close()

    def expire_orphans(self, now: float) -> int:
        return 0

    def _close(self) -> None:
        self.closing = True
        self.draining = True
        self.mark_dirty()

    def receive_data(self, data: bytes, now: float) -> None:
        if self.tunnel is not None:
            self._to_tunnel(data)
            return
        conn = self.h2.h11
        with contextlib.suppress(RuntimeError):  # data after the connection closed: ignored
            conn.receive_data(data)
        self._process(now)

    def _process(self, now: float) -> None:
        codec = self.h2
        conn = codec.h11
        exchange = next(iter(self.exchanges.values()), None)
        events: list[h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]] = []
        try:
            while True:
                event = conn.next_event()
                events.append(event)
                if event is h11.NEED_DATA or event is h11.PAUSED or type(event) is h11.ConnectionClosed:
                    break
        except h11.RemoteProtocolError as exc:
            self.error = f"RemoteProtocolError: {exc}"
            events.append(h11.ConnectionClosed())
            if exchange is not None:
                exchange.upstream_lost(now, "upstream sent a malformed response")
                exchange = None
            self._close()
        for index, event in enumerate(events):
            kind = type(event)
            if exchange is None or exchange.closed:
                if kind is h11.ConnectionClosed:
                    self._close()
                continue
            if kind is h11.Response:
                headers = self._headers(event)  # type: ignore[arg-type]
                follows = events[index + 1] if index + 1 < len(events) else None
                ended = type(follows) is h11.EndOfMessage and not follows.headers
                exchange.response_headers(headers, ended, now)
                if ended:
                    events[index + 1] = h11.NEED_DATA  # consumed
                if codec.request_method == b"CONNECT" and 200 <= event.status_code < 300:  # type: ignore[union-attr]
                    self._switch(exchange, now)
                    return
            elif kind is h11.InformationalResponse:
                exchange.informational_headers(self._headers(event))  # type: ignore[arg-type]
                if event.status_code == 101:  # type: ignore[union-attr]
                    self._switch(exchange, now)
                    return
            elif kind is h11.Data:
                size = len(event.data)  # type: ignore[union-attr]
                codec.unacknowledged += size
                exchange.response.push(bytes(event.data), size)  # type: ignore[union-attr]
                if codec.unacknowledged > READ_BUFFER_HIGH:
                    self._pause()
            elif kind is h11.EndOfMessage:
                trailers = list(event.headers)  # type: ignore[union-attr]
                if trailers:
                    exchange.response_trailers(trailers)
                exchange.response.ended = True
            elif kind is h11.ConnectionClosed:
                exchange.upstream_lost(now, "upstream closed the connection")
                self._close()
        if exchange is not None and not exchange.closed:
            exchange.pump(now)
        self.mark_dirty()

    @staticmethod
    def _headers(event: h11.Response | h11.InformationalResponse) -> list[Header]:
        return [
            (b":status", str(event.status_code).encode()),
            *((bytes(n), bytes(v)) for n, v in event.headers),
        ]

    def _switch(self, exchange: Exchange, now: float) -> None:
        downstream = exchange.downstream
        if not isinstance(downstream, _H1Connection) or not downstream.switched:
            exchange.upstream_lost(now, "upstream switched protocols for a client that cannot follow")
            self._close()
            return
        self.h2.switched = True
        exchange.switched_protocols(now)
        self.join(downstream)
        downstream.join(self)
        self.mark_dirty()

    def stream_released(self) -> None:
        codec = self.h2
        conn = codec.h11
        if not self.exchanges and not self.closing and not codec.switched:
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE and not codec.must_close:
                conn.start_next_cycle()
                self._resume()
            elif conn.our_state is not h11.IDLE or codec.must_close:
                self._close()
            if self.draining and not self.closing:
                self._close()
        if self.on_capacity is not None:
            self.on_capacity(self)

    def retire(self) -> None:
        if not self.draining:
            self.draining = True
            self.stream_released()

    def connection_lost(self, now: float) -> None:
        if self.tunnel is not None:
            self.tunnel.tunnel_closed()
        elif self.exchanges:
            # A body delimited by the close (HTTP/1.0 style) ends here.
            with contextlib.suppress(RuntimeError, h11.RemoteProtocolError):
                self.h2.h11.receive_data(b"")
                self._process(now)
        self.closing = True
        self.draining = True
        for exchange in list(self.exchanges.values()):
            exchange.upstream_lost(now)
        if self.on_capacity is not None:
            self.on_capacity(self)


#: An upstream connection of either protocol, as pools and routers hold them.
AnyUpstream = UpstreamConnection | H1UpstreamConnection
