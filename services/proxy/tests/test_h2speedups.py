"""The proxy's h2/hpack/hyperframe overrides behave exactly like the libraries they replace.

Differential: every piece is run beside pristine h2/hpack/hyperframe (nothing is patched process-wide, so
the libraries imported here are stock) on the same inputs, a hand-picked corpus and hypothesis-generated
header lists, header blocks, frames and whole connection byte streams, and must give the same result: the
same bytes, the same header lists, the same events, the same errors.
"""

from __future__ import annotations

import struct
from typing import Any

import h2.utilities
import hpack
import pytest
from h2.connection import H2Connection
from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKError, InvalidTableIndex, OversizedHeaderListError
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.proxy.core import h2conn, h2speedups
from tether.proxy.core.h2speedups import (
    FastDecoder,
    FastEncoder,
    _plainly_valid,
    serialize_frame,
    validate_headers,
)

REQUEST = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
RESPONSE = HeaderValidationFlags(
    is_client=True, is_trailer=False, is_response_header=True, is_push_promise=False
)
TRAILERS = HeaderValidationFlags(
    is_client=True, is_trailer=True, is_response_header=False, is_push_promise=False
)
FLAGS = (REQUEST, RESPONSE, TRAILERS)

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"web:80")]

HEADER_BLOCKS: list[tuple[HeaderValidationFlags, list[tuple[bytes, bytes]]]] = [
    (REQUEST, GET),
    (REQUEST, [*GET, (b"te", b"trailers"), (b"content-type", b"application/grpc"), (b"x-empty", b"")]),
    (REQUEST, [*GET, (b"host", b"web:80")]),
    (REQUEST, [*GET, (b"host", b"other:80")]),
    (REQUEST, [*GET, (b"host", b"web:80"), (b"host", b"web:80")]),
    (REQUEST, GET[:3]),
    (REQUEST, [*GET[:3], (b"host", b"web:80")]),
    (REQUEST, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""), (b":authority", b"a")]),
    (REQUEST, [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a")]),
    (REQUEST, [(b":method", b"CONNECT"), (b":authority", b"a:443")]),
    (REQUEST, [(b":method", b"CONNECT"), (b":authority", b"a:443"), (b":path", b"/")]),
    (REQUEST, [*GET, (b":method", b"POST")]),
    (REQUEST, [(b"accept", b"*/*"), *GET]),
    (REQUEST, [*GET, (b":custom", b"x")]),
    (REQUEST, [*GET, (b":status", b"200")]),
    (REQUEST, [*GET, (b"X-Upper", b"1")]),
    (REQUEST, [*GET, (b"bad name", b"1")]),
    (REQUEST, [*GET, (b"bad:colon", b"1")]),
    (REQUEST, [*GET, (b"caf\xc3\xa9", b"1")]),
    (REQUEST, [*GET, (b"", b"1")]),
    (REQUEST, [*GET, (b"x", b"a\r\nb")]),
    (REQUEST, [*GET, (b"x", b"nul\x00")]),
    (REQUEST, [*GET, (b"x", b" leading")]),
    (REQUEST, [*GET, (b"x", b"trailing\t")]),
    (REQUEST, [*GET, (b"x", b"inner space ok")]),
    (REQUEST, [*GET, (b"te", b"gzip")]),
    (REQUEST, [*GET, (b"connection", b"close")]),
    (REQUEST, [*GET, (b"transfer-encoding", b"chunked")]),
    (RESPONSE, [(b":status", b"200"), (b"content-length", b"100")]),
    (RESPONSE, [(b"content-length", b"100")]),
    (RESPONSE, [(b":status", b"200"), (b":path", b"/")]),
    (RESPONSE, [(b":status", b"204"), (b"host", b"a"), (b"host", b"b")]),
    (TRAILERS, [(b"grpc-status", b"0"), (b"grpc-message", b"")]),
    (TRAILERS, [(b":status", b"200")]),
]


def _outcome(validate: Any, headers: list[tuple[bytes, bytes]], flags: HeaderValidationFlags) -> object:
    try:
        return list(validate(list(headers), flags))
    except ProtocolError as exc:
        return ("rejected", str(exc))


@pytest.mark.parametrize(("flags", "headers"), HEADER_BLOCKS)
def test_validation_accepts_and_rejects_exactly_as_h2(
    flags: HeaderValidationFlags, headers: list[tuple[bytes, bytes]]
) -> None:
    assert _outcome(validate_headers, headers, flags) == _outcome(
        h2.utilities.validate_headers, headers, flags
    )


def test_valid_blocks_take_the_single_pass() -> None:
    # Otherwise the comparisons would only be comparing h2 with itself.
    assert _plainly_valid(HEADER_BLOCKS[1][1], REQUEST)
    assert _plainly_valid(HEADER_BLOCKS[2][1], REQUEST)
    assert _plainly_valid(HEADER_BLOCKS[-6][1], RESPONSE)
    assert _plainly_valid(HEADER_BLOCKS[-2][1], TRAILERS)


# --- generated header blocks --------------------------------------------------------------------------

_PSEUDO = st.sampled_from([b":method", b":scheme", b":path", b":authority", b":status", b":custom", b":"])
_NAME_CHARS = st.sampled_from([*b"abcxyz-_09:", 0x20, 0x41, 0x7F, 0xC3, 0x00])
_NAMES = st.one_of(
    st.sampled_from([b"host", b"te", b"content-length", b"connection", b"x-a", b"accept", b"cookie"]),
    st.binary(min_size=0, max_size=6).map(lambda raw: raw.lower()),
    st.lists(_NAME_CHARS, min_size=1, max_size=6).map(bytes),
)
_VALUES = st.one_of(
    st.sampled_from([b"", b"GET", b"CONNECT", b"http", b"/", b"web:80", b"trailers", b"200", b" x", b"x\t"]),
    st.binary(max_size=8),
)
_HEADER = st.tuples(st.one_of(_PSEUDO, _NAMES), _VALUES)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(FLAGS),
    st.lists(_HEADER, max_size=8),
    st.booleans(),
)
def test_generated_blocks_validate_exactly_as_h2(
    flags: HeaderValidationFlags, extra: list[tuple[bytes, bytes]], with_request_line: bool
) -> None:
    headers = ([*GET] if with_request_line and flags is REQUEST else []) + extra
    assert _outcome(validate_headers, headers, flags) == _outcome(
        h2.utilities.validate_headers, headers, flags
    )
    if _plainly_valid(headers, flags):
        list(h2.utilities.validate_headers(headers, flags))  # the fast path never accepts what h2 refuses


