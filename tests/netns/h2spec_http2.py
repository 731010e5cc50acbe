"""h2spec's http2 cases: RFC 7540's requirements by section (RFC 9113's sections in each case)."""

from __future__ import annotations

from collections.abc import Sequence

from h2raw import (
    CANCEL,
    COMPRESSION_ERROR,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    STREAM_CLOSED,
    Header,
    RawH2Client,
    raw_frame,
)
from h2verdicts import (
    ACK,
    DATA,
    DEFAULT_FRAME_SIZE,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    PADDED,
    PING,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    _fail,
    case,
    connection_closed,
    connection_error,
    continuation_frame,
    data_frame,
    data_of_length,
    encode,
    filler,
    first_frame,
    frame_of,
    goaway_frame,
    headers_frame,
    headers_on,
    opaque,
    ping_ack,
    ping_ack_or_close,
    ping_frame,
    preface_answered_with_settings,
    priority_frame,
    push_promise_frame,
    request,
    rst_stream_frame,
    settings_ack,
    settings_frame,
    stream_closed,
    stream_error,
    window_update_frame,
)
from hyperframe.frame import DataFrame, GoAwayFrame, PingFrame, RstStreamFrame


@case("http2/3.5/1", "3.4", "the server's preface (a SETTINGS frame) comes first", handshake=False)
async def http2_3_5_1(client: RawH2Client, authority: str) -> None:
    await preface_answered_with_settings(client)


@case(
    "http2/3.5/2",
    "3.4",
    "an invalid connection preface is a connection error PROTOCOL_ERROR",
    handshake=False,
)
async def http2_3_5_2(client: RawH2Client, authority: str) -> None:
    client.send(b"INVALID CONNECTION PREFACE\r\n\r\n")
    await connection_error(client, PROTOCOL_ERROR, bare_close=True)  # §3.4: GOAWAY MAY be omitted


_UNKNOWN_FRAME = raw_frame(0x16, 0, 0, bytes(8))


@case("http2/4.1/1", "4.1", "a frame of unknown type is ignored (a PING is still answered)")
async def http2_4_1_1(client: RawH2Client, authority: str) -> None:
    client.send(_UNKNOWN_FRAME, ping_frame())
    await ping_ack(client, bytes(8))


@case("http2/4.1/2", "4.1", "undefined flags on a PING are ignored (it is answered)")
async def http2_4_1_2(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(PING, 0x16, 0, bytes(8)))
    await frame_of(client, PingFrame)


@case("http2/4.1/3", "4.1", "the reserved bit of the stream identifier is ignored (a PING is answered)")
async def http2_4_1_3(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(PING, 0x16, 0x80000000, bytes(8)))
    await frame_of(client, PingFrame)


@case("http2/4.2/1", "4.2", "a DATA frame of 2^14 octets (the default maximum) is accepted")
async def http2_4_2_1(client: RawH2Client, authority: str) -> None:
    size = client.server_settings.get(MAX_FRAME_SIZE, DEFAULT_FRAME_SIZE)
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        data_frame(1, b"x" * size, end_stream=True),
    )
    await headers_on(client, 1)


@case("http2/4.2/2", "4.2", "a DATA frame over SETTINGS_MAX_FRAME_SIZE is a FRAME_SIZE_ERROR")
async def http2_4_2_2(client: RawH2Client, authority: str) -> None:
    size = client.server_settings.get(MAX_FRAME_SIZE, DEFAULT_FRAME_SIZE)
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        data_frame(1, b"x" * (size + 1), end_stream=True),
    )
    await stream_error(client, FRAME_SIZE_ERROR)


@case(
    "http2/4.2/3",
    "4.2",
    "a HEADERS frame over SETTINGS_MAX_FRAME_SIZE is a connection error FRAME_SIZE_ERROR",
)
async def http2_4_2_3(client: RawH2Client, authority: str) -> None:
    block = encode(client, [*request(authority), *filler(5)])
    client.send(headers_frame(1, block))
    await connection_error(client, FRAME_SIZE_ERROR)


