"""The identity service's configuration (flags `--trust-anchors`..., env `TETHER_IDENTITY_*`)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta

from tether.identity.ca import IssuerFiles
from tether.identity.certifier import CertifierSettings
from tether.identity.ratelimit import BucketPolicy
from tether.identity.server import ServerSettings
from tether.shared.config import AdminAddr, KubeClientConfig, check_addr
from tether.shared.identity_names import DEFAULT_TRUST_DOMAIN, is_dns1123_label, validate_trust_domain

_SECRET_DIR = "/var/run/tether/identity"


class IdentityConfig(KubeClientConfig, frozen=True, kw_only=True):
    admin_addr: AdminAddr = "0.0.0.0:9990"
    grpc_addr: Annotated[str, Meta(description="Certify gRPC listener, host:port")] = "0.0.0.0:8080"
    trust_domain: Annotated[str, Meta(description="trust domain of every identity")] = DEFAULT_TRUST_DOMAIN
    namespace: Annotated[
        str, Meta(description="control plane namespace; the server's own identity is identity.<namespace>...")
    ] = "tether"
    trust_anchors: Annotated[str, Meta(description="PEM trust anchor bundle (public certificates only)")] = (
        f"{_SECRET_DIR}/ca.crt"
    )
    issuer_certificate: Annotated[
        str, Meta(description="PEM issuer certificate (then any intermediates)")
    ] = f"{_SECRET_DIR}/issuer.crt"
    issuer_key: Annotated[str, Meta(description="PEM issuer private key")] = f"{_SECRET_DIR}/issuer.key"
    reload_interval: Annotated[
        float, Meta(gt=0.0, le=60.0, description="seconds between issuer file checks")
    ] = 1.0
    leaf_lifetime: Annotated[int, Meta(ge=60, description="leaf certificate lifetime, seconds")] = 86_400
    token_verifier: Annotated[
        Literal["kubernetes", "local"], Meta(description="how tokens are checked: TokenReview or local keys")
    ] = "kubernetes"
    token_key: Annotated[str, Meta(description="key file for `local` tokens (see bootstrap)")] = (
        f"{_SECRET_DIR}/token-signing.key"
    )
    identity_rate: Annotated[float, Meta(gt=0.0, description="Certify requests/s allowed per identity")] = 5.0
    identity_burst: Annotated[float, Meta(ge=1.0, description="burst allowed per identity")] = 50.0
    peer_rate: Annotated[float, Meta(gt=0.0, description="Certify requests/s allowed per peer address")] = 2.0
    peer_burst: Annotated[float, Meta(ge=1.0, description="burst allowed per peer address")] = 20.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_addr("grpc_addr", self.grpc_addr)
        try:
            validate_trust_domain(self.trust_domain)
        except ValueError as error:
            raise ValueError(f"trust_domain: {error}") from None
        if not is_dns1123_label(self.namespace):
            raise ValueError("namespace: must be a DNS-1123 label")

    def certifier_settings(self) -> CertifierSettings:
        return CertifierSettings(
            trust_domain=self.trust_domain,
            leaf_lifetime=timedelta(seconds=self.leaf_lifetime),
            identity_limit=BucketPolicy(self.identity_rate, self.identity_burst),
            peer_limit=BucketPolicy(self.peer_rate, self.peer_burst),
        )

    def server_settings(self) -> ServerSettings:
        return ServerSettings(
            listen=self.grpc_addr,
            files=IssuerFiles(Path(self.trust_anchors), Path(self.issuer_certificate), Path(self.issuer_key)),
            namespace=self.namespace,
            reload_interval=self.reload_interval,
        )
