"""The forwarding core driven frame by frame: raw HTTP/2 bytes in, raw bytes out, no sockets.

A client peer and a server peer are built from hyperframe and hpack directly (not h2), so what is
asserted is what would be on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tether.proxy.core.connection import DownstreamConnection, Http2Connection, UpstreamConnection
from tether.proxy.core.exchange import Exchange
from tether.proxy.core.h2conn import STREAM_WINDOW

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


class Rig:
    """A downstream connection (client side of the proxy) and an upstream one (server side)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.scheduler = Scheduler()
        self.router = Router()
        self.down = DownstreamConnection(self.scheduler, self.router, max_concurrent_streams=100)
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


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_unary_grpc_call_is_forwarded_with_headers_body_and_trailers_intact(rig: Rig) -> None:
    exchange = rig.routed(1, GRPC_REQUEST)
    rig.to_proxy(rig.client.data(1, b"\x00\x00\x00\x00\x05hello", end=True))
    upstream = rig.to_server()
    (headers,) = of_type(upstream, HeadersFrame, exchange.upstream_sid)
    assert headers.decoded == GRPC_REQUEST  # te: trailers and grpc-timeout pass through unchanged
    assert data_of(upstream, 1) == b"\x00\x00\x00\x00\x05hello"
    assert "END_STREAM" in of_type(upstream, DataFrame, 1)[-1].flags

    rig.from_server(
        rig.server.headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        + rig.server.data(1, b"\x00\x00\x00\x00\x02ok")
        + rig.server.headers(
            1, [(b"grpc-status", b"0"), (b"grpc-message", b""), (b"x-trailer-bin", b"AAEC")], end=True
        )
    )
    downstream = rig.to_client()
    response_headers, trailers = of_type(downstream, HeadersFrame, 1)
    assert response_headers.decoded == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    assert data_of(downstream, 1) == b"\x00\x00\x00\x00\x02ok"
    assert trailers.decoded == [(b"grpc-status", b"0"), (b"grpc-message", b""), (b"x-trailer-bin", b"AAEC")]
    assert "END_STREAM" in trailers.flags
    assert exchange.closed
    assert exchange.status == 200 and exchange.grpc_status == 0
    assert not rig.down.exchanges and not rig.up.exchanges


def test_streams_are_multiplexed_and_responses_reach_their_own_stream(rig: Rig) -> None:
    first = rig.routed(1, GET_REQUEST, end=True)
    second = rig.routed(3, GET_REQUEST, end=True)
    third = rig.routed(5, GET_REQUEST, end=True)
    rig.to_server()
    up_ids = [first.upstream_sid, second.upstream_sid, third.upstream_sid]
    assert up_ids == [1, 3, 5]
    # Responses arrive interleaved and out of order.
    rig.from_server(
        rig.server.headers(5, [(b":status", b"200")])
        + rig.server.headers(1, [(b":status", b"404")])
        + rig.server.data(5, b"five-")
        + rig.server.data(1, b"one", end=True)
        + rig.server.headers(3, [(b":status", b"503")], end=True)
        + rig.server.data(5, b"done", end=True)
    )
    downstream = rig.to_client()
    statuses = {f.stream_id: dict(f.decoded)[b":status"] for f in of_type(downstream, HeadersFrame)}
    assert statuses == {1: b"404", 3: b"503", 5: b"200"}
    assert data_of(downstream, 1) == b"one"
    assert data_of(downstream, 5) == b"five-done"
    assert all(e.closed for e in (first, second, third))


