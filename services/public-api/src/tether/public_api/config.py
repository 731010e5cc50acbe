"""The public API's configuration (flags and TETHER_PUBLIC_API_* variables)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from tether.public_api.dashboard.security import check_dashboard_options
from tether.shared.config import AdminAddr, KubeClientConfig, check_addr


class PublicApiConfig(KubeClientConfig, frozen=True, kw_only=True):
    admin_addr: AdminAddr = "0.0.0.0:9995"
    grpc_addr: Annotated[str, Meta(description="gRPC listener for the tether.public.v1.Api service")] = (
        "0.0.0.0:8085"
    )
    # The web dashboard (tether.public_api.dashboard).
    dashboard_addr: Annotated[
        str,
        Meta(
            description="the web dashboard's HTTP listener, host:port (empty: no dashboard); loopback by "
            "default, reached through kubectl port-forward in a cluster"
        ),
    ] = "127.0.0.1:8084"
    dashboard_host: Annotated[
        tuple[str, ...],
        Meta(
            description="Host names the dashboard also answers to, besides its address, localhost, 127.0.0.1 "
            "and [::1] (any other Host gets 403: DNS rebinding)"
        ),
    ] = ()
    heartbeat_timeout: Annotated[
        float, Meta(gt=0, le=600, description="seconds without a heartbeat before a component counts as gone")
    ] = 6.0
    report_timeout: Annotated[
        float,
        Meta(
            gt=0, le=3600, description="seconds without a rollup holding a proxy's report before Check warns"
        ),
    ] = 35.0
    destination_addr: Annotated[
        str, Meta(description="the destination service (gRPC), asked by Endpoints")
    ] = "tether-destination.tether.svc.cluster.local:8086"
    destination_trust_anchors: Annotated[
        str, Meta(description="PEM trust anchors for destination's TLS (empty: plaintext gRPC)")
    ] = "/var/run/tether/identity/ca.crt"
    destination_server_name: Annotated[
        str, Meta(description="the identity the destination service must present")
    ] = "destination.tether.serviceaccount.identity.cluster.local"
    authz: Annotated[
        Literal["none", "kubernetes"],
        Meta(
            description="who may Tap and ask Endpoints: none (anyone; the local mesh), or kubernetes (the "
            "caller's bearer token, TokenReview, SubjectAccessReview for watch tap.tap.tether.io)"
        ),
    ] = "none"
    authz_timeout: Annotated[
        float, Meta(gt=0, le=60, description="seconds to wait for each TokenReview and SubjectAccessReview")
    ] = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_addr("grpc_addr", self.grpc_addr)
        check_addr("destination_addr", self.destination_addr)
        check_dashboard_options(self.dashboard_addr, self.dashboard_host)
