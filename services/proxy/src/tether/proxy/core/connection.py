"""HTTP/2 connections of the proxy: downstream (clients connect to us) and upstream (we connect).

Both wrap an h2 connection and translate its events into exchange operations.
They never write to a socket: when a connection has bytes to send it asks its
:class:`FlushScheduler` to collect them, which lets the I/O layer write once per
event-loop tick no matter how many frames were produced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from tether.proxy.core.conninfo import ConnectionInfo
from tether.proxy.core.exchange import Exchange
from tether.proxy.core.h2conn import (
    DEFAULT_MAX_CONCURRENT_STREAMS,
    new_client_connection,
    new_server_connection,
)
from tether.proxy.core.headers import strip_hop_by_hop


class FlushScheduler(Protocol):
    """Collects connections that have output; the I/O layer drains them with ``data_to_send``."""

    def schedule(self, connection: Http2Connection) -> None: ...


class Router(Protocol):
    """Decides where a new request goes: eventually calls ``attach`` or ``fail`` on it."""

    def route(self, exchange: Exchange) -> None: ...


class Http2Connection:
    __slots__ = (
        "_scheduled",
        "_scheduler",
        "blocked",
        "closing",
        "context",
        "error",
        "exchanges",
        "h2",
        "writable",
    )

    def __init__(self, h2: Any, scheduler: FlushScheduler, context: object = None) -> None:
        self.h2 = h2
        self._scheduler = scheduler
        self._scheduled = False
        #: Exchanges by this connection's stream id.
        self.exchanges: dict[int, Exchange] = {}
        #: Exchanges waiting for flow-control window (or socket writability) on this connection.
        self.blocked: dict[int, Exchange] = {}
        self.writable = True
        #: Set when the I/O layer should close the transport once output is flushed.
        self.closing = False
        #: Opaque data owned by the I/O layer (e.g. the socket's original destination).
        self.context = context
        #: Why the peer's bytes were rejected, once they were (for the I/O layer to log).
        self.error: str | None = None
        self.mark_dirty()

    def mark_dirty(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._scheduler.schedule(self)

    def data_to_send(self) -> bytes:
        self._scheduled = False
        data: bytes = self.h2.data_to_send()
        return data

    def set_writable(self, writable: bool, now: float) -> None:
        """Follow the transport's write buffer: stop queueing DATA while it is over its high mark."""
        self.writable = writable
        if writable:
            self._unblock_all(now)

    def stream_released(self) -> None:
        """An exchange on this connection finished."""

    def _window_updated(self, stream_id: int, now: float) -> None:
        if stream_id == 0:
            self._unblock_all(now)
        else:
            exchange = self.blocked.pop(stream_id, None)
            if exchange is not None:
                exchange.pump(now)

    def _unblock_all(self, now: float) -> None:
        if self.blocked:
            waiting = list(self.blocked.values())
            self.blocked.clear()
            for exchange in waiting:
                exchange.pump(now)

    def _settings_changed(self, event: RemoteSettingsChanged, now: float) -> None:
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._unblock_all(now)

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the socket; each direction handles its own events."""
        raise NotImplementedError

    def connection_lost(self, now: float) -> None:
        """The socket is gone: end every exchange on it."""
        raise NotImplementedError


class DownstreamConnection(Http2Connection):
    """A connection accepted from a client; each request becomes an :class:`Exchange`."""

    __slots__ = ("drain_last_stream_id", "idle_since", "info", "peer_gone", "preface_received", "router")

    def __init__(
        self,
        scheduler: FlushScheduler,
        router: Router,
        *,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
        context: object = None,
        info: ConnectionInfo | None = None,
        now: float = 0.0,
    ) -> None:
        super().__init__(new_server_connection(max_concurrent_streams), scheduler, context)
        self.router = router
        #: What was known of the connection when it was accepted (None only in core-level tests).
        self.info = info
        #: Set once we sent GOAWAY: streams above it are refused.
        self.drain_last_stream_id: int | None = None
        self.peer_gone = False
        #: The client's preface and first SETTINGS arrived: it speaks HTTP/2 and understands GOAWAY.
        self.preface_received = False
        #: When the connection last had no stream open (opened, or its last exchange finished).
        #: Only meaningful while ``exchanges`` is empty; the exchange refreshes it as it finishes.
        self.idle_since = now

    def receive_data(self, data: bytes, now: float) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.protocol_error(now)
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
                    exchange.request.push(event.data, event.flow_controlled_length)
                    touched[exchange] = None
            elif kind is RequestReceived:
                self._request_received(event, now)
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
                    exchange.reset_by_downstream(event.error_code, now)
            elif kind is TrailersReceived:
                exchange = exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.request.trailers = strip_hop_by_hop(event.headers)
            elif kind is RemoteSettingsChanged:
                self.preface_received = True
                self._settings_changed(event, now)
            elif kind is ConnectionTerminated:
                self.peer_gone = True
        for exchange in touched:
            exchange.pump(now)
        self.mark_dirty()
        self.stream_released()

    def _request_received(self, event: RequestReceived, now: float) -> None:
        stream_id = event.stream_id
        if self.drain_last_stream_id is not None and stream_id > self.drain_last_stream_id:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        exchange = Exchange(self, stream_id, event.headers, now)
        if event.stream_ended is not None:
            exchange.request.ended = True
        self.exchanges[stream_id] = exchange
        self.router.route(exchange)

    def start_drain(self) -> None:
        """Send GOAWAY: requests already received complete, new ones are refused."""
        if self.drain_last_stream_id is None:
            self.drain_last_stream_id = self.h2.highest_inbound_stream_id
            self.h2.close_connection(last_stream_id=self.drain_last_stream_id)
            self.mark_dirty()
            self.stream_released()

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


class UpstreamConnection(Http2Connection):
    """A connection the proxy opened to a server; exchanges are attached to it by the router."""

    __slots__ = ("draining", "on_capacity")

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

    @property
    def has_capacity(self) -> bool:
        return (
            not self.draining
            and not self.closing
            and len(self.exchanges) < self.h2.remote_settings.max_concurrent_streams
        )

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
            elif kind is TrailersReceived:
                exchange = exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.response_trailers(event.headers)
            elif kind is WindowUpdated:
                self._window_updated(event.stream_id, now)
            elif kind is StreamReset:
                exchange = exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.reset_by_upstream(event.error_code, now)
            elif kind is InformationalResponseReceived:
                exchange = exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.informational_headers(event.headers)
            elif kind is RemoteSettingsChanged:
                self._settings_changed(event, now)
                if SettingCodes.MAX_CONCURRENT_STREAMS in event.changed_settings:
                    self.stream_released()
            elif kind is ConnectionTerminated:
                self._peer_goaway(event.last_stream_id, now)
        for exchange in touched:
            exchange.pump(now)
        self.mark_dirty()

    def _peer_goaway(self, last_stream_id: int, now: float) -> None:
        self.draining = True
        for stream_id, exchange in list(self.exchanges.items()):
            if stream_id > last_stream_id:
                exchange.refused_by_upstream(now)
        self.stream_released()

    def retire(self) -> None:
        """Take no new streams; close once the current ones complete."""
        if not self.draining:
            self.draining = True
            self.stream_released()

    def stream_released(self) -> None:
        if self.draining and not self.exchanges and not self.closing:
            self.closing = True
            with contextlib.suppress(ProtocolError):
                self.h2.close_connection()
            self.mark_dirty()
        if self.on_capacity is not None:
            self.on_capacity(self)

    def connection_lost(self, now: float) -> None:
        self.closing = True
        self.draining = True
        for exchange in list(self.exchanges.values()):
            exchange.upstream_lost(now)
        if self.on_capacity is not None:
            self.on_capacity(self)
