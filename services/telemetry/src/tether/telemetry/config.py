"""The telemetry service's configuration (flags and TETHER_TELEMETRY_* variables)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from tether.shared.config import AdminAddr, CommonConfig, check_addr


class TelemetryConfig(CommonConfig, frozen=True, kw_only=True):
    admin_addr: AdminAddr = "0.0.0.0:9997"
    grpc_addr: Annotated[str, Meta(description="gRPC listener for proxies' Telemetry/Report streams")] = (
        "0.0.0.0:8087"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_addr("grpc_addr", self.grpc_addr)
