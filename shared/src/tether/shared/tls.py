"""TLS helpers: TLS 1.3-only `ssl` contexts built from PEM bytes (gRPC credentials: tether.shared.grpctls).

This module imports only `ssl`: the proxy uses it and must not load grpcio or cryptography.
Private keys are handed to OpenSSL through an anonymous in-memory file (memfd), never a file on disk.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A PEM private key and its PEM certificate chain (leaf first)."""

    key_pem: bytes
    chain_pem: bytes

    def __repr__(self) -> str:
        return f"KeyPair(chain={len(self.chain_pem)} bytes, key=<redacted>)"


def _memory_file(name: str, data: bytes) -> int:
    descriptor = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(descriptor, data)
    return descriptor


def load_key_pair(context: ssl.SSLContext, pair: KeyPair) -> None:
    """``context.load_cert_chain`` from memory: ssl reads only paths, so the PEM goes through memfds,
    anonymous files that live in memory and vanish when closed."""
    chain = _memory_file("tether-chain", pair.chain_pem)
    key = _memory_file("tether-key", pair.key_pem)
    try:
        context.load_cert_chain(f"/proc/self/fd/{chain}", f"/proc/self/fd/{key}")
    finally:
        os.close(chain)
        os.close(key)


def _tls13_only(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


def server_ssl_context(
    pair: KeyPair, client_ca_pem: bytes | None = None, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """A TLS 1.3-only server context; with `client_ca_pem`, clients must present a certificate it signs."""
    context = _tls13_only(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    load_key_pair(context, pair)
    if client_ca_pem is not None:
        context.load_verify_locations(cadata=client_ca_pem.decode("ascii"))
        context.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def client_ssl_context(
    root_pem: bytes | None, pair: KeyPair | None = None, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """A TLS 1.3-only client context verifying the server against `root_pem` (hostname checked).

    Without `root_pem`, the system's trusted CAs.
    """
    context = _tls13_only(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if root_pem is None:
        context.load_default_certs()
    else:
        context.load_verify_locations(cadata=root_pem.decode("ascii"))
    if pair is not None:
        load_key_pair(context, pair)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def read_trust_anchors(option: str, path: str, remedy: str) -> bytes:
    """The trust anchor bundle at ``path``; SetupError (exit 2) naming ``option`` when missing or not PEM."""
    from tether.shared.errors import SetupError

    try:
        with open(path, "rb") as handle:
            pem = handle.read()
    except OSError as exc:
        raise SetupError(f"{option} {path} cannot be read: {exc.strerror}", remedy) from None
    try:
        ssl.create_default_context(cadata=pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        raise SetupError(f"{option} {path} holds no PEM certificate", remedy) from None
    return pem
