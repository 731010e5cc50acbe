"""An HTTP/2 client written with hyperframe and hpack only: it sends whatever frames it is told to, valid or
not, and reports exactly what came back. The attack and conformance suites drive the proxy with it; h2 is
not used, so nothing here shares the state machine (or its bugs) with the proxy under test.

asyncio over a socket the caller provides (e.g. ``Namespace.open_socket``: one opened inside a network
namespace, so it is intercepted like an application's would be).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from hpack import Decoder, Encoder
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
Header = tuple[bytes, bytes]

#: RFC 9113 §7 error codes, by name.
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM = 0x4, 0x5, 0x6, 0x7
CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM = 0x8, 0x9, 0xA, 0xB
INADEQUATE_SECURITY, HTTP_1_1_REQUIRED = 0xC, 0xD


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes, length: int | None = None) -> bytes:
    """A frame built byte by byte, for frames hyperframe would refuse to serialise (unknown types, bad
    lengths, reserved bits). ``length`` overrides the header's length field."""
    size = len(payload) if length is None else length
    return (
        size.to_bytes(3, "big") + bytes([kind, flags]) + (stream_id & 0xFFFFFFFF).to_bytes(4, "big") + payload
    )


@dataclass
class Response:
    """What came back on one stream."""

    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    trailers: list[Header] = field(default_factory=list)
    #: RST_STREAM's error code, if the stream was reset.
    reset: int | None = None
    ended: bool = False

    @property
    def status(self) -> int | None:
        for name, value in self.headers:
            if name == b":status":
                return int(value)
        return None


@dataclass
class Closed:
    """How the server ended the connection: its GOAWAY (if any) and whether the socket closed."""

    goaway: GoAwayFrame | None
    closed: bool

    @property
    def error_code(self) -> int | None:
        return None if self.goaway is None else int(self.goaway.error_code)


