"""Entry point: ``tether-telemetry`` / ``python -m tether.telemetry``."""

from __future__ import annotations

from collections.abc import Sequence

from tether.shared.config import load_config
from tether.shared.runtime import env, package_version, run_service
from tether.telemetry.config import TelemetryConfig
from tether.telemetry.service import TelemetryService


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(TelemetryConfig, "telemetry", argv, env(), description="Tether telemetry service")
    return run_service(
        "telemetry", config, lambda: TelemetryService(config), version=package_version("tether-telemetry")
    )


if __name__ == "__main__":
    raise SystemExit(main())
