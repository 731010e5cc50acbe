"""A control-plane service's own mesh certificate, presented by its gRPC listener.

Destination (and telemetry) serve the proxies over TLS with a certificate they obtain from identity like any
workload, through the same lifecycle (:mod:`tether.shared.certmanager`), so that a proxy can verify it is
talking to the real destination before trusting what it says about identities. Until the first certificate
arrives the listener presents a self-signed placeholder nobody trusts (clients fail the handshake) and the
service is not ready. grpcio cannot forbid TLS 1.2 on a server (see tether.shared.grpctls); the proxies'
clients offer TLS 1.3 only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import grpc

from tether.shared.certmanager import CertificateManager, read_token_file
from tether.shared.config import IdentityClientConfig
from tether.shared.grpc_certify import GrpcCertify
from tether.shared.grpctls import ReloadableServerCredentials
from tether.shared.keygen import KeyMaterial, make_key_and_csr, placeholder_key_pair
from tether.shared.supervisor import SupervisedTask
from tether.shared.tls import read_trust_anchors


class ServingIdentity:
    """``require_client_certificates``: mTLS, every client must present a certificate chaining to the mesh's
    trust anchors (telemetry: proxies prove who they are)."""

    def __init__(self, config: IdentityClientConfig, *, require_client_certificates: bool = False) -> None:
        self.config = config
        self._require_client_certificates = require_client_certificates
        self._anchors: bytes | None = None
        self._key: KeyMaterial | None = None
        self._credentials: ReloadableServerCredentials | None = None
        self._certify: GrpcCertify | None = None
        self.manager: CertificateManager | None = None
        self._task: SupervisedTask | None = None

    def prepare(self) -> None:
        """Read the trust anchors and make the key: errors here are setup errors, reported at start."""
        self._anchors = read_trust_anchors(
            "--identity-trust-anchors",
            self.config.trust_anchors,
            "mount the trust anchors there, or pass --identity-disabled to serve plaintext",
        )
        self._key = make_key_and_csr(self.config.workload_identity())
        client_ca = self._anchors if self._require_client_certificates else None
        self._credentials = ReloadableServerCredentials(placeholder_key_pair(datetime.now(UTC)), client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        if self._credentials is None:
            self.prepare()
        assert self._credentials is not None
        return self._credentials.grpc_credentials()

    def start(self, spawn: Callable[..., SupervisedTask]) -> None:
        if self._key is None:
            self.prepare()
        assert self._key is not None and self._anchors is not None and self._credentials is not None
        self._certify = GrpcCertify(self.config.addr, self._anchors, self.config.server_name)
        credentials = self._credentials
        self.manager = CertificateManager(
            self.config.workload_identity(),
            self._key,
            self._certify,
            read_token_file(self.config.token_file),
            credentials.update,
        )
        self._task = spawn("identity-certificate", self.manager.run)

    def ready(self) -> bool:
        return self.manager is not None and self.manager.ready()

    async def stop(self) -> None:
        if self._task is not None:
            await self._task.stop()
        if self._certify is not None:
            await self._certify.close()