class RawH2Client:
    """One connection. ``send`` writes frames or bytes as they are; ``next_frame`` reads one frame, with
    header blocks (HEADERS/PUSH_PROMISE + CONTINUATION) joined and decoded (see ``header_list``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = Encoder()
        self.decoder = Decoder()
        #: The server's SETTINGS as last received (identifier -> value).
        self.server_settings: dict[int, int] = {}
        self._next_stream_id = 1
        self._eof = False

    @classmethod
    async def over(cls, sock: socket.socket) -> RawH2Client:
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer)

    @classmethod
    async def connect(cls, host: str, port: int) -> RawH2Client:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    # --- building frames -------------------------------------------------------------------------------

    def stream_id(self) -> int:
        """The next client stream id (odd, increasing)."""
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        return stream_id

    def headers(
        self,
        stream_id: int,
        headers: Sequence[Header],
        *,
        end_stream: bool = True,
        end_headers: bool = True,
        huffman: bool = True,
    ) -> HeadersFrame:
        frame = HeadersFrame(stream_id, data=self.encoder.encode(list(headers), huffman=huffman))
        if end_headers:
            frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    @staticmethod
    def data(stream_id: int, payload: bytes, *, end_stream: bool = False) -> DataFrame:
        frame = DataFrame(stream_id, data=payload)
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    @staticmethod
    def settings(ack: bool = False, **values: int) -> SettingsFrame:
        frame = SettingsFrame(
            0, settings={getattr(SettingsFrame, name): value for name, value in values.items()}
        )
        if ack:
            frame.flags.add("ACK")
        return frame

    @staticmethod
    def ping(opaque: bytes = b"tether!!", ack: bool = False) -> PingFrame:
        return PingFrame(0, opaque_data=opaque, flags=["ACK"] if ack else [])

    @staticmethod
    def rst(stream_id: int, code: int = CANCEL) -> RstStreamFrame:
        return RstStreamFrame(stream_id, error_code=code)

    @staticmethod
    def window_update(stream_id: int, increment: int) -> WindowUpdateFrame:
        return WindowUpdateFrame(stream_id, window_increment=increment)

    # --- the wire ------------------------------------------------------------------------------------

    def send(self, *frames: Frame | bytes) -> None:
        """Write frames (or raw bytes) without waiting; a peer that closed makes this a no-op."""
        if self.writer.is_closing():
            return
        self.writer.write(b"".join(f if isinstance(f, bytes | bytearray) else f.serialize() for f in frames))

    async def flush(self) -> None:
        """Wait until the kernel took what was written; ConnectionError if the peer is gone."""
        await self.writer.drain()

    async def handshake(self, **settings: int) -> None:
        """Preface and SETTINGS out; the server's SETTINGS in, and acknowledged."""
        self.send(
            PREFACE, SettingsFrame(0, settings={getattr(SettingsFrame, k): v for k, v in settings.items()})
        )
        while True:
            frame = await self.next_frame(5.0)
            if frame is None:
                raise ConnectionError("the server closed the connection during the handshake")
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                self.send(self.settings(ack=True))
                return

    async def handshake_acked(self, timeout: float = 5.0, **settings: int) -> list[Frame]:
        """Like ``handshake``, but done only once the server also acknowledged our SETTINGS (what an
        endpoint may rely on before testing a setting's effect). Returns the other frames read meanwhile.
        ConnectionError if the server closed first; TimeoutError if either SETTINGS is missing."""
        self.send(
            PREFACE, SettingsFrame(0, settings={getattr(SettingsFrame, k): v for k, v in settings.items()})
        )
        others: list[Frame] = []
        remote = acked = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (remote and acked):
            frame = await self.next_frame(max(0.0, deadline - loop.time()))
            if frame is None:
                raise ConnectionError("the server closed the connection during the handshake")
            if not isinstance(frame, SettingsFrame):
                others.append(frame)
            elif "ACK" in frame.flags:
                acked = True
            else:
                remote = True
                self.send(self.settings(ack=True))
        return others

    async def next_frame(self, timeout: float) -> Frame | None:
        """The next frame from the server; None once the connection is closed. TimeoutError if none
        arrives within ``timeout`` seconds. SETTINGS from the server are recorded (not acknowledged)."""
        async with asyncio.timeout(timeout):
            frame = await self._read_frame()
            if isinstance(frame, HeadersFrame | PushPromiseFrame) and "END_HEADERS" not in frame.flags:
                block = bytes(frame.data)
                while True:
                    more = await self._read_frame()
                    if more is None:
                        return None
                    if not isinstance(more, ContinuationFrame):
                        raise AssertionError(f"server interleaved {more!r} into a header block")
                    block += bytes(more.data)
                    if "END_HEADERS" in more.flags:
                        break
                frame.data = block
            if isinstance(frame, HeadersFrame | PushPromiseFrame):
                decoded = self.decoder.decode(bytes(frame.data), raw=True)
                vars(frame)["decoded"] = [(bytes(name), bytes(value)) for name, value in decoded]
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                self.server_settings.update(frame.settings)
            return frame

    async def _read_frame(self) -> Frame | None:
        if self._eof:
            return None
        try:
            header = await self.reader.readexactly(9)
            frame, length = Frame.parse_frame_header(memoryview(header))
            body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._eof = True
            return None
        except HyperframeError as exc:
            raise AssertionError(f"server sent an unparseable frame header: {exc}") from exc
        frame.parse_body(memoryview(body))
        return frame

    async def until(self, wanted: Callable[[Frame], bool], timeout: float) -> Frame | None:
        """Read until a frame ``wanted`` accepts (returned), or the connection closes (None); answers the
        server's PINGs on the way. TimeoutError when neither happens within ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.next_frame(max(0.0, deadline - loop.time()))
            if frame is None or wanted(frame):
                return frame
            if isinstance(frame, PingFrame) and "ACK" not in frame.flags:
                self.send(self.ping(bytes(frame.opaque_data), ack=True))

    async def closed(self, timeout: float) -> Closed:
        """Read everything until the server closes the connection; its last GOAWAY, if it sent one.
        TimeoutError if it keeps the connection open."""
        goaway: GoAwayFrame | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.next_frame(max(0.0, deadline - loop.time()))
            if frame is None:
                return Closed(goaway, True)
            if isinstance(frame, GoAwayFrame):
                goaway = frame

    async def response(self, stream_id: int, timeout: float) -> Response:
        """Everything that came back on ``stream_id`` until it ended or was reset (DATA is acknowledged
        as it arrives, so a large response is never stuck on flow control). ConnectionError if the
        connection closed first."""
        result = Response()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.next_frame(max(0.0, deadline - loop.time()))
            if frame is None:
                raise ConnectionError(f"connection closed before stream {stream_id} ended")
            if isinstance(frame, PingFrame) and "ACK" not in frame.flags:
                self.send(self.ping(bytes(frame.opaque_data), ack=True))
            if isinstance(frame, GoAwayFrame) and frame.last_stream_id < stream_id:
                raise ConnectionError(f"GOAWAY {frame.error_code} before stream {stream_id} was processed")
            if frame.stream_id != stream_id:
                continue
            if isinstance(frame, HeadersFrame):
                decoded = header_list(frame)
                if not result.headers or (result.status is not None and 100 <= result.status < 200):
                    result.headers = decoded
                else:
                    result.trailers = decoded
            elif isinstance(frame, DataFrame):
                result.body += bytes(frame.data)
                if frame.flow_controlled_length:
                    self.send(
                        self.window_update(0, frame.flow_controlled_length),
                        self.window_update(stream_id, frame.flow_controlled_length),
                    )
            elif isinstance(frame, RstStreamFrame):
                result.reset = int(frame.error_code)
                return result
            if "END_STREAM" in frame.flags:
                result.ended = True
                return result

    async def request(
        self, headers: Sequence[Header], body: bytes = b"", *, timeout: float = 10.0
    ) -> Response:
        """Send one request on a new stream and wait for its whole response."""
        stream_id = self.stream_id()
        if body:
            self.send(
                self.headers(stream_id, headers, end_stream=False),
                self.data(stream_id, body, end_stream=True),
            )
        else:
            self.send(self.headers(stream_id, headers))
        return await self.response(stream_id, timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def get(
    authority: str, path: str = "/", *, scheme: bytes = b"http", extra: Sequence[Header] = ()
) -> list[Header]:
    """A GET request's header list."""
    return [
        (b":method", b"GET"),
        (b":scheme", scheme),
        (b":path", path.encode()),
        (b":authority", authority.encode()),
        *extra,
    ]


def header_list(frame: Frame) -> list[Header]:
    """The decoded header block of a HEADERS or PUSH_PROMISE frame read by ``RawH2Client.next_frame``."""
    return cast("list[Header]", vars(frame)["decoded"])


def frames_of_kind(frames: Sequence[Frame], kind: type[Frame]) -> list[Any]:
    return [frame for frame in frames if isinstance(frame, kind)]
