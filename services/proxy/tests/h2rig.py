"""An HTTP/2 client and server written with hyperframe and hpack directly (not h2), around the proxy's
forwarding core: raw bytes in, raw bytes out, no sockets. What tests assert is what would be on the wire."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tether.proxy.core.abuse import ClientLimits
from tether.proxy.core.connection import DownstreamConnection, Http2Connection, UpstreamConnection
from tether.proxy.core.exchange import Exchange

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, CANCEL = 0, 1, 2, 7, 8

GRPC_REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/pkg.Svc/Call"),
    (b":authority", b"web.ns.svc.cluster.local:8080"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"grpc-timeout", b"250m"),
]
GET_REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":path", b"/"),
    (b":authority", b"web:80"),
]


class Scheduler:
    """Records which connections asked to be flushed (the I/O layer's Flusher, minus the loop)."""

    def __init__(self) -> None:
        self.scheduled: list[Http2Connection] = []

    def schedule(self, connection: Http2Connection) -> None:
        self.scheduled.append(connection)


class Router:
    """Keeps routed exchanges for the test to attach or fail."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def route(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)


class Peer:
    """One side of an HTTP/2 connection written with hyperframe and hpack: builds and parses frames."""

    def __init__(self) -> None:
        self.encoder = Encoder()
        self.decoder = Decoder()
        self._buffer = b""
        self._header_block: list[Any] = []
        self.frames: list[Any] = []

    def headers(self, stream_id: int, headers: Sequence[tuple[bytes, bytes]], end: bool = False) -> bytes:
        frame = HeadersFrame(stream_id)
        frame.data = self.encoder.encode(list(headers))
        frame.flags.add("END_HEADERS")
        if end:
            frame.flags.add("END_STREAM")
        return bytes(frame.serialize())

    def data(self, stream_id: int, payload: bytes, end: bool = False, pad: int = 0) -> bytes:
        frame = DataFrame(stream_id)
        frame.data = payload
        if pad:
            frame.flags.add("PADDED")
            frame.pad_length = pad
        if end:
            frame.flags.add("END_STREAM")
        return bytes(frame.serialize())

    def chunks(self, stream_id: int, payload: bytes, end: bool = False, size: int = 16384) -> bytes:
        pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        return b"".join(
            self.data(stream_id, piece, end=end and i == len(pieces) - 1) for i, piece in enumerate(pieces)
        )

    @staticmethod
    def settings(**values: int) -> bytes:
        frame = SettingsFrame(0)
        for name, value in values.items():
            frame.settings[getattr(SettingsFrame, name)] = value
        return bytes(frame.serialize())

    @staticmethod
    def settings_ack() -> bytes:
        frame = SettingsFrame(0)
        frame.flags.add("ACK")
        return bytes(frame.serialize())

    @staticmethod
    def rst(stream_id: int, code: int) -> bytes:
        frame = RstStreamFrame(stream_id)
        frame.error_code = code
        return bytes(frame.serialize())

    @staticmethod
    def window_update(stream_id: int, increment: int) -> bytes:
        frame = WindowUpdateFrame(stream_id)
        frame.window_increment = increment
        return bytes(frame.serialize())

    @staticmethod
    def goaway(last_stream_id: int, code: int = NO_ERROR) -> bytes:
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = code
        return bytes(frame.serialize())

    def receive(self, data: bytes) -> list[Any]:
        """Parse bytes the proxy sent; returns the complete frames (header blocks decoded)."""
        self._buffer += data
        if self._buffer.startswith(PREFACE):
            self._buffer = self._buffer[len(PREFACE) :]
        parsed: list[Any] = []
        while len(self._buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
            if len(self._buffer) < 9 + length:
                break
            frame.parse_body(memoryview(self._buffer[9 : 9 + length]))
            self._buffer = self._buffer[9 + length :]
            if isinstance(frame, HeadersFrame | ContinuationFrame):
                self._header_block.append(frame)
                if "END_HEADERS" not in frame.flags:
                    continue
                first = self._header_block[0]
                block = b"".join(f.data for f in self._header_block)
                self._header_block = []
                first.decoded = [(bytes(n), bytes(v)) for n, v in self.decoder.decode(block, raw=True)]
                frame = first
            parsed.append(frame)
        self.frames.extend(parsed)
        return parsed


def of_type(frames: Iterable[Any], kind: type[Frame], stream_id: int | None = None) -> list[Any]:
    return [f for f in frames if isinstance(f, kind) and (stream_id is None or f.stream_id == stream_id)]


def data_of(frames: Iterable[Any], stream_id: int) -> bytes:
    return b"".join(bytes(f.data) for f in of_type(frames, DataFrame, stream_id))


RIG_LIMITS = ClientLimits(max_concurrent_streams=100)


class Rig:
    """A downstream connection (client side of the proxy) and an upstream one (server side)."""

    def __init__(self, limits: ClientLimits = RIG_LIMITS) -> None:
        self.now = 0.0
        self.scheduler = Scheduler()
        self.router = Router()
        self.down = DownstreamConnection(self.scheduler, self.router, limits=limits)
        self.up = UpstreamConnection(self.scheduler)
        self.client = Peer()
        self.server = Peer()
        # Handshakes: the client's preface and SETTINGS, then each side ACKs the other's SETTINGS.
        self.to_proxy(PREFACE + Peer.settings())
        self.to_client()
        self.to_proxy(Peer.settings_ack())
        self.from_server(Peer.settings())
        self.to_server()
        self.from_server(Peer.settings_ack())
        self.to_client()
        self.to_server()

    def to_proxy(self, data: bytes) -> None:
        self.down.receive_data(data, self.now)

    def from_server(self, data: bytes) -> None:
        self.up.receive_data(data, self.now)

    def to_client(self) -> list[Any]:
        return self.client.receive(self.down.data_to_send())

    def to_server(self) -> list[Any]:
        return self.server.receive(self.up.data_to_send())

    def request(self, stream_id: int, headers: Sequence[tuple[bytes, bytes]], end: bool = False) -> Exchange:
        self.to_proxy(self.client.headers(stream_id, headers, end=end))
        exchange = self.router.exchanges[-1]
        assert exchange.downstream_sid == stream_id
        return exchange

    def routed(self, stream_id: int, headers: Sequence[tuple[bytes, bytes]], end: bool = False) -> Exchange:
        exchange = self.request(stream_id, headers, end=end)
        exchange.attach(self.up, self.now)
        return exchange
