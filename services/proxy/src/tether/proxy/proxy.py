"""The proxy process: listeners, routers, discovery and admin wired together."""

from __future__ import annotations

import asyncio

import structlog

from tether.proxy.config import ProxyConfig
from tether.proxy.discovery import DestinationClient, StreamOpener
from tether.proxy.dstclient import DestinationStreams
from tether.proxy.grpc_h2 import GrpcChannel
from tether.proxy.metrics import MetricsRegistry
from tether.proxy.origdst import original_destination
from tether.proxy.pool import Pools
from tether.proxy.routing import InboundRouter, OutboundRouter
from tether.proxy.transport import (
    DownstreamProtocol,
    Flusher,
    ListenerContext,
    OriginalDstResolver,
    monotonic,
)
from tether.shared.config import parse_hostport
from tether.shared.listen import bind_failure
from tether.shared.supervisor import SupervisedTask, Supervisor

log = structlog.get_logger(__name__)


class Proxy:
    """One sidecar proxy. Usable in-process: ``await start()``, ``await stop()``.

    ``original_dst`` and ``destination_streams`` replace SO_ORIGINAL_DST and the
    gRPC Destination client, for running without iptables or a control plane.
    Long-lived tasks start through ``supervisor`` (the process runtime's); without one the
    proxy keeps its own, and a failed critical task sets ``shutdown_requested``.
    """

    def __init__(
        self,
        config: ProxyConfig,
        *,
        original_dst: OriginalDstResolver = original_destination,
        inbound_original_dst: OriginalDstResolver | None = None,
        destination_streams: StreamOpener | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.config = config
        self._original_dst = original_dst
        self._inbound_original_dst = inbound_original_dst or original_dst
        self._destination_streams = destination_streams
        self._own_supervisor = supervisor is None
        self.supervisor = supervisor or Supervisor(lambda _name, _exc: self.shutdown_requested.set())
        self.registry = MetricsRegistry(idle_timeout=max(config.idle_timeout, 60.0))
        self.discovery: DestinationClient | None = None
        self._grpc_streams: DestinationStreams | None = None
        self._servers: list[asyncio.Server] = []
        self._contexts: list[ListenerContext] = []
        self._sweeper: SupervisedTask | None = None
        self.shutdown_requested = asyncio.Event()
        self._built = False  # pools and routers exist (start got past building them)
        self._started = False
        self._stopping = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        flusher = Flusher(loop)
        self.outbound_pools = Pools(
            flusher=flusher,
            registry=self.registry,
            direction="outbound",
            connect_timeout=config.connect_timeout,
            clock=monotonic,
        )
        self.inbound_pools = Pools(
            flusher=flusher,
            registry=self.registry,
            direction="inbound",
            connect_timeout=config.connect_timeout,
            clock=monotonic,
        )
        self.outbound_router = OutboundRouter(
            discovery=None,
            pools=self.outbound_pools,
            registry=self.registry,
            fail_fast_timeout=config.fail_fast_timeout,
        )
        opener = self._destination_streams
        if opener is None and config.destination_addr:
            self._grpc_streams = DestinationStreams(
                GrpcChannel(
                    config.destination_addr,
                    spawn=self.supervisor.spawn,
                    connect_timeout=config.connect_timeout,
                ),
                config.context_token,
            )
            opener = self._grpc_streams.open
        if opener is not None:
            self.discovery = DestinationClient(
                opener,
                spawn=self.supervisor.spawn,
                on_removed=self.outbound_router.forget,
                max_authorities=config.max_authorities,
            )
            self.outbound_router.discovery = self.discovery
        self.inbound_router = InboundRouter(
            app_host=config.inbound_app_host,
            pools=self.inbound_pools,
            registry=self.registry,
            fail_fast_timeout=config.fail_fast_timeout,
        )
        outbound = ListenerContext(
            direction="outbound",
            flusher=flusher,
            router=self.outbound_router,
            registry=self.registry,
            original_dst=self._original_dst,
            max_concurrent_streams=config.max_concurrent_streams,
        )
        inbound = ListenerContext(
            direction="inbound",
            flusher=flusher,
            router=self.inbound_router,
            registry=self.registry,
            original_dst=self._inbound_original_dst,
            max_concurrent_streams=config.max_concurrent_streams,
        )
        self._contexts = [outbound, inbound]
        self._built = True
        self.registry.add_collector(self._render_limits)
        listeners = (
            (outbound, "--outbound-addr", config.outbound_addr),
            (inbound, "--inbound-addr", config.inbound_addr),
        )
        for context, option, addr in listeners:
            host, port = parse_hostport(addr)
            try:
                server = await loop.create_server(
                    lambda context=context: DownstreamProtocol(context),  # type: ignore[misc]
                    host,
                    port,
                    reuse_address=True,
                    backlog=1024,
                )
            except OSError as exc:
                raise bind_failure(option, addr, exc) from None
            self._servers.append(server)
        self._sweeper = self.supervisor.spawn("proxy-sweeper", self._sweep)
        self._started = True
        log.info(
            "proxy_started",
            outbound_port=self.outbound_port,
            inbound_port=self.inbound_port,
            destination=config.destination_addr or None,
        )

    @property
    def outbound_port(self) -> int:
        return int(self._servers[0].sockets[0].getsockname()[1])

    @property
    def inbound_port(self) -> int:
        return int(self._servers[1].sockets[0].getsockname()[1])

    def ready(self) -> bool:
        return self._started and not self._stopping

    def render_metrics(self) -> str:
        return self.registry.render(monotonic())

    async def _sweep(self) -> None:
        # One periodic pass instead of a timer per connection: an idle client is
        # closed between one and one-and-a-quarter timeouts after its last stream.
        config = self.config
        interval = min(config.idle_timeout / 4, config.downstream_idle_timeout / 4, 10.0)
        while True:
            await asyncio.sleep(interval)
            now = monotonic()
            for context in self._contexts:
                context.close_idle(now, config.downstream_idle_timeout)
            timeout = config.idle_timeout
            if self.discovery is not None:
                self.discovery.evict_idle(now, timeout)
            self.outbound_pools.evict_idle(now, timeout)
            self.inbound_pools.evict_idle(now, timeout)
            self.registry.expire(now)

    def _render_limits(self) -> str:
        lines = [
            "# HELP proxy_downstream_idle_closed_total Client connections closed after the idle timeout.",
            "# TYPE proxy_downstream_idle_closed_total counter",
            *(
                f'proxy_downstream_idle_closed_total{{direction="{context.direction}"}} {context.idle_closed}'
                for context in self._contexts
            ),
        ]
        if self.discovery is not None:
            lines += [
                "# HELP proxy_authorities_resolved Distinct authorities being resolved now.",
                "# TYPE proxy_authorities_resolved gauge",
                f"proxy_authorities_resolved {len(self.discovery)}",
                "# HELP proxy_authority_limit_rejected_total Requests refused for a new authority (cap).",
                "# TYPE proxy_authority_limit_rejected_total counter",
                f"proxy_authority_limit_rejected_total {self.discovery.rejected}",
            ]
        return "\n".join(lines) + "\n"

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, GOAWAY every client, wait up to ``grace`` seconds for in-flight requests."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.config.shutdown_grace if grace is None else grace
        for server in self._servers:
            server.close()
        for context in self._contexts:
            context.drain()
        if not self._started:
            await self._release()
            return
        deadline = monotonic() + grace
        while any(context.connections for context in self._contexts) and monotonic() < deadline:
            await asyncio.sleep(0.01)
        for context in self._contexts:
            for protocol in list(context.connections):
                if protocol.transport is not None:
                    protocol.transport.abort()
        await self._release()
        log.info("proxy_stopped")

    async def _release(self) -> None:
        if self._sweeper is not None:
            await self._sweeper.stop()
        if self._built:
            await self.outbound_router.close()
            await self.inbound_router.close()
            self.outbound_pools.close()
            self.inbound_pools.close()
        if self.discovery is not None:
            await self.discovery.close()
        if self._grpc_streams is not None:
            await self._grpc_streams.close()
        if self._own_supervisor:
            await self.supervisor.stop()
        for server in self._servers:
            await server.wait_closed()
