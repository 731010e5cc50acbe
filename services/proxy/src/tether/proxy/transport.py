"""asyncio adapter: sockets in, core connections fed, output written once per loop tick.

The clock is passed in (``ListenerContext.clock``, ``UpstreamProtocol``'s), like everything the core sees.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import structlog

from tether.proxy.core.abuse import REASONS, ClientLimits
from tether.proxy.core.connection import (
    DEFAULT_LIMITS,
    DownstreamConnection,
    Http2Connection,
    Router,
    UpstreamConnection,
)
from tether.proxy.core.conninfo import ConnectionInfo, TlsInfo
from tether.proxy.core.detect import Protocol
from tether.proxy.core.h1connection import H1DownstreamConnection, H1UpstreamConnection
from tether.proxy.metrics import MetricsRegistry, TcpHandle
from tether.proxy.origdst import Address, original_destination
from tether.proxy.tlsconfig import peer_identity
from tether.shared.logthrottle import LogThrottle

log = structlog.get_logger(__name__)

#: Resolves an accepted socket's original destination (SO_ORIGINAL_DST by default).
OriginalDstResolver = Callable[[Any], Address | None]
Clock = Callable[[], float]


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
    """What both directions share: feed reads to the core, write its output, follow back-pressure.

    (HTTP/1.1 connections too: the core's HTTP/1.1 connections have the same face, and ask to pause and
    resume reading, which HTTP/2 does with flow control instead.)
    """

    conn: Http2Connection
    transport: asyncio.Transport | None
    tcp: TcpHandle
    clock: Clock
    # Names for logs: which side of the proxy this connection is, and what its peer is.
    side: str
    peer_role: str

    def data_received(self, data: bytes) -> None:
        self.tcp.read(len(data))
        conn = self.conn
        try:
            conn.receive_data(data, self.clock())
        except Exception:
            self._fatal(self.side)
            conn.connection_lost(self.clock())
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
            self._close(transport)
            self.transport = None

    def _close(self, transport: asyncio.Transport) -> None:
        transport.close()

    def pause_writing(self) -> None:
        self.conn.set_writable(False, self.clock())

    def resume_writing(self) -> None:
        self.conn.set_writable(True, self.clock())

    # ReadControl, for the HTTP/1.1 connections
    def pause_reading(self) -> None:
        if self.transport is not None and self.transport.is_reading():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_reading():
            self.transport.resume_reading()

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
        clock: Clock,
        original_dst: OriginalDstResolver = original_destination,
        is_local_address: Callable[[str], bool] = lambda _host: True,
        no_tls_reason: str,
        limits: ClientLimits = DEFAULT_LIMITS,
    ) -> None:
        self.direction = direction
        self.flusher = flusher
        self.router = router
        self.registry = registry
        self.clock = clock
        self.original_dst = original_dst
        #: Whether an original destination is this pod's own address (inbound; see ConnectionInfo).
        self.is_local_address = is_local_address
        #: What a connection accepted here without mesh TLS is labelled with (see core.conninfo).
        self.no_tls_reason = no_tls_reason
        self.limits = limits
        #: Clients cut off, by class of abuse (core.abuse).
        self.abuse: dict[str, int] = dict.fromkeys(REASONS, 0)
        #: Connections refused because ``limits.max_connections`` were open.
        self.refused_over_limit = 0
        #: Connections closed for not completing their preface within the handshake timeout.
        self.silent_closed = 0
        #: Warnings a client can provoke are logged at a bounded rate.
        self.log_throttle = LogThrottle()
        self.connections: set[DownstreamProtocol] = set()
        self.draining = False
        #: Connections closed for having no stream open for the downstream idle timeout.
        self.idle_closed = 0
        #: HTTP/1.1 requests refused before routing (request-smuggling defences), by reason.
        self.h1_refused: dict[str, int] = {}
        #: Accepted connections by the protocol detected (h2, http/1.1, opaque).
        self.detected: dict[str, int] = {}

    def describe(self, transport: asyncio.BaseTransport) -> ConnectionInfo:
        """The connection's fixed description, read off its socket (and TLS session) once, at accept."""
        sock = transport.get_extra_info("socket")
        ssl_object = transport.get_extra_info("ssl_object")
        tls = None
        if ssl_object is not None:
            tls = TlsInfo(
                peer_identity=peer_identity(ssl_object),
                alpn=ssl_object.selected_alpn_protocol(),
                server_name=ssl_object.server_hostname or "",
            )
        local = _address(transport.get_extra_info("sockname"))
        original = self.original_dst(sock) if sock is not None else None
        return ConnectionInfo(
            direction=self.direction,
            peer=_address(transport.get_extra_info("peername")),
            local=local,
            original_dst=original,
            tls=tls,
            no_tls_reason="" if tls is not None else self.no_tls_reason,
            # iptables' REDIRECT makes the local address the receiving interface's: the common case is free.
            original_dst_is_local=original is None
            or original[0] == local[0]
            or self.is_local_address(original[0]),
        )

    def drain(self) -> None:
        """GOAWAY to every client: in-flight requests finish, new ones go elsewhere."""
        self.draining = True
        for protocol in list(self.connections):
            protocol.drain()

    def close_idle(self, now: float, idle_timeout: float) -> int:
        """Close client connections with no stream open for ``idle_timeout`` seconds (or no preface
        within the handshake timeout); returns how many."""
        closed = 0
        for protocol in list(self.connections):
            if protocol.conn.close_if_silent(now, self.limits.handshake_timeout):
                self.silent_closed += 1
                continue
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


