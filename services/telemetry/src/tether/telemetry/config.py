"""The telemetry service's configuration (flags and TETHER_TELEMETRY_* variables)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from tether.shared.config import AdminAddr, CommonConfig, IdentityClientConfig, check_addr
from tether.shared.streamage import DEFAULT_MAX_STREAM_AGE, MaxStreamAge, max_stream_age_help

#: The identity telemetry presents to the proxies (its ServiceAccount in the control-plane namespace).
DEFAULT_IDENTITY = "telemetry.tether.serviceaccount.identity.cluster.local"


class TelemetryConfig(CommonConfig, frozen=True, kw_only=True):
    admin_addr: AdminAddr = "0.0.0.0:9997"
    grpc_addr: Annotated[str, Meta(description="gRPC listener for proxies' Telemetry/Report streams")] = (
        "0.0.0.0:8087"
    )
    rollup_interval: Annotated[
        float,
        Meta(gt=0.0, le=3600.0, description="seconds between publishes of this replica's partial rollups"),
    ] = 10.0
    hello_timeout: Annotated[
        float, Meta(gt=0.0, le=600.0, description="seconds a new Report stream has to send its hello")
    ] = 10.0
    proxy_idle_ttl: Annotated[
        float,
        Meta(
            gt=0.0,
            le=86400.0,
            description="seconds a disconnected proxy's sequence state is kept for its reconnect",
        ),
    ] = 3600.0
    rollup_max_age: Annotated[
        float, Meta(gt=0.0, le=30 * 86400.0, description="seconds the tether_rollups stream keeps rollups")
    ] = 3600.0
    stream_replicas: Annotated[
        int,
        Meta(
            ge=1,
            le=5,
            description="JetStream replicas of the tether_rollups stream (3 on a 3-node NATS cluster); an "
            "existing stream is moved to this count",
        ),
    ] = 1
    max_stream_age: Annotated[
        MaxStreamAge,
        Meta(description=max_stream_age_help("a Report stream", ", once what it folded is acknowledged,")),
    ] = DEFAULT_MAX_STREAM_AGE
    identity: IdentityClientConfig = msgspec.field(
        default_factory=lambda: IdentityClientConfig(name=DEFAULT_IDENTITY)
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_addr("grpc_addr", self.grpc_addr)
        self.identity.required()
