"""What an HTTP/2 peer may do that h2 allows but no honest client needs: counted per connection, and a
connection that goes beyond a limit is cut off (GOAWAY ENHANCE_YOUR_CALM) with the reason.

Pure: frames (and the time) in, a verdict out; h2 consults it frame by frame as it parses a read
(core.h2conn.FrameScreen), so a limit is enforced at the frame that passes it, not a read later. The
limits follow Envoy's defaults where Envoy has one.

* **Rapid reset** (CVE-2023-44487): streams the peer resets younger than ``PREMATURE_RESET_AGE`` and before
  their response started (Envoy's notion of a premature reset) draw from a token bucket (``reset_burst``,
  refilled at ``reset_rate`` per second). The proxy itself never resets an upstream stream that young
  (core.connection.UpstreamConnection.abandon), so one proxy never trips another's guard for its clients.
* **Control-frame floods** (PING, SETTINGS, their ACKs, and frames on reset streams, which h2 answers with
  RST_STREAM): each costs the proxy a reply or at least a parse. While the peer does not read (the socket's
  buffer is full), at most ``max_queued_control_replies`` replies may pile up; and however fast it reads, a
  peer may send that many in a burst and ``control_frame_rate`` per second after (honest clients send a
  few per minute).
* **CONTINUATION floods and HPACK bombs** are refused by h2 and the proxy's frame buffer
  (core.h2conn): a header block is never held or decoded beyond ``max_header_list_size`` bytes.
* **Empty frames**: DATA without payload or END_STREAM, or an empty trailer block; at most
  ``max_consecutive_empty_frames`` in a row.
* **PRIORITY floods**: at most ``max_priority_per_stream`` PRIORITY frames per stream the peer opened
  (plus that many for the connection itself).
* **WINDOW_UPDATE floods**: Envoy's bound, ``1 + 2 * (streams + max_window_updates_per_data * DATA frames
  sent)``: clients open each stream's window, and widen windows as data arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from hyperframe.frame import (
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

RAPID_RESET = "rapid_reset"
CONTROL_FLOOD = "control_flood"
EMPTY_FRAMES = "empty_frames"
PRIORITY_FLOOD = "priority_flood"
WINDOW_UPDATE_FLOOD = "window_update_flood"
CONTINUATION_FLOOD = "continuation_flood"
OVERSIZED_HEADERS = "oversized_headers"
#: Streams reset younger than this (seconds), before any response, count as premature resets.
PREMATURE_RESET_AGE = 1.0

REASONS = (
    RAPID_RESET,
    CONTROL_FLOOD,
    CONTINUATION_FLOOD,
    OVERSIZED_HEADERS,
    EMPTY_FRAMES,
    PRIORITY_FLOOD,
    WINDOW_UPDATE_FLOOD,
)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What one HTTP/2 client of a listener may do (the proxy's ``--h2-*`` and stream options)."""

    max_concurrent_streams: int = 2048
    #: Header fields one request may carry (Envoy's default); more are answered 431.
    max_header_count: int = 100
    #: Decoded header bytes one request may carry (SETTINGS_MAX_HEADER_LIST_SIZE); more is an HPACK bomb.
    max_header_list_size: int = 64 * 1024
    #: Seconds a client has for its TLS handshake and HTTP/2 preface.
    handshake_timeout: float = 10.0
    #: Client connections open at once on one listener.
    max_connections: int = 10_000
    reset_burst: int = 200
    reset_rate: float = 100.0
    max_queued_control_replies: int = 1000
    control_frame_rate: float = 100.0
    max_consecutive_empty_frames: int = 1
    max_priority_per_stream: int = 100
    max_window_updates_per_data: int = 10