@case("http2/4.3/1", "4.3", "a field block that cannot be decoded is a connection error COMPRESSION_ERROR")
async def http2_4_3_1(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, b"\x40"))
    await connection_error(client, COMPRESSION_ERROR)


@case(
    "http2/4.3/2", "4.3", "PRIORITY between HEADERS and its CONTINUATION is a connection error PROTOCOL_ERROR"
)
async def http2_4_3_2(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_stream=False, end_headers=False),
        priority_frame(1, 0, 255),
        continuation_frame(1, encode(client, filler(1))),
    )
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/4.3/3",
    "4.3",
    "HEADERS on another stream inside a header block is a connection error PROTOCOL_ERROR",
)
async def http2_4_3_3(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    client.send(
        headers_frame(1, encode(client, headers), end_stream=False, end_headers=False),
        headers_frame(3, encode(client, headers)),
        continuation_frame(1, encode(client, filler(1))),
    )
    await connection_error(client, PROTOCOL_ERROR)


# --- 5.1 stream states ---


@case("http2/5.1/1", "5.1", "DATA on an idle stream is a connection error PROTOCOL_ERROR")
async def http2_5_1_1(client: RawH2Client, authority: str) -> None:
    client.send(data_frame(1, b"test", end_stream=True))
    await stream_error(client, PROTOCOL_ERROR, STREAM_CLOSED)


@case("http2/5.1/2", "5.1", "RST_STREAM on an idle stream is a connection error PROTOCOL_ERROR")
async def http2_5_1_2(client: RawH2Client, authority: str) -> None:
    client.send(rst_stream_frame(1, CANCEL))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/5.1/3", "5.1", "WINDOW_UPDATE on an idle stream is a connection error PROTOCOL_ERROR")
async def http2_5_1_3(client: RawH2Client, authority: str) -> None:
    client.send(window_update_frame(1, 100))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/5.1/4", "5.1", "CONTINUATION on an idle stream is a connection error PROTOCOL_ERROR")
async def http2_5_1_4(client: RawH2Client, authority: str) -> None:
    client.send(continuation_frame(1, encode(client, request(authority))))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/5.1/5", "5.1", "DATA on a half-closed (remote) stream is a stream error STREAM_CLOSED")
async def http2_5_1_5(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))), data_frame(1, b"test", end_stream=True))
    await stream_error(client, STREAM_CLOSED)


@case("http2/5.1/6", "5.1", "HEADERS on a half-closed (remote) stream is a stream error STREAM_CLOSED")
async def http2_5_1_6(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    client.send(headers_frame(1, encode(client, headers)), headers_frame(1, encode(client, headers)))
    await stream_error(client, STREAM_CLOSED)


@case(
    "http2/5.1/7",
    "5.1",
    "CONTINUATION on a half-closed (remote) stream is an error STREAM_CLOSED or PROTOCOL_ERROR",
)
async def http2_5_1_7(client: RawH2Client, authority: str) -> None:
    block = encode(client, request(authority))
    client.send(headers_frame(1, block), continuation_frame(1, block))
    await stream_error(client, STREAM_CLOSED, PROTOCOL_ERROR)


@case("http2/5.1/8", "5.1", "DATA after the client's RST_STREAM is a stream error STREAM_CLOSED")
async def http2_5_1_8(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_stream=False),
        rst_stream_frame(1, CANCEL),
        data_frame(1, b"test", end_stream=True),
    )
    await stream_error(client, STREAM_CLOSED)


@case("http2/5.1/9", "5.1", "HEADERS after the client's RST_STREAM is a stream error STREAM_CLOSED")
async def http2_5_1_9(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    client.send(
        headers_frame(1, encode(client, headers), end_stream=False),
        rst_stream_frame(1, CANCEL),
        headers_frame(1, encode(client, headers)),
    )
    await stream_error(client, STREAM_CLOSED)


@case(
    "http2/5.1/10",
    "5.1",
    "CONTINUATION after the client's RST_STREAM is an error STREAM_CLOSED or PROTOCOL_ERROR",
)
async def http2_5_1_10(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_stream=False),
        rst_stream_frame(1, CANCEL),
        continuation_frame(1, encode(client, filler(1))),
    )
    await stream_error(client, STREAM_CLOSED, PROTOCOL_ERROR)


