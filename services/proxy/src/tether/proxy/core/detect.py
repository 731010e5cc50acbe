"""What protocol a plaintext stream speaks, from its first bytes: HTTP/2, HTTP/1.x, or something else.

Pure: the bytes received so far in, a verdict out (or "need more"); the I/O layer decides what to do when
no verdict comes within the detection timeout (opaque TCP, with every byte seen forwarded intact). TLS is
told apart before this, by :mod:`tether.proxy.core.clienthello`.

HTTP/1.x is recognised by a request line (RFC 9112 §3: ``method SP request-target SP HTTP-version``). A line
too long to wait for is still HTTP/1 when it starts with a registered method and a target, so that an
oversized request line is refused by the HTTP/1 layer (431/414) instead of slipping through as opaque TCP.
"""

from __future__ import annotations

import enum
import re

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: The most bytes detection looks at before deciding; past this without a request line, it is not HTTP.
MAX_DETECT_BYTES = 8 * 1024


class Protocol(enum.Enum):
    HTTP2 = "h2"
    HTTP1 = "http/1.1"
    OPAQUE = "opaque"


#: More bytes are needed before a verdict.
NEED_MORE = None

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(_TOKEN + rb" [^\s]+ HTTP/1\.[01]\r?\n")
# A prefix of a request line still being received: a method, then perhaps a space and part of the target,
# then perhaps part of " HTTP/1.x".
_PARTIAL_REQUEST_LINE = re.compile(
    _TOKEN + rb"(?: [^\s]*(?: (?:H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[01]\r?)?)?)?)?)?)?)?)?)?)?\Z"
)
_KNOWN_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH")
_LONG_LINE = re.compile(rb"(?:" + rb"|".join(_KNOWN_METHODS) + rb") [^\s]")


def detect_protocol(data: bytes) -> Protocol | None:
    """The protocol ``data`` (everything received so far) starts with, or None (:data:`NEED_MORE`)."""
    if not data:
        return NEED_MORE
    if data[:1] == b"P" and len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
        return NEED_MORE  # (also a prefix of "POST ...": wait for one more byte)
    if data.startswith(H2_PREFACE):
        return Protocol.HTTP2
    line_end = data.find(b"\n", 0, MAX_DETECT_BYTES)
    if line_end >= 0:
        return Protocol.HTTP1 if _REQUEST_LINE.match(data, 0, line_end + 1) else Protocol.OPAQUE
    if len(data) >= MAX_DETECT_BYTES:
        return Protocol.HTTP1 if _LONG_LINE.match(data) else Protocol.OPAQUE
    return NEED_MORE if _PARTIAL_REQUEST_LINE.match(data) else Protocol.OPAQUE