#: How long a client connection we closed is kept half-open, so what we sent last reaches the client.
LINGER = 2.0


class DownstreamProtocol(_H2Protocol):
    """A client connection accepted on a listener."""

    conn: DownstreamConnection | H1DownstreamConnection
    side = "downstream"
    peer_role = "client"

    def __init__(
        self,
        context: ListenerContext,
        protocol: Protocol = Protocol.HTTP2,
        info: ConnectionInfo | None = None,
    ) -> None:
        self.context = context
        self.protocol = protocol
        #: The connection's description, when detection read it already.
        self.info = info
        self.clock = context.clock
        self.transport = None
        self._admitted = False
        self._cut_off_reported = False
        self._linger: asyncio.TimerHandle | None = None

    def _close(self, transport: asyncio.Transport) -> None:
        # Closing a socket with unread input makes the kernel reset the connection and discard what is
        # still queued: the GOAWAY that says why (an attacker's, or a draining client's, input is often
        # unread). Half-close instead, so the GOAWAY goes out ahead of our FIN, and drop what still arrives
        # until the client closes too or LINGER seconds pass.
        if not transport.can_write_eof():  # TLS: close_notify, then close
            transport.close()
            return
        transport.write_eof()
        self._linger = asyncio.get_running_loop().call_later(LINGER, transport.abort)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        context = self.context
        self.transport = cast(asyncio.Transport, transport)
        if len(context.connections) >= context.limits.max_connections:
            context.refused_over_limit += 1
            self.transport = None
            cast(asyncio.Transport, transport).abort()
            return
        info = self.info or context.describe(transport)
        labels, tls = info.metric_labels()
        self.tcp = context.registry.tcp(context.direction, "src", labels, tls)
        self.tcp.opened()
        if self.protocol is Protocol.HTTP1:
            conn = H1DownstreamConnection(
                context.flusher,
                context.router,
                limits=context.limits,
                context=self,
                info=info,
                now=self.clock(),
            )
            conn.reads = self
            self.conn = conn
        else:
            self.conn = DownstreamConnection(
                context.flusher,
                context.router,
                limits=context.limits,
                context=self,
                info=info,
                now=self.clock(),
            )
        self._admitted = True
        context.connections.add(self)
        if context.draining:
            self.conn.start_drain()

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            return  # closing: nothing more from this client is looked at
        super().data_received(data)
        conn = self.conn
        reason = conn.abuse
        if reason is not None and not self._cut_off_reported:
            self._report_cut_off(reason, None)

    def _rejected(self, peer: str, error: str) -> None:
        conn = self.conn
        if isinstance(conn, H1DownstreamConnection) and conn.refusal is not None:
            refused = self.context.h1_refused
            refused[conn.refusal.reason] = refused.get(conn.refusal.reason, 0) + 1
        reason = self.conn.abuse
        if reason is not None:
            self.conn.error = None
            self._report_cut_off(reason, error)
        elif self.context.log_throttle.admit("protocol_error", self.clock()) is not None:
            super()._rejected(peer, error)
        else:
            self.conn.error = None

    def _report_cut_off(self, reason: str, error: str | None) -> None:
        # Counted once per connection (receive_data ignores the peer from now on), logged at a bounded rate.
        self._cut_off_reported = True
        context = self.context
        context.abuse[reason] = context.abuse.get(reason, 0) + 1
        dropped = context.log_throttle.admit(reason, self.clock())
        if dropped is None:
            return
        transport = self.transport
        address = transport.get_extra_info("peername") if transport is not None else None
        log.warning(
            "client_cut_off",
            direction=context.direction,
            reason=reason,
            address=str(address),
            **({"error": error} if error else {}),
            **({"similar_lines_dropped": dropped} if dropped else {}),
        )

    def eof_received(self) -> bool | None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
            return False  # both sides are done: let asyncio close the socket
        conn = self.conn
        if isinstance(conn, H1DownstreamConnection) and not conn.closing:
            # An HTTP/1.1 client may send its request and half-close (RFC 9112 §9.6): the response still
            # goes out, then the connection closes.
            conn.peer_closed(self.clock())
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._linger is not None:
            self._linger.cancel()
        if not self._admitted:  # refused at connection_made: over the connection limit
            return
        self.context.connections.discard(self)
        self.conn.connection_lost(self.clock())
        self.tcp.closed(errno_name(exc))

    def drain(self) -> None:
        self.conn.start_drain()