@case("http2/5.1/11", "5.1", "DATA on a stream closed by END_STREAM both ways is an error STREAM_CLOSED")
async def http2_5_1_11(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))))
    await stream_closed(client)
    client.send(data_frame(1, b"test", end_stream=True))
    await stream_error(client, STREAM_CLOSED)


@case(
    "http2/5.1/12",
    "5.1",
    "HEADERS on a stream closed by END_STREAM both ways is a connection error STREAM_CLOSED",
)
async def http2_5_1_12(client: RawH2Client, authority: str) -> None:
    frame = headers_frame(1, encode(client, request(authority)))
    client.send(frame)
    await stream_closed(client)
    client.send(frame)  # the same octets again, as h2spec does
    await connection_error(client, STREAM_CLOSED)


@case(
    "http2/5.1/13",
    "5.1",
    "CONTINUATION on a closed stream is a connection error STREAM_CLOSED or PROTOCOL_ERROR",
)
async def http2_5_1_13(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))))
    await stream_closed(client)
    client.send(continuation_frame(1, encode(client, filler(1))))
    await connection_error(client, STREAM_CLOSED, PROTOCOL_ERROR)


@case(
    "http2/5.1.1/1", "5.1.1", "a client stream with an even identifier is a connection error PROTOCOL_ERROR"
)
async def http2_5_1_1_1(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(2, encode(client, request(authority))))
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/5.1.1/2",
    "5.1.1",
    "a stream identifier below one already used is a connection error PROTOCOL_ERROR",
)
async def http2_5_1_1_2(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    client.send(headers_frame(5, encode(client, headers)), headers_frame(3, encode(client, headers)))
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/5.1.2/1",
    "5.1.2",
    "one stream beyond SETTINGS_MAX_CONCURRENT_STREAMS is refused (PROTOCOL_ERROR or REFUSED_STREAM)",
)
async def http2_5_1_2_1(client: RawH2Client, authority: str) -> None:
    limit = client.server_settings.get(MAX_CONCURRENT_STREAMS)
    if limit is None:  # h2spec would skip the case; a server that advertises no limit fails it here
        raise AssertionError("the server advertised no SETTINGS_MAX_CONCURRENT_STREAMS")
    client.send(settings_frame((INITIAL_WINDOW_SIZE, 0)))
    block = encode(client, request(authority))  # one block, sent on every stream, as h2spec does
    client.send(b"".join(headers_frame(1 + 2 * i, block) for i in range(limit + 1)))
    await stream_error(client, PROTOCOL_ERROR, REFUSED_STREAM)


# (http2/5.3.1/1 and /2: INAPPLICABLE.)


_INVALID_PING = raw_frame(PING, 0, 3, bytes(8))


@case(
    "http2/5.4.1/1", "5.4.1", "after a connection error (PING on stream 3) the server closes the connection"
)
async def http2_5_4_1_1(client: RawH2Client, authority: str) -> None:
    client.send(_INVALID_PING)
    await connection_closed(client)


@case(
    "http2/5.4.1/2",
    "5.4.1",
    "a connection error (PING on stream 3) is announced with GOAWAY first",
    strict=True,
)
async def http2_5_4_1_2(client: RawH2Client, authority: str) -> None:
    client.send(_INVALID_PING)
    if await first_frame(client, GoAwayFrame) is None:
        _fail(client, "a GOAWAY (PROTOCOL_ERROR) before the connection closes")


@case("http2/5.5/1", "5.5", "an unknown extension frame is discarded (a PING is still answered)")
async def http2_5_5_1(client: RawH2Client, authority: str) -> None:
    client.send(_UNKNOWN_FRAME, ping_frame())
    await ping_ack(client, bytes(8))


@case(
    "http2/5.5/2",
    "5.5",
    "an unknown extension frame inside a header block is a connection error PROTOCOL_ERROR",
)
async def http2_5_5_2(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority)), end_headers=False), _UNKNOWN_FRAME)
    await connection_error(client, PROTOCOL_ERROR)


