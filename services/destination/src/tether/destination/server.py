"""The Destination gRPC service (grpc.aio): one handler task per Get stream, fed by the registry.

Each stream holds at most one pending ``Resolution`` (the latest) plus a wake-up flag, so a stream whose
client reads slowly coalesces changes instead of queueing them, and never holds up the watch or the other
streams. Streams that stay idle for ``keepalive_interval`` get an empty ``add``.
"""

from __future__ import annotations

import asyncio
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
        try:
            async for update in self._serve(authority, pending):
                yield update
        finally:
            self._open.discard(pending)
            self._metrics.streams_open.dec()
            remaining = self._streams_by_peer.get(peer, 1) - 1
            if remaining > 0:
                self._streams_by_peer[peer] = remaining
            else:
                self._streams_by_peer.pop(peer, None)
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_MESSAGE)

    async def _serve(self, authority: Authority | None, pending: _Pending) -> AsyncIterator[pb.Update]:
        core = StreamCore()
        if isinstance(authority, ServiceAuthority):
            pending.offer(self._registry.subscribe(authority.key, authority.port, pending.offer))
        elif isinstance(authority, AddressAuthority):
            pending.offer(self._registry.subscribe_address(authority.ip, authority.port, pending.offer))
        else:
            pending.offer(NOT_IN_MESH)
        updates_sent = self._metrics.updates_sent
        try:
            while not self._draining:
                if not await wait_event(pending.wake, self._keepalive):
                    updates_sent.labels("keepalive").inc()
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
        finally:
            if isinstance(authority, ServiceAuthority):
                self._registry.unsubscribe(authority.key, authority.port, pending.offer)
            elif isinstance(authority, AddressAuthority):
                self._registry.unsubscribe_address(authority.ip, authority.port, pending.offer)
