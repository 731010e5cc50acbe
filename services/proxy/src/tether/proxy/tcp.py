"""Opaque TCP: a byte relay between a client connection and one the proxy dials for it.

Both directions are relayed as they arrive, with back-pressure (a side whose write buffer is full stops
the other side's reads), half-close (a FIN is passed on; mesh TLS connections are a
:class:`~tether.proxy.tlsstream.TlsStream`, which sends close_notify for it) and an idle timeout (swept, like
HTTP clients).
An HTTP/1.1 ``CONNECT host:port`` the application sends its outbound proxy (``http_proxy``) is a tunnel
request (:class:`ConnectTunnel`): routed like an opaque connection, by that authority, answered ``200
Connection Established`` once the upstream is connected (an error status and the close when it is not),
then relayed as bytes.
Where a connection goes is its router's decision (:class:`TcpRoute`); the dial is the :class:`Dialer`'s,
with mTLS to meshed endpoints.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import structlog

from tether.proxy.core.conninfo import ConnectionInfo, Labels
from tether.proxy.errors import UpstreamConnectError
from tether.proxy.metrics import MetricsRegistry, TcpHandle
from tether.proxy.origdst import Address
from tether.proxy.transport import errno_name

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class TcpTarget:
    """Where a relayed connection goes: the address, the identity it must prove (None: plaintext), the
    metric labels of the destination, and a callback when the relay ends (load balancing)."""

    address: Address
    identity: str | None = None
    labels: Labels = ()
    finished: Callable[[], None] | None = None


class TcpRouteRefused(Exception):
    """The router will not forward this connection anywhere (the reason is logged and counted)."""

    def __init__(self, reason: str, port: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        #: The port asked for, where it is the reason (``proxy_port``).
        self.port = port


class TcpRoute(Protocol):
    async def tcp_target(self, info: ConnectionInfo) -> TcpTarget: ...


class TcpDialer(Protocol):
    async def dial_tcp(
        self,
        address: Address,
        identity: str | None,
        labels: Labels,
        factory: Callable[[TcpHandle], asyncio.Protocol],
    ) -> asyncio.Transport: ...


class TcpRelays:
    """The relays of one listener: started per connection, swept when idle, closed on shutdown."""

    def __init__(
        self,
        *,
        direction: str,
        route: TcpRoute,
        dialer: TcpDialer,
        registry: MetricsRegistry,
        clock: Clock,
        idle_timeout: float,
        connect_timeout: float,
    ) -> None:
        self.direction = direction
        self.route = route
        self.dialer = dialer
        self.registry = registry
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.active: set[TcpRelay] = set()
        #: Connections not forwarded, by reason (no route, connect failed).
        self.failed: dict[str, int] = {}
        self.idle_closed = 0

    def relay(self, info: ConnectionInfo, first_bytes: bytes = b"", *, answered: bool = False) -> TcpRelay:
        """The protocol for an accepted transport (``transport.set_protocol`` it, then call
        ``connection_made``); ``first_bytes`` were read already (detection) and go first. ``answered``: a
        CONNECT tunnel's client was answered already (the relay sends no status line)."""
        relay = TcpRelay(self, info, first_bytes)
        if answered:
            relay.tunnel = False
        return relay

    def count_failure(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1

    def close_idle(self, now: float) -> None:
        for relay in list(self.active):
            if now - relay.last_activity >= self.idle_timeout:
                self.idle_closed += 1
                relay.close()

    def close_all(self) -> None:
        for relay in list(self.active):
            relay.abort()


class _Side(asyncio.Protocol):
    """One connection of a relay."""

    def __init__(self, relay: TcpRelay, tcp: TcpHandle) -> None:
        self.relay = relay
        self.tcp = tcp
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.tcp.opened()

    def data_received(self, data: bytes) -> None:
        self.tcp.read(len(data))
        self.relay.last_activity = self.relay.relays.clock()
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
            peer.tcp.wrote(len(data))

    def eof_received(self) -> bool | None:
        self.eof = True
        peer = self.peer
        if peer is None or peer.transport is None:
            return False
        if peer.eof:  # both sides are done
            peer.transport.close()
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
        # Keep the other direction going. (Where the other transport cannot half-close — asyncio's TLS, which
        # only a mesh peer without ALPN would reach here — the other side ends the connection.)
        return True

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.tcp.closed(errno_name(exc))
        peer = self.peer
        if peer is not None and peer.transport is not None:
            if exc is not None:
                peer.transport.abort()
            else:
                peer.transport.close()
        self.relay.side_closed()


class TcpRelay(_Side):
    """The client's side: created at accept (or after detection), dials the target, then relays."""

    def __init__(self, relays: TcpRelays, info: ConnectionInfo, first_bytes: bytes) -> None:
        labels, tls = info.metric_labels()
        super().__init__(self, relays.registry.tcp(relays.direction, "src", labels, tls))
        self.relays = relays
        self.info = info
        self._first = [first_bytes] if first_bytes else []
        self.last_activity = relays.clock()
        self._sides_open = 1
        self._dial: asyncio.Task[None] | None = None
        self._target: TcpTarget | None = None
        self._upstream: _Side | None = None
        #: An HTTP CONNECT tunnel: the client is answered with a status line before any relayed byte.
        self.tunnel = info.connect_authority is not None

    def _upstream_side(self, tcp: TcpHandle) -> asyncio.Protocol:
        side = self._upstream = _Side(self, tcp)
        side.peer = self
        return side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.relays.active.add(self)
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()  # until the other side is connected
        self._dial = asyncio.get_running_loop().create_task(self._connect())

    def data_received(self, data: bytes) -> None:
        if self.peer is None:  # (only the reads already under way when reading was paused)
            self.tcp.read(len(data))
            self._first.append(data)
            return
        super().data_received(data)

    async def _connect(self) -> None:
        relays = self.relays
        try:
            async with asyncio.timeout(relays.connect_timeout * 3):
                target = await relays.route.tcp_target(self.info)
                self._target = target
                await relays.dialer.dial_tcp(
                    target.address, target.identity, target.labels, self._upstream_side
                )
        except TcpRouteRefused as exc:
            self._fail(exc.reason, None)
            return
        except UpstreamConnectError as exc:
            self._fail("connect_failed", str(exc))
            return
        except TimeoutError:
            self._fail("connect_timeout", None)
            return
        except Exception:  # a bug: this connection fails, loudly, and the proxy carries on
            log.exception("tcp_relay_error", direction=relays.direction)
            self._fail("proxy_error", None)
            return
        upstream = self._upstream
        assert upstream is not None, "the dialer made the upstream side"
        transport = self.transport
        if transport is None:  # the client left meanwhile
            if upstream.transport is not None:
                upstream.transport.close()
            return
        self.peer = upstream
        self._sides_open = 2
        pending, self._first = b"".join(self._first), []
        if pending and upstream.transport is not None:
            upstream.transport.write(pending)
            upstream.tcp.wrote(len(pending))
        if self.eof and upstream.transport is not None and upstream.transport.can_write_eof():
            upstream.transport.write_eof()
        if self.tunnel and not transport.is_closing():
            transport.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        if not transport.is_closing():
            transport.resume_reading()

    def _fail(self, reason: str, error: str | None) -> None:
        self.relays.count_failure(reason)
        authority = self.info.connect_authority
        log.info(
            "tcp_relay_failed",
            direction=self.relays.direction,
            reason=reason,
            original_dst=str(self.info.original_dst),
            **({"authority": authority.decode("ascii", "replace")} if authority is not None else {}),
            **({"error": error} if error else {}),
        )
        if self.transport is not None:
            if self.tunnel:
                self.transport.write(_refusal(_TUNNEL_STATUS.get(reason, (502, "Bad Gateway")), reason))
                self.transport.close()
            else:
                self.transport.abort()

    def eof_received(self) -> bool | None:
        if self.peer is None:
            self.eof = True
            return True  # passed on once connected
        return super().eof_received()

    def side_closed(self) -> None:
        self._sides_open -= 1
        if self._sides_open <= 0 or self.transport is None:
            if self in self.relays.active:
                self.relays.active.discard(self)
                target = self._target
                if target is not None and target.finished is not None:
                    target.finished()
            if self._dial is not None and not self._dial.done():
                self._dial.cancel()

    def close(self) -> None:
        for side in (self, self.peer):
            if side is not None and side.transport is not None:
                side.transport.close()

    def abort(self) -> None:
        for side in (self, self.peer):
            if side is not None and side.transport is not None:
                side.transport.abort()


#: A refused tunnel's answer, by the relay's failure reason (anything else: 502).
_TUNNEL_STATUS = {
    "connect_authority_unknown": (403, "Forbidden"),
    "no_endpoints": (503, "Service Unavailable"),
    "connect_timeout": (504, "Gateway Timeout"),
    "bad_request": (400, "Bad Request"),
}
MAX_CONNECT_HEAD = 16 * 1024
_CONNECT_LINE = re.compile(rb"CONNECT ([^\s/@]+:[0-9]{1,5}) HTTP/1\.[01]\r?\n")


def _refusal(status: tuple[int, str], reason: str) -> bytes:
    code, phrase = status
    return (
        f"HTTP/1.1 {code} {phrase}\r\ncontent-length: 0\r\nconnection: close\r\n"
        f"l5d-proxy-error: {reason}\r\n\r\n"
    ).encode()


#: What a CONNECT tunnel becomes once answered: the protocol for the tunnel's bytes (detection, so that
#: HTTP inside a tunnel — grpcio's grpc_proxy — is routed and measured as HTTP), given its first bytes.
TunnelHandover = Callable[[ConnectionInfo, bytes], asyncio.Protocol]


class ConnectTunnel(asyncio.Protocol):
    """The application's ``CONNECT host:port HTTP/1.1`` (and its header fields, ignored): read to the end
    of its head, then the connection becomes a :class:`TcpRelay` to that authority (bytes after the head
    go first). A malformed or oversized head is answered 400 and closed. With a ``handover``, the authority
    is checked first (refused as the relay would refuse it), the client answered 200, and what it sends
    through the tunnel is detected: HTTP is routed as HTTP, anything else relayed."""

    def __init__(
        self, relays: TcpRelays, info: ConnectionInfo, handover: TunnelHandover | None = None
    ) -> None:
        self.relays = relays
        self.info = info
        self._handover = handover
        self._checking: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_CONNECT_HEAD:
                self._bad()
            return
        head, rest = bytes(self.buffer[: end + 4]), bytes(self.buffer[end + 4 :])
        self.buffer = bytearray()
        match = _CONNECT_LINE.match(head)
        if match is None or int(match.group(1).rsplit(b":", 1)[1]) > 65535:
            self._bad()
            return
        info = dataclasses.replace(self.info, connect_authority=match.group(1).lower())
        if self._handover is not None:
            transport.pause_reading()
            self._checking = asyncio.get_running_loop().create_task(self._check_then_hand_over(info, rest))
            return
        relay = self.relays.relay(info, rest)
        transport.set_protocol(relay)
        self.transport = None
        relay.connection_made(transport)
        if self._eof:
            relay.eof_received()

    async def _check_then_hand_over(self, info: ConnectionInfo, rest: bytes) -> None:
        relays = self.relays
        try:
            async with asyncio.timeout(relays.connect_timeout * 3):
                target = await relays.route.tcp_target(info)
        except TcpRouteRefused as exc:
            self._refuse(exc.reason)
            return
        except TimeoutError:
            self._refuse("connect_timeout")
            return
        if target.finished is not None:
            target.finished()  # (only a check: the tunnel's own connections pick again)
        transport = self.transport
        if transport is None or transport.is_closing() or self._handover is None:
            return
        transport.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        protocol = self._handover(info, rest)
        transport.set_protocol(protocol)
        self.transport = None
        protocol.connection_made(transport)
        transport.resume_reading()
        if self._eof:
            protocol.eof_received()

    def _refuse(self, reason: str) -> None:
        self.relays.count_failure(reason)
        status = _TUNNEL_STATUS.get(reason, (502, "Bad Gateway"))
        if self.transport is not None:
            self.transport.write(_refusal(status, reason))
            self.transport.close()
            self.transport = None

    def _bad(self) -> None:
        self.relays.count_failure("bad_request")
        if self.transport is not None:
            self.transport.write(_refusal(_TUNNEL_STATUS["bad_request"], "bad_request"))
            self.transport.close()
            self.transport = None

    def eof_received(self) -> bool | None:
        self._eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._checking is not None:
            self._checking.cancel()