# --- 6 frame definitions ---


@case("http2/6.1/1", "6.1", "DATA on stream 0 is a connection error PROTOCOL_ERROR")
async def http2_6_1_1(client: RawH2Client, authority: str) -> None:
    client.send(data_frame(0, b"test", end_stream=True))
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.1/2",
    "6.1",
    "DATA on a stream neither open nor half-closed (local) is a stream error STREAM_CLOSED",
)
async def http2_6_1_2(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST"))), data_frame(1, b"test", end_stream=True)
    )
    await stream_error(client, STREAM_CLOSED)


@case(
    "http2/6.1/3", "6.1", "DATA whose padding is as long as its payload is a connection error PROTOCOL_ERROR"
)
async def http2_6_1_3(client: RawH2Client, authority: str) -> None:
    headers = [*request(authority, "POST"), (b"content-length", b"4")]
    client.send(
        headers_frame(1, encode(client, headers), end_stream=False),
        raw_frame(DATA, PADDED | END_STREAM, 1, b"\x06Test"),
    )
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.2/1", "6.2", "PRIORITY after HEADERS without END_HEADERS is a connection error PROTOCOL_ERROR")
async def http2_6_2_1(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_stream=False, end_headers=False),
        priority_frame(1, 0, 255),
        continuation_frame(1, encode(client, filler(1))),
    )
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.2/2",
    "6.2",
    "HEADERS on another stream after HEADERS without END_HEADERS is a connection error PROTOCOL_ERROR",
)
async def http2_6_2_2(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    client.send(
        headers_frame(1, encode(client, headers), end_stream=False, end_headers=False),
        headers_frame(3, encode(client, headers)),
        continuation_frame(1, encode(client, filler(1))),
    )
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.2/3", "6.2", "HEADERS on stream 0 is a connection error PROTOCOL_ERROR")
async def http2_6_2_3(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(0, encode(client, request(authority))))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.2/4", "6.2", "HEADERS whose padding exceeds its payload is a PROTOCOL_ERROR")
async def http2_6_2_4(client: RawH2Client, authority: str) -> None:
    block = encode(client, request(authority))
    client.send(raw_frame(HEADERS, PADDED | END_HEADERS | END_STREAM, 1, bytes([len(block) + 2]) + block))
    await stream_error(client, PROTOCOL_ERROR)


@case("http2/6.3/1", "6.3", "PRIORITY on stream 0 is a connection error PROTOCOL_ERROR")
async def http2_6_3_1(client: RawH2Client, authority: str) -> None:
    client.send(priority_frame(0, 0, 255))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.3/2", "6.3", "PRIORITY of 4 octets is a stream error FRAME_SIZE_ERROR")
async def http2_6_3_2(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority))), raw_frame(PRIORITY, 0, 1, b"\x80\x00\x00\x01")
    )
    await stream_error(client, FRAME_SIZE_ERROR)


@case("http2/6.4/1", "6.4", "RST_STREAM on stream 0 is a connection error PROTOCOL_ERROR")
async def http2_6_4_1(client: RawH2Client, authority: str) -> None:
    client.send(rst_stream_frame(0, CANCEL))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.4/2", "6.4", "RST_STREAM on an idle stream is a connection error PROTOCOL_ERROR")
async def http2_6_4_2(client: RawH2Client, authority: str) -> None:
    client.send(rst_stream_frame(1, CANCEL))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.4/3", "6.4", "RST_STREAM of 3 octets is a FRAME_SIZE_ERROR")
async def http2_6_4_3(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))), raw_frame(RST_STREAM, 0, 1, bytes(3)))
    await stream_error(client, FRAME_SIZE_ERROR)


@case("http2/6.5/1", "6.5", "a SETTINGS ACK with a payload is a connection error FRAME_SIZE_ERROR")
async def http2_6_5_1(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(SETTINGS, ACK, 0, b"\x00"))
    await connection_error(client, FRAME_SIZE_ERROR)


