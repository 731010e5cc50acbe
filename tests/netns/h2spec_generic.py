"""h2spec's generic cases: what a server accepts that a client may send."""

from __future__ import annotations

from h2raw import CANCEL, NO_ERROR, RawH2Client
from h2verdicts import (
    ENABLE_PUSH,
    HEADER_TABLE_SIZE,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    NAME_X_TEST_HUFFMAN,
    case,
    continuation_frame,
    data_frame,
    encode,
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
    request,
    rst_stream_frame,
    settings_ack,
    settings_frame,
    stream_closed,
    window_update_frame,
)
from hyperframe.frame import DataFrame


@case(
    "generic/1/1", "3.4", "a client preface is answered with the server's own SETTINGS first", handshake=False
)
async def generic_1_1(client: RawH2Client, authority: str) -> None:
    await preface_answered_with_settings(client)


@case("generic/2/1", "5.1", "PRIORITY on an idle stream is accepted (a PING is still answered)")
async def generic_2_1(client: RawH2Client, authority: str) -> None:
    client.send(priority_frame(1, 0, 255), ping_frame())
    await ping_ack(client, bytes(8))


@case("generic/2/2", "5.1", "WINDOW_UPDATE on a half-closed (remote) stream lets the response's DATA flow")
async def generic_2_2(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((INITIAL_WINDOW_SIZE, 0)))
    client.send(headers_frame(1, encode(client, request(authority))), window_update_frame(1, 1))
    await frame_of(client, DataFrame)


@case("generic/2/3", "5.1", "PRIORITY on a half-closed (remote) stream is accepted (DATA still flows)")
async def generic_2_3(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((INITIAL_WINDOW_SIZE, 0)))
    client.send(
        headers_frame(1, encode(client, request(authority))),
        priority_frame(1, 0, 255),
        window_update_frame(1, 1),
    )
    await frame_of(client, DataFrame)


@case(
    "generic/2/4", "5.1", "RST_STREAM on a half-closed (remote) stream is accepted (PING answered or close)"
)
async def generic_2_4(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority))), rst_stream_frame(1, CANCEL), ping_frame()
    )
    await ping_ack_or_close(client, bytes(8))


@case("generic/2/5", "5.1", "PRIORITY on a closed stream is accepted (a PING is still answered)")
async def generic_2_5(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))))
    await stream_closed(client)
    client.send(priority_frame(1, 0, 255), ping_frame())
    await ping_ack(client, bytes(8))


@case("generic/3.1/1", "6.1", "a request body in one DATA frame is accepted")
async def generic_3_1_1(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        data_frame(1, b"test", end_stream=True),
    )
    await headers_on(client, 1)


@case("generic/3.1/2", "6.1", "a request body in two DATA frames is accepted")
async def generic_3_1_2(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        data_frame(1, b"test"),
        data_frame(1, b"test", end_stream=True),
    )
    await headers_on(client, 1)


@case("generic/3.1/3", "6.1", "a padded DATA frame is accepted")
async def generic_3_1_3(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        data_frame(1, b"test", end_stream=True, padding=bytes(5)),
    )
    await headers_on(client, 1)


@case("generic/3.2/1", "6.2", "a request in one HEADERS frame is answered")
async def generic_3_2_1(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))))
    await headers_on(client, 1)


@case("generic/3.2/2", "6.2", "a padded HEADERS frame is accepted")
async def generic_3_2_2(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority)), pad_length=8))
    await headers_on(client, 1)


@case(
    "generic/3.2/3",
    "6.2",
    "a HEADERS frame carrying the (deprecated, still parsed) priority fields is accepted",
)
async def generic_3_2_3(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority)), priority=(0, 255, False)))
    await headers_on(client, 1)


async def _priority_then_request(
    client: RawH2Client, authority: str, on: int, depends_on: int, weight: int, exclusive: bool
) -> None:
    client.send(
        priority_frame(on, depends_on, weight, exclusive),
        headers_frame(1, encode(client, request(authority))),
    )
    await headers_on(client, 1)


@case("generic/3.3/1", "6.3", "PRIORITY with the lowest weight (1) before a request is accepted")
async def generic_3_3_1(client: RawH2Client, authority: str) -> None:
    await _priority_then_request(client, authority, 1, 0, 0, False)


@case("generic/3.3/2", "6.3", "PRIORITY with the highest weight (256) before a request is accepted")
async def generic_3_3_2(client: RawH2Client, authority: str) -> None:
    await _priority_then_request(client, authority, 1, 0, 255, False)


@case("generic/3.3/3", "6.3", "PRIORITY making stream 3 depend on stream 1 is accepted")
async def generic_3_3_3(client: RawH2Client, authority: str) -> None:
    await _priority_then_request(client, authority, 3, 1, 0, False)


