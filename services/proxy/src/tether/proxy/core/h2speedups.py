"""Work h2 and hpack do on every frame that a proxy never uses, removed for the proxy's own connections only.

Nothing here patches a library: the proxy's connections (tether.proxy.core.h2conn) are subclasses of h2's,
with their own hpack encoder and decoder, their own stream class, and these pieces plugged in. Other users
of h2 in the same process (tests' peers, anything else) run the libraries as shipped. Profiling the data
path showed these costs that buy nothing here:

* h2 formats ``repr(frame)`` for a trace log on every received frame, which its
  default logger then discards (the proxy's connection skips the log call).
* hpack's decoder copies every decoded header into a new tuple once more at the
  end, and its encoder re-encodes the same table index for every indexed header.
  Decoding and encoding below produce the same header lists and the same bytes,
  with the single-byte indexed representation (most of a typical request) inlined
  and the rest delegated to hpack's own methods.
* h2 validates received headers through a chain of seven generators. One pass
  below checks that a header block is certainly valid; any block it is not sure
  of goes through h2's own chain, so every rejection keeps h2's exact error.
* h2 rebuilds the header-validation flags for every header block, and serialises
  frames through hyperframe's flag set one ``__contains__`` per defined flag.

All of it relies on library internals, so it is used only with the exact releases it was written and
tested against (h2 4.4.1, hpack 4.2.0, hyperframe 6.1.0); with any other release the proxy uses stock h2
(``SUPPORTED`` is false and a warning says so). test_h2speedups.py checks each piece against the library
on hypothesis-generated inputs.
"""

from __future__ import annotations

import importlib
import logging
import re
import struct
from collections.abc import Iterable
from typing import Any, cast

import h2.exceptions
import h2.stream
import h2.utilities
import hpack.hpack
import hpack.table
from hpack import Decoder, Encoder
from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError
from hpack.struct import HeaderTuple

Header = tuple[bytes, bytes]

# The exact releases these overrides were written and tested against.
PATCHED_VERSIONS = {"h2": "4.4.1", "hpack": "4.2.0", "hyperframe": "6.1.0"}


def installed_versions() -> dict[str, str]:
    # The packages' own __version__, not importlib.metadata: that would load zipfile, csv and email into
    # every proxy (about 3 MB) for three strings.
    return {name: str(importlib.import_module(name).__version__) for name in PATCHED_VERSIONS}


SUPPORTED = installed_versions() == PATCHED_VERSIONS
if not SUPPORTED:
    logging.getLogger(__name__).warning(
        "proxy h2 overrides not used: tested with %s, found %s", PATCHED_VERSIONS, installed_versions()
    )


# --- hyperframe -----------------------------------------------------------------------------


_FRAME_HEADER = struct.Struct(">HBBBL")


def serialize_frame(frame: Any) -> bytes:
    """hyperframe's ``Frame.serialize``, reading the flag set directly rather than through
    ``Flags.__contains__`` once per defined flag."""
    body: bytes = frame.serialize_body()
    length = frame.body_len = len(body)
    present = frame.flags._flags
    bits = 0
    for flag, bit in frame.defined_flags:
        if flag in present:
            bits |= bit
    header = _FRAME_HEADER.pack(
        (length >> 8) & 0xFFFF, length & 0xFF, frame.type, bits, frame.stream_id & 0x7FFFFFFF
    )
    return header + body


# --- received header validation -------------------------------------------------------------

# Everything but 0x21-0x7e, and within that uppercase letters and ':' (RFC 9113 §8.2.1).
_BAD_NAME = re.compile(rb"[^\x21-\x39\x3b-\x40\x5b-\x7e]")
_BAD_VALUE = re.compile(rb"[\x00\n\r]")
_EDGE_WHITESPACE = (0x20, 0x09)
_ALLOWED_PSEUDO = h2.utilities._ALLOWED_PSEUDO_HEADER_FIELDS
_CONNECTION_HEADERS = h2.utilities.CONNECTION_HEADERS
_check_pseudo = h2.utilities._check_pseudo_header_field_acceptability


