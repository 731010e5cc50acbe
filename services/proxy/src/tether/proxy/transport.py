"""asyncio adapter: sockets in, core connections fed, output written once per loop tick."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import structlog

from tether.proxy.core.connection import (
    DownstreamConnection,
    Http2Connection,
    Router,
    UpstreamConnection,
)
from tether.proxy.metrics import MetricsRegistry, TcpHandle
from tether.proxy.origdst import Address, original_destination

if TYPE_CHECKING:
    from tether.proxy.pool import EndpointPool

log = structlog.get_logger(__name__)

#: Resolves an accepted socket's original destination (SO_ORIGINAL_DST by default).
OriginalDstResolver = Callable[[Any], Address | None]

monotonic = time.monotonic


class Flusher:
    """Writes every connection's pending output once per event-loop iteration.

    Frames produced while handling one read (and those for other connections,
    e.g. a request forwarded upstream) are coalesced into one ``write`` call.
    """

    __slots__ = ("_loop", "_pending", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[Http2Connection] = []
        self._scheduled = False

    def schedule(self, connection: Http2Connection) -> None:
        self._pending.append(connection)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        self._pending = []
        for connection in pending:
            cast(_H2Protocol, connection.context).flush()


class _H2Protocol(asyncio.Protocol):
    """What both directions share: feed reads to the core, write its output, follow back-pressure."""

    conn: Http2Connection
    transport: asyncio.Transport | None
    tcp: TcpHandle
    # Names for logs: which side of the proxy this connection is, and what its peer is.
    side: str
    peer_role: str

    def data_received(self, data: bytes) -> None:
        self.tcp.read(len(data))
        conn = self.conn
        try:
            conn.receive_data(data, monotonic())
        except Exception:
            self._fatal(self.side)
            conn.connection_lost(monotonic())
        if conn.error is not None:
            self._rejected(self.peer_role, conn.error)

    def flush(self) -> None:
        conn = self.conn
        data = conn.data_to_send()
        transport = self.transport
        if transport is None:
            return
        if data:
            transport.write(data)
            self.tcp.wrote(len(data))
        if conn.closing:
            transport.close()
            self.transport = None

    def pause_writing(self) -> None:
        self.conn.set_writable(False, monotonic())

    def resume_writing(self) -> None:
        self.conn.set_writable(True, monotonic())

    def _rejected(self, peer: str, error: str) -> None:
        # Logged once: the connection is closing and its error is cleared.
        self.conn.error = None
        transport = self.transport
        address = transport.get_extra_info("peername") if transport is not None else None
        log.warning("peer_protocol_error", peer=peer, address=str(address), error=error)

    def _fatal(self, where: str) -> None:
        log.exception("proxy_connection_failed", where=where)
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class ListenerContext:
    """Everything a downstream connection of one listener needs."""

    def __init__(
        self,
        *,
        direction: str,
        flusher: Flusher,
        router: Router,
        registry: MetricsRegistry,
        original_dst: OriginalDstResolver = original_destination,
        max_concurrent_streams: int = 2048,
    ) -> None:
        self.direction = direction
        self.flusher = flusher
        self.router = router
        self.registry = registry
        self.original_dst = original_dst
        self.max_concurrent_streams = max_concurrent_streams
        self.connections: set[DownstreamProtocol] = set()
        self.draining = False
        #: Connections closed for having no stream open for the downstream idle timeout.
        self.idle_closed = 0

    def drain(self) -> None:
        """GOAWAY to every client: in-flight requests finish, new ones go elsewhere."""
        self.draining = True
        for protocol in list(self.connections):
            protocol.drain()

    def close_idle(self, now: float, idle_timeout: float) -> int:
        """Close client connections with no stream open for ``idle_timeout`` seconds; returns how many."""
        closed = 0
        for protocol in list(self.connections):
            if protocol.conn.close_if_idle(now, idle_timeout):
                closed += 1
                transport = protocol.transport
                address = transport.get_extra_info("peername") if transport is not None else None
                log.debug(
                    "downstream_idle_closed",
                    direction=self.direction,
                    address=str(address),
                    preface_received=protocol.conn.preface_received,
                )
        self.idle_closed += closed
        return closed


class DownstreamProtocol(_H2Protocol):
    """A client connection accepted on a listener."""

    conn: DownstreamConnection
    side = "downstream"
    peer_role = "client"

    def __init__(self, context: ListenerContext) -> None:
        self.context = context
        self.transport = None
        self._socket: Any = None
        self._original_dst: Address | None = None
        self._original_dst_known = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        context = self.context
        self.transport = cast(asyncio.Transport, transport)
        self._socket = transport.get_extra_info("socket")
        self.tcp = context.registry.tcp(context.direction, "src")
        self.tcp.opened()
        self.conn = DownstreamConnection(
            context.flusher,
            context.router,
            max_concurrent_streams=context.max_concurrent_streams,
            context=self,
            now=monotonic(),
        )
        context.connections.add(self)
        if context.draining:
            self.conn.start_drain()

    def original_dst(self) -> Address | None:
        """Where the client meant to connect (None when it connected to the proxy directly)."""
        if not self._original_dst_known:
            self._original_dst_known = True
            if self._socket is not None:
                self._original_dst = self.context.original_dst(self._socket)
        return self._original_dst

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.context.connections.discard(self)
        self.conn.connection_lost(monotonic())
        self.tcp.closed(_errno(exc))

    def drain(self) -> None:
        self.conn.start_drain()


class UpstreamProtocol(_H2Protocol):
    """A connection the proxy opened to an endpoint of a pool."""

    conn: UpstreamConnection
    side = "upstream"
    peer_role = "server"

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.transport = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pool = self.pool
        self.transport = cast(asyncio.Transport, transport)
        self.tcp = pool.tcp_handle()
        self.tcp.opened()
        self.conn = UpstreamConnection(pool.flusher, on_capacity=pool.capacity_changed, context=self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.conn.connection_lost(monotonic())
        self.tcp.closed(_errno(exc))


def _errno(exc: Exception | None) -> str:
    if exc is None:
        return ""
    import errno as errno_module

    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        return errno_module.errorcode.get(code, str(code))
    return type(exc).__name__
