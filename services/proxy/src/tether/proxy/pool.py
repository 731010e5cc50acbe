"""Upstream HTTP connections, pooled per endpoint (address and expected identity) and protocol.

The pools know nothing of sockets or TLS: they ask a :class:`~tether.proxy.dialer.Dialer` for connections.
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Callable

import structlog

from tether.proxy.core.detect import Protocol
from tether.proxy.core.h1connection import AnyUpstream
from tether.proxy.errors import UpstreamConnectError
from tether.proxy.origdst import Address

log = structlog.get_logger(__name__)

#: An endpoint as pooled: its address, the identity its certificate must name (None: plaintext), and the
#: protocol spoken to it.
PoolKey = tuple[Address, str | None, Protocol]


class Dialer(typing.Protocol):
    async def dial(
        self,
        address: Address,
        identity: str | None,
        on_capacity: Callable[[AnyUpstream], None],
        protocol: Protocol = Protocol.HTTP2,
    ) -> AnyUpstream: ...


class EndpointPool:
    """Connections to one endpoint; a new one is opened only when all are full (an HTTP/1.1 connection
    is full while it carries one request)."""

    def __init__(
        self,
        address: Address,
        identity: str | None,
        *,
        dialer: Dialer,
        now: float,
        protocol: Protocol = Protocol.HTTP2,
    ) -> None:
        self.address = address
        self.identity = identity
        self.protocol = protocol
        self._dialer = dialer
        self.connections: list[AnyUpstream] = []
        self._connecting: asyncio.Task[None] | None = None
        self.last_used = now
        self.retired = False

    def ready(self) -> AnyUpstream | None:
        """A connection that can take another stream now, if any (the fast path)."""
        for connection in self.connections:
            if connection.has_capacity:
                return connection
        return None

    async def acquire(self) -> AnyUpstream:
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
        try:
            connection = await self._dialer.dial(
                self.address, self.identity, self.capacity_changed, self.protocol
            )
        finally:
            self._connecting = None
        if self.retired:
            connection.retire()
        elif not connection.closing:
            self.connections.append(connection)

    def capacity_changed(self, connection: AnyUpstream) -> None:
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
    """All endpoint pools of one direction, keyed by address and identity, evicted when idle."""

    def __init__(self, *, dialer: Dialer, clock: Callable[[], float]) -> None:
        self._dialer = dialer
        self._clock = clock
        self._pools: dict[PoolKey, EndpointPool] = {}

    def get(
        self, address: Address, identity: str | None = None, protocol: Protocol = Protocol.HTTP2
    ) -> EndpointPool:
        key = (address, identity, protocol)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = EndpointPool(
                address, identity, dialer=self._dialer, now=self._clock(), protocol=protocol
            )
        return pool

    def __len__(self) -> int:
        return len(self._pools)

    def retire(self, address: Address) -> None:
        """Retire the pools of ``address`` (whatever identity they expected)."""
        for key in [key for key in self._pools if key[0] == address]:
            self._pools.pop(key).retire()

    def evict_idle(self, now: float, idle_timeout: float) -> int:
        idle = [
            key for key, pool in self._pools.items() if not pool.busy and now - pool.last_used >= idle_timeout
        ]
        for key in idle:
            self._pools.pop(key).retire()
        return len(idle)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.retire()
        self._pools.clear()
