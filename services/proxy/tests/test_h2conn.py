"""The proxy's h2 connection subclass against stock h2: where it departs from h2 on purpose (GOAWAY drain,
malformed responses, RFC 9113's error codes where h2 answers another), and where it must not (which
streams may be opened)."""

from __future__ import annotations

import h2.config
import h2.connection
import pytest
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError, TooManyStreamsError
from hpack import Decoder, Encoder
from hpack.exceptions import HPACKDecodingError
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, SettingsFrame

from tether.proxy.core.h2conn import (
    _CLIENT_CONFIG,
    DEFAULT_MAX_CONCURRENT_STREAMS,
    MAX_HUFFMAN_FIELD,
    _initiated,
    new_client_connection,
    new_server_connection,
)
from tether.proxy.core.h2speedups import FastDecoder, FastEncoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"app")]


def _open_until_refused(client: h2.connection.H2Connection, attempts: int) -> int:
    opened = 0
    for _ in range(attempts):
        try:
            client.send_headers(client.get_next_available_stream_id(), REQUEST, end_stream=True)
        except TooManyStreamsError:
            break
        opened += 1
    return opened


@pytest.mark.parametrize("proxy_side", [True, False], ids=["proxy", "stock"])
def test_streams_opened_before_the_servers_settings_do_not_wedge_the_connection(proxy_side: bool) -> None:
    """A burst goes out before the server's SETTINGS (limit 100) arrive; once answered, exactly 100 more
    may be open at once, as with stock h2 (the proxy's stream count shortcut once refused them all)."""
    if proxy_side:
        client = new_client_connection()
    else:
        client = _initiated(h2.connection.H2Connection(_CLIENT_CONFIG), DEFAULT_MAX_CONCURRENT_STREAMS)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    assert server.local_settings.max_concurrent_streams == 100
    preface = server.data_to_send()
    assert _open_until_refused(client, 100) == 100
    server.receive_data(client.data_to_send())
    client.receive_data(preface + server.data_to_send())
    for stream_id in list(server.streams):
        server.send_headers(stream_id, [(b":status", b"204")], end_stream=True)
    client.receive_data(server.data_to_send())
    assert _open_until_refused(client, 150) == 100


def _server_after_preface() -> tuple[h2.connection.H2Connection, bytes]:
    server = new_server_connection()
    server.receive_data(PREFACE + SettingsFrame(0).serialize())
    return server, server.data_to_send()


def _goaway_code(data: bytes) -> int:
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    (goaway,) = [frame for frame in frames if isinstance(frame, GoAwayFrame)]
    return int(goaway.error_code)


def test_a_field_block_that_does_not_decode_is_a_compression_error() -> None:
    """RFC 9113 §4.3 (h2 itself answers PROTOCOL_ERROR)."""
    server, _ = _server_after_preface()
    garbage = HeadersFrame(1, data=b"\xff\xff\xff\xff\xff\xff", flags=["END_HEADERS", "END_STREAM"])
    with pytest.raises(ProtocolError):
        server.receive_data(garbage.serialize())
    assert _goaway_code(server.data_to_send()) == ErrorCodes.COMPRESSION_ERROR


def test_a_settings_ack_with_a_payload_is_a_frame_size_error() -> None:
    """RFC 9113 §6.5 (h2 itself answers PROTOCOL_ERROR)."""
    server, _ = _server_after_preface()
    ack_with_payload = b"\x00\x00\x06\x04\x01\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00\x64"
    with pytest.raises(ProtocolError):
        server.receive_data(ack_with_payload)
    assert _goaway_code(server.data_to_send()) == ErrorCodes.FRAME_SIZE_ERROR


def test_long_fields_are_forwarded_as_plain_literals_and_short_ones_huffman_coded() -> None:
    encoder = FastEncoder(max_huffman_field=MAX_HUFFMAN_FIELD)
    short = (b"x-short", b"a" * 10)
    long = (b"x-long", b"a" * MAX_HUFFMAN_FIELD)
    assert encoder.encode([short]) == Encoder().encode([short], huffman=True)
    block = FastEncoder(max_huffman_field=MAX_HUFFMAN_FIELD).encode([long])
    assert block == Encoder().encode([long], huffman=False)
    assert Decoder().decode(block, raw=True) == [long]


def test_more_than_two_table_size_updates_in_one_block_are_refused() -> None:
    """RFC 7541 §4.2: at most two (hpack accepts any number, each costing a decode step)."""
    update = b"\x20"  # dynamic table size update to 0
    request = Encoder().encode(REQUEST)
    decoder = FastDecoder()
    decoder.strict_size_updates = True
    assert decoder.decode(update * 2 + request, raw=True) == REQUEST
    with pytest.raises(HPACKDecodingError):
        decoder.decode(update * 3 + request, raw=True)
    assert Decoder().decode(update * 3 + request, raw=True) == REQUEST  # what the flag departs from
