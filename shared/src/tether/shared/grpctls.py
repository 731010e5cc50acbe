"""gRPC credentials from PEM bytes, static or reloadable.

gRPC Python does not expose a minimum TLS version for its credentials; `tether.shared` makes grpc Core TLS 1.3
only for the whole process when it is imported (see `tether.shared.GRPC_TLS13_ONLY_CIPHER_SUITES`).

`ReloadableServerCredentials` gives a grpc server a certificate that can be swapped at run time: the
gRPC core asks its fetcher on every new handshake whether the configuration changed.
"""

from __future__ import annotations

import threading

import grpc

from tether.shared.tls import KeyPair


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
