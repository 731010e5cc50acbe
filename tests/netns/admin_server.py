"""Run the proxy's admin listener alone on 0.0.0.0:PORT; print ``ready``, then ``shutdown`` once stopped."""

from __future__ import annotations

import asyncio
import sys
import time

from tether.proxy.admin import shutdown_routes
from tether.proxy.metrics import MetricsRegistry
from tether.shared.admin import AdminServer, Routes, health_routes


async def main(port: int) -> None:
    registry = MetricsRegistry()
    registry.route("inbound", "admin-test:80").request()
    stop = asyncio.Event()
    routes = Routes(
        {
            **health_routes(lambda: True, lambda: registry.render(time.monotonic()).encode()),
            **shutdown_routes(stop.set),
        }
    )
    async with AdminServer(routes, host="0.0.0.0", port=port):
        print("ready", flush=True)
        await stop.wait()
    print("shutdown", flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
