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

from typing import Any, Protocol

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2Connection, H2ConnectionStateMachine
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, Event, StreamReset
from h2.exceptions import (
    DenialOfServiceError,
    FrameTooLargeError,
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
)
from h2.frame_buffer import CONTINUATION_BACKLOG, FrameBuffer
from h2.settings import SettingCodes, Settings
from h2.stream import H2Stream
from hpack.exceptions import HPACKError
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

from tether.proxy.core.h2speedups import (
    SUPPORTED,
    FastDecoder,
    FastEncoder,
    MalformedMessage,
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
#: Longest field (name and value) the proxy Huffman-codes when it forwards headers (see FastEncoder).
MAX_HUFFMAN_FIELD = 256
_DEFAULT_WINDOW = 65_535

_DRAINABLE_TRANSITIONS = dict(H2ConnectionStateMachine._transitions)
for _state in (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN):
    _DRAINABLE_TRANSITIONS[(_state, ConnectionInputs.SEND_GOAWAY)] = (None, _state)
    _DRAINABLE_TRANSITIONS[(_state, ConnectionInputs.RECV_GOAWAY)] = (None, _state)


class _DrainableStateMachine(H2ConnectionStateMachine):
    _transitions = _DRAINABLE_TRANSITIONS


class ContinuationFlood(DenialOfServiceError):
    """A header block that keeps growing across CONTINUATION frames beyond what the proxy will hold."""


class HeaderCompressionError(ProtocolError):
    """A field block that does not decode: RFC 9113 §4.3 says COMPRESSION_ERROR (h2: PROTOCOL_ERROR)."""

    error_code = ErrorCodes.COMPRESSION_ERROR


class _SettingsAckWithPayload(FrameTooLargeError):
    """RFC 9113 §6.5: a SETTINGS ACK with a payload is a FRAME_SIZE_ERROR (h2 says PROTOCOL_ERROR)."""


_SETTINGS, _ACK = 0x4, 0x1


class _BoundedFrameBuffer(FrameBuffer):
    """h2's frame buffer, holding at most ``max_block`` bytes of an unfinished header block.

    h2 bounds only the number of CONTINUATION frames (64, of up to 16 KiB each: a megabyte per connection
    held before anything is decoded, CVE-2024-27316's class). A block longer than the header list the proxy
    accepts cannot decode to an acceptable one, so it is refused as soon as it is that long.
    """

    def __init__(self, server: bool, max_block: int) -> None:
        super().__init__(server=server)
        self.max_block = max_block
        self._block_bytes = 0

    def __next__(self) -> Frame:
        data = self._data
        if len(data) >= 9 and data[3] == _SETTINGS and data[4] & _ACK and data[0:3] != b"\0\0\0":
            raise _SettingsAckWithPayload("SETTINGS ACK with a payload")
        return super().__next__()

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        try:
            result = super()._update_header_buffer(f)
        except ProtocolError as exc:
            if len(self._headers_buffer) > CONTINUATION_BACKLOG:  # h2's own count of CONTINUATIONs
                raise ContinuationFlood(str(exc)) from exc
            raise
        if not self._headers_buffer:
            self._block_bytes = 0
        elif f is not None:
            self._block_bytes += len(f.data) if isinstance(f, ContinuationFrame | HeadersFrame) else 0
            if self._block_bytes > self.max_block:
                msg = f"header block over {self.max_block} bytes before END_HEADERS"
                raise ContinuationFlood(msg)
        return result


class FrameScreen(Protocol):
    """Looks at each frame a peer sends before h2 acts on it (see core.abuse); a reason stops the peer."""

    def frame_received(self, frame: Frame) -> str | None: ...

    def reply_queued(self) -> str | None:
        """h2 queued a frame in answer to the peer's (a RST_STREAM for a frame on a reset stream)."""
        ...


class AbuseDetected(DenialOfServiceError):
    """The screen stopped the peer: the connection ends with GOAWAY ENHANCE_YOUR_CALM, ``reason`` as its
    debug data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProxyH2Connection(H2Connection):
    """An H2Connection whose open streams survive GOAWAY in either direction, with the speedups, and an
    optional :class:`FrameScreen` consulted frame by frame: h2 answers a PING or a frame on a reset stream
    while it parses a read, so a limit checked only on the events a read produced would come a read late.
    """

    # How many closed streams h2 remembers (to answer late frames on reset streams
    # with RST_STREAM rather than a connection error). h2's 65,536 per connection
    # costs megabytes on busy connections; late frames arrive within a round trip.
    MAX_CLOSED_STREAMS = 4096

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config=config)
        self.state_machine = _DrainableStateMachine()
        self._recount_at = 0
        self.encoder = FastEncoder(max_huffman_field=MAX_HUFFMAN_FIELD)
        self.decoder = FastDecoder()
        self.decoder.strict_size_updates = True
        self.decoder.max_header_list_size = min(self.DEFAULT_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_SIZE)
        self.incoming_buffer = _BoundedFrameBuffer(not config.client_side, MAX_HEADER_LIST_SIZE)
        self.incoming_buffer.max_frame_size = self.max_inbound_frame_size
        self.screen: FrameScreen | None = None
        self._goaway_debug = b""

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        # Same layout, only methods added: the proxy's streams validate headers in one pass.
        stream.__class__ = ProxyH2Stream
        return stream

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        if frames:
            self._data_to_send += b"".join(serialize_frame(frame) for frame in frames)

    def _screened(self, reason: str | None) -> None:
        if reason is not None:
            self._goaway_debug = reason.encode()
            raise AbuseDetected(reason)

    def _terminate_connection(self, error_code: ErrorCodes) -> None:
        # h2's, with the screen's reason as debug data.
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = self.highest_inbound_stream_id
        goaway.error_code = error_code
        goaway.additional_data = self._goaway_debug
        self.state_machine.process_input(ConnectionInputs.SEND_GOAWAY)
        self._prepare_for_sending([goaway])

    def _receive_frame(self, frame: Frame) -> list[Event]:
        # h2's own, without formatting repr(frame) for a trace log nobody reads, and with the screen.
        events: list[Event]
        screen = self.screen
        if screen is not None:
            self._screened(screen.frame_received(frame))
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as exc:
            if not self._stream_is_closed_by_reset(exc.stream_id):
                raise
            reset = RstStreamFrame(exc.stream_id)
            reset.error_code = exc.error_code
            self._prepare_for_sending([reset])
            events = exc._events
            if screen is not None:
                self._screened(screen.reply_queued())
        except StreamIDTooLowError as exc:
            if self._stream_is_closed_by_reset(exc.stream_id):
                reset = RstStreamFrame(exc.stream_id)
                reset.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([reset])
                events = []
                if screen is not None:
                    self._screened(screen.reply_queued())
            elif self._stream_is_closed_by_end(exc.stream_id):
                raise StreamClosedError(exc.stream_id) from exc
            else:
                raise
        else:
            self._prepare_for_sending(frames)
            # h2 answers DATA on a closed stream from inside the dispatch (RST_STREAM, WINDOW_UPDATE).
            if screen is not None and frames and any(f.__class__ is RstStreamFrame for f in frames):
                self._screened(screen.reply_queued())
        return events

    def _open_streams(self, remainder: int) -> int:
        # h2 recounts every stream (pruning closed ones) each time a stream opens,
        # which is quadratic in the number of concurrent streams. Between exact
        # recounts the size of the stream table is returned instead: an upper
        # bound, used only while it cannot reach a concurrency limit, so no stream
        # is ever refused that the exact count would admit.
        # The limits are read each time: the peer may lower its own after the last recount.
        streams = len(self.streams)
        limit = min(self.local_settings.max_concurrent_streams, self.remote_settings.max_concurrent_streams)
        if streams < self._recount_at and streams < limit:
            return streams
        count: int = super()._open_streams(remainder)
        self._recount_at = min(2 * len(self.streams) + 32, limit - 1)
        return count

    def _receive_headers_frame(self, frame: Any) -> tuple[list[Frame], list[Event]]:
        # h2 makes any malformed header block a connection error. From a client that is what the proxy
        # wants (Envoy's default too: a peer sending invalid messages loses its connection); but an
        # upstream connection carries many clients' streams, so a malformed response is the stream
        # error RFC 9113 §8.1.1 asks for: that stream is reset and its client answered 502.
        try:
            return super()._receive_headers_frame(frame)
        except MalformedMessage as exc:
            if not self.config.client_side:
                raise exc.rejection from None
            stream = self.streams[exc.stream_id]
            # A response that also ended its stream leaves nothing to reset.
            frames = [] if stream.closed else stream.reset_stream(ErrorCodes.PROTOCOL_ERROR)
            return frames, [
                StreamReset(stream_id=exc.stream_id, error_code=ErrorCodes.PROTOCOL_ERROR, remote_reset=False)
            ]
        except ProtocolError as exc:
            if type(exc) is ProtocolError and isinstance(exc.__cause__, HPACKError | IndexError | TypeError):
                raise HeaderCompressionError(str(exc)) from exc.__cause__
            raise

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
    # Requests from clients and responses from servers are validated on receipt: neither side is
    # trusted to be well-formed (a server may be anyone's). Outbound headers are ones already validated
    # (or built by the proxy). Headers stay bytes end to end.
    return H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=True,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        split_outbound_cookies=False,
    )


_SERVER_CONFIG = _configuration(client_side=False)
_CLIENT_CONFIG = _configuration(client_side=True)


_CONNECTION_CLASS: type[H2Connection] = ProxyH2Connection if SUPPORTED else H2Connection


def new_server_connection(
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
    max_header_list_size: int = MAX_HEADER_LIST_SIZE,
) -> H2Connection:
    """A server-side connection with the SETTINGS already queued."""
    return _initiated(_CONNECTION_CLASS(_SERVER_CONFIG), max_concurrent_streams, max_header_list_size)


def new_client_connection() -> H2Connection:
    """A client-side connection with the preface and SETTINGS already queued."""
    return _initiated(_CONNECTION_CLASS(_CLIENT_CONFIG), DEFAULT_MAX_CONCURRENT_STREAMS)


def _initiated(
    conn: H2Connection, max_concurrent_streams: int, max_header_list_size: int = MAX_HEADER_LIST_SIZE
) -> H2Connection:
    initial_values = {
        SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
        SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
    }
    if conn.config.client_side:
        initial_values[SettingCodes.ENABLE_PUSH] = 0
    # Enforced from the first byte, not only once the peer acknowledges the SETTINGS.
    conn.decoder.max_header_list_size = max_header_list_size
    if isinstance(conn.incoming_buffer, _BoundedFrameBuffer):
        conn.incoming_buffer.max_block = max_header_list_size
    conn.local_settings = Settings(client=conn.config.client_side, initial_values=initial_values)
    conn.initiate_connection()
    # The connection window is not a SETTING: it starts at 65,535 and can only grow.
    conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
    return conn