@case("http2/6.5/2", "6.5", "SETTINGS on stream 1 is a connection error PROTOCOL_ERROR")
async def http2_6_5_2(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(SETTINGS, 0, 1, b"\x00\x03\x00\x00\x00\x64"))
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.5/3", "6.5", "SETTINGS of a length not a multiple of 6 is a FRAME_SIZE_ERROR (or PROTOCOL_ERROR)"
)
async def http2_6_5_3(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(SETTINGS, 0, 0, b"\x00\x03\x00"))
    await stream_error(client, PROTOCOL_ERROR, FRAME_SIZE_ERROR)


@case("http2/6.5.2/1", "6.5.2", "SETTINGS_ENABLE_PUSH of 2 is a connection error PROTOCOL_ERROR")
async def http2_6_5_2_1(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((ENABLE_PUSH, 2)))
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.5.2/2", "6.5.2", "SETTINGS_INITIAL_WINDOW_SIZE of 2^31 is a connection error FLOW_CONTROL_ERROR"
)
async def http2_6_5_2_2(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((INITIAL_WINDOW_SIZE, 2**31)))
    await connection_error(client, FLOW_CONTROL_ERROR)


@case("http2/6.5.2/3", "6.5.2", "SETTINGS_MAX_FRAME_SIZE of 16,383 is a connection error PROTOCOL_ERROR")
async def http2_6_5_2_3(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((MAX_FRAME_SIZE, 16383)))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.5.2/4", "6.5.2", "SETTINGS_MAX_FRAME_SIZE of 2^24 is a connection error PROTOCOL_ERROR")
async def http2_6_5_2_4(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((MAX_FRAME_SIZE, 2**24)))
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.5.2/5",
    "6.5.2",
    "a SETTINGS parameter of unknown identifier is ignored (a PING is still answered)",
)
async def http2_6_5_2_5(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((0xFF, 1)), ping_frame())
    await ping_ack(client, bytes(8))


async def _request_under_window(client: RawH2Client, authority: str, *values: int) -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE set to each of ``values`` in one frame, acknowledged; then a request
    whose first DATA frame must be exactly the last value's size (1)."""
    client.send(settings_frame(*((INITIAL_WINDOW_SIZE, value) for value in values)))
    await settings_ack(client)
    client.send(headers_frame(1, encode(client, request(authority))))
    await data_of_length(client, 1, 1)


@case("http2/6.5.3/1", "6.5.3", "two SETTINGS_INITIAL_WINDOW_SIZE values in one frame are applied in order")
async def http2_6_5_3_1(client: RawH2Client, authority: str) -> None:
    await _request_under_window(client, authority, 100, 1)


@case("http2/6.5.3/2", "6.5.3", "SETTINGS without ACK is acknowledged")
async def http2_6_5_3_2(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((ENABLE_PUSH, 0)))
    await settings_ack(client)


@case("http2/6.7/1", "6.7", "PING is answered with a PING ACK carrying the same data")
async def http2_6_7_1(client: RawH2Client, authority: str) -> None:
    client.send(ping_frame(opaque(b"h2spec")))
    await ping_ack(client, opaque(b"h2spec"))


@case("http2/6.7/2", "6.7", "a PING ACK from the client is not answered (the next PING's ACK comes first)")
async def http2_6_7_2(client: RawH2Client, authority: str) -> None:
    client.send(ping_frame(opaque(b"invalid"), ack=True), ping_frame(opaque(b"h2spec")))
    await ping_ack(client, opaque(b"h2spec"))


@case("http2/6.7/3", "6.7", "PING on stream 1 is a connection error PROTOCOL_ERROR")
async def http2_6_7_3(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(PING, 0, 1, bytes(8)))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.7/4", "6.7", "PING of 6 octets is a connection error FRAME_SIZE_ERROR")
async def http2_6_7_4(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(PING, 0, 0, bytes(6)))
    await connection_error(client, FRAME_SIZE_ERROR)