def test_request_body_waits_for_the_servers_window_and_is_acknowledged_only_when_forwarded(rig: Rig) -> None:
    exchange = rig.routed(1, GRPC_REQUEST)
    body = bytes(range(256)) * 800  # 204,800 bytes: more than the server's 65,535-byte window
    rig.to_proxy(rig.client.chunks(1, body, end=True))
    upstream = rig.to_server()
    assert len(data_of(upstream, 1)) == 65_535
    assert exchange.request.buffered == len(body) - 65_535
    # Nothing beyond what was forwarded is credited back to the client.
    assert not of_type(rig.to_client(), WindowUpdateFrame, 1)
    assert rig.down.h2.remote_flow_control_window(1) == STREAM_WINDOW - len(body)

    rig.from_server(rig.server.window_update(0, len(body)) + rig.server.window_update(1, len(body)))
    upstream = rig.to_server()
    assert data_of(rig.server.frames, 1) == body
    assert "END_STREAM" in of_type(upstream, DataFrame, 1)[-1].flags
    assert exchange.request.buffered == 0
    # Now forwarded, the bytes are credited back to the client (h2 batches credit in half windows).
    credited = sum(f.window_increment for f in of_type(rig.to_client(), WindowUpdateFrame, 1))
    assert STREAM_WINDOW // 2 <= credited <= len(body)


def test_slow_client_holds_back_the_server(rig: Rig) -> None:
    exchange = rig.routed(1, GET_REQUEST, end=True)
    rig.to_server()
    body = b"x" * 200_000
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.chunks(1, body, end=True))
    downstream = rig.to_client()
    # The client's default window is 65,535 bytes: the rest waits in the proxy, unacknowledged.
    assert len(data_of(downstream, 1)) == 65_535
    assert exchange.response.buffered == len(body) - 65_535
    assert not of_type(rig.to_server(), WindowUpdateFrame, 1)

    rig.to_proxy(rig.client.window_update(0, 70_000) + rig.client.window_update(1, 70_000))
    assert len(data_of(rig.to_client(), 1)) == 70_000
    assert exchange.response.buffered == len(body) - 135_535

    rig.to_proxy(rig.client.window_update(0, 100_000) + rig.client.window_update(1, 100_000))
    rig.to_client()
    assert data_of(rig.client.frames, 1) == body
    assert exchange.closed


def test_padding_is_credited_back_even_while_the_data_waits(rig: Rig) -> None:
    rig.from_server(Peer.settings(INITIAL_WINDOW_SIZE=0))  # the server accepts no DATA yet
    exchange = rig.routed(1, GRPC_REQUEST)
    frames = 600
    rig.to_proxy(b"".join(rig.client.data(1, b"abc", pad=255) for _ in range(frames)))
    assert data_of(rig.to_server(), 1) == b""
    assert exchange.request.buffered == 3 * frames
    # Padding (and its length byte) is never forwarded, so it is credited at once, while
    # the data waits (h2 sends credit in half-window steps).
    credited = sum(f.window_increment for f in of_type(rig.to_client(), WindowUpdateFrame, 1))
    assert STREAM_WINDOW // 2 <= credited <= 256 * frames


def test_client_reset_cancels_the_upstream_stream_with_the_same_code(rig: Rig) -> None:
    exchange = rig.routed(1, GRPC_REQUEST)
    rig.to_server()
    rig.to_proxy(rig.client.rst(1, CANCEL))
    (reset,) = of_type(rig.to_server(), RstStreamFrame, exchange.upstream_sid)
    assert reset.error_code == CANCEL
    assert exchange.closed and exchange.reset_code == CANCEL
    # A late response for the cancelled stream is dropped, and its bytes credited.
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.data(1, b"late"))
    assert not of_type(rig.to_client(), HeadersFrame, 1)


def test_client_reset_before_routing_completes_leaves_nothing_to_attach(rig: Rig) -> None:
    exchange = rig.request(1, GRPC_REQUEST)
    rig.to_proxy(rig.client.rst(1, CANCEL))
    assert exchange.closed
    exchange.attach(rig.up, rig.now)  # the router finishing late is harmless
    assert not of_type(rig.to_server(), HeadersFrame)