@case("generic/3.3/4", "6.3", "PRIORITY with the exclusive bit is accepted")
async def generic_3_3_4(client: RawH2Client, authority: str) -> None:
    await _priority_then_request(client, authority, 1, 0, 0, True)


@case("generic/3.3/5", "6.3", "PRIORITY on idle stream 3, then a request on the lower stream 1, is answered")
async def generic_3_3_5(client: RawH2Client, authority: str) -> None:
    await _priority_then_request(client, authority, 3, 0, 255, False)


@case("generic/3.4/1", "6.4", "RST_STREAM on an open stream is accepted (PING answered or close)")
async def generic_3_4_1(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_stream=False),
        rst_stream_frame(1, CANCEL),
        ping_frame(),
    )
    await ping_ack_or_close(client, bytes(8))


@case("generic/3.5/1", "6.5", "SETTINGS with every defined parameter is acknowledged")
async def generic_3_5_1(client: RawH2Client, authority: str) -> None:
    client.send(
        settings_frame(
            (HEADER_TABLE_SIZE, 4096),
            (ENABLE_PUSH, 1),
            (MAX_CONCURRENT_STREAMS, 100),
            (INITIAL_WINDOW_SIZE, 65535),
            (MAX_FRAME_SIZE, 16384),
            (MAX_HEADER_LIST_SIZE, 100),
        )
    )
    await settings_ack(client)


@case("generic/3.7/1", "6.7", "PING is answered with a PING ACK carrying the same data")
async def generic_3_7_1(client: RawH2Client, authority: str) -> None:
    client.send(ping_frame(opaque(b"h2spec")))
    await ping_ack(client, opaque(b"h2spec"))


@case(
    "generic/3.8/1", "6.8", "GOAWAY from the client is accepted (a PING answered, or the connection closed)"
)
async def generic_3_8_1(client: RawH2Client, authority: str) -> None:
    client.send(goaway_frame(0, NO_ERROR, b"h2spec"), ping_frame(opaque(b"h2spec")))
    await ping_ack_or_close(client, opaque(b"h2spec"))


@case("generic/3.9/1", "6.9", "WINDOW_UPDATE for the connection is accepted")
async def generic_3_9_1(client: RawH2Client, authority: str) -> None:
    client.send(window_update_frame(0, 1), ping_frame())
    await ping_ack(client, bytes(8))


@case("generic/3.9/2", "6.9", "WINDOW_UPDATE on a stream with a request in flight is accepted")
async def generic_3_9_2(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))), window_update_frame(1, 1))
    await headers_on(client, 1)


@case("generic/3.10/1", "6.10", "a header block split over HEADERS and one CONTINUATION is accepted")
async def generic_3_10_1(client: RawH2Client, authority: str) -> None:
    block = encode(client, request(authority))
    client.send(headers_frame(1, block[:5], end_headers=False), continuation_frame(1, block[5:]))
    await headers_on(client, 1)


@case("generic/3.10/2", "6.10", "a header block split over HEADERS and two CONTINUATIONs is accepted")
async def generic_3_10_2(client: RawH2Client, authority: str) -> None:
    block = encode(client, request(authority))
    client.send(
        headers_frame(1, block[:5], end_headers=False),
        continuation_frame(1, block[5:10], end_headers=False),
        continuation_frame(1, block[10:]),
    )
    await headers_on(client, 1)


@case("generic/4/1", "8.1", "a GET request is answered")
async def generic_4_1(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))))
    await headers_on(client, 1)


@case("generic/4/2", "8.1", "a HEAD request is answered")
async def generic_4_2(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority, "HEAD"))))
    await headers_on(client, 1)


@case("generic/4/3", "8.1", "a POST request with a body is answered")
async def generic_4_3(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        data_frame(1, b"test", end_stream=True),
    )
    await headers_on(client, 1)


@case("generic/4/4", "8.1", "a POST request with a body and trailers is answered")
async def generic_4_4(client: RawH2Client, authority: str) -> None:
    headers = [*request(authority, "POST"), (b"trailer", b"x-test")]
    client.send(
        headers_frame(1, encode(client, headers), end_stream=False),
        data_frame(1, b"test"),
        headers_frame(1, encode(client, [(b"x-test", b"ok")])),
    )
    await headers_on(client, 1)


def _hpack_case(case_id: str, description: str, representation: bytes, *, before: bool = False) -> None:
    """A request whose field block also carries ``representation`` (after the request's fields, or
    before them for table size updates); it must be answered."""

    @case(case_id, "4.3", description)
    async def run(client: RawH2Client, authority: str) -> None:
        block = encode(client, request(authority))
        client.send(headers_frame(1, representation + block if before else block + representation))
        await headers_on(client, 1)