# --- hpack --------------------------------------------------------------------------------------------

HEADER_LISTS: list[list[Any]] = [
    GET,
    [*GET, (b"user-agent", b"h2load nghttp2/1.52.0"), (b"accept", b"*/*")],
    [*GET, (b"user-agent", b"h2load nghttp2/1.52.0"), (b"accept", b"*/*")],
    [(b":status", b"200"), (b"content-length", b"100"), (b"date", b"Wed, 25 Nov 2026 18:00:00 GMT")],
    [(b":status", b"200"), (b"content-length", b"101"), (b"date", b"Wed, 25 Nov 2026 18:00:01 GMT")],
    [*GET, NeverIndexedHeaderTuple(b"authorization", b"Bearer secret"), (b"x-three", b"v", True)],
    [*GET, HeaderTuple(b"x-long", b"v" * 300), (b"x-many", b"1")],
    [(":status", "200"), ("x-text", "str values")],
]


def test_encoding_is_byte_identical_to_hpack() -> None:
    fast, reference = FastEncoder(), Encoder()
    for headers in HEADER_LISTS:
        assert fast.encode(headers) == reference.encode(headers)
    fast.header_table_size = reference.header_table_size = 256
    assert fast.encode(GET) == reference.encode(GET)


_STATIC_NAMES = [entry[0] for entry in hpack.table.HeaderTable.STATIC_TABLE]
_STATIC_VALUES = [entry[1] for entry in hpack.table.HeaderTable.STATIC_TABLE]
_HPACK_HEADER = st.tuples(
    st.one_of(st.sampled_from(_STATIC_NAMES), st.binary(min_size=1, max_size=12)),
    st.one_of(st.sampled_from(_STATIC_VALUES), st.binary(max_size=40)),
    st.booleans(),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(_HPACK_HEADER, max_size=12), min_size=1, max_size=6),
    st.sampled_from([None, 0, 64, 256, 4096]),
    st.booleans(),
)
def test_generated_header_lists_encode_and_decode_as_hpack(
    blocks: list[list[tuple[bytes, bytes, bool]]], table_size: int | None, huffman: bool
) -> None:
    fast, reference = FastEncoder(), Encoder()
    fast_decoder, reference_decoder = FastDecoder(), Decoder()
    if table_size is not None:
        fast.header_table_size = reference.header_table_size = table_size
    for block in blocks:
        headers = [
            (name, value, sensitive) if sensitive else (name, value) for name, value, sensitive in block
        ]
        wire = reference.encode(headers, huffman=huffman)
        assert fast.encode(headers, huffman=huffman) == wire
        decoded, expected = fast_decoder.decode(wire, raw=True), reference_decoder.decode(wire, raw=True)
        assert decoded == expected
        assert [type(header) for header in decoded] == [type(header) for header in expected]


