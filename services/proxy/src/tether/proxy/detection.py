"""Protocol detection at accept, both listeners: HTTP/2, HTTP/1.1, or opaque TCP, then hand-over.

A connection's first bytes are read (not peeked: TLS may already be terminated below this) and kept; once
:func:`~tether.proxy.core.detect.detect_protocol` has a verdict, the transport is handed to the HTTP/2 or
HTTP/1.1 connection, or to a TCP relay, with those bytes first: detection never loses or reorders a byte.
No verdict within the detection timeout (a client that sends one byte and waits, or nothing) means TCP.

Detection is skipped where waiting would be wrong or pointless: the opaque ports (server-speaks-first
protocols, whose clients send nothing until the server has spoken), the ports discovery marks opaque, and
mesh TLS whose ALPN already says what follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from typing import cast

from tether.proxy.core.conninfo import ConnectionInfo
from tether.proxy.core.detect import Protocol, detect_protocol
from tether.proxy.tcp import ConnectTunnel, TcpRelays
from tether.proxy.tlsconfig import ALPN_H2, ALPN_HTTP1, ALPN_TCP
from tether.proxy.transport import DownstreamProtocol, ListenerContext

#: Whether discovery marks a connection's destination opaque: True/False, or None while it is being looked
#: up (then the awaitable answers once it knows).
OpaqueHint = Callable[[ConnectionInfo], bool | None]
OpaqueLookup = Callable[[ConnectionInfo], Awaitable[bool]]

_BY_ALPN = {ALPN_H2: Protocol.HTTP2, ALPN_HTTP1: Protocol.HTTP1, ALPN_TCP: Protocol.OPAQUE}


class Detector:
    """How one listener detects: its timeout, its opaque ports, and where each protocol goes."""

    def __init__(
        self,
        context: ListenerContext,
        relays: TcpRelays,
        *,
        timeout: float,
        opaque_ports: Collection[int],
        opaque_hint: OpaqueHint = lambda _info: False,
        opaque_lookup: OpaqueLookup | None = None,
        tunnels: bool = False,
    ) -> None:
        self.context = context
        self.relays = relays
        self.timeout = timeout
        self.opaque_ports = frozenset(opaque_ports)
        self.opaque_hint = opaque_hint
        self.opaque_lookup = opaque_lookup
        #: HTTP/1.1 ``CONNECT`` is a tunnel request (the application's outbound proxy), not an exchange.
        self.tunnels = tunnels
        #: Lookups of opaque hints under way (per-connection tasks, bounded by the detection timeout).
        self.lookups: set[asyncio.Task[None]] = set()

    def protocol(self, known: Protocol | None = None) -> DetectingProtocol:
        """The protocol for a new connection; ``known`` skips detection."""
        return DetectingProtocol(self, known)

    def inside_tunnel(self, info: ConnectionInfo, first: bytes) -> DetectingProtocol:
        """For what an answered CONNECT tunnel carries: detected like a new connection, described by the
        tunnel (its authority); an opaque stream is relayed to that authority."""
        detecting = DetectingProtocol(self, None, info=info, tunnelled=True)
        detecting.buffer += first
        return detecting

    def count(self, protocol: Protocol) -> None:
        detected = self.context.detected
        detected[protocol.value] = detected.get(protocol.value, 0) + 1


class DetectingProtocol(asyncio.Protocol):
    def __init__(
        self,
        detector: Detector,
        known: Protocol | None,
        *,
        info: ConnectionInfo | None = None,
        tunnelled: bool = False,
    ) -> None:
        self.detector = detector
        self.known = known
        self.transport: asyncio.Transport | None = None
        self.info: ConnectionInfo | None = info
        #: Inside an answered CONNECT tunnel: no second CONNECT, no second status line.
        self._tunnelled = tunnelled
        self.buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._eof = False
        self._handed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        detector = self.detector
        if self._tunnelled and self.info is not None:
            # Inside a tunnel: the first bytes may be here already; its port is the tunnel's authority's.
            info = self.info
            verdict = detect_protocol(bytes(self.buffer)) if self.buffer else None
            if verdict is not None:
                self._hand_over(verdict)
            else:
                self._timer = asyncio.get_running_loop().call_later(detector.timeout, self._timed_out)
            return
        info = self.info = detector.context.describe(transport)
        known = self.known
        ssl_object = transport.get_extra_info("ssl_object")
        if known is None and ssl_object is not None:
            known = _BY_ALPN.get(ssl_object.selected_alpn_protocol() or "")
        if known is None:
            original = info.original_dst or info.local
            if original[1] in detector.opaque_ports:
                known = Protocol.OPAQUE
            else:
                hint = detector.opaque_hint(info)
                if hint:
                    known = Protocol.OPAQUE
                elif hint is None and detector.opaque_lookup is not None:
                    self._look_up(detector.opaque_lookup, info)
        if known is not None:
            self._hand_over(known)
            return
        self._timer = asyncio.get_running_loop().call_later(detector.timeout, self._timed_out)

    def _look_up(self, lookup: OpaqueLookup, info: ConnectionInfo) -> None:
        async def opaque_when_known() -> None:
            if await lookup(info) and not self._handed:
                self._hand_over(Protocol.OPAQUE)

        lookups = self.detector.lookups
        task = asyncio.get_running_loop().create_task(opaque_when_known())
        lookups.add(task)
        task.add_done_callback(lookups.discard)

    def data_received(self, data: bytes) -> None:
        if self._handed:
            return
        self.buffer += data
        verdict = detect_protocol(bytes(self.buffer))
        if verdict is not None:
            self._hand_over(verdict)

    def eof_received(self) -> bool | None:
        # The client sent all it will before we could tell: whatever it is, it is not HTTP we can serve.
        self._eof = True
        if not self._handed:
            self._hand_over(Protocol.OPAQUE)
        return True

    def _timed_out(self) -> None:
        if not self._handed:
            self._hand_over(Protocol.OPAQUE)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._handed = True
        self.transport = None

    def _hand_over(self, protocol: Protocol) -> None:
        self._handed = True
        if self._timer is not None:
            self._timer.cancel()
        transport = self.transport
        info = self.info
        if transport is None or info is None:
            return
        detector = self.detector
        detector.count(protocol)
        first = bytes(self.buffer)
        self.buffer = bytearray()
        if protocol is Protocol.OPAQUE:
            relay = detector.relays.relay(info, first, answered=self._tunnelled)
            transport.set_protocol(relay)
            relay.connection_made(transport)
            if self._eof:
                relay.eof_received()
            return
        if (
            protocol is Protocol.HTTP1
            and detector.tunnels
            and not self._tunnelled
            and first.startswith(b"CONNECT ")
        ):
            tunnel = ConnectTunnel(detector.relays, info, detector.inside_tunnel)
            transport.set_protocol(tunnel)
            tunnel.connection_made(transport)
            tunnel.data_received(first)
            if self._eof:
                tunnel.eof_received()
            return
        downstream = DownstreamProtocol(detector.context, protocol, info)
        transport.set_protocol(downstream)
        downstream.connection_made(transport)
        if first:
            downstream.data_received(first)
        if self._eof:
            downstream.eof_received()