@case("http2/6.8/1", "6.8", "GOAWAY on stream 1 is a connection error PROTOCOL_ERROR")
async def http2_6_8_1(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(GOAWAY, 0, 1, bytes(8)))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.9/1", "6.9", "WINDOW_UPDATE of 0 for the connection is a connection error PROTOCOL_ERROR")
async def http2_6_9_1(client: RawH2Client, authority: str) -> None:
    client.send(window_update_frame(0, 0))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.9/2", "6.9", "WINDOW_UPDATE of 0 on a stream is a stream error PROTOCOL_ERROR")
async def http2_6_9_2(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_stream=False), window_update_frame(1, 0)
    )
    await stream_error(client, PROTOCOL_ERROR)


@case("http2/6.9/3", "6.9", "WINDOW_UPDATE of 3 octets is a connection error FRAME_SIZE_ERROR")
async def http2_6_9_3(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"))
    await connection_error(client, FRAME_SIZE_ERROR)


@case(
    "http2/6.9.1/1", "6.9.1", "with SETTINGS_INITIAL_WINDOW_SIZE 1 the response's first DATA frame is 1 octet"
)
async def http2_6_9_1_1(client: RawH2Client, authority: str) -> None:
    await _request_under_window(client, authority, 1)


@case(
    "http2/6.9.1/2",
    "6.9.1",
    "a connection window grown beyond 2^31-1 is answered with GOAWAY FLOW_CONTROL_ERROR",
)
async def http2_6_9_1_2(client: RawH2Client, authority: str) -> None:
    client.send(window_update_frame(0, 2**31 - 1), window_update_frame(0, 2**31 - 1))
    frame = await first_frame(client, GoAwayFrame)
    if frame is None or frame.error_code != FLOW_CONTROL_ERROR:
        _fail(client, "GOAWAY with FLOW_CONTROL_ERROR")


@case(
    "http2/6.9.1/3",
    "6.9.1",
    "a stream window grown beyond 2^31-1 is answered with RST_STREAM FLOW_CONTROL_ERROR",
)
async def http2_6_9_1_3(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_stream=False),
        window_update_frame(1, 2**31 - 1),
        window_update_frame(1, 2**31 - 1),
    )
    frame = await first_frame(client, RstStreamFrame)
    if frame is None or frame.stream_id != 1 or frame.error_code != FLOW_CONTROL_ERROR:
        _fail(client, "RST_STREAM on stream 1 with FLOW_CONTROL_ERROR")


@case(
    "http2/6.9.2/1",
    "6.9.2",
    "raising SETTINGS_INITIAL_WINDOW_SIZE from 0 to 1 mid-stream lets 1 octet of DATA out",
)
async def http2_6_9_2_1(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((INITIAL_WINDOW_SIZE, 0)))
    await settings_ack(client)
    client.send(
        headers_frame(1, encode(client, request(authority))), settings_frame((INITIAL_WINDOW_SIZE, 1))
    )
    await data_of_length(client, 1, 1)


@case("http2/6.9.2/2", "6.9.2", "a window made negative by SETTINGS is tracked: +2 after -1 lets 1 octet out")
async def http2_6_9_2_2(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((INITIAL_WINDOW_SIZE, 3)))
    await settings_ack(client)
    client.send(headers_frame(1, encode(client, request(authority))))
    await frame_of(client, DataFrame)  # the 3 octets the window allows
    client.send(settings_frame((INITIAL_WINDOW_SIZE, 2)))  # the stream's window is now -1
    await settings_ack(client)
    client.send(window_update_frame(1, 2))
    await data_of_length(client, 1, 1)


@case(
    "http2/6.9.2/3", "6.9.2", "SETTINGS_INITIAL_WINDOW_SIZE of 2^31 is a connection error FLOW_CONTROL_ERROR"
)
async def http2_6_9_2_3(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00"))
    await connection_error(client, FLOW_CONTROL_ERROR)


@case("http2/6.10/1", "6.10", "HEADERS followed by two CONTINUATION frames is accepted")
async def http2_6_10_1(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority)), end_headers=False))
    client.send(continuation_frame(1, encode(client, filler(1)), end_headers=False))
    client.send(continuation_frame(1, encode(client, filler(1))))
    await headers_on(client, 1)