def _decode_outcome(decoder: Decoder, data: bytes) -> object:
    try:
        return decoder.decode(data, raw=True)
    except HPACKError as exc:
        return type(exc)


@settings(max_examples=400)
@given(st.lists(st.binary(max_size=24), min_size=1, max_size=4))
def test_arbitrary_bytes_decode_or_fail_as_hpack(blocks: list[bytes]) -> None:
    fast, reference = FastDecoder(), Decoder()
    for data in blocks:
        assert _decode_outcome(fast, data) == _decode_outcome(reference, data)


def test_decoding_rejects_what_hpack_rejects() -> None:
    with pytest.raises(InvalidTableIndex):
        FastDecoder().decode(bytes([0x80 | 70]), raw=True)  # dynamic index, empty table
    with pytest.raises(InvalidTableIndex):
        FastDecoder().decode(bytes([0x80]), raw=True)  # index 0
    small = FastDecoder(max_header_list_size=60)
    with pytest.raises(OversizedHeaderListError):
        small.decode(Encoder().encode(GET), raw=True)


# --- hyperframe ---------------------------------------------------------------------------------------

_FRAMES = st.one_of(
    st.builds(
        lambda sid, data, flags: _with(DataFrame(sid, data=data), flags),
        st.integers(1, 2**31 - 1),
        st.binary(max_size=64),
        st.sets(st.sampled_from(["END_STREAM"])),
    ),
    st.builds(
        lambda sid, data, flags: _with(HeadersFrame(sid, data=data), flags),
        st.integers(1, 2**31 - 1),
        st.binary(max_size=64),
        st.sets(st.sampled_from(["END_STREAM", "END_HEADERS"])),
    ),
    st.builds(lambda flags: _with(SettingsFrame(0), flags), st.sets(st.sampled_from(["ACK"]))),
    st.builds(lambda data: PingFrame(0, opaque_data=data), st.binary(min_size=8, max_size=8)),
    st.builds(
        lambda sid, inc: WindowUpdateFrame(sid, window_increment=inc), st.integers(0, 99), st.integers(1, 99)
    ),
    st.builds(lambda sid, code: RstStreamFrame(sid, error_code=code), st.integers(1, 99), st.integers(0, 13)),
    st.builds(
        lambda last, code: GoAwayFrame(0, last_stream_id=last, error_code=code),
        st.integers(0, 99),
        st.integers(0, 13),
    ),
)


def _with(frame: Frame, flags: set[str]) -> Frame:
    for flag in flags:
        frame.flags.add(flag)
    return frame


