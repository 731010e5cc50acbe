"""What the first bytes of a connection are: a TLS ClientHello (with its SNI and ALPN), or not TLS at all.

Pure: bytes in (a peek at the start of the stream, growing as more arrives), a verdict out. The inbound
listener uses it to tell a meshed peer (TLS whose SNI is this proxy's identity) from the application's own
TLS and from plaintext, without consuming anything from the socket.

Only the record layer and the ClientHello's extensions are read (RFC 8446 §4.1.2, §4.2; RFC 6066 §3 for
server_name; RFC 7301 for ALPN). Anything malformed is "not a ClientHello we understand".
"""

from __future__ import annotations

from dataclasses import dataclass

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000
_EXT_ALPN = 0x0010
_HOST_NAME = 0x00
#: A ClientHello larger than this is not one the proxy waits for (post-quantum key shares reach ~1.8 KB).
MAX_CLIENT_HELLO = 16 * 1024


@dataclass(frozen=True, slots=True)
class NeedMore:
    """Not enough bytes yet to decide; peek again once at least ``at_least`` bytes are there."""

    at_least: int


@dataclass(frozen=True, slots=True)
class NotTls:
    """The stream does not start with a TLS handshake record."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """A TLS ClientHello: the name it asks for (SNI, lowercase; "" if absent) and the protocols it offers."""

    server_name: str
    alpn: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Malformed:
    """It starts like TLS but is not a well-formed ClientHello (or is larger than we accept)."""

    reason: str


Detection = NeedMore | NotTls | ClientHello | Malformed


def detect(data: bytes) -> Detection:
    """Classify the first bytes of a connection (``data`` is everything received so far)."""
    if not data:
        return NeedMore(1)
    if data[0] != _HANDSHAKE:
        return NotTls()
    if len(data) < 5:
        return NeedMore(5)
    if data[1] != 0x03:
        return NotTls()
    # The ClientHello may span several records; in practice it fits one (and must be in the first).
    record_length = int.from_bytes(data[3:5], "big")
    if record_length == 0 or record_length > MAX_CLIENT_HELLO + 4:
        return Malformed("handshake record length out of range")
    if len(data) < 5 + 4:
        return NeedMore(5 + 4)
    if data[5] != _CLIENT_HELLO:
        return Malformed("first handshake message is not a ClientHello")
    hello_length = int.from_bytes(data[6:9], "big")
    if hello_length > MAX_CLIENT_HELLO:
        return Malformed("ClientHello too large")
    if hello_length + 4 > record_length:
        return Malformed("ClientHello split across records")
    end = 9 + hello_length
    if len(data) < end:
        return NeedMore(end)
    try:
        return _parse_hello(memoryview(data)[9:end])
    except (IndexError, ValueError) as exc:
        return Malformed(str(exc) or "truncated ClientHello")


class _Reader:
    __slots__ = ("_data", "_position")

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._position = 0

    def take(self, size: int) -> memoryview:
        end = self._position + size
        if end > len(self._data):
            raise ValueError("truncated ClientHello")
        chunk = self._data[self._position : end]
        self._position = end
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> memoryview:
        return self.take(self.number(length_size))

    @property
    def done(self) -> bool:
        return self._position >= len(self._data)


def _parse_hello(body: memoryview) -> ClientHello | Malformed:
    reader = _Reader(body)
    reader.take(2)  # legacy_version
    reader.take(32)  # random
    reader.vector(1)  # legacy_session_id
    reader.vector(2)  # cipher_suites
    reader.vector(1)  # legacy_compression_methods
    if reader.done:
        return ClientHello("", ())  # no extensions at all
    extensions = _Reader(reader.vector(2))
    server_name = ""
    alpn: tuple[str, ...] = ()
    seen: set[int] = set()
    while not extensions.done:
        kind = extensions.number(2)
        data = extensions.vector(2)
        if kind in seen:
            return Malformed(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            server_name = _server_name(_Reader(data))
        elif kind == _EXT_ALPN:
            alpn = _protocols(_Reader(data))
    return ClientHello(server_name, alpn)


def _server_name(reader: _Reader) -> str:
    names = _Reader(reader.vector(2))
    while not names.done:
        name_type = names.number(1)
        name = names.vector(2)
        if name_type == _HOST_NAME:
            text = bytes(name).decode("ascii")  # UnicodeDecodeError is a ValueError
            if not text or len(text) > 253:
                raise ValueError("server_name length out of range")
            return text.lower()
    return ""


def _protocols(reader: _Reader) -> tuple[str, ...]:
    protocols = _Reader(reader.vector(2))
    found = []
    while not protocols.done:
        protocol = protocols.vector(1)
        if not protocol:
            raise ValueError("empty ALPN protocol name")
        found.append(bytes(protocol).decode("ascii", "replace"))
    return tuple(found)
