"""The destination service's options (``--grpc-addr`` / ``TETHER_DESTINATION_GRPC_ADDR`` and so on)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tether.shared.config import AdminAddr, IdentityClientConfig, KubeClientConfig, check_addr
from tether.shared.identity_names import InvalidIdentityName, validate_trust_domain
from tether.shared.streamage import DEFAULT_MAX_STREAM_AGE, MaxStreamAge, max_stream_age_help

#: The identity destination presents to the proxies (its ServiceAccount in the control-plane namespace).
DEFAULT_IDENTITY = "destination.tether.serviceaccount.identity.cluster.local"


class DestinationConfig(KubeClientConfig, frozen=True, kw_only=True):
    admin_addr: AdminAddr = "0.0.0.0:9996"
    grpc_addr: Annotated[str, Meta(description="Destination gRPC listener, host:port")] = "0.0.0.0:8086"
    source: Annotated[
        Literal["kubernetes", "local"], Meta(description="where endpoints come from: kubernetes or local")
    ] = "kubernetes"
    registry_file: Annotated[
        str,
        Meta(description="local source: YAML registry of services and endpoints (empty: registrations only)"),
    ] = "/etc/tether/registry.yaml"
    registry_poll_interval: Annotated[
        float, Meta(gt=0.0, le=60.0, description="local source: seconds between checks of the registry file")
    ] = 0.5
    registration_ttl: Annotated[
        float,
        Meta(
            gt=0.0, le=3600.0, description="seconds a new leader keeps registrations it finds in the bucket"
        ),
    ] = 10.0
    max_registrations: Annotated[
        int, Meta(ge=1, le=1_000_000, description="local source: registrations held at most (more: refused)")
    ] = 10_000
    kube_watch_timeout: Annotated[
        int, Meta(ge=1, le=3600, description="kubernetes source: seconds before a watch is renewed")
    ] = 300
    trust_domain: Annotated[str, Meta(description="trust domain of workload identities")] = "cluster.local"
    cluster_domain: Annotated[str, Meta(description="Kubernetes cluster DNS domain in authorities")] = (
        "cluster.local"
    )
    keepalive_interval: Annotated[
        float, Meta(gt=0.0, le=600.0, description="seconds of idleness before a stream gets a keep-alive")
    ] = 10.0
    max_streams_per_peer: Annotated[
        int, Meta(ge=1, description="concurrent Get streams allowed from one client address")
    ] = 10_000
    lease_ttl: Annotated[
        float,
        Meta(
            gt=0.0,
            le=60.0,
            description="writer lease: seconds without renewal before another replica takes over",
        ),
    ] = 9.0
    identity: IdentityClientConfig = msgspec.field(
        default_factory=lambda: IdentityClientConfig(name=DEFAULT_IDENTITY)
    )
    resync_interval: Annotated[
        float, Meta(gt=0.0, description="seconds between full reconciliations of the bucket by the leader")
    ] = 60.0
    kv_replicas: Annotated[
        int,
        Meta(
            ge=1,
            le=5,
            description="JetStream replicas of the endpoint and lease buckets (3 on a 3-node NATS cluster; "
            "existing buckets with fewer are raised to it)",
        ),
    ] = 1
    max_stream_age: Annotated[MaxStreamAge, Meta(description=max_stream_age_help("a Get stream"))] = (
        DEFAULT_MAX_STREAM_AGE
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_addr("grpc_addr", self.grpc_addr)
        self.identity.required()
        try:
            validate_trust_domain(self.trust_domain)
        except InvalidIdentityName as exc:
            raise ValueError(f"trust_domain: {exc}") from None
