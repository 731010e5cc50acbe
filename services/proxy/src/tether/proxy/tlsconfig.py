"""The proxy's TLS: contexts built from its current certificate, and the identity check of a peer.

A peer is authenticated when its chain leads to a trust anchor and its certificate names exactly the
identity expected of it (the one destination announced for an endpoint, or the control-plane service's
name): the check compares the certificate's DNS SAN with that identity, not with a host name, so the
endpoint's address plays no part. Built on ``ssl`` alone: the proxy loads neither grpcio nor cryptography.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from tether.proxy.errors import ProxyError
from tether.shared.tls import KeyPair, load_key_pair

ALPN_H2 = "h2"
ALPN_HTTP1 = "http/1.1"
#: Between two proxies only: the connection carries an opaque TCP stream (the inbound proxy skips
#: detection, so a server-speaks-first protocol is not kept waiting).
ALPN_TCP = "tether.tcp"
#: What a proxy's inbound listener agrees to, by what the peer proxy asks for.
MESH_ALPN = [ALPN_H2, ALPN_HTTP1, ALPN_TCP]


class IdentityMismatch(ProxyError):
    """The peer's certificate does not name the identity expected of it."""


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How to dial one peer: the context to use and the identity its certificate must name."""

    context: ssl.SSLContext
    expected_identity: str


def _tls13(purpose: int) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


def client_context(trust_anchors_pem: bytes, pair: KeyPair | None, alpn: list[str]) -> ssl.SSLContext:
    """Verifies the server against the anchors; the identity is checked after the handshake."""
    context = _tls13(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # replaced by verify_peer_identity: identities, not host names
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=trust_anchors_pem.decode("ascii"))
    if pair is not None:
        load_key_pair(context, pair)
    context.set_alpn_protocols(alpn)
    return context


def server_context(trust_anchors_pem: bytes, pair: KeyPair, alpn: list[str]) -> ssl.SSLContext:
    """Presents ``pair``; clients must present a certificate chaining to the anchors (mutual TLS)."""
    context = _tls13(ssl.PROTOCOL_TLS_SERVER)
    load_key_pair(context, pair)
    context.load_verify_locations(cadata=trust_anchors_pem.decode("ascii"))
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(alpn)
    return context


def peer_identity(ssl_object: Any) -> str | None:
    """The identity a verified peer's certificate names (its single DNS SAN), or None."""
    if ssl_object is None:
        return None
    certificate = ssl_object.getpeercert()
    if not certificate:
        return None
    names = [value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"]
    return names[0] if len(names) == 1 else None


def verify_peer_identity(ssl_object: Any, expected: str) -> str:
    """Raise IdentityMismatch unless the peer's certificate names exactly ``expected``."""
    found = peer_identity(ssl_object)
    if found != expected:
        raise IdentityMismatch(f"the peer's certificate names {found or 'no identity'}, expected {expected}")
    return found