@settings(max_examples=300)
@given(_FRAMES)
def test_frames_serialise_exactly_as_hyperframe(frame: Frame) -> None:
    assert serialize_frame(frame) == frame.serialize()
    body = frame.serialize_body()
    parsed, length = Frame.parse_frame_header(memoryview(serialize_frame(frame)[:9]))
    assert (type(parsed), length, set(parsed.flags)) == (type(frame), len(body), set(frame.flags))
    assert serialize_frame(frame)[:9] == struct.pack(
        ">HBBBL", len(body) >> 8, len(body) & 0xFF, frame.type or 0, _bits(frame), frame.stream_id
    )


def _bits(frame: Frame) -> int:
    return sum(bit for flag, bit in frame.defined_flags if flag in frame.flags)


# --- whole connections --------------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _client_frames(draw: Any) -> bytes:
    encoder = Encoder()
    out = [PREFACE, SettingsFrame(0).serialize()]
    stream = 1
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["request", "data", "reset", "ping", "window", "priority", "settings"]))
        if kind == "request":
            block = encoder.encode([*GET, *draw(st.lists(_HEADER, max_size=3))])
            frame = HeadersFrame(stream, data=block)
            frame.flags.add("END_HEADERS")
            if draw(st.booleans()):
                frame.flags.add("END_STREAM")
            out.append(frame.serialize())
            stream += 2
        elif kind == "data":
            out.append(DataFrame(max(1, stream - 2), data=draw(st.binary(max_size=32))).serialize())
        elif kind == "reset":
            out.append(RstStreamFrame(max(1, stream - 2), error_code=draw(st.integers(0, 13))).serialize())
        elif kind == "ping":
            out.append(PingFrame(0, opaque_data=draw(st.binary(min_size=8, max_size=8))).serialize())
        elif kind == "window":
            out.append(
                WindowUpdateFrame(
                    draw(st.sampled_from([0, max(1, stream - 2)])), window_increment=7
                ).serialize()
            )
        elif kind == "priority":
            out.append(PriorityFrame(max(1, stream - 2), depends_on=0, stream_weight=16).serialize())
        else:
            out.append(SettingsFrame(0, flags=["ACK"] if draw(st.booleans()) else []).serialize())
    return b"".join(out)


def _run(connection: H2Connection, data: bytes, chunk: int) -> list[object]:
    """Everything a connection makes of ``data`` fed in ``chunk``-byte reads: events and bytes out."""
    trace: list[object] = [connection.data_to_send()]
    try:
        for start in range(0, len(data), chunk):
            for event in connection.receive_data(data[start : start + chunk]):
                fields = {key: value for key, value in vars(event).items() if key != "stream_ended"}
                trace.append(
                    (type(event).__name__, repr(sorted(fields.items(), key=lambda kv: kv[0]))[:4000])
                )
            trace.append(connection.data_to_send())
    except ProtocolError as exc:
        trace.append(("raised", type(exc).__name__, str(exc)))
        trace.append(connection.data_to_send())
    return trace


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from([1, 7, 64, 100_000]))
def test_a_server_connection_behaves_as_stock_h2_on_generated_client_streams(data: Any, chunk: int) -> None:
    stream = _client_frames(data.draw)
    proxy = h2conn.new_server_connection()
    stock = h2conn._initiated(H2Connection(h2conn._SERVER_CONFIG), h2conn.DEFAULT_MAX_CONCURRENT_STREAMS)
    assert type(proxy) is h2conn.ProxyH2Connection
    assert _run(proxy, stream, chunk) == _run(stock, stream, chunk)


def test_overrides_apply_only_to_the_tested_releases() -> None:
    assert h2speedups.installed_versions() == h2speedups.PATCHED_VERSIONS, "pins and overrides disagree"
    assert h2speedups.SUPPORTED
    # Nothing patched process-wide: the libraries imported here are the ones they shipped.
    assert Encoder.encode is not FastEncoder.encode and Decoder.decode is not FastDecoder.decode
    assert h2.utilities.validate_headers is not validate_headers
    assert Frame.serialize is not serialize_frame