def validate_headers(headers: Any, flags: Any) -> Iterable[Header]:
    """h2's ``validate_headers``, answering at once for blocks that are plainly valid."""
    if headers.__class__ is not list or not _plainly_valid(headers, flags):
        return h2.utilities.validate_headers(headers, flags)
    return cast(list[Header], headers)


def _plainly_valid(headers: list[Header], flags: Any) -> bool:
    """True only if h2's validation would accept ``headers``; False means "ask h2"."""
    seen_pseudo: set[bytes] = set()
    regular = False
    method = authority = host = None
    for header in headers:
        name, value = header
        if not name:
            return False
        if name[0] == 0x3A:
            if regular or name in seen_pseudo or name not in _ALLOWED_PSEUDO:
                return False
            seen_pseudo.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path" and not value:
                return False
        else:
            regular = True
            if _BAD_NAME.search(name) is not None or name in _CONNECTION_HEADERS:
                return False
            if name == b"host":
                if host is not None:
                    return False
                host = value
            elif name == b"te" and value.lower() != b"trailers":
                return False
        if value and (
            value[0] in _EDGE_WHITESPACE or value[-1] in _EDGE_WHITESPACE or _BAD_VALUE.search(value)
        ):
            return False
    try:
        _check_pseudo(seen_pseudo, method, flags)
    except h2.exceptions.ProtocolError:
        return False
    if not (flags.is_response_header or flags.is_trailer):
        if authority is None and host is None:
            return False
        if authority is not None and host is not None and authority != host:
            return False
    return True


class MalformedMessage(h2.exceptions.ProtocolError):
    """A received header block that fails validation: the message is malformed (RFC 9113 §8.1.1)."""

    def __init__(self, stream_id: int, rejection: h2.exceptions.ProtocolError) -> None:
        super().__init__(str(rejection))
        self.stream_id = stream_id
        #: h2's own exception, for callers that keep h2's behaviour (a connection error).
        self.rejection = rejection


class ProxyH2Stream(h2.stream.H2Stream):
    """h2's stream, with the fast header validation and the validation flags built once per kind."""

    # The flags depend only on the side and the first event's class.
    _flags_cache: dict[tuple[type, object], Any] = {}

    def _build_hdr_validation_flags(self, events: Any) -> Any:
        key = (events[0].__class__, self.state_machine.client)
        flags = self._flags_cache.get(key)
        if flags is None:
            flags = self._flags_cache[key] = super()._build_hdr_validation_flags(events)
        return flags

    def _process_received_headers(
        self, headers: Iterable[Header], header_validation_flags: Any, header_encoding: Any
    ) -> list[Header]:
        # h2's own pipeline with the one-pass validation first; the proxy never normalises or decodes
        # headers (they stay bytes), which its configuration guarantees.
        if self.config.normalize_inbound_headers or isinstance(header_encoding, str):
            return super()._process_received_headers(headers, header_validation_flags, header_encoding)
        if not self.config.validate_inbound_headers:
            return headers if headers.__class__ is list else list(headers)
        try:
            headers = validate_headers(headers, header_validation_flags)
            return headers if headers.__class__ is list else list(headers)
        except h2.exceptions.ProtocolError as exc:
            raise MalformedMessage(self.stream_id, exc) from exc


# --- hpack ----------------------------------------------------------------------------------

_STATIC_ENTRIES = hpack.table.HeaderTable.STATIC_TABLE
_STATIC_LENGTH = hpack.table.HeaderTable.STATIC_TABLE_LENGTH
_STATIC_MAPPING = hpack.table.HeaderTable.STATIC_TABLE_MAPPING
#: Indexed representations of the indices that fit the 7-bit prefix (RFC 7541 §6.1).
_INDEXED = [bytes([0x80 | index]) for index in range(127)]


#: RFC 7541 §4.2: a block signals at most two table size updates (the smallest and the final size).
_MAX_SIZE_UPDATES = 2


