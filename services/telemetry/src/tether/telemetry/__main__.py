"""Entry point: ``tether-telemetry`` / ``python -m tether.telemetry``."""

from __future__ import annotations

from collections.abc import Sequence

from tether.shared.runtime import service_main
from tether.telemetry.config import TelemetryConfig
from tether.telemetry.service import TelemetryService


def main(argv: Sequence[str] | None = None) -> int:
    return service_main(
        TelemetryConfig, "telemetry", TelemetryService, argv, description="Tether telemetry service"
    )


if __name__ == "__main__":
    raise SystemExit(main())
