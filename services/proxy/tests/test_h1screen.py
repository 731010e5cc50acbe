"""Request-smuggling defences on the request head (pure)."""

from __future__ import annotations

import pytest

from tether.proxy.core.h1screen import MAX_REQUEST_LINE, screen_head

LIMIT = 64 * 1024


@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "content_length_and_transfer_encoding",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            400,
            "content_length_and_transfer_encoding",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            400,
            "duplicate_content_length",
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  continued\r\n\r\n", 400, "obsolete_line_folding"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\tcontinued\r\n\r\n", 400, "obsolete_line_folding"),
        (b"GET / HTTP/1.1\r\nHost: a\rX-A: 1\r\n\r\n", 400, "bare_cr"),
        (b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\n\r\n", 414, "request_line_too_long"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * LIMIT, 431, "header_too_large"),
    ],
)
def test_heads_a_lenient_parser_would_take_are_refused(head: bytes, status: int, reason: str) -> None:
    refusal = screen_head(head, LIMIT)
    assert refusal is not None and (refusal.status, refusal.reason) == (status, reason)


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r",  # incomplete: the CR's LF has not arrived yet
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY\r\n  with leading spaces and Content-Length: 9\r\n",  # body
    ],
)
def test_ordinary_heads_pass(head: bytes) -> None:
    assert screen_head(head, LIMIT) is None
