"""Upstream HTTP/2 connections, pooled per endpoint address."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import structlog

from tether.proxy.core.connection import UpstreamConnection
from tether.proxy.errors import UpstreamConnectError
from tether.proxy.metrics import MetricsRegistry, TcpHandle
from tether.proxy.origdst import Address
from tether.proxy.transport import Flusher, UpstreamProtocol

log = structlog.get_logger(__name__)


class EndpointPool:
    """HTTP/2 connections to one endpoint; a new one is opened only when all are full."""

    def __init__(
        self,
        address: Address,
        *,
        flusher: Flusher,
        registry: MetricsRegistry,
        direction: str,
        connect_timeout: float,
        now: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.address = address
        self.flusher = flusher
        self._registry = registry
        self._direction = direction
        self._connect_timeout = connect_timeout
        self._ssl = ssl_context
        self.connections: list[UpstreamConnection] = []
        self._connecting: asyncio.Task[None] | None = None
        self.last_used = now
        self.retired = False

    def ready(self) -> UpstreamConnection | None:
        """A connection that can take another stream now, if any (the fast path)."""
        for connection in self.connections:
            if connection.has_capacity:
                return connection
        return None

    async def acquire(self) -> UpstreamConnection:
        """A connection with capacity, connecting if needed; raises UpstreamConnectError."""
        while True:
            if self.retired:
                raise UpstreamConnectError(self.address, "endpoint removed")
            connection = self.ready()
            if connection is not None:
                return connection
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            await asyncio.shield(self._connecting)

    async def _connect(self) -> None:
        host, port = self.address
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: UpstreamProtocol(self), host, port, ssl=self._ssl
                )
        except TimeoutError:
            raise UpstreamConnectError(self.address, "connect timeout") from None
        except OSError as exc:
            raise UpstreamConnectError(self.address, exc.strerror or type(exc).__name__) from None
        finally:
            self._connecting = None
        connection = protocol.conn
        if self.retired:
            connection.retire()
        elif not connection.closing:
            self.connections.append(connection)

    def tcp_handle(self) -> TcpHandle:
        return self._registry.tcp(self._direction, "dst")

    def capacity_changed(self, connection: UpstreamConnection) -> None:
        if (connection.closing or connection.draining) and connection in self.connections:
            self.connections.remove(connection)

    @property
    def busy(self) -> bool:
        return any(connection.exchanges for connection in self.connections) or self._connecting is not None

    def retire(self) -> None:
        """No new streams: each connection closes once its in-flight requests complete."""
        self.retired = True
        for connection in self.connections:
            connection.retire()
        self.connections.clear()


class Pools:
    """All endpoint pools of one direction, keyed by address, evicted when idle."""

    def __init__(
        self,
        *,
        flusher: Flusher,
        registry: MetricsRegistry,
        direction: str,
        connect_timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._flusher = flusher
        self._registry = registry
        self._direction = direction
        self._connect_timeout = connect_timeout
        self._clock = clock
        self._pools: dict[Address, EndpointPool] = {}

    def get(self, address: Address) -> EndpointPool:
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = EndpointPool(
                address,
                flusher=self._flusher,
                registry=self._registry,
                direction=self._direction,
                connect_timeout=self._connect_timeout,
                now=self._clock(),
            )
        return pool

    def __len__(self) -> int:
        return len(self._pools)

    def retire(self, address: Address) -> None:
        pool = self._pools.pop(address, None)
        if pool is not None:
            pool.retire()

    def evict_idle(self, now: float, idle_timeout: float) -> int:
        idle = [
            address
            for address, pool in self._pools.items()
            if not pool.busy and now - pool.last_used >= idle_timeout
        ]
        for address in idle:
            self.retire(address)
        return len(idle)

    def close(self) -> None:
        for address in list(self._pools):
            self.retire(address)