class _TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; ``take`` is False once they ran out."""

    __slots__ = ("_burst", "_rate", "_tokens", "_updated")

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._tokens = float(burst)
        self._updated = now

    def take(self, now: float) -> bool:
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate) - 1.0
        return self._tokens >= 0


class AbuseGuard:
    """One connection's counts. Each method returns the reason the peer must be cut off, or None."""

    __slots__ = (
        "_control_frames",
        "_empty_run",
        "_highest_stream",
        "_limits",
        "_priorities",
        "_queued_replies",
        "_resets",
        "_streams",
        "_window_updates",
        "data_frames_sent",
        "now",
        "tripped",
        "writable",
    )

    def __init__(self, limits: ClientLimits, now: float) -> None:
        self._limits = limits
        self._resets = _TokenBucket(limits.reset_burst, limits.reset_rate, now)
        self._control_frames = _TokenBucket(limits.max_queued_control_replies, limits.control_frame_rate, now)
        self._queued_replies = 0
        self._empty_run = 0
        self._streams = 0
        self._priorities = 0
        self._window_updates = 0
        #: The first reason this connection was cut off for (it stays cut off).
        self.tripped: str | None = None
        self._highest_stream = 0
        # Kept current by the connection: the time of the read being parsed, whether the peer reads what
        # it is sent, and how many DATA frames it was sent so far.
        self.now = now
        self.writable = True
        self.data_frames_sent = 0

    def frame_received(self, frame: Frame) -> str | None:
        """Screen one frame before h2 acts on it (core.h2conn.FrameScreen)."""
        kind = frame.__class__
        if kind is DataFrame:
            data = cast(DataFrame, frame)
            return self.data_frame(data.flow_controlled_length == 0 and "END_STREAM" not in data.flags)
        if kind is HeadersFrame:
            headers = cast(HeadersFrame, frame)
            if headers.stream_id > self._highest_stream:
                self._highest_stream = headers.stream_id
                self.stream_opened()
                return None
            # Trailers always end their stream; an empty block that does not is an empty frame.
            return self.data_frame(not headers.data and "END_STREAM" not in headers.flags)
        if kind is PingFrame or kind is SettingsFrame:
            return self.control_frame(self.writable, self.now)
        if kind is PriorityFrame:
            return self.priority_frame()
        if kind is WindowUpdateFrame:
            return self.window_update(self.data_frames_sent)
        return None

    def reply_queued(self) -> str | None:
        """h2 answered a frame on a reset stream with RST_STREAM: a reply, like a PING's."""
        return self.control_frame(self.writable, self.now)

    def set_writable(self, writable: bool) -> None:
        self.writable = writable
        if writable:
            self.drained()

    def _trip(self, reason: str) -> str:
        if self.tripped is None:
            self.tripped = reason
        return reason

    def stream_opened(self) -> None:
        self._streams += 1
        self._empty_run = 0

    def premature_reset(self, now: float) -> str | None:
        """The peer reset a stream whose response had not started (a cancellation, or an attack)."""
        return None if self._resets.take(now) else self._trip(RAPID_RESET)

    def control_frame(self, writable: bool, now: float) -> str | None:
        """A PING or SETTINGS (or an ACK of either) arrived. ``writable``: the peer reads what we send."""
        if not self._control_frames.take(now):
            return self._trip(CONTROL_FLOOD)
        if writable:
            self._queued_replies = 0
            return None
        self._queued_replies += 1
        if self._queued_replies > self._limits.max_queued_control_replies:
            return self._trip(CONTROL_FLOOD)
        return None

    def drained(self) -> None:
        """The peer read everything queued (the socket became writable again)."""
        self._queued_replies = 0

    def data_frame(self, empty: bool) -> str | None:
        """A DATA frame (or trailer block) arrived; ``empty``: no payload and nothing ended."""
        if not empty:
            self._empty_run = 0
            return None
        self._empty_run += 1
        if self._empty_run > self._limits.max_consecutive_empty_frames:
            return self._trip(EMPTY_FRAMES)
        return None

    def priority_frame(self) -> str | None:
        self._priorities += 1
        if self._priorities > self._limits.max_priority_per_stream * (self._streams + 1):
            return self._trip(PRIORITY_FLOOD)
        return None

    def window_update(self, data_frames_sent: int) -> str | None:
        """A WINDOW_UPDATE arrived; ``data_frames_sent``: DATA frames sent to the peer so far."""
        self._window_updates += 1
        allowed = 1 + 2 * (self._streams + self._limits.max_window_updates_per_data * data_frames_sent)
        if self._window_updates > allowed:
            return self._trip(WINDOW_UPDATE_FLOOD)
        return None
