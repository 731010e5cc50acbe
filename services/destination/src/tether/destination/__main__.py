"""``tether-destination`` / ``python -m tether.destination``: parse config, run the service."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from prometheus_client import REGISTRY

from tether.destination.config import DestinationConfig
from tether.destination.service import DestinationService
from tether.shared.runtime import service_main


def main(argv: Sequence[str] | None = None) -> int:
    return service_main(
        DestinationConfig,
        "destination",
        lambda config: DestinationService(config, REGISTRY),
        argv,
        description="Tether destination: service discovery streamed to proxies",
    )


if __name__ == "__main__":
    sys.exit(main())
