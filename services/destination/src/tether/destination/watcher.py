"""The replica's single key-value watch: bucket changes in, served state and stream wake-ups out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
import structlog

from tether.destination.metrics import DestinationMetrics
from tether.destination.state import Applied, EndpointStore, Rejected, SubscriptionRegistry
from tether.shared.bus import KeyValue, Synced
from tether.shared.supervisor import SupervisedTask, TaskFactory

log = structlog.get_logger(__name__)


class EndpointWatcher:
    """Feeds every entry of the bucket, in revision order, into the store and the subscription registry."""

    def __init__(
        self,
        kv: KeyValue,
        store: EndpointStore,
        registry: SubscriptionRegistry,
        metrics: DestinationMetrics,
    ) -> None:
        self._kv = kv
        self._store = store
        self._registry = registry
        self._metrics = metrics
        self.on_applied: Callable[[str], None] | None = None
        self.on_rejected: Callable[[str], None] | None = None
        self.synced = asyncio.Event()
        self._task: SupervisedTask | None = None

    def start(self, spawn: Callable[[str, TaskFactory], SupervisedTask]) -> None:
        self._task = spawn("endpoint-watch", self._run)

    async def stop(self) -> None:
        if self._task is not None:
            await self._task.stop()
        self._task = None

    async def _run(self) -> None:
        watch = self._kv.watch(msgspec.Raw)
        try:
            async for item in watch:
                if isinstance(item, Synced):
                    log.info("endpoint_watch_synced", services=len(self._store))
                    self.synced.set()
                    continue
                data = bytes(item.value) if item.value is not None else None
                self.apply(item.key, item.revision, data)
        finally:
            await watch.aclose()

    def apply(self, key: str, revision: int, data: bytes | None) -> None:
        result = self._store.apply(key, revision, data)
        if isinstance(result, Rejected):
            self._metrics.watch_rejected.inc()
            log.error(
                "endpoint_value_rejected",
                key=key[:300],
                revision=revision,
                error=result.reason[:300],
                serving="previous good set",
            )
            if self.on_rejected is not None:
                self.on_rejected(key)
            return
        if not isinstance(result, Applied):
            return
        if result.value is not None and result.value.written_at and self.synced.is_set():
            self._metrics.watch_lag.observe(max(0.0, time.time() - result.value.written_at))
        self._registry.publish(key, result.addresses)
        if self.on_applied is not None:
            self.on_applied(key)
