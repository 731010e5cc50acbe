"""Options of `tether-identity kube-bootstrap` (flags, or `TETHER_IDENTITY_*` like the service's own)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import msgspec
from msgspec import Meta

from tether.shared.config import KubeOptions, LoggingConfig
from tether.shared.identity_names import DEFAULT_TRUST_DOMAIN, is_dns1123_label, validate_trust_domain
from tether.shared.kube import KubeSettings
from tether.shared.permissions import ROLES

# One NATS user per control-plane component, plus the read-only account for people (the local mesh's
# `registrar` has no place in a cluster: Kubernetes is the registry there).
DEFAULT_NATS_ROLES = ("destination", "identity", "telemetry", "public-api", "reader")

_DAY = 86_400


class KubeBootstrapConfig(LoggingConfig, frozen=True, kw_only=True):
    namespace: Annotated[str, Meta(description="namespace of the control plane and of every object made")] = (
        "tether"
    )
    trust_domain: Annotated[str, Meta(description="trust domain of the mesh identities")] = (
        DEFAULT_TRUST_DOMAIN
    )
    cluster_domain: Annotated[
        str, Meta(description="the cluster's DNS domain, in the NATS server certificate's names")
    ] = "cluster.local"
    anchor_lifetime_days: Annotated[
        int, Meta(ge=1, le=36_500, description="lifetime of a generated trust anchor, days")
    ] = 3650
    issuer_lifetime_days: Annotated[
        int, Meta(ge=1, le=36_500, description="lifetime of a generated issuer, days (at most the anchor's)")
    ] = 365
    nats_tls_lifetime_days: Annotated[
        int,
        Meta(ge=1, le=36_500, description="lifetime of the generated NATS CA and server certificate, days"),
    ] = 3650
    nats_roles: Annotated[
        tuple[str, ...], Meta(description="NATS users to create, one Secret tether-nats-<role> each")
    ] = DEFAULT_NATS_ROLES
    skip_issuer: Annotated[
        bool,
        Meta(
            description="never generate Secret tether-identity-issuer: you bring your own (e.g. cert-manager)"
        ),
    ] = False
    settle_timeout: Annotated[
        float,
        Meta(
            ge=0.0,
            le=600.0,
            description="seconds to wait for NATS Secrets another run of this Job is creating, before a "
            "partial set is reported as inconsistent",
        ),
    ] = 10.0
    # The Kubernetes client options, as every component that talks to the API names them.
    kube: KubeOptions = msgspec.field(default_factory=KubeOptions)

    def __post_init__(self) -> None:
        if not is_dns1123_label(self.namespace):
            raise ValueError("namespace: must be a DNS-1123 label")
        for field, value in (("trust_domain", self.trust_domain), ("cluster_domain", self.cluster_domain)):
            try:
                validate_trust_domain(value)
            except ValueError as error:
                raise ValueError(f"{field}: {error}") from None
        if not self.nats_roles:
            raise ValueError("nats_roles: name at least one role")
        for role in self.nats_roles:
            if role not in ROLES:
                raise ValueError(f"nats_roles: unknown role {role!r}; one of {', '.join(ROLES)}")
        if len(set(self.nats_roles)) != len(self.nats_roles):
            raise ValueError("nats_roles: each role once")

    @property
    def anchor_lifetime(self) -> timedelta:
        return timedelta(seconds=self.anchor_lifetime_days * _DAY)

    @property
    def issuer_lifetime(self) -> timedelta:
        return timedelta(seconds=self.issuer_lifetime_days * _DAY)

    @property
    def nats_tls_lifetime(self) -> timedelta:
        return timedelta(seconds=self.nats_tls_lifetime_days * _DAY)

    def kube_settings(self) -> KubeSettings:
        return KubeSettings.from_config(self.kube)