# The string literals h2spec uses: names user-agent and x-test, value "h2spec", plain or Huffman-coded.
_NAME_USER_AGENT = b"\x0auser-agent"
_NAME_USER_AGENT_HUFFMAN = b"\x87\xb5\x05\xb1\x61\xcc\x5a\x93"
_NAME_X_TEST = b"\x06x-test"
_VALUE_H2SPEC = b"\x06h2spec"
_VALUE_H2SPEC_HUFFMAN = b"\x84\x9c\x48\xac\xa4"

_hpack_case("generic/5/1", "an indexed field (static index 58, RFC 7541 §6.1) is accepted", b"\xba")
_hpack_case(
    "generic/5/2",
    "a literal with incremental indexing, Huffman-coded new name (RFC 7541 §6.2.1), is accepted",
    b"\x40" + _NAME_USER_AGENT_HUFFMAN + _VALUE_H2SPEC_HUFFMAN,
)
_hpack_case(
    "generic/5/3",
    "a literal with incremental indexing, new name (RFC 7541 §6.2.1), is accepted",
    b"\x40" + _NAME_USER_AGENT + _VALUE_H2SPEC,
)
_hpack_case(
    "generic/5/4",
    "a literal with incremental indexing, new name x-test (RFC 7541 §6.2.1), is accepted",
    b"\x40" + _NAME_X_TEST + _VALUE_H2SPEC,
)
_hpack_case(
    "generic/5/5",
    "a literal with incremental indexing, Huffman-coded new name x-test (RFC 7541 §6.2.1), is accepted",
    b"\x40" + NAME_X_TEST_HUFFMAN + _VALUE_H2SPEC_HUFFMAN,
)
_hpack_case(
    "generic/5/6",
    "a literal without indexing, new name (RFC 7541 §6.2.2), is accepted",
    b"\x00" + _NAME_USER_AGENT + _VALUE_H2SPEC,
)
_hpack_case(
    "generic/5/7",
    "a literal without indexing, Huffman-coded new name (RFC 7541 §6.2.2), is accepted",
    b"\x00" + _NAME_USER_AGENT_HUFFMAN + _VALUE_H2SPEC_HUFFMAN,
)
_hpack_case(
    "generic/5/8",
    "a literal without indexing, new name x-test (RFC 7541 §6.2.2), is accepted",
    b"\x00" + _NAME_X_TEST + _VALUE_H2SPEC,
)
_hpack_case(
    "generic/5/9",
    "a literal without indexing, Huffman-coded new name x-test (RFC 7541 §6.2.2), is accepted",
    b"\x00" + NAME_X_TEST_HUFFMAN + _VALUE_H2SPEC_HUFFMAN,
)
_hpack_case(
    "generic/5/10",
    "a never-indexed literal, new name (RFC 7541 §6.2.3), is accepted",
    b"\x10" + _NAME_USER_AGENT + _VALUE_H2SPEC,
)
_hpack_case(
    "generic/5/11",
    "a never-indexed literal, Huffman-coded new name (RFC 7541 §6.2.3), is accepted",
    b"\x10" + _NAME_USER_AGENT_HUFFMAN + _VALUE_H2SPEC_HUFFMAN,
)
# h2spec sends the same octets for its cases 12 and 13 (both Huffman-coded x-test).
_hpack_case(
    "generic/5/12",
    "a never-indexed literal, Huffman-coded new name x-test (RFC 7541 §6.2.3), is accepted",
    b"\x10" + NAME_X_TEST_HUFFMAN + _VALUE_H2SPEC_HUFFMAN,
)
_hpack_case(
    "generic/5/13",
    "a never-indexed literal, Huffman-coded new name x-test, again (RFC 7541 §6.2.3), is accepted",
    b"\x10" + NAME_X_TEST_HUFFMAN + _VALUE_H2SPEC_HUFFMAN,
)


@case("generic/5/14", "4.3.1", "a dynamic table size update (to 128, RFC 7541 §6.3) is accepted")
async def generic_5_14(client: RawH2Client, authority: str) -> None:
    client.encoder.header_table_size = 128  # the encoder starts its next block with the update
    client.send(headers_frame(1, encode(client, request(authority))))
    await headers_on(client, 1)


# Two updates at the start of one block: to 128 (0x3f 0x61), then to 4,096 (0x3f 0xe1 0x1f).
_hpack_case(
    "generic/5/15",
    "two dynamic table size updates starting a block (RFC 7541 §4.2) are accepted",
    b"\x3f\x61\x3f\xe1\x1f",
    before=True,
)
