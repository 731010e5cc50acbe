"""The telemetry service.

For now it runs inside the shared runtime (NATS, heartbeats, admin, graceful shutdown) and serves nothing
else: report aggregation and tap arrive with their own issue. Ready means serving, so until then it is
never ready, and ``tether check`` says so.
"""

from __future__ import annotations

from tether.shared.runtime import Context, Service
from tether.telemetry.config import TelemetryConfig


class TelemetryService(Service):
    def __init__(self, config: TelemetryConfig) -> None:
        self.config = config

    async def start(self, ctx: Context) -> None:
        ctx.log.warning("telemetry_not_serving", reason="report aggregation is not implemented yet")

    async def stop(self, grace: float) -> None:
        return None

    def ready(self) -> bool:
        return False
