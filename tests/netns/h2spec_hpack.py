"""h2spec's hpack cases: RFC 7541's decoding errors, each a COMPRESSION_ERROR (RFC 9113 §4.3)."""

from __future__ import annotations

from h2raw import COMPRESSION_ERROR, RawH2Client
from h2verdicts import (
    HEADER_TABLE_SIZE,
    NAME_X_TEST_HUFFMAN,
    case,
    connection_error,
    encode,
    headers_frame,
    request,
)


def _hpack_error_case(
    case_id: str, section: str, description: str, representation: bytes, *, before: bool = False
) -> None:
    @case(case_id, section, description)
    async def run(client: RawH2Client, authority: str) -> None:
        block = encode(client, request(authority))
        client.send(headers_frame(1, representation + block if before else block + representation))
        await connection_error(client, COMPRESSION_ERROR)


_hpack_error_case(
    "hpack/2.3.3/1",
    "4.3",
    "an indexed field beyond both tables (index 70, RFC 7541 §2.3.3) is a decoding error",
    b"\xc6",
)
_hpack_error_case(
    "hpack/2.3.3/2",
    "4.3",
    "a literal whose name index is beyond both tables (70, RFC 7541 §2.3.3) is a decoding error",
    b"\x7f\x07\x00",
)
_hpack_error_case(
    "hpack/4.2/1",
    "4.3",
    "a dynamic table size update at the end of a block (RFC 7541 §4.2) is a decoding error",
    b"\x21",
)
_hpack_error_case(
    "hpack/5.2/1",
    "4.3",
    "a Huffman string padded with more than 7 bits (RFC 7541 §5.2) is a decoding error",
    b"\x00" + NAME_X_TEST_HUFFMAN + b"\x84\x49\x50\x9f\xff",
)
_hpack_error_case(
    "hpack/5.2/2",
    "4.3",
    "a Huffman string padded with zero bits (RFC 7541 §5.2) is a decoding error",
    b"\x00" + NAME_X_TEST_HUFFMAN + b"\x83\x49\x50\x90",
)
_hpack_error_case(
    "hpack/5.2/3",
    "4.3",
    "a Huffman string containing the EOS symbol (RFC 7541 §5.2) is a decoding error",
    b"\x00" + NAME_X_TEST_HUFFMAN + b"\x87\x49\x51\xff\xff\xff\xfa\x7f",
)
_hpack_error_case(
    "hpack/6.1/1", "4.3", "an indexed field with index 0 (RFC 7541 §6.1) is a decoding error", b"\x80"
)


@case(
    "hpack/6.3/1",
    "4.3.1",
    "a table size update above SETTINGS_HEADER_TABLE_SIZE (RFC 7541 §6.3) is a decoding error",
)
async def hpack_6_3_1(client: RawH2Client, authority: str) -> None:
    size = client.server_settings.get(HEADER_TABLE_SIZE, 4096) + 1
    block = encode(client, request(authority))
    client.send(headers_frame(1, _integer(size, 5, 0x20) + block))
    await connection_error(client, COMPRESSION_ERROR)


def _integer(value: int, prefix_bits: int, pattern: int) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with an N-bit prefix, OR-ed with the representation's pattern."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([pattern | value])
    out = [pattern | limit]
    value -= limit
    while value >= 128:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)