@pytest.mark.parametrize("code", [CANCEL, REFUSED_STREAM, INTERNAL_ERROR])
def test_server_reset_reaches_the_client_with_the_same_code(rig: Rig, code: int) -> None:
    exchange = rig.routed(1, GRPC_REQUEST)
    rig.to_server()
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.rst(1, code))
    (reset,) = of_type(rig.to_client(), RstStreamFrame, 1)
    assert reset.error_code == code
    assert exchange.closed


def test_server_answering_early_gets_its_full_response_delivered_before_the_reset(rig: Rig) -> None:
    exchange = rig.routed(1, GRPC_REQUEST)
    rig.to_proxy(rig.client.data(1, b"partial body"))
    rig.to_server()
    rig.from_server(
        rig.server.headers(1, [(b":status", b"200")])
        + rig.server.data(1, b"answer", end=True)
        + rig.server.rst(1, NO_ERROR)
    )
    downstream = rig.to_client()
    assert data_of(downstream, 1) == b"answer"
    (reset,) = of_type(downstream, RstStreamFrame, 1)
    assert reset.error_code == NO_ERROR
    assert downstream.index(reset) > downstream.index(of_type(downstream, DataFrame, 1)[-1])
    assert exchange.closed


def test_server_goaway_refuses_unprocessed_streams_and_lets_the_others_finish(rig: Rig) -> None:
    kept = rig.routed(1, GET_REQUEST, end=True)
    refused = rig.routed(3, GET_REQUEST, end=True)
    rig.to_server()
    rig.from_server(Peer.goaway(last_stream_id=1))
    assert not rig.up.has_capacity
    (reset,) = of_type(rig.to_client(), RstStreamFrame, 3)
    assert reset.error_code == REFUSED_STREAM
    assert refused.closed and not kept.closed
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.data(1, b"ok", end=True))
    assert data_of(rig.to_client(), 1) == b"ok"
    assert kept.closed
    # With nothing left in flight the drained connection closes itself.
    assert rig.up.closing
    assert of_type(rig.to_server(), GoAwayFrame)


def test_proxy_drain_sends_goaway_finishes_open_streams_and_refuses_new_ones(rig: Rig) -> None:
    exchange = rig.routed(1, GET_REQUEST, end=True)
    rig.to_server()
    rig.down.start_drain()
    (goaway,) = of_type(rig.to_client(), GoAwayFrame)
    assert goaway.last_stream_id == 1 and goaway.error_code == NO_ERROR
    rig.to_proxy(rig.client.headers(3, GET_REQUEST, end=True))
    (reset,) = of_type(rig.to_client(), RstStreamFrame, 3)
    assert reset.error_code == REFUSED_STREAM
    assert len(rig.router.exchanges) == 1
    assert not rig.down.closing
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.data(1, b"bye", end=True))
    assert data_of(rig.to_client(), 1) == b"bye"
    assert exchange.closed and rig.down.closing


def test_client_goaway_lets_in_flight_streams_finish(rig: Rig) -> None:
    exchange = rig.routed(1, GET_REQUEST, end=True)
    rig.to_server()
    rig.to_proxy(Peer.goaway(last_stream_id=0))
    assert not rig.down.closing
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.data(1, b"ok", end=True))
    assert data_of(rig.to_client(), 1) == b"ok"
    assert exchange.closed and rig.down.closing


def test_connection_specific_response_headers_are_stripped(rig: Rig) -> None:
    rig.routed(1, GET_REQUEST, end=True)
    rig.to_server()
    rig.from_server(
        rig.server.headers(
            1,
            [
                (b":status", b"200"),
                (b"connection", b"keep-alive, x-hop"),
                (b"keep-alive", b"timeout=5"),
                (b"x-hop", b"1"),
                (b"transfer-encoding", b"chunked"),
                (b"upgrade", b"h2c"),
                (b"x-end-to-end", b"kept"),
            ],
            end=True,
        )
    )
    (headers,) = of_type(rig.to_client(), HeadersFrame, 1)
    assert headers.decoded == [(b":status", b"200"), (b"x-end-to-end", b"kept")]


