"""``tether-destination`` / ``python -m tether.destination``: parse config, run the service."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from prometheus_client import REGISTRY

from tether.destination.config import DestinationConfig
from tether.destination.service import DestinationService
from tether.shared.config import load_config
from tether.shared.runtime import env, package_version, run_service


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(
        DestinationConfig,
        service="destination",
        argv=argv,
        environ=env(),
        description="Tether destination: service discovery streamed to proxies",
    )
    return run_service(
        "destination",
        config,
        lambda: DestinationService(config, REGISTRY),
        version=package_version("tether-destination"),
    )


if __name__ == "__main__":
    sys.exit(main())