class FastDecoder(Decoder):
    """hpack's decoder; raw (bytes) decoding with single-byte indexed fields decoded inline.

    ``strict_size_updates``: refuse a block with more than two table size updates (RFC 7541 §4.2), as
    hpack does not: a block of 65,000 of them is 56 ms of CPU to decode. False: exactly as hpack.
    """

    strict_size_updates = False

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if not raw:
            return super().decode(data, raw)
        table = self.header_table
        max_size = self.max_header_list_size
        data_mem = memoryview(data)
        data_len = len(data)
        headers: list[Any] = []
        inflated = 0
        position = 0
        size_updates = 0
        while position < data_len:
            current = data[position]
            index = current & 0x7F
            if current & 0x80 and 0 < index < 0x7F:
                entry = _STATIC_ENTRIES[index - 1] if index <= _STATIC_LENGTH else table.get_by_index(index)
                header = tuple.__new__(HeaderTuple, entry)
                consumed = 1
            elif current & 0x80:
                header, consumed = self._decode_indexed(data_mem[position:])
            elif current & 0x40:
                header, consumed = self._decode_literal_index(data_mem[position:])
            elif current & 0x20:
                if headers:
                    msg = "Table size update not at the start of the block"
                    raise HPACKDecodingError(msg)
                size_updates += 1
                if size_updates > _MAX_SIZE_UPDATES and self.strict_size_updates:
                    msg = f"More than {_MAX_SIZE_UPDATES} table size updates in one block"
                    raise HPACKDecodingError(msg)
                consumed = self._update_encoding_context(data_mem[position:])
                header = None
            else:
                header, consumed = self._decode_literal_no_index(data_mem[position:])
            if header:
                headers.append(header)
                inflated += 32 + len(header[0]) + len(header[1])
                if inflated > max_size:
                    msg = f"A header list larger than {max_size} has been received"
                    raise OversizedHeaderListError(msg)
            position += consumed
        self._assert_valid_table_size()
        # hpack's literal decoders return bytes; copy anything else as hpack would.
        for header in headers:
            if header[0].__class__ is not bytes or header[1].__class__ is not bytes:
                return [header.__class__(bytes(h[0]), bytes(h[1])) for h in headers]
        return headers


class FastEncoder(Encoder):
    """hpack's encoder for sequences of bytes pairs, without per-header logging or integer encoding.

    ``max_huffman_field``: fields whose name and value together are longer are sent as plain literals.
    hpack's Huffman coder is pure Python, a loop per byte: a client's 64 KiB of headers cost the proxy a
    fifth of a second of CPU to forward. Short fields (most of them) keep the compression. None: as hpack.
    """

    def __init__(self, max_huffman_field: int | None = None) -> None:
        super().__init__()
        self.max_huffman_field = max_huffman_field

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if headers.__class__ is not list and headers.__class__ is not tuple:
            return super().encode(headers, huffman)
        table = self.header_table
        block: list[bytes] = []
        if table.resized:
            block.append(self._encode_table_size_change())
            table.resized = False
        limit = self.max_huffman_field
        for header in headers:
            if isinstance(header, HeaderTuple):
                sensitive = not header.indexable
            elif len(header) > 2:
                sensitive = bool(header[2])
            else:
                sensitive = False
            name = header[0]
            value = header[1]
            if name.__class__ is not bytes or value.__class__ is not bytes:
                name = hpack.hpack._to_bytes(name)
                value = hpack.hpack._to_bytes(value)
            coded = huffman and (limit is None or len(name) + len(value) <= limit)
            block.append(_encode_field(self, table, name, value, sensitive, coded))
        return b"".join(block)


def _encode_field(
    encoder: Any, table: Any, name: bytes, value: bytes, sensitive: bool, huffman: bool
) -> bytes:
    # hpack's Encoder.add, with the static-table exact match looked up first (as
    # HeaderTable.search does) and indexed representations taken from a table.
    static = _STATIC_MAPPING.get(name)
    if static is not None:
        index = static[1].get(value)
        if index is not None:
            return _INDEXED[index]
    match = table.search(name, value)
    indexbit = hpack.hpack.INDEX_NEVER if sensitive else hpack.hpack.INDEX_INCREMENTAL
    if match is None:
        encoded: bytes = encoder._encode_literal(name, value, indexbit, huffman)
    else:
        index, _, perfect = match
        if perfect is not None:
            return _INDEXED[index] if index < 127 else cast(bytes, encoder._encode_indexed(index))
        encoded = encoder._encode_indexed_literal(index, value, indexbit, huffman)
    if not sensitive:
        table.add(name, value)
    return encoded
