"""Protocol detection from a connection's first bytes (pure)."""

from __future__ import annotations

import pytest

from tether.proxy.core.detect import H2_PREFACE, MAX_DETECT_BYTES, NEED_MORE, Protocol, detect_protocol


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        (H2_PREFACE, Protocol.HTTP2),
        (H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", Protocol.HTTP2),
        (b"GET / HTTP/1.1\r\n", Protocol.HTTP1),
        (b"POST /upload?x=1 HTTP/1.0\r\nHost: a\r\n\r\n", Protocol.HTTP1),
        (b"GET / HTTP/1.1\n", Protocol.HTTP1),  # bare LF, as RFC 9112 §2.2 lets a recipient accept
        (b"OPTIONS * HTTP/1.1\r\n", Protocol.HTTP1),
        (b"CONNECT db:5432 HTTP/1.1\r\n", Protocol.HTTP1),
        (b"GET / HTTP/2.0\r\n", Protocol.OPAQUE),  # not a version HTTP/1 parsers speak
        (b"*1\r\n$4\r\nPING\r\n", Protocol.OPAQUE),  # Redis
        (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Protocol.OPAQUE),  # PostgreSQL SSLRequest
        (b"\x16\x03\x01\x02\x00\x01", Protocol.OPAQUE),  # a TLS ClientHello
        (b"SSH-2.0-OpenSSH_9.2\r\n", Protocol.OPAQUE),
        (b"GET /" + b"a" * MAX_DETECT_BYTES, Protocol.HTTP1),  # too long a line: HTTP/1 refuses it (414)
        (b"BREW /" + b"a" * MAX_DETECT_BYTES, Protocol.OPAQUE),  # ... but only for a registered method
    ],
)
def test_a_verdict_once_the_first_bytes_tell(data: bytes, verdict: Protocol) -> None:
    assert detect_protocol(data) is verdict


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"P",
        b"PRI * HTTP/2.0\r\n",
        b"POST",
        b"GET /",
        b"GET / HTTP/1.",
        b"GET / HTTP/1.1\r",
        b"hello world",
    ],
)
def test_more_bytes_are_needed_while_they_could_still_be_http(data: bytes) -> None:
    assert detect_protocol(data) is NEED_MORE


def test_every_prefix_of_a_request_waits_and_the_whole_decides() -> None:
    for whole, verdict in ((H2_PREFACE, Protocol.HTTP2), (b"DELETE /item/7 HTTP/1.1\r\n", Protocol.HTTP1)):
        for end in range(1, len(whole)):
            assert detect_protocol(whole[:end]) is NEED_MORE, whole[:end]
        assert detect_protocol(whole) is verdict
