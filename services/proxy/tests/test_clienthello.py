"""Telling TLS from plaintext by the first bytes, against ClientHellos that real TLS stacks send."""

from __future__ import annotations

import contextlib
import ssl

from hypothesis import given
from hypothesis import strategies as st

from tether.proxy.core.clienthello import ClientHello, Malformed, NeedMore, NotTls, detect


def client_hello(server_name: str | None, alpn: list[str] | None = None) -> bytes:
    """The first flight of Python's own TLS client (OpenSSL), taken from a memory BIO."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the ServerHello
        tls.do_handshake()
    return outgoing.read()


def test_a_real_client_hello_gives_its_sni_and_alpn() -> None:
    hello = client_hello("Web.Shop.serviceaccount.identity.cluster.local", ["h2", "http/1.1"])
    assert detect(hello) == ClientHello("web.shop.serviceaccount.identity.cluster.local", ("h2", "http/1.1"))


def test_without_sni_or_alpn() -> None:
    assert detect(client_hello(None)) == ClientHello("", ())


def test_a_partial_hello_asks_for_more_and_never_guesses() -> None:
    hello = client_hello("a.b.serviceaccount.identity.cluster.local", ["h2"])
    for cut in range(len(hello)):
        verdict = detect(hello[:cut])
        assert isinstance(verdict, NeedMore), (cut, verdict)
        assert cut < verdict.at_least <= len(hello)


def test_plaintext_protocols_are_not_tls() -> None:
    for start in (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"\x00",
    ):
        assert detect(start) == NotTls()
    assert detect(b"\x16\x01\x00\x00\x05") == NotTls()  # not a TLS record version


def test_broken_hellos_are_malformed_not_exceptions() -> None:
    hello = client_hello("x.y.serviceaccount.identity.cluster.local")
    assert isinstance(detect(hello[:5] + b"\x02" + hello[6:]), Malformed)  # a ServerHello first
    assert isinstance(detect(b"\x16\x03\x01\x00\x00"), Malformed)
    assert isinstance(detect(b"\x16\x03\x01\xff\xff" + b"\x01\xff\xff\xff"), Malformed)
    # An extensions block claiming more than the message holds.
    truncated = bytearray(hello)
    truncated[3:5] = (len(hello) - 5 - 10).to_bytes(2, "big")
    truncated[6:9] = (len(hello) - 9 - 10).to_bytes(3, "big")
    assert isinstance(detect(bytes(truncated[: len(hello) - 10])), Malformed)


@given(st.binary(max_size=600))
def test_any_bytes_get_a_verdict(data: bytes) -> None:
    assert isinstance(detect(data), NeedMore | NotTls | ClientHello | Malformed)


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=400))
def test_a_mangled_real_hello_gets_a_verdict(noise: bytes, at: int) -> None:
    hello = bytearray(client_hello("m.n.serviceaccount.identity.cluster.local", ["h2"]))
    at = min(at, len(hello) - 1)
    hello[at : at + len(noise)] = noise
    assert isinstance(detect(bytes(hello)), NeedMore | NotTls | ClientHello | Malformed)
