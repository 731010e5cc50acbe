"""The inbound listener: accept, look at the first bytes without consuming them, decide, then hand over.

* A TLS ClientHello whose SNI is this proxy's identity is a meshed peer: the proxy terminates TLS, requires
  a client certificate chaining to the trust anchors, and records the peer's identity; what follows is
  what the peer's ALPN says (or is detected, see :mod:`tether.proxy.detection`).
* Any other TLS is the application's own: the proxy never terminates it, it forwards it as opaque TCP.
* Plaintext from an unmeshed client is detected (HTTP/2, HTTP/1.1, else TCP) and accepted (``no_identity``)
  unless the policy requires an identity (``--inbound-policy all-authenticated``, or the port is in
  ``--require-identity-ports``); probe ports (``--probe-ports``) accept plaintext whatever the policy.
* On an opaque port the client may be one that waits for the server to speak first, so the proxy waits for
  a meshed peer's ClientHello only :data:`OPAQUE_TLS_GRACE` (a peer proxy sends it with its first packet),
  then relays.

The peek is ``MSG_PEEK``: the bytes stay in the socket for whoever reads it next (the TLS layer, detection).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import Callable, Collection, Sequence

import structlog

from tether.proxy.core.clienthello import (
    MAX_CLIENT_HELLO,
    ClientHello,
    Detection,
    NeedMore,
    NotTls,
    detect,
)
from tether.proxy.core.detect import Protocol
from tether.proxy.detection import Detector
from tether.proxy.tlsconfig import ALPN_TCP
from tether.proxy.tlsstream import TlsStream
from tether.proxy.transport import ListenerContext
from tether.shared.supervisor import SupervisedTask

log = structlog.get_logger(__name__)

DETECT_TIMEOUT = 10.0
#: How long a connection to an opaque port may stay silent before it is taken for a server-speaks-first
#: client (a peer proxy's ClientHello arrives with the first packet after the handshake).
OPAQUE_TLS_GRACE = 0.05
_PEEK_BYTES = MAX_CLIENT_HELLO + 9

ServerContext = Callable[[], ssl.SSLContext | None]


class InboundPolicy:
    """Which plaintext connections are refused: all of them, or those to the listed ports.

    The kubelet's probes are plaintext: a probe port accepts plaintext whatever the policy. Where the
    probes are HTTP and their paths are known (``--probe-paths``), that is all plaintext may do there:
    :meth:`probe_only_paths` names them for the inbound router, which refuses any other request, so a
    probed application port does not become open to every unauthenticated client.
    """

    def __init__(
        self,
        *,
        require_identity: bool,
        ports: Collection[int] = (),
        probe_ports: Collection[int] = (),
        probe_paths: Collection[tuple[int, bytes]] = (),
    ) -> None:
        self.require_identity = require_identity
        self.ports = frozenset(ports)
        paths: dict[int, set[bytes]] = {}
        for port, path in probe_paths:
            paths.setdefault(port, set()).add(path)
        self._probe_paths = {port: frozenset(found) for port, found in paths.items()}
        self.probe_ports = frozenset(probe_ports) | frozenset(self._probe_paths)

    def _refuses_plaintext(self, port: int) -> bool:
        return self.require_identity or port in self.ports

    def allows_plaintext(self, port: int) -> bool:
        return port in self.probe_ports or not self._refuses_plaintext(port)

    def probe_only_paths(self, port: int) -> frozenset[bytes] | None:
        """The only paths plaintext may GET or HEAD on ``port``; None when plaintext is not limited
        there (the policy allows it, or the port's probes are not HTTP probes with known paths)."""
        if not self._refuses_plaintext(port):
            return None
        return self._probe_paths.get(port)


class InboundAcceptor:
    def __init__(
        self,
        context: ListenerContext,
        listening: Sequence[socket.socket],
        *,
        spawn: Callable[..., SupervisedTask],
        local_identity: str | None,
        server_context: ServerContext,
        policy: InboundPolicy,
        original_port: Callable[[socket.socket], int],
        detector: Detector,
        detect_timeout: float = DETECT_TIMEOUT,
    ) -> None:
        self.context = context
        self._detector = detector
        #: One socket per address family (IPv4, and IPv6 where the pod has it).
        self._listening = list(listening)
        self._spawn = spawn
        self._local_identity = local_identity
        self._server_context = server_context
        self._policy = policy
        self._original_port = original_port
        self._detect_timeout = detect_timeout
        self._admitting: set[asyncio.Task[None]] = set()
        self._tasks: list[SupervisedTask] = []
        #: Connections refused before any request, by reason.
        self.refused: dict[str, int] = {}

    @property
    def port(self) -> int:
        return int(self._listening[0].getsockname()[1])

    def start(self) -> None:
        for listening in self._listening:
            family = "ipv6" if listening.family == socket.AF_INET6 else "ipv4"
            self._tasks.append(
                self._spawn(f"inbound-accept-{family}", functools.partial(self._accept_forever, listening))
            )

    async def stop(self) -> None:
        """Stop accepting (connections already admitted are the listener context's to drain)."""
        for task in self._tasks:
            await task.stop()
        for listening in self._listening:
            listening.close()
        for admitting in list(self._admitting):
            admitting.cancel()
        await asyncio.gather(*self._admitting, return_exceptions=True)

    async def _accept_forever(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listening)
            except OSError as exc:  # EMFILE and friends: back off a little rather than spin
                log.warning("inbound_accept_failed", error=exc.strerror or type(exc).__name__)
                await asyncio.sleep(0.1)
                continue
            sock.setblocking(False)
            if len(self._admitting) + len(self.context.connections) >= self.context.limits.max_connections:
                # Connections still being classified count too: idle sockets are the cheapest flood.
                self.context.refused_over_limit += 1
                sock.close()
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # One short task per connection, bounded by the detection and handshake timeouts.
            task = loop.create_task(self._admit(sock))
            self._admitting.add(task)
            task.add_done_callback(self._admitting.discard)

    def _refuse(self, sock: socket.socket, reason: str, **details: object) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        sock.close()
        dropped = self.context.log_throttle.admit(f"refused:{reason}", self.context.clock())
        if dropped is not None:
            if dropped:
                details["similar_lines_dropped"] = dropped
            log.info("inbound_connection_refused", reason=reason, **details)

    async def _admit(self, sock: socket.socket) -> None:
        try:
            peer = sock.getpeername()
        except OSError:
            sock.close()
            return
        port = self._original_port(sock)
        opaque = port in self._detector.opaque_ports
        verdict = await self._first_bytes(sock, OPAQUE_TLS_GRACE if opaque else self._detect_timeout)
        loop = asyncio.get_running_loop()
        detector = self._detector
        if isinstance(verdict, ClientHello) and verdict.server_name == self._local_identity:
            context = self._server_context()
            if context is None:
                self._refuse(sock, "no_certificate", peer=str(peer[0]))
                return
            if verdict.alpn == (ALPN_TCP,):
                await self._accept_mesh_tcp(sock, context, str(peer[0]))
                return
            try:
                await loop.connect_accepted_socket(
                    detector.protocol,
                    sock,
                    ssl=context,
                    ssl_handshake_timeout=self.context.limits.handshake_timeout,
                )
            except (ssl.SSLError, OSError, TimeoutError) as exc:
                reason = getattr(exc, "reason", None) or type(exc).__name__
                self._refuse(sock, "tls_handshake_failed", peer=str(peer[0]), error=str(reason)[:200])
            return
        if not self._policy.allows_plaintext(port):
            self._refuse(sock, "identity_required", peer=str(peer[0]), port=port)
            return
        # Not mesh TLS: the application's own TLS (or a malformed or partial ClientHello), something that
        # waits for the server, or plaintext to detect. Only plaintext is worth looking into.
        known = None if isinstance(verdict, NotTls) and not opaque else Protocol.OPAQUE
        try:
            await loop.connect_accepted_socket(lambda: detector.protocol(known), sock)
        except OSError:
            sock.close()

    async def _accept_mesh_tcp(self, sock: socket.socket, context: ssl.SSLContext, peer: str) -> None:
        """A peer proxy's TCP stream: TLS over our own adapter, which can pass a half-close on."""
        loop = asyncio.get_running_loop()
        stream = TlsStream(
            context,
            self._detector.protocol(Protocol.OPAQUE),
            server_side=True,
            handshake_timeout=self.context.limits.handshake_timeout,
        )
        try:
            await loop.connect_accepted_socket(lambda: stream, sock)
            await stream.handshake
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self._refuse(sock, "tls_handshake_failed", peer=peer, error=str(reason)[:200])

    async def _first_bytes(self, sock: socket.socket, timeout: float) -> Detection | None:
        """A verdict on what the connection starts with; None if the client closed or sent nothing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = 0
        pause = 0.001
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return NeedMore(seen + 1) if seen else None
            if not await _readable(sock, remaining):
                continue
            try:
                data = sock.recv(_PEEK_BYTES, socket.MSG_PEEK)
            except BlockingIOError:
                continue
            except OSError:
                return None
            if not data:
                return None
            verdict = detect(data)
            if not isinstance(verdict, NeedMore):
                return verdict
            if len(data) == seen:
                # Still readable (nothing was consumed), so wait a moment for the rest to arrive.
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)
            seen = len(data)

    def render_metrics(self) -> str:
        lines = [
            "# HELP inbound_connections_refused_total Inbound connections refused before any request.",
            "# TYPE inbound_connections_refused_total counter",
            *(
                f'inbound_connections_refused_total{{reason="{r}"}} {n}'
                for r, n in sorted(self.refused.items())
            ),
        ]
        return "\n".join(lines) + "\n"


async def _readable(sock: socket.socket, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        async with asyncio.timeout(timeout):
            await ready
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(sock.fileno())