class UpstreamProtocol(_H2Protocol):
    """A connection the proxy opened to an endpoint of a pool."""

    conn: UpstreamConnection | H1UpstreamConnection
    side = "upstream"
    peer_role = "server"

    def __init__(
        self,
        flusher: Flusher,
        tcp: TcpHandle,
        on_capacity: Callable[[Any], None],
        clock: Clock,
        live: set[UpstreamConnection | H1UpstreamConnection],
        protocol: Protocol = Protocol.HTTP2,
    ) -> None:
        self.protocol = protocol
        self.flusher = flusher
        self.tcp = tcp
        self.on_capacity = on_capacity
        self.clock = clock
        self.live = live
        self.transport = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.tcp.opened()
        if self.protocol is Protocol.HTTP1:
            conn = H1UpstreamConnection(self.flusher, on_capacity=self.on_capacity, context=self)
            conn.reads = self
            self.conn = conn
        else:
            self.conn = UpstreamConnection(self.flusher, on_capacity=self.on_capacity, context=self)
        self.live.add(self.conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.live.discard(self.conn)
        self.conn.connection_lost(self.clock())
        self.tcp.closed(errno_name(exc))


def _address(raw: Any) -> Address:
    if isinstance(raw, tuple) and len(raw) >= 2:
        return str(raw[0]), int(raw[1])
    return "", 0


def errno_name(exc: Exception | None) -> str:
    """How a connection ended, for ``tcp_close_total{errno}`` ("" for a clean close)."""
    if exc is None:
        return ""
    import errno as errno_module

    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        return errno_module.errorcode.get(code, str(code))
    return type(exc).__name__
