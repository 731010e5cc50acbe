"""The real identity service for proxy tests: a CA made by `bootstrap`, the server in-process, tokens minted.

Each workload gets a token file (as a projected ServiceAccount token would be mounted) and the trust
anchors file; the proxy asks this server for its certificate exactly as it would in a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from tether.identity.bootstrap import bootstrap, generate_issuer, generate_trust_anchor
from tether.identity.ca import IssuerFiles
from tether.identity.certifier import CertifierSettings
from tether.identity.observe import CertifyReporter, IdentityMetrics
from tether.identity.ratelimit import BucketPolicy
from tether.identity.server import IdentityServer, ServerSettings
from tether.identity.tokens.local import LocalTokenVerifier, TokenKey, load_token_key, mint_token
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.testing import RecordingSupervisor

TRUST_DOMAIN = "cluster.local"
CONTROL_PLANE_NAMESPACE = "tether"
GENEROUS = BucketPolicy(rate=1000.0, burst=1000.0)


def identity_of(serviceaccount: str, namespace: str) -> WorkloadIdentity:
    return WorkloadIdentity(serviceaccount, namespace, TRUST_DOMAIN)


@dataclass
class IdentityHarness:
    directory: Path
    leaf_lifetime: timedelta = timedelta(hours=24)
    host: str = "127.0.0.1"
    supervisor: RecordingSupervisor = field(default_factory=RecordingSupervisor)
    server: IdentityServer | None = None
    port: int = 0
    _key: TokenKey | None = None

    @property
    def trust_anchors(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def server_name(self) -> str:
        return identity_of("identity", CONTROL_PLANE_NAMESPACE).dns_name

    async def start(self) -> None:
        if not self.trust_anchors.exists():
            bootstrap(self.directory, datetime.now(UTC), TRUST_DOMAIN)
        self._key = load_token_key((self.directory / "token-signing.key").read_bytes())
        metrics = IdentityMetrics(CollectorRegistry())
        files = IssuerFiles(self.trust_anchors, self.directory / "issuer.crt", self.directory / "issuer.key")
        listen = f"{self.host}:{self.port}"
        self.server = IdentityServer(
            CertifierSettings(
                trust_domain=TRUST_DOMAIN,
                leaf_lifetime=self.leaf_lifetime,
                identity_limit=GENEROUS,
                peer_limit=GENEROUS,
            ),
            ServerSettings(
                listen=listen, files=files, namespace=CONTROL_PLANE_NAMESPACE, reload_interval=0.2
            ),
            LocalTokenVerifier(self._key, TRUST_DOMAIN),
            CertifyReporter("identity-test", metrics, None),
            metrics,
        )
        self.port = await self.server.start(self.supervisor.spawn)

    async def stop(self) -> None:
        """Stop serving (the port is kept, so ``start`` again brings the same address back)."""
        if self.server is not None:
            await self.server.stop(0)
            self.server = None

    def token_file(self, identity: WorkloadIdentity, name: str | None = None) -> Path:
        """A fresh token for ``identity`` in a file, as the kubelet would mount it."""
        assert self._key is not None, "start() first"
        token = mint_token(self._key, identity, datetime.now(UTC), timedelta(hours=1))
        path = self.directory / f"{name or identity.serviceaccount}.token"
        path.write_bytes(token)
        return path

    def foreign_ca(self) -> tuple[bytes, bytes, bytes]:
        """Another CA entirely (anchor, issuer certificate, issuer key PEM): nothing it signs is trusted."""
        now = datetime.now(UTC)
        anchor = generate_trust_anchor(now)
        issuer = generate_issuer(anchor, now)
        return anchor.certificate_pem, issuer.certificate_pem, issuer.key_pem
