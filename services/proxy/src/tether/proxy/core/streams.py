"""What every proxy connection is to the exchanges on it: numbered streams, and their bookkeeping.

:class:`Http2Connection` keeps a connection's protocol state machine (h2's, or an HTTP/1.1 codec offering
the same part of h2's API, see :mod:`tether.proxy.core.h1codec`) and which exchange owns which stream. An
:class:`~tether.proxy.core.exchange.Exchange` acts on its connections only through the stream operations
below (open, send, acknowledge, reset, wait, release); the state machine and the bookkeeping stay the
connection's own. Each operation is one call into the state machine: nothing is queued or copied on the way.

A connection never writes to a socket: when it has bytes to send it asks its :class:`FlushScheduler` to
collect them, which lets the I/O layer write once per event-loop tick no matter how many frames were produced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from h2.settings import SettingCodes

if TYPE_CHECKING:
    from h2.events import RemoteSettingsChanged

    from tether.proxy.core.exchange import Exchange
    from tether.proxy.core.headers import Headers


class FlushScheduler(Protocol):
    """Collects connections that have output; the I/O layer drains them with ``data_to_send``."""

    def schedule(self, connection: Http2Connection) -> None: ...


class Http2Connection:
    __slots__ = (
        "_scheduled",
        "_scheduler",
        "blocked",
        "closing",
        "context",
        "data_frames_sent",
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
        #: DATA frames sent to the peer (what its WINDOW_UPDATEs are measured against).
        self.data_frames_sent = 0
        self.mark_dirty()

    def mark_dirty(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._scheduler.schedule(self)

    def data_to_send(self) -> bytes:
        self._scheduled = False
        data: bytes = self.h2.data_to_send()
        return data

    # The exchanges' operations on this connection's streams. Those that send raise h2's ProtocolError
    # when the stream cannot take the frame; none asks for a flush (the caller does, with mark_dirty).

    def open_stream(self, exchange: Exchange, headers: Headers, end_stream: bool) -> int:
        """Open a stream for ``exchange`` (an upstream connection's) with its request ``headers``; returns
        the stream's id. The stream is the exchange's until :meth:`release`; this does ask for a flush."""
        h2 = self.h2
        stream_id: int = h2.get_next_available_stream_id()
        h2.send_headers(stream_id, headers, end_stream=end_stream)
        self.exchanges[stream_id] = exchange
        self.mark_dirty()
        return stream_id

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        """A header block on the stream: a response's head, an informational response, or trailers."""
        self.h2.send_headers(stream_id, headers, end_stream=end_stream)

    def send_window(self, stream_id: int) -> int:
        """How many DATA bytes the peer will take on the stream now."""
        window: int = self.h2.local_flow_control_window(stream_id)
        return window

    @property
    def max_frame_size(self) -> int:
        """The largest DATA payload one frame may carry to the peer."""
        size: int = self.h2.max_outbound_frame_size
        return size

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """One DATA frame (within :meth:`send_window` and :attr:`max_frame_size`)."""
        self.h2.send_data(stream_id, data, end_stream=end_stream)
        self.data_frames_sent += 1

    def end_stream(self, stream_id: int) -> None:
        """END_STREAM on an empty DATA frame."""
        self.h2.end_stream(stream_id)

    def reset(self, stream_id: int, error_code: int) -> None:
        """RST_STREAM with ``error_code`` (HTTP/1.1: the connection closes after what is queued)."""
        self.h2.reset_stream(stream_id, error_code)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """``size`` bytes received on the stream were handed on (or dropped): the peer may send more."""
        self.h2.acknowledge_received_data(size, stream_id)

    def wait_to_send(self, stream_id: int, exchange: Exchange) -> None:
        """``exchange`` has more to send on the stream than the window or the transport takes now: it is
        pumped again when either opens."""
        self.blocked[stream_id] = exchange

    def release(self, stream_id: int, now: float) -> None:
        """The exchange on the stream finished: forget the stream (:meth:`stream_released` follows)."""
        self.exchanges.pop(stream_id, None)
        self.blocked.pop(stream_id, None)

    def stream_released(self) -> None:
        """An exchange on this connection finished."""

    def set_writable(self, writable: bool, now: float) -> None:
        """Follow the transport's write buffer: stop queueing DATA while it is over its high mark."""
        self.writable = writable
        if writable:
            self._unblock_all(now)

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
