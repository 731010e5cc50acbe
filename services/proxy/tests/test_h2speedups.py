"""The h2/hpack/hyperframe replacements in h2speedups behave exactly like the code they replace.

Each replacement is compared with the library's own implementation on the same input: h2's
generator chain for header validation, hpack's ``Encoder.add`` for encoding, an independent
hpack encoder for decoding, hyperframe's frame layout for serialisation.
"""

from __future__ import annotations

import struct
from typing import Any, cast

import h2.stream
import h2.utilities
import pytest
from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import InvalidTableIndex, OversizedHeaderListError
from hyperframe.frame import DataFrame, Frame, HeadersFrame, SettingsFrame

import tether.proxy.core.h2conn  # noqa: F401  (installs the speedups)
from tether.proxy.core.h2speedups import _plainly_valid

REQUEST = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
RESPONSE = HeaderValidationFlags(
    is_client=True, is_trailer=False, is_response_header=True, is_push_promise=False
)
TRAILERS = HeaderValidationFlags(
    is_client=True, is_trailer=True, is_response_header=False, is_push_promise=False
)

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
    replaced = cast(Any, h2.stream).validate_headers
    assert replaced is not h2.utilities.validate_headers
    assert _outcome(replaced, headers, flags) == _outcome(h2.utilities.validate_headers, headers, flags)


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
    fast, reference = Encoder(), Encoder()
    for headers in HEADER_LISTS:
        expected = []
        for header in headers:
            sensitive = (
                not header.indexable if isinstance(header, HeaderTuple) else len(header) > 2 and header[2]
            )
            name = header[0].encode() if isinstance(header[0], str) else header[0]
            value = header[1].encode() if isinstance(header[1], str) else header[1]
            expected.append(reference.add((name, value), sensitive, True))
        assert fast.encode(headers) == b"".join(expected)
    fast.header_table_size = reference.header_table_size = 256
    assert fast.encode(GET) == reference._encode_table_size_change() + b"".join(
        reference.add(header, False, True) for header in GET
    )


def test_decoding_round_trips_with_classes_and_table_state() -> None:
    encoder, decoder = Encoder(), Decoder()
    for headers in HEADER_LISTS:
        decoded = decoder.decode(encoder.encode(headers), raw=True)
        assert [(name, value) for name, value in decoded] == [
            (
                header[0].encode() if isinstance(header[0], str) else header[0],
                header[1].encode() if isinstance(header[1], str) else header[1],
            )
            for header in headers
        ]
        assert all(type(header[0]) is bytes and type(header[1]) is bytes for header in decoded)
        sensitive = [type(header) is NeverIndexedHeaderTuple for header in decoded]
        assert sensitive == [isinstance(h, NeverIndexedHeaderTuple) or len(h) > 2 for h in headers]
    as_text: Any = decoder.decode(Encoder().encode(GET))
    assert as_text == [(n.decode(), v.decode()) for n, v in GET]


def test_decoding_rejects_what_hpack_rejects() -> None:
    with pytest.raises(InvalidTableIndex):
        Decoder().decode(bytes([0x80 | 70]), raw=True)  # dynamic index, empty table
    with pytest.raises(InvalidTableIndex):
        Decoder().decode(bytes([0x80]), raw=True)  # index 0
    small = Decoder(max_header_list_size=60)
    with pytest.raises(OversizedHeaderListError):
        small.decode(Encoder().encode(GET), raw=True)


@pytest.mark.parametrize(
    ("frame", "flag_bits"),
    [
        (HeadersFrame(1, flags=("END_HEADERS", "END_STREAM")), 0x05),
        (DataFrame(3, flags=("END_STREAM",)), 0x01),
        (DataFrame(5), 0x00),
        (SettingsFrame(0, flags=("ACK",)), 0x01),
    ],
)
def test_frames_serialise_and_parse_as_hyperframe_lays_them_out(frame: Frame, flag_bits: int) -> None:
    if isinstance(frame, HeadersFrame | DataFrame):
        frame.data = b"payload"
    body = frame.serialize_body()
    wire = frame.serialize()
    length, frame_type, flags, stream_id = len(body), frame.type or 0, flag_bits, frame.stream_id
    assert wire == struct.pack(">HBBBL", length >> 8, length & 0xFF, frame_type, flags, stream_id) + body
    parsed, parsed_length = Frame.parse_frame_header(memoryview(wire[:9]))
    assert (type(parsed), parsed_length, set(parsed.flags)) == (type(frame), length, set(frame.flags))
    with pytest.raises(ValueError, match="Unexpected flag"):
        frame.flags.add("NOT_A_FLAG")


def test_valid_blocks_take_the_single_pass() -> None:
    # Otherwise the comparison above would only be comparing h2 with itself.
    assert _plainly_valid(HEADER_BLOCKS[1][1], REQUEST)
    assert _plainly_valid(HEADER_BLOCKS[2][1], REQUEST)
    assert _plainly_valid(HEADER_BLOCKS[-6][1], RESPONSE)
    assert _plainly_valid(HEADER_BLOCKS[-2][1], TRAILERS)


def test_patches_apply_only_to_the_tested_releases() -> None:
    from tether.proxy.core import h2speedups

    assert h2speedups.installed_versions() == h2speedups.PATCHED_VERSIONS, "pins and patches disagree"
    assert h2speedups.install() is True
