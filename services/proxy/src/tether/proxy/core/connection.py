"""HTTP/2 connections of the proxy: downstream (clients connect to us) and upstream (we connect).

Both wrap an h2 connection and translate its events into exchange operations; what they share, including
the stream operations the exchanges use, is :class:`~tether.proxy.core.streams.Http2Connection`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, ProtocolError
from h2.settings import SettingCodes

from tether.proxy.core.abuse import (
    CONTINUATION_FLOOD,
    OVERSIZED_HEADERS,
    PREMATURE_RESET_AGE,
    AbuseGuard,
    ClientLimits,
)
from tether.proxy.core.conninfo import ConnectionInfo
from tether.proxy.core.exchange import Exchange
from tether.proxy.core.h2conn import (
    AbuseDetected,
    ContinuationFlood,
    ProxyH2Connection,
    new_client_connection,
    new_server_connection,
)
from tether.proxy.core.headers import (
    Headers,
    error_response,
    request_target,
    strip_hop_by_hop,
    without_internal,
)
from tether.proxy.core.streams import FlushScheduler, Http2Connection

__all__ = [
    "DEFAULT_LIMITS",
    "INITIAL_STREAM_LIMIT",
    "PROBE_PING",
    "DownstreamConnection",
    "FlushScheduler",
    "Http2Connection",
    "Router",
    "UpstreamConnection",
]

DEFAULT_LIMITS = ClientLimits()
#: Streams opened on a new upstream connection before the server's SETTINGS say how many it allows (Go's
#: HTTP/2 client assumes the same).
INITIAL_STREAM_LIMIT = 100


class Router(Protocol):
    """Decides where a new request goes: eventually calls ``attach`` or ``fail`` on it."""

    def route(self, exchange: Exchange) -> None: ...


class DownstreamConnection(Http2Connection):
    """A connection accepted from a client; each request becomes an :class:`Exchange`."""

    protocol = "h2"

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
        "router",
    )

    def __init__(
        self,
        scheduler: FlushScheduler,
        router: Router,
        *,
        limits: ClientLimits = DEFAULT_LIMITS,
        context: object = None,
        info: ConnectionInfo | None = None,
        now: float = 0.0,
    ) -> None:
        super().__init__(
            new_server_connection(limits.max_concurrent_streams, limits.max_header_list_size),
            scheduler,
            context,
        )
        self.router = router
        self.max_header_count = limits.max_header_count
        self.guard = AbuseGuard(limits, now)
        if isinstance(self.h2, ProxyH2Connection):
            self.h2.screen = self.guard
        #: Why the peer was cut off (a class of abuse, see core.abuse), once it was.
        self.abuse: str | None = None
        self.opened_at = now
        #: What was known of the connection when it was accepted (None only in core-level tests).
        self.info = info
        #: Set once we sent GOAWAY: streams above it are refused.
        self.drain_last_stream_id: int | None = None
        self.peer_gone = False
        #: The client's preface and first SETTINGS arrived: it speaks HTTP/2 and understands GOAWAY.
        self.preface_received = False
        #: When the connection last had no stream open (opened, or its last exchange finished).
        #: Only meaningful while ``exchanges`` is empty; :meth:`release` refreshes it.
        self.idle_since = now

    def receive_data(self, data: bytes, now: float) -> None:
        if self.abuse is not None:
            return  # cut off: nothing more from this peer is looked at
        guard = self.guard
        # What the guard's frame-by-frame screen (consulted by h2 as it parses) measures against.
        guard.now = now
        guard.data_frames_sent = self.data_frames_sent
        try:
            events = self.h2.receive_data(data)
        except DenialOfServiceError as exc:
            # h2 has queued GOAWAY ENHANCE_YOUR_CALM already.
            if isinstance(exc, AbuseDetected):
                self.abuse = exc.reason
            elif isinstance(exc, ContinuationFlood):
                self.abuse = CONTINUATION_FLOOD
            else:
                self.abuse = OVERSIZED_HEADERS
            self.error = f"{type(exc).__name__}: {exc}"
            self.protocol_error(now)
            return
        except ProtocolError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.protocol_error(now)
            return
        exchanges = self.exchanges
        touched: dict[Exchange, None] = {}
        # New requests are routed once the whole read is processed: a stream the peer opens and resets in
        # the same read (rapid reset) never costs an upstream stream.
        arrived: list[Exchange] = []
        abuse: str | None = None
        for event in events:
            kind = event.__class__
            if kind is DataReceived:
                exchange = exchanges.get(event.stream_id)
                if exchange is None:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                else:
                    exchange.request.push(event.data, event.flow_controlled_length)
                    touched[exchange] = None
            elif kind is RequestReceived:
                exchange = self._request_received(event, now)
                if exchange is not None:
                    arrived.append(exchange)
            elif kind is StreamEnded:
                exchange = exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.request.ended = True
                    touched[exchange] = None
            elif kind is WindowUpdated:
                self._window_updated(event.stream_id, now)
            elif kind is StreamReset:
                exchange = exchanges.get(event.stream_id)
                if exchange is not None:
                    if not exchange.response_started and now - exchange.started_at < PREMATURE_RESET_AGE:
                        abuse = guard.premature_reset(now)
                    exchange.reset_by_downstream(event.error_code, now)
            elif kind is TrailersReceived:
                exchange = exchanges.get(event.stream_id)
                if exchange is not None:
                    # Trailers are fields too: none a client wrote may pass for the mesh's own.
                    exchange.request.trailers = without_internal(strip_hop_by_hop(event.headers))
            elif kind is RemoteSettingsChanged:
                self.preface_received = True
                self._settings_changed(event, now)
            elif kind is ConnectionTerminated:
                self.peer_gone = True
            if abuse is not None:
                self.cut_off(abuse, now)
                return
        for exchange in arrived:
            if not exchange.closed:
                self.router.route(exchange)
        for exchange in touched:
            exchange.pump(now)
        self.mark_dirty()
        self.stream_released()

    def _request_received(self, event: RequestReceived, now: float) -> Exchange | None:
        """The exchange for a new request, or None when it was answered or refused at once."""
        stream_id = event.stream_id
        if self.drain_last_stream_id is not None and stream_id > self.drain_last_stream_id:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return None
        headers = event.headers
        problem = self._header_problem(headers)
        if problem is not None:
            status, message = problem
            _, is_grpc = request_target(headers)
            with contextlib.suppress(ProtocolError):
                self.h2.send_headers(stream_id, error_response(is_grpc, status, message), end_stream=True)
                if event.stream_ended is None:
                    self.h2.reset_stream(stream_id, ErrorCodes.NO_ERROR)
            return None
        exchange = Exchange(self, stream_id, headers, now)
        if event.stream_ended is not None:
            exchange.request.ended = True
        self.exchanges[stream_id] = exchange
        return exchange

    def _header_problem(self, headers: Headers) -> tuple[int, str] | None:
        """Why a request is refused before routing (status and message), or None."""
        # (Conflicting or non-numeric content-length, like every other malformed header, h2 refuses itself.)
        if len(headers) > self.max_header_count:
            return 431, f"more than {self.max_header_count} header fields"
        return None

    def cut_off(self, reason: str, now: float) -> None:
        """The peer went beyond a limit: GOAWAY ENHANCE_YOUR_CALM, end its exchanges, close."""
        self.abuse = reason
        with contextlib.suppress(ProtocolError):
            self.h2.close_connection(
                error_code=ErrorCodes.ENHANCE_YOUR_CALM,
                last_stream_id=self.h2.highest_inbound_stream_id,
                additional_data=reason.encode(),
            )
        self.drain_last_stream_id = self.h2.highest_inbound_stream_id
        self.closing = True
        self.connection_lost(now)
        self.mark_dirty()

    def set_writable(self, writable: bool, now: float) -> None:
        self.guard.set_writable(writable)
        super().set_writable(writable, now)

    def start_drain(self) -> None:
        """Send GOAWAY: requests already received complete, new ones are refused."""
        if self.drain_last_stream_id is None:
            self.drain_last_stream_id = self.h2.highest_inbound_stream_id
            self.h2.close_connection(last_stream_id=self.drain_last_stream_id)
            self.mark_dirty()
            self.stream_released()

    def close_if_silent(self, now: float, handshake_timeout: float) -> bool:
        """Close the connection if the peer has not completed its preface within ``handshake_timeout``."""
        if self.preface_received or self.closing or now - self.opened_at < handshake_timeout:
            return False
        self.closing = True
        self.mark_dirty()
        return True

    def close_if_idle(self, now: float, idle_timeout: float) -> bool:
        """Close the connection if no stream has been open for ``idle_timeout`` seconds.

        Bytes alone do not count as activity: a client dribbling a frame that never
        completes, or only pinging, holds resources without asking for anything.
        A client that completed its preface is told with GOAWAY (NO_ERROR), so it
        knows no request was lost; one that did not is simply disconnected.
        """
        if self.exchanges or self.closing or now - self.idle_since < idle_timeout:
            return False
        if self.preface_received:
            self.start_drain()
        self.closing = True
        self.mark_dirty()
        return True

    def release(self, stream_id: int, now: float) -> None:
        self.idle_since = now
        self.exchanges.pop(stream_id, None)
        self.blocked.pop(stream_id, None)

    def stream_released(self) -> None:
        if (self.drain_last_stream_id is not None or self.peer_gone) and not self.exchanges:
            self.closing = True
            self.mark_dirty()

    def protocol_error(self, now: float) -> None:
        """The peer broke the protocol: h2 has queued GOAWAY; cancel everything and close."""
        self.closing = True
        self.connection_lost(now)
        self.mark_dirty()

    def connection_lost(self, now: float) -> None:
        self.closing = True
        for exchange in list(self.exchanges.values()):
            exchange.downstream_lost(now)


#: The opaque data of the PINGs that ask an upstream whether it still answers at all (8 bytes).
PROBE_PING = b"tprobe\x00\x00"


class UpstreamConnection(Http2Connection):
    """A connection the proxy opened to a server; exchanges are attached to it by the router."""

    __slots__ = ("_probes", "draining", "on_capacity", "orphans", "settings_received")

    def __init__(
        self,
        scheduler: FlushScheduler,
        *,
        on_capacity: Callable[[UpstreamConnection], None] | None = None,
        context: object = None,
    ) -> None:
        super().__init__(new_client_connection(), scheduler, context)
        #: The server sent GOAWAY (or we decided to retire the connection): no new streams.
        self.draining = False
        #: Called when a stream slot frees up or the connection stops taking streams.
        self.on_capacity = on_capacity
        #: Streams whose client went away before their response started, by when they will be reset.
        self.orphans: dict[int, float] = {}
        #: The server's first SETTINGS arrived (its concurrency limit is known).
        self.settings_received = False
        #: Who waits for the answer to the PING in flight (None: no PING in flight).
        self._probes: list[Callable[[], None]] | None = None

    def probe(self, answered: Callable[[], None]) -> None:
        """Ask the server whether it answers at all (a PING; one in flight at a time): ``answered`` is
        called once it does, or once the connection is gone (then there is nothing left to wait for)."""
        if self.closing:
            answered()
            return
        if self._probes is not None:
            self._probes.append(answered)
            return
        self._probes = [answered]
        with contextlib.suppress(ProtocolError):
            self.h2.ping(PROBE_PING)
        self.mark_dirty()

    def _probes_answered(self) -> None:
        waiting, self._probes = self._probes, None
        for answered in waiting or ():
            answered()

    @property
    def has_capacity(self) -> bool:
        limit = self.h2.remote_settings.max_concurrent_streams
        if not self.settings_received:
            # Until the server's SETTINGS arrive its limit is unknown (RFC 9113: unlimited); servers that
            # treat excess streams as a connection error exist, so assume what most servers allow.
            limit = min(limit, INITIAL_STREAM_LIMIT)
        return not self.draining and not self.closing and len(self.exchanges) + len(self.orphans) < limit

    def abandon(self, stream_id: int, opened_at: float, now: float) -> None:
        """Nobody wants this stream's response any more. A stream younger than PREMATURE_RESET_AGE is
        left to finish (what it receives is discarded) and reset only once it is that old: to the server,
        a young reset is the mark of a rapid-reset attack (see core.abuse), and this connection is shared."""
        deadline = opened_at + PREMATURE_RESET_AGE
        if now >= deadline:
            self._cancel(stream_id)
        else:
            self.orphans[stream_id] = deadline

    def expire_orphans(self, now: float) -> int:
        """Reset the abandoned streams that are now old enough; returns how many."""
        expired = [stream_id for stream_id, deadline in self.orphans.items() if deadline <= now]
        for stream_id in expired:
            del self.orphans[stream_id]
            self._cancel(stream_id)
        if expired:
            self.stream_released()
        return len(expired)

    def _cancel(self, stream_id: int) -> None:
        with contextlib.suppress(ProtocolError):
            self.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
            self.mark_dirty()

    def _orphan_ended(self, stream_id: int) -> None:
        # The server ended its side. If ours is still open (the client left mid-request), the stream still
        # holds one of the server's concurrency slots: it stays an orphan until its deadline resets it.
        stream = self.h2.streams.get(stream_id)
        if stream is not None and not stream.closed:
            return
        if self.orphans.pop(stream_id, None) is not None:
            self.stream_released()

    def receive_data(self, data: bytes, now: float) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.connection_lost(now)
            self.mark_dirty()
            return
        exchanges = self.exchanges
        touched: dict[Exchange, None] = {}
        for event in events:
            kind = event.__class__
            if kind is DataReceived:
                exchange = exchanges.get(event.stream_id)
                if exchange is None:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                else:
                    exchange.response.push(event.data, event.flow_controlled_length)
                    touched[exchange] = None
            elif kind is ResponseReceived:
                exchange = exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.response_headers(event.headers, event.stream_ended is not None, now)
            elif kind is StreamEnded:
                exchange = exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.response.ended = True
                    touched[exchange] = None
                elif self.orphans:
                    self._orphan_ended(event.stream_id)
            elif kind is TrailersReceived:
                exchange = exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.response_trailers(event.headers)
            elif kind is WindowUpdated:
                self._window_updated(event.stream_id, now)
            elif kind is StreamReset:
                exchange = exchanges.get(event.stream_id)
                if exchange is None:
                    if self.orphans:
                        self._orphan_ended(event.stream_id)
                elif event.remote_reset:
                    exchange.reset_by_upstream(event.error_code, now)
                else:
                    # Reset by our side of h2: the server's response was malformed.
                    exchange.upstream_lost(now, "upstream sent a malformed response")
            elif kind is InformationalResponseReceived:
                exchange = exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.informational_headers(event.headers)
            elif kind is RemoteSettingsChanged:
                self._settings_changed(event, now)
                if not self.settings_received:
                    self.settings_received = True
                    self.stream_released()
                elif SettingCodes.MAX_CONCURRENT_STREAMS in event.changed_settings:
                    self.stream_released()
            elif kind is ConnectionTerminated:
                self._peer_goaway(event.last_stream_id, now)
            elif kind is PingAckReceived:
                self._probes_answered()
        for exchange in touched:
            exchange.pump(now)
        self.mark_dirty()

    def _peer_goaway(self, last_stream_id: int, now: float) -> None:
        self.draining = True
        for stream_id, exchange in list(self.exchanges.items()):
            if stream_id > last_stream_id:
                exchange.refused_by_upstream(now)
        for stream_id in [stream_id for stream_id in self.orphans if stream_id > last_stream_id]:
            del self.orphans[stream_id]
        self.stream_released()

    def retire(self) -> None:
        """Take no new streams; close once the current ones complete."""
        if not self.draining:
            self.draining = True
            self.stream_released()

    def stream_released(self) -> None:
        if self.draining and not self.exchanges and not self.orphans and not self.closing:
            self.closing = True
            with contextlib.suppress(ProtocolError):
                self.h2.close_connection()
            self.mark_dirty()
        if self.on_capacity is not None:
            self.on_capacity(self)

    def connection_lost(self, now: float) -> None:
        self.closing = True
        self.draining = True
        self.orphans.clear()
        for exchange in list(self.exchanges.values()):
            exchange.upstream_lost(now)
        self._probes_answered()
        if self.on_capacity is not None:
            self.on_capacity(self)
