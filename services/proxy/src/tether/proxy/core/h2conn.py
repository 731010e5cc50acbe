"""h2 connections configured for forwarding.

The stock h2 state machine moves the whole connection to CLOSED as soon as a
GOAWAY is sent or received, after which frames for streams that are still in
flight are rejected. A proxy must keep those streams flowing while it drains,
so GOAWAY here only records the peer's intent; deciding which streams may
still be opened is the forwarding layer's job.

Every override of h2's internals lives in :class:`ProxyH2Connection` and is used only with the exact
library releases it was tested against (``h2speedups.SUPPORTED``); otherwise the proxy runs stock h2
connections (drain then ends a connection at GOAWAY, and the speedups are off). Nothing is patched
process-wide.
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2Connection, H2ConnectionStateMachine
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, Event
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from h2.settings import SettingCodes, Settings
from h2.stream import H2Stream
from hyperframe.frame import Frame, RstStreamFrame

from tether.proxy.core.h2speedups import (
    SUPPORTED,
    FastDecoder,
    FastEncoder,
    ProxyH2Stream,
    serialize_frame,
)

#: Per-stream receive window we advertise. Bounds what one stream may buffer in the proxy.
STREAM_WINDOW = 256 * 1024
#: Per-connection receive window. Bounds what all streams of one connection may buffer.
CONNECTION_WINDOW = 1024 * 1024
#: Streams a peer may open on one downstream connection.
DEFAULT_MAX_CONCURRENT_STREAMS = 2048
MAX_HEADER_LIST_SIZE = 64 * 1024
_DEFAULT_WINDOW = 65_535

_DRAINABLE_TRANSITIONS = dict(H2ConnectionStateMachine._transitions)
for _state in (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN):
    _DRAINABLE_TRANSITIONS[(_state, ConnectionInputs.SEND_GOAWAY)] = (None, _state)
    _DRAINABLE_TRANSITIONS[(_state, ConnectionInputs.RECV_GOAWAY)] = (None, _state)


class _DrainableStateMachine(H2ConnectionStateMachine):
    _transitions = _DRAINABLE_TRANSITIONS


class ProxyH2Connection(H2Connection):
    """An H2Connection whose open streams survive GOAWAY in either direction, with the speedups."""

    # How many closed streams h2 remembers (to answer late frames on reset streams
    # with RST_STREAM rather than a connection error). h2's 65,536 per connection
    # costs megabytes on busy connections; late frames arrive within a round trip.
    MAX_CLOSED_STREAMS = 4096

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config=config)
        self.state_machine = _DrainableStateMachine()
        self._recount_at = 0
        self.encoder = FastEncoder()
        self.decoder = FastDecoder()
        self.decoder.max_header_list_size = self.DEFAULT_MAX_HEADER_LIST_SIZE

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        # Same layout, only methods added: the proxy's streams validate headers in one pass.
        stream.__class__ = ProxyH2Stream
        return stream

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        if frames:
            self._data_to_send += b"".join(serialize_frame(frame) for frame in frames)

    def _receive_frame(self, frame: Frame) -> list[Event]:
        # h2's own, without formatting repr(frame) for a trace log nobody reads.
        events: list[Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as exc:
            if not self._stream_is_closed_by_reset(exc.stream_id):
                raise
            reset = RstStreamFrame(exc.stream_id)
            reset.error_code = exc.error_code
            self._prepare_for_sending([reset])
            events = exc._events
        except StreamIDTooLowError as exc:
            if self._stream_is_closed_by_reset(exc.stream_id):
                reset = RstStreamFrame(exc.stream_id)
                reset.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([reset])
                events = []
            elif self._stream_is_closed_by_end(exc.stream_id):
                raise StreamClosedError(exc.stream_id) from exc
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events

    def _open_streams(self, remainder: int) -> int:
        # h2 recounts every stream (pruning closed ones) each time a stream opens,
        # which is quadratic in the number of concurrent streams. Between exact
        # recounts the size of the stream table is returned instead: an upper
        # bound, used only while it cannot reach a concurrency limit, so no stream
        # is ever refused that the exact count would admit.
        streams = len(self.streams)
        if streams < self._recount_at:
            return streams
        count: int = super()._open_streams(remainder)
        limit = min(self.local_settings.max_concurrent_streams, self.remote_settings.max_concurrent_streams)
        self._recount_at = min(2 * len(self.streams) + 32, limit - 1)
        return count

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        # Unlike upstream h2 this neither closes the connection nor discards queued
        # output: responses to streams the peer still expects must go out.
        self.state_machine.process_input(ConnectionInputs.RECV_GOAWAY)
        event = ConnectionTerminated()
        try:
            event.error_code = ErrorCodes(frame.error_code)
        except ValueError:
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


def _configuration(client_side: bool) -> H2Configuration:
    # Requests come from untrusted clients and are validated on receipt. Responses
    # come from servers the proxy chose, and the client validates what it is sent,
    # so checking them here too would only cost time; likewise outbound headers are
    # ones already validated (or built by the proxy). Headers stay bytes end to end.
    return H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=not client_side,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        split_outbound_cookies=False,
    )


_SERVER_CONFIG = _configuration(client_side=False)
_CLIENT_CONFIG = _configuration(client_side=True)


_CONNECTION_CLASS: type[H2Connection] = ProxyH2Connection if SUPPORTED else H2Connection


def new_server_connection(max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS) -> H2Connection:
    """A server-side connection with the SETTINGS already queued."""
    return _initiated(_CONNECTION_CLASS(_SERVER_CONFIG), max_concurrent_streams)


def new_client_connection() -> H2Connection:
    """A client-side connection with the preface and SETTINGS already queued."""
    return _initiated(_CONNECTION_CLASS(_CLIENT_CONFIG), DEFAULT_MAX_CONCURRENT_STREAMS)


def _initiated(conn: H2Connection, max_concurrent_streams: int) -> H2Connection:
    initial_values = {
        SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
        SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
    }
    if conn.config.client_side:
        initial_values[SettingCodes.ENABLE_PUSH] = 0
    conn.local_settings = Settings(client=conn.config.client_side, initial_values=initial_values)
    conn.initiate_connection()
    # The connection window is not a SETTING: it starts at 65,535 and can only grow.
    conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
    return conn