def test_request_trailers_are_forwarded(rig: Rig) -> None:
    rig.routed(1, GRPC_REQUEST)
    rig.to_proxy(rig.client.data(1, b"body") + rig.client.headers(1, [(b"x-checksum", b"42")], end=True))
    upstream = rig.to_server()
    trailers = of_type(upstream, HeadersFrame, 1)[-1]
    assert trailers.decoded == [(b"x-checksum", b"42")]
    assert "END_STREAM" in trailers.flags


def test_body_sent_before_routing_is_buffered_then_forwarded(rig: Rig) -> None:
    exchange = rig.request(1, GRPC_REQUEST)
    rig.to_proxy(rig.client.data(1, b"early ") + rig.client.data(1, b"bytes", end=True))
    assert exchange.request.buffered == 11
    exchange.attach(rig.up, rig.now)
    upstream = rig.to_server()
    assert data_of(upstream, 1) == b"early bytes"
    assert "END_STREAM" in of_type(upstream, DataFrame, 1)[-1].flags


def test_failed_grpc_request_gets_a_trailers_only_unavailable(rig: Rig) -> None:
    exchange = rig.request(1, GRPC_REQUEST, end=True)
    exchange.fail(503, "no endpoints available", rig.now)
    (headers,) = of_type(rig.to_client(), HeadersFrame, 1)
    fields = dict(headers.decoded)
    assert fields[b":status"] == b"200"
    assert fields[b"grpc-status"] == b"14"
    assert fields[b"grpc-message"] == b"no endpoints available"
    assert "END_STREAM" in headers.flags
    assert exchange.closed


def test_failed_http_request_gets_503_and_its_unread_body_is_refused(rig: Rig) -> None:
    exchange = rig.request(1, [(b":method", b"POST"), *GET_REQUEST[1:]])
    rig.to_proxy(rig.client.data(1, b"unread"))
    exchange.fail(503, "no endpoints available", rig.now)
    downstream = rig.to_client()
    (headers,) = of_type(downstream, HeadersFrame, 1)
    assert dict(headers.decoded)[b":status"] == b"503"
    (reset,) = of_type(downstream, RstStreamFrame, 1)
    assert reset.error_code == NO_ERROR


def test_upstream_lost_before_response_answers_unavailable(rig: Rig) -> None:
    exchange = rig.routed(1, GRPC_REQUEST, end=True)
    rig.up.connection_lost(rig.now)
    (headers,) = of_type(rig.to_client(), HeadersFrame, 1)
    assert dict(headers.decoded)[b"grpc-status"] == b"14"
    assert exchange.closed


def test_upstream_lost_mid_stream_delivers_what_arrived_then_unavailable(rig: Rig) -> None:
    rig.routed(1, GRPC_REQUEST, end=True)
    rig.to_server()
    rig.from_server(
        rig.server.headers(1, [(b":status", b"200")]) + rig.server.data(1, b"\x00\x00\x00\x00\x01a")
    )
    rig.up.connection_lost(rig.now)
    downstream = rig.to_client()
    assert data_of(downstream, 1) == b"\x00\x00\x00\x00\x01a"
    trailers = of_type(downstream, HeadersFrame, 1)[-1]
    assert dict(trailers.decoded)[b"grpc-status"] == b"14"
    assert "END_STREAM" in trailers.flags


def test_client_disconnect_cancels_every_upstream_stream(rig: Rig) -> None:
    rig.routed(1, GET_REQUEST, end=True)
    rig.routed(3, GET_REQUEST)
    rig.to_server()
    rig.down.connection_lost(rig.now)
    resets = of_type(rig.to_server(), RstStreamFrame)
    assert {(f.stream_id, f.error_code) for f in resets} == {(1, CANCEL), (3, CANCEL)}
    assert not rig.up.exchanges


