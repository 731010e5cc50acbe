"""Entry point: ``tether-public-api`` / ``python -m tether.public_api``."""

from __future__ import annotations

from collections.abc import Sequence

from tether.public_api.config import PublicApiConfig
from tether.public_api.service import PublicApiService
from tether.shared.runtime import service_main


def main(argv: Sequence[str] | None = None) -> int:
    return service_main(
        PublicApiConfig, "public-api", PublicApiService, argv, description="Tether public API"
    )


if __name__ == "__main__":
    raise SystemExit(main())
