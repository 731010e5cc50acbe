"""The inbound listener: accept, look at the first bytes without consuming them, decide, then hand over.

* A TLS ClientHello whose SNI is this proxy's identity is a meshed peer: the proxy terminates TLS, requires
  a client certificate chaining to the trust anchors, and records the peer's identity.
* Any other TLS is the application's own: the proxy never terminates it (opaque forwarding comes with the
  protocols work), so it is refused and counted.
* Plaintext from an unmeshed client is accepted (``no_identity``) unless the policy requires an identity
  (``--inbound-policy all-authenticated``, or the port is in ``--require-identity-ports``).

The peek is ``MSG_PEEK``: the bytes stay in the socket for whoever reads it next (the TLS layer or h2).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Collection

import structlog

from tether.proxy.core.clienthello import (
    MAX_CLIENT_HELLO,
    ClientHello,
    Detection,
    Malformed,
    NeedMore,
    NotTls,
    detect,
)
from tether.proxy.transport import DownstreamProtocol, ListenerContext
from tether.shared.supervisor import SupervisedTask

log = structlog.get_logger(__name__)

DETECT_TIMEOUT = 10.0
_PEEK_BYTES = MAX_CLIENT_HELLO + 9

ServerContext = Callable[[], ssl.SSLContext | None]


class InboundPolicy:
    """Which plaintext connections are refused: all of them, or those to the listed ports."""

    def __init__(self, *, require_identity: bool, ports: Collection[int] = ()) -> None:
        self.require_identity = require_identity
        self.ports = frozenset(ports)

    def allows_plaintext(self, port: int) -> bool:
        return not self.require_identity and port not in self.ports


class InboundAcceptor:
    def __init__(
        self,
        context: ListenerContext,
        listening: socket.socket,
        *,
        spawn: Callable[..., SupervisedTask],
        local_identity: str | None,
        server_context: ServerContext,
        policy: InboundPolicy,
        original_port: Callable[[socket.socket], int],
        detect_timeout: float = DETECT_TIMEOUT,
    ) -> None:
        self.context = context
        self._listening = listening
        self._spawn = spawn
        self._local_identity = local_identity
        self._server_context = server_context
        self._policy = policy
        self._original_port = original_port
        self._detect_timeout = detect_timeout
        self._admitting: set[asyncio.Task[None]] = set()
        self._task: SupervisedTask | None = None
        #: Connections refused before any request, by reason.
        self.refused: dict[str, int] = {}

    @property
    def port(self) -> int:
        return int(self._listening.getsockname()[1])

    def start(self) -> None:
        self._task = self._spawn("inbound-accept", self._accept_forever)

    async def stop(self) -> None:
        """Stop accepting (connections already admitted are the listener context's to drain)."""
        if self._task is not None:
            await self._task.stop()
        self._listening.close()
        for task in list(self._admitting):
            task.cancel()
        await asyncio.gather(*self._admitting, return_exceptions=True)

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(self._listening)
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
        verdict = await self._first_bytes(sock)
        loop = asyncio.get_running_loop()
        factory = lambda: DownstreamProtocol(self.context)  # noqa: E731
        if isinstance(verdict, ClientHello):
            if self._local_identity is None or verdict.server_name != self._local_identity:
                self._refuse(sock, "foreign_tls", peer=str(peer[0]), server_name=verdict.server_name[:253])
                return
            context = self._server_context()
            if context is None:
                self._refuse(sock, "no_certificate", peer=str(peer[0]))
                return
            try:
                await loop.connect_accepted_socket(
                    factory, sock, ssl=context, ssl_handshake_timeout=self.context.limits.handshake_timeout
                )
            except (ssl.SSLError, OSError, TimeoutError) as exc:
                reason = getattr(exc, "reason", None) or type(exc).__name__
                self._refuse(sock, "tls_handshake_failed", peer=str(peer[0]), error=str(reason)[:200])
            return
        if isinstance(verdict, NotTls):
            port = self._original_port(sock)
            if not self._policy.allows_plaintext(port):
                self._refuse(sock, "identity_required", peer=str(peer[0]), port=port)
                return
            try:
                await loop.connect_accepted_socket(factory, sock)
            except OSError:
                sock.close()
            return
        if isinstance(verdict, Malformed):
            self._refuse(sock, "malformed_tls", peer=str(peer[0]), error=verdict.reason)
            return
        self._refuse(sock, "no_data" if verdict is None else "incomplete_client_hello", peer=str(peer[0]))

    async def _first_bytes(self, sock: socket.socket) -> Detection | None:
        """A verdict on what the connection starts with; None if the client closed or sent nothing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._detect_timeout
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