@case(
    "http2/6.10/2",
    "6.10",
    "DATA after a CONTINUATION without END_HEADERS is a connection error PROTOCOL_ERROR",
)
async def http2_6_10_2(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False, end_headers=False),
        continuation_frame(1, encode(client, filler(1)), end_headers=False),
        data_frame(1, b"test", end_stream=True),
    )
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.10/3", "6.10", "CONTINUATION on stream 0 is a connection error PROTOCOL_ERROR")
async def http2_6_10_3(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_headers=False),
        continuation_frame(0, encode(client, filler(1))),
    )
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.10/4", "6.10", "CONTINUATION after HEADERS with END_HEADERS is a connection error PROTOCOL_ERROR"
)
async def http2_6_10_4(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority))), continuation_frame(1, encode(client, filler(1)))
    )
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.10/5",
    "6.10",
    "CONTINUATION after a CONTINUATION with END_HEADERS is a connection error PROTOCOL_ERROR",
)
async def http2_6_10_5(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_headers=False),
        continuation_frame(1, encode(client, filler(1))),
        continuation_frame(1, encode(client, filler(1))),
    )
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.10/6",
    "6.10",
    "DATA between HEADERS without END_HEADERS and its CONTINUATION is a connection error PROTOCOL_ERROR",
)
async def http2_6_10_6(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False, end_headers=False),
        data_frame(1, b"test", end_stream=True),
        continuation_frame(1, encode(client, filler(1)), end_headers=False),
        continuation_frame(0, encode(client, filler(1))),
    )
    await connection_error(client, PROTOCOL_ERROR)


# --- 7 error codes ---


@case("http2/7/1", "7", "GOAWAY with an unknown error code has no special effect (PING answered or close)")
async def http2_7_1(client: RawH2Client, authority: str) -> None:
    client.send(goaway_frame(0, 0xFF), ping_frame(opaque(b"h2spec")))
    await ping_ack_or_close(client, opaque(b"h2spec"))


@case(
    "http2/7/2", "7", "RST_STREAM with an unknown error code has no special effect (PING answered or close)"
)
async def http2_7_2(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        rst_stream_frame(1, 0xFF),
        ping_frame(),
    )
    await ping_ack_or_close(client, bytes(8))


# --- 8 HTTP message exchanges (RFC 9113 §8.1-§8.4) ---


async def _malformed_request(client: RawH2Client, headers: Sequence[Header]) -> None:
    client.send(headers_frame(1, encode(client, headers)))
    await stream_error(client, PROTOCOL_ERROR)


async def _post_then_trailers(client: RawH2Client, authority: str, trailers: Sequence[Header]) -> None:
    """A POST's body, then a second HEADERS without END_STREAM: malformed (PROTOCOL_ERROR)."""
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        data_frame(1, b"test"),
        headers_frame(1, encode(client, trailers), end_stream=False),
    )
    await stream_error(client, PROTOCOL_ERROR)


@case("http2/8.1/1", "8.1", "a second HEADERS without END_STREAM is a stream error PROTOCOL_ERROR")
async def http2_8_1_1(client: RawH2Client, authority: str) -> None:
    await _post_then_trailers(client, authority, [(b"x-test", b"ok")])


