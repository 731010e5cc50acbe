"""Entry point: ``tether-public-api`` / ``python -m tether.public_api``."""

from __future__ import annotations

from collections.abc import Sequence

from tether.public_api.config import PublicApiConfig
from tether.public_api.service import PublicApiService
from tether.shared.config import load_config
from tether.shared.runtime import env, package_version, run_service


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(PublicApiConfig, "public-api", argv, env(), description="Tether public API")
    return run_service(
        "public-api", config, lambda: PublicApiService(config), version=package_version("tether-public-api")
    )


if __name__ == "__main__":
    raise SystemExit(main())
