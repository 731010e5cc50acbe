"""Upstream connections, plaintext or mesh TLS: what the pools and TCP relays use, so they know no sockets.

An endpoint that destination gave an identity is dialled with TLS 1.3 (SNI: that identity; ALPN: what
follows, ``h2``, ``http/1.1`` or ``tether.tcp``), presenting this proxy's certificate, and accepted only if
the server's chain leads to a trust anchor and its certificate names exactly that identity. A mismatch
fails the connection (it is never retried in plaintext) and is counted. Endpoints without an identity are
dialled in plaintext, labelled so.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TypeVar

import structlog

from tether.proxy.core.conninfo import NOT_PROVIDED_BY_DISCOVERY, Labels, tls_labels
from tether.proxy.core.detect import Protocol
from tether.proxy.core.h1connection import AnyUpstream
from tether.proxy.errors import UpstreamConnectError
from tether.proxy.metrics import MetricsRegistry, TcpHandle
from tether.proxy.origdst import Address
from tether.proxy.tlsconfig import ALPN_H2, ALPN_HTTP1, ALPN_TCP, IdentityMismatch, verify_peer_identity
from tether.proxy.tlsstream import TlsStream
from tether.proxy.transport import Clock, Flusher, UpstreamProtocol

log = structlog.get_logger(__name__)

#: The mesh client context for an ALPN protocol now (None: no certificate yet, or identity disabled).
ClientContext = Callable[[str], ssl.SSLContext | None]
P = TypeVar("P", bound=asyncio.Protocol)
_ALPN = {Protocol.HTTP2: ALPN_H2, Protocol.HTTP1: ALPN_HTTP1, Protocol.OPAQUE: ALPN_TCP}


class Dialer:
    def __init__(
        self,
        *,
        flusher: Flusher,
        registry: MetricsRegistry,
        direction: str,
        clock: Clock,
        connect_timeout: float,
        mesh_tls: ClientContext = lambda _alpn: None,
        no_tls_reason: str = NOT_PROVIDED_BY_DISCOVERY,
    ) -> None:
        self.flusher = flusher
        self._registry = registry
        self._direction = direction
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._mesh_tls = mesh_tls
        self._no_tls_reason = no_tls_reason
        #: Connections refused because the server's certificate named another identity.
        self.identity_mismatches = 0
        #: Every upstream connection this dialer made that is still open (pooled, or draining).
        self.live: set[AnyUpstream] = set()
        #: Abandoned upstream streams reset once old enough (see UpstreamConnection.abandon).
        self.orphans_reset = 0

    def orphan_count(self) -> int:
        return sum(len(connection.orphans) for connection in self.live)

    def expire_orphans(self, now: float) -> None:
        for connection in self.live:
            if connection.orphans:
                self.orphans_reset += connection.expire_orphans(now)

    async def dial(
        self,
        address: Address,
        identity: str | None,
        on_capacity: Callable[[AnyUpstream], None],
        protocol: Protocol = Protocol.HTTP2,
    ) -> AnyUpstream:
        """A connected upstream HTTP connection (``protocol``); raises UpstreamConnectError."""
        tcp = self._tcp_handle(identity, ())
        _, upstream = await self._connect(
            address,
            identity,
            protocol,
            lambda: UpstreamProtocol(self.flusher, tcp, on_capacity, self._clock, self.live, protocol),
        )
        return upstream.conn

    async def dial_tcp(
        self,
        address: Address,
        identity: str | None,
        labels: Labels,
        factory: Callable[[TcpHandle], asyncio.Protocol],
    ) -> asyncio.Transport:
        """A connected TCP stream for a relay (mTLS when ``identity``, over a :class:`TlsStream` so that a
        half-close crosses the mesh); raises UpstreamConnectError."""
        tcp = self._tcp_handle(identity, labels)
        if identity is None:
            transport, _ = await self._connect(address, None, Protocol.OPAQUE, lambda: factory(tcp))
            return transport
        context = self._mesh_tls(ALPN_TCP)
        if context is None:
            raise UpstreamConnectError(address, "no certificate for mTLS yet")

        def check(ssl_object: ssl.SSLObject) -> None:
            verify_peer_identity(ssl_object, identity)
            if ssl_object.selected_alpn_protocol() != ALPN_TCP:
                raise UpstreamConnectError(address, f"the peer did not agree to {ALPN_TCP} (ALPN)")

        stream = TlsStream(
            context,
            factory(tcp),
            server_side=False,
            server_hostname=identity,
            check=check,
            handshake_timeout=self._connect_timeout,
        )
        await self._connect(address, None, Protocol.OPAQUE, lambda: stream)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await stream.handshake
        except IdentityMismatch as exc:
            self.identity_mismatches += 1
            log.warning("upstream_identity_mismatch", address=f"{address[0]}:{address[1]}", error=str(exc))
            raise UpstreamConnectError(address, str(exc)) from None
        except UpstreamConnectError:
            stream.abort()
            raise
        except TimeoutError:
            stream.abort()
            raise UpstreamConnectError(address, "TLS handshake timeout") from None
        except ssl.SSLError as exc:
            raise UpstreamConnectError(address, f"TLS handshake failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise UpstreamConnectError(address, exc.strerror or type(exc).__name__) from None
        return stream  # type: ignore[return-value]

    def _tcp_handle(self, identity: str | None, labels: Labels) -> TcpHandle:
        secured = identity if identity is not None and self._mesh_tls(ALPN_H2) is not None else None
        extra, tls = tls_labels("server_id", secured, self._no_tls_reason)
        return self._registry.tcp(self._direction, "dst", (*labels, *extra), tls)

    async def _connect(
        self, address: Address, identity: str | None, protocol: Protocol, factory: Callable[[], P]
    ) -> tuple[asyncio.Transport, P]:
        alpn = _ALPN[protocol]
        context = None
        if identity is not None:
            context = self._mesh_tls(alpn)
            if context is None:
                raise UpstreamConnectError(address, "no certificate for mTLS yet")
        host, port = address
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, connected = await loop.create_connection(
                    factory,
                    host,
                    port,
                    ssl=context,
                    server_hostname=identity if context is not None else None,
                )
        except TimeoutError:
            raise UpstreamConnectError(address, "connect timeout") from None
        except ssl.SSLError as exc:
            raise UpstreamConnectError(address, f"TLS handshake failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise UpstreamConnectError(address, exc.strerror or type(exc).__name__) from None
        if context is not None and identity is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            try:
                verify_peer_identity(ssl_object, identity)
            except IdentityMismatch as exc:
                self.identity_mismatches += 1
                transport.abort()
                log.warning("upstream_identity_mismatch", address=f"{host}:{port}", error=str(exc))
                raise UpstreamConnectError(address, str(exc)) from None
            if ssl_object.selected_alpn_protocol() != alpn:
                transport.abort()
                raise UpstreamConnectError(address, f"the peer did not agree to {alpn} (ALPN)")
        return transport, connected