@case("http2/8.1.2/1", "8.2.1", "an uppercase field name makes the request malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_1(client: RawH2Client, authority: str) -> None:
    await _malformed_request(client, [*request(authority), (b"X-TEST", b"ok")])


@case("http2/8.1.2.1/1", "8.3", "an unknown pseudo-header field makes the request malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_1_1(client: RawH2Client, authority: str) -> None:
    await _malformed_request(client, [*request(authority), (b":test", b"ok")])


@case(
    "http2/8.1.2.1/2",
    "8.3",
    "a response pseudo-header field in a request makes it malformed (PROTOCOL_ERROR)",
)
async def http2_8_1_2_1_2(client: RawH2Client, authority: str) -> None:
    await _malformed_request(client, [*request(authority), (b":status", b"200")])


@case(
    "http2/8.1.2.1/3", "8.3", "a pseudo-header field in trailers makes the request malformed (PROTOCOL_ERROR)"
)
async def http2_8_1_2_1_3(client: RawH2Client, authority: str) -> None:
    await _post_then_trailers(client, authority, [(b":method", b"POST")])


@case(
    "http2/8.1.2.1/4",
    "8.3",
    "a pseudo-header field after a regular one makes the request malformed (PROTOCOL_ERROR)",
)
async def http2_8_1_2_1_4(client: RawH2Client, authority: str) -> None:
    await _malformed_request(client, [(b"x-test", b"ok"), *request(authority)])


@case("http2/8.1.2.2/1", "8.2.2", "a connection-specific field makes the request malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_2_1(client: RawH2Client, authority: str) -> None:
    await _malformed_request(client, [*request(authority), (b"connection", b"keep-alive")])


@case("http2/8.1.2.2/2", "8.2.2", 'TE other than "trailers" makes the request malformed (PROTOCOL_ERROR)')
async def http2_8_1_2_2_2(client: RawH2Client, authority: str) -> None:
    await _malformed_request(
        client, [*request(authority), (b"trailers", b"test"), (b"te", b"trailers, deflate")]
    )


@case("http2/8.1.2.3/1", "8.3.1", "an empty :path makes the request malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_3_1(client: RawH2Client, authority: str) -> None:
    method, scheme, _, host = request(authority)
    await _malformed_request(client, [method, scheme, (b":path", b""), host])


@case(
    "http2/8.1.2.3/2",
    "8.3.1",
    "a request without :method (nor :scheme, as h2spec sends it) is malformed (PROTOCOL_ERROR)",
)
async def http2_8_1_2_3_2(client: RawH2Client, authority: str) -> None:
    _, _, path, host = request(authority)
    await _malformed_request(client, [path, host])


@case("http2/8.1.2.3/3", "8.3.1", "a request without :scheme is malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_3_3(client: RawH2Client, authority: str) -> None:
    method, _, path, host = request(authority)
    await _malformed_request(client, [method, path, host])


@case("http2/8.1.2.3/4", "8.3.1", "a request without :path is malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_3_4(client: RawH2Client, authority: str) -> None:
    method, scheme, _, host = request(authority)
    await _malformed_request(client, [method, scheme, host])


@case("http2/8.1.2.3/5", "8.3", "a duplicated :method makes the request malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_3_5(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    await _malformed_request(client, [*headers, headers[0]])


@case("http2/8.1.2.3/6", "8.3", "a duplicated :scheme makes the request malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_3_6(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    await _malformed_request(client, [*headers, headers[1]])


@case("http2/8.1.2.3/7", "8.3", "a duplicated :path makes the request malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_3_7(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    await _malformed_request(client, [*headers, headers[2]])


async def _content_length_mismatch(client: RawH2Client, authority: str, *bodies: bytes) -> None:
    headers = [*request(authority, "POST"), (b"content-length", b"1")]
    client.send(headers_frame(1, encode(client, headers), end_stream=False))
    client.send(*(data_frame(1, body, end_stream=i == len(bodies) - 1) for i, body in enumerate(bodies)))
    await stream_error(client, PROTOCOL_ERROR)


@case(
    "http2/8.1.2.6/1",
    "8.1.1",
    "content-length other than the DATA payload makes the request malformed (PROTOCOL_ERROR)",
)
async def http2_8_1_2_6_1(client: RawH2Client, authority: str) -> None:
    await _content_length_mismatch(client, authority, b"test")


@case(
    "http2/8.1.2.6/2",
    "8.1.1",
    "content-length other than the sum of several DATA payloads is malformed (PROTOCOL_ERROR)",
)
async def http2_8_1_2_6_2(client: RawH2Client, authority: str) -> None:
    await _content_length_mismatch(client, authority, b"test", b"test")


@case("http2/8.2/1", "8.4", "PUSH_PROMISE from a client is a connection error PROTOCOL_ERROR")
async def http2_8_2_1(client: RawH2Client, authority: str) -> None:
    client.send(push_promise_frame(1, 3, encode(client, request(authority))))
    await connection_error(client, PROTOCOL_ERROR)
