"""TLS helpers: TLS 1.3-only `ssl` contexts and gRPC credentials built from PEM bytes.

`ssl` contexts built here refuse anything below TLS 1.3. gRPC Python does not expose a minimum TLS
version for its credentials, so gRPC connections negotiate TLS 1.3 (BoringSSL's preference) with any
peer that offers it, but the library cannot forbid TLS 1.2 there.

`ReloadableServerCredentials` gives a grpc server a certificate that can be swapped at run time: the
gRPC core asks its fetcher on every new handshake whether the configuration changed.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
from dataclasses import dataclass

import grpc


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A PEM private key and its PEM certificate chain (leaf first)."""

    key_pem: bytes
    chain_pem: bytes

    def __repr__(self) -> str:
        return f"KeyPair(chain={len(self.chain_pem)} bytes, key=<redacted>)"


def _load_key_pair(context: ssl.SSLContext, pair: KeyPair) -> None:
    # ssl can only read a certificate chain from a file: write it to a private directory and remove it
    # right after loading so the key does not linger on disk.
    with tempfile.TemporaryDirectory(prefix="tether-tls-") as directory:
        chain_path = os.path.join(directory, "chain.pem")
        key_path = os.path.join(directory, "key.pem")
        for path, data in ((chain_path, pair.chain_pem), (key_path, pair.key_pem)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
        context.load_cert_chain(chain_path, key_path)


def _tls13_only(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


def server_ssl_context(
    pair: KeyPair, client_ca_pem: bytes | None = None, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """A TLS 1.3-only server context; with `client_ca_pem`, clients must present a certificate it signs."""
    context = _tls13_only(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_key_pair(context, pair)
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
        _load_key_pair(context, pair)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def grpc_channel_credentials(root_pem: bytes, pair: KeyPair | None = None) -> grpc.ChannelCredentials:
    """Channel credentials trusting `root_pem`, optionally presenting a client certificate."""
    if pair is None:
        return grpc.ssl_channel_credentials(root_certificates=root_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=root_pem, private_key=pair.key_pem, certificate_chain=pair.chain_pem
    )


def grpc_server_credentials(pair: KeyPair, client_ca_pem: bytes | None = None) -> grpc.ServerCredentials:
    """Static server credentials; with `client_ca_pem`, client certificates are required and verified."""
    return grpc.ssl_server_credentials(
        [(pair.key_pem, pair.chain_pem)],
        root_certificates=client_ca_pem,
        require_client_auth=client_ca_pem is not None,
    )


class ReloadableServerCredentials:
    """Server credentials whose key pair can be replaced while the server runs.

    `update()` may be called from any thread; connections accepted afterwards use the new pair,
    established ones keep theirs.
    """

    def __init__(self, initial: KeyPair, client_ca_pem: bytes | None = None) -> None:
        self._lock = threading.Lock()
        self._client_ca_pem = client_ca_pem
        self._current = initial
        self._generation = 0
        self._served_generation = 0

    @property
    def current(self) -> KeyPair:
        with self._lock:
            return self._current

    def update(self, pair: KeyPair, client_ca_pem: bytes | None = None) -> None:
        with self._lock:
            self._current = pair
            if client_ca_pem is not None:
                self._client_ca_pem = client_ca_pem
            self._generation += 1

    def _configuration(self, pair: KeyPair) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(pair.key_pem, pair.chain_pem)], root_certificates=self._client_ca_pem
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by the gRPC core on each new handshake: it must be cheap when nothing changed.
        with self._lock:
            if self._generation == self._served_generation:
                return None
            self._served_generation = self._generation
            return self._configuration(self._current)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        with self._lock:
            initial = self._configuration(self._current)
            self._served_generation = self._generation
        return grpc.dynamic_ssl_server_credentials(
            initial, self._fetch, require_client_authentication=self._client_ca_pem is not None
        )
