"""The proxy inside the shared process runtime: its listeners, its metrics and ``POST /shutdown``."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tether.proxy.admin import shutdown_routes
from tether.proxy.config import ProxyConfig
from tether.proxy.proxy import Proxy
from tether.shared.admin import Route
from tether.shared.runtime import Context, Service
from tether.shared.supervisor import Supervisor

ProxyFactory = Callable[[ProxyConfig, Supervisor], Proxy]


def _default_proxy(config: ProxyConfig, supervisor: Supervisor) -> Proxy:
    return Proxy(config, supervisor=supervisor)


class ProxyService(Service):
    # The data plane never depends on NATS: it talks to the control plane over gRPC only.
    uses_nats = False

    def __init__(self, config: ProxyConfig, proxy_factory: ProxyFactory = _default_proxy) -> None:
        """``proxy_factory`` builds the proxy; tests give it stand-ins for SO_ORIGINAL_DST."""
        self.config = config
        self._proxy_factory = proxy_factory
        self.proxy: Proxy | None = None

    async def start(self, ctx: Context) -> None:
        self.proxy = self._proxy_factory(self.config, ctx.supervisor)
        await self.proxy.start()

    async def stop(self, grace: float) -> None:
        if self.proxy is not None:
            await self.proxy.stop(grace)

    def ready(self) -> bool:
        return self.proxy is not None and self.proxy.ready()

    def admin_routes(self, ctx: Context) -> Mapping[str, Mapping[str, Route]]:
        return shutdown_routes(ctx.request_stop)

    def render_metrics(self) -> bytes | None:
        return self.proxy.render_metrics().encode() if self.proxy is not None else b""
