"""Request-smuggling defences: a request head refused before h11 parses it, for what h11 would accept.

A proxy and the server behind it must agree on where each request ends, or a second request hidden in the
first one's body reaches the server unseen (RFC 9112 §11.2). h11 is lenient where RFC 9112 lets a recipient
be: it unfolds obsolete line folding, takes ``Transfer-Encoding`` over ``Content-Length`` when both are
present, and merges repeated identical ``Content-Length`` fields. A forwarding proxy must not be lenient
there (RFC 9112 §6.3: a message with both "ought to be handled as an error"), so those are refused here,
with the request line and the head held to fixed sizes. Pure: the bytes buffered so far in, a verdict out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_REQUEST_LINE = 8 * 1024

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_FOLDED = re.compile(rb"\n[ \t]")
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:", re.IGNORECASE | re.MULTILINE)
_TRANSFER_ENCODING = re.compile(rb"^transfer-encoding[ \t]*:", re.IGNORECASE | re.MULTILINE)
_BARE_CR = re.compile(rb"\r(?=[^\n])")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: its status, a reason for metrics (snake_case) and a message for people."""

    status: int
    reason: str
    message: str


def screen_head(buffered: bytes, max_head_bytes: int) -> Refusal | None:
    """A refusal for the request head at the start of ``buffered``, or None (fine so far, or complete)."""
    end = _HEAD_END.search(buffered)
    head = buffered if end is None else buffered[: end.start()]
    line_end = head.find(b"\n")
    if (line_end if line_end >= 0 else len(head)) > MAX_REQUEST_LINE:
        return Refusal(414, "request_line_too_long", f"request line longer than {MAX_REQUEST_LINE} bytes")
    if len(head) > max_head_bytes:
        return Refusal(431, "header_too_large", f"request header longer than {max_head_bytes} bytes")
    if _FOLDED.search(head):
        return Refusal(400, "obsolete_line_folding", "obsolete line folding in the request header")
    if _BARE_CR.search(head):
        return Refusal(400, "bare_cr", "a bare CR in the request header")
    content_lengths = len(_CONTENT_LENGTH.findall(head))
    if content_lengths > 1:
        return Refusal(400, "duplicate_content_length", "more than one Content-Length field")
    if content_lengths and _TRANSFER_ENCODING.search(head):
        return Refusal(
            400, "content_length_and_transfer_encoding", "both Content-Length and Transfer-Encoding"
        )
    return None
