"""The telemetry service.

For now it runs inside the shared runtime (NATS, heartbeats, admin, graceful shutdown) and serves nothing
else: report aggregation and tap arrive with their own issue.
"""

from __future__ import annotations

from tether.shared.runtime import Context, Service
from tether.telemetry.config import TelemetryConfig


class TelemetryService(Service):
    def __init__(self, config: TelemetryConfig) -> None:
        self.config = config

    async def start(self, ctx: Context) -> None:
        ctx.log.info("telemetry_started", note="report aggregation not implemented yet")

    async def stop(self, grace: float) -> None:
        return None
