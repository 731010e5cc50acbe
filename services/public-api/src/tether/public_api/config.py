"""The public API's configuration (flags and TETHER_PUBLIC_API_* variables)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from tether.shared.config import AdminAddr, CommonConfig, check_addr


class PublicApiConfig(CommonConfig, frozen=True, kw_only=True):
    admin_addr: AdminAddr = "0.0.0.0:9995"
    grpc_addr: Annotated[str, Meta(description="gRPC listener for the tether.public.v1.Api service")] = (
        "0.0.0.0:8085"
    )
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

    def __post_init__(self) -> None:
        super().__post_init__()
        check_addr("grpc_addr", self.grpc_addr)
        check_addr("destination_addr", self.destination_addr)