def test_malformed_request_is_rejected_without_reaching_the_router(rig: Rig) -> None:
    rig.to_proxy(rig.client.headers(1, [(b":method", b"GET"), (b"connection", b"close")], end=True))
    assert not rig.router.exchanges
    frames = rig.to_client()
    assert of_type(frames, RstStreamFrame, 1) or of_type(frames, GoAwayFrame)


def test_garbage_closes_the_connection_with_goaway(rig: Rig) -> None:
    rig.routed(1, GET_REQUEST, end=True)
    rig.to_server()
    rig.to_proxy(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")  # WINDOW_UPDATE with 0 increment
    (goaway,) = of_type(rig.to_client(), GoAwayFrame)
    assert goaway.error_code == PROTOCOL_ERROR
    assert rig.down.closing and rig.down.error is not None
    (reset,) = of_type(rig.to_server(), RstStreamFrame, 1)
    assert reset.error_code == CANCEL


def test_ping_is_answered_by_the_proxy(rig: Rig) -> None:
    frame = PingFrame(0)
    frame.opaque_data = b"12345678"
    rig.to_proxy(bytes(frame.serialize()))
    (pong,) = of_type(rig.to_client(), PingFrame)
    assert "ACK" in pong.flags and pong.opaque_data == b"12345678"


def test_writes_stop_while_the_transport_is_backed_up(rig: Rig) -> None:
    exchange = rig.routed(1, GET_REQUEST, end=True)
    rig.to_server()
    rig.down.set_writable(False, rig.now)
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.data(1, b"held", end=True))
    assert data_of(rig.to_client(), 1) == b""
    assert exchange.response.buffered == 4
    rig.down.set_writable(True, rig.now)
    assert data_of(rig.to_client(), 1) == b"held"
    assert exchange.closed


def test_output_is_scheduled_once_per_connection_until_drained(rig: Rig) -> None:
    rig.scheduler.scheduled.clear()
    rig.routed(1, GET_REQUEST, end=True)
    rig.routed(3, GET_REQUEST, end=True)
    assert rig.scheduler.scheduled.count(rig.up) == 1
    rig.to_server()
    rig.routed(5, GET_REQUEST, end=True)
    assert rig.scheduler.scheduled.count(rig.up) == 2


def test_connection_without_streams_is_closed_with_goaway_at_the_idle_timeout(rig: Rig) -> None:
    rig.to_proxy(rig.client.headers(1, GET_REQUEST)[:5])  # half a frame header: no stream yet
    assert not rig.down.close_if_idle(9.9, idle_timeout=10.0)
    assert not rig.down.closing
    assert rig.down.close_if_idle(10.0, idle_timeout=10.0)
    (goaway,) = of_type(rig.to_client(), GoAwayFrame)
    assert goaway.error_code == NO_ERROR and goaway.last_stream_id == 0
    assert rig.down.closing
    assert not rig.down.close_if_idle(20.0, idle_timeout=10.0)  # counted once


def test_connection_that_never_sent_its_preface_is_closed_without_goaway() -> None:
    down = DownstreamConnection(Scheduler(), Router(), now=5.0)
    client = Peer()
    client.receive(down.data_to_send())
    down.receive_data(PREFACE[:10], 6.0)
    assert not down.close_if_idle(14.9, idle_timeout=10.0)
    assert down.close_if_idle(15.0, idle_timeout=10.0)
    assert down.closing
    assert not of_type(client.receive(down.data_to_send()), GoAwayFrame)


def test_open_stream_keeps_the_connection_and_its_end_restarts_the_idle_clock(rig: Rig) -> None:
    exchange = rig.routed(1, GRPC_REQUEST, end=True)
    rig.to_server()
    assert not rig.down.close_if_idle(100.0, idle_timeout=10.0)
    rig.now = 100.0
    rig.from_server(rig.server.headers(1, [(b":status", b"200")], end=True))
    assert exchange.closed
    assert not rig.down.close_if_idle(109.9, idle_timeout=10.0)
    assert rig.down.close_if_idle(110.0, idle_timeout=10.0)
    assert of_type(rig.to_client(), GoAwayFrame)
