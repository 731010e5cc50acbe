"""The Destination gRPC service (grpc.aio): one handler task per Get stream, fed by the registry.

Each stream holds at most one pending ``Resolution`` (the latest) plus a wake-up flag, so a stream whose
client reads slowly coalesces changes instead of queueing them, and never holds up the watch or the other
streams. Streams that stay idle for ``keepalive_interval`` get an empty ``add``.

``max_stream_age`` (:mod:`tether.shared.streamage`): every stream of one client connection (one peer
address and port) ends with status OK at that connection's jittered deadline, counted from its first
stream, so a proxy's streams end together and it reconnects them all on one new connection, which may land
on another replica. A stream ends only after it sent its first message.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog

from tether.destination import wire
from tether.destination.authority import AddressAuthority, Authority, ServiceAuthority, parse_authority
from tether.destination.errors import InvalidRequest
from tether.destination.metrics import DestinationMetrics
from tether.destination.state import SubscriptionRegistry
from tether.destination.view import NOT_IN_MESH, Resolution, StreamCore
from tether.shared.aio import wait_event
from tether.shared.proto.destination.v1 import destination_pb2 as pb
from tether.shared.proto.destination.v1 import destination_pb2_grpc
from tether.shared.streamage import stream_deadline

log = structlog.get_logger(__name__)

# gRPC core cancels calls that arrive faster than grpc.aio accepts them once more than 1,000 are pending
# (3,000 hard); thousands of proxies reconnecting at once after a failover would hit that.
GRPC_SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
]

SHUTDOWN_MESSAGE = "destination replica shutting down; reconnect to another replica"


class _Pending:
    """A stream's one-slot mailbox: the latest state wins."""

    __slots__ = ("latest", "wake")

    def __init__(self) -> None:
        self.latest: Resolution | None = None
        self.wake = asyncio.Event()

    def offer(self, resolution: Resolution) -> None:
        self.latest = resolution
        self.wake.set()

    def take(self) -> Resolution | None:
        latest, self.latest = self.latest, None
        self.wake.clear()
        return latest


def peer_host(peer: str) -> str:
    """``ipv4:10.0.0.1:5555`` → ``10.0.0.1``; ``ipv6:[::1]:5555`` → ``::1``; anything else unchanged."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0] or rest
        return host.strip("[]")
    return peer


class _ConnectionAge:
    """The streams of one client connection and when they all end."""

    __slots__ = ("deadline", "streams")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.streams = 0


class DestinationServicer(destination_pb2_grpc.DestinationServicer):
    def __init__(
        self,
        registry: SubscriptionRegistry,
        metrics: DestinationMetrics,
        synced: asyncio.Event,
        keepalive_interval: float,
        max_streams_per_peer: int,
        cluster_domain: str = "cluster.local",
        sync_wait: float = 5.0,
        max_stream_age: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._synced = synced
        self._keepalive = keepalive_interval
        self._max_per_peer = max_streams_per_peer
        self._cluster_domain = cluster_domain
        self._sync_wait = sync_wait
        self._streams_by_peer: dict[str, int] = {}
        self._open: set[_Pending] = set()
        self._draining = False
        self._max_age = max_stream_age
        self._rng = rng or random.Random()
        self._connections: dict[str, _ConnectionAge] = {}

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def drain(self) -> None:
        """Ends every stream with UNAVAILABLE (clients reconnect elsewhere) and refuses new ones."""
        self._draining = True
        for pending in list(self._open):
            pending.wake.set()

    async def Get(
        self, request: pb.GetDestination, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Update]:
        try:
            authority = parse_authority(request.authority, request.context_token, self._cluster_domain)
        except InvalidRequest as exc:
            self._metrics.streams_rejected.labels("invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        if self._draining:
            self._metrics.streams_rejected.labels("draining").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_MESSAGE)
            return
        peer = peer_host(context.peer())
        if self._streams_by_peer.get(peer, 0) >= self._max_per_peer:
            self._metrics.streams_rejected.labels("peer_limit").inc()
            log.warning("stream_refused_peer_limit", peer=peer, limit=self._max_per_peer)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"at most {self._max_per_peer} concurrent streams per peer",
            )
            return
        if not self._synced.is_set():
            await wait_event(self._synced, self._sync_wait)
        self._streams_by_peer[peer] = self._streams_by_peer.get(peer, 0) + 1
        pending = _Pending()
        self._open.add(pending)
        self._metrics.streams_open.inc()
        connection_key = context.peer()
        connection = self._connections.get(connection_key)
        if connection is None:
            loop_now = asyncio.get_running_loop().time()
            connection = _ConnectionAge(stream_deadline(loop_now, self._max_age, self._rng))
            self._connections[connection_key] = connection
        connection.streams += 1
        try:
            async for update in self._serve(authority, pending, connection.deadline):
                yield update
        finally:
            connection.streams -= 1
            if connection.streams <= 0 and self._connections.get(connection_key) is connection:
                del self._connections[connection_key]
            self._open.discard(pending)
            self._metrics.streams_open.dec()
            remaining = self._streams_by_peer.get(peer, 1) - 1
            if remaining > 0:
                self._streams_by_peer[peer] = remaining
            else:
                self._streams_by_peer.pop(peer, None)
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_MESSAGE)

    async def _serve(
        self, authority: Authority | None, pending: _Pending, deadline: float = math.inf
    ) -> AsyncIterator[pb.Update]:
        core = StreamCore()
        if isinstance(authority, ServiceAuthority):
            pending.offer(self._registry.subscribe(authority.key, authority.port, pending.offer))
        elif isinstance(authority, AddressAuthority):
            pending.offer(self._registry.subscribe_address(authority.ip, authority.port, pending.offer))
        else:
            pending.offer(NOT_IN_MESH)
        updates_sent = self._metrics.updates_sent
        loop = asyncio.get_running_loop()
        sent_first = False
        idle_since = loop.time()
        try:
            while not self._draining:
                now = loop.time()
                if sent_first and now >= deadline:
                    # The client reconnects at once, on a new connection (see the module docstring).
                    self._metrics.streams_expired.inc()
                    return
                keepalive_at = idle_since + self._keepalive
                until = min(keepalive_at, deadline) if sent_first else keepalive_at
                if not await wait_event(pending.wake, max(0.0, until - now)):
                    if loop.time() < keepalive_at:
                        continue  # woken for the deadline
                    updates_sent.labels("keepalive").inc()
                    idle_since = loop.time()
                    yield wire.KEEPALIVE
                    continue
                if self._draining:
                    break
                resolution = pending.take()
                if resolution is None:
                    continue
                for frame in core.frames(resolution):
                    updates_sent.labels(wire.frame_kind(frame)).inc()
                    yield wire.to_update(frame)
                    sent_first = True
                    idle_since = loop.time()
        finally:
            if isinstance(authority, ServiceAuthority):
                self._registry.unsubscribe(authority.key, authority.port, pending.offer)
            elif isinstance(authority, AddressAuthority):
                self._registry.unsubscribe_address(authority.ip, authority.port, pending.offer)
