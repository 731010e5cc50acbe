"""The leader's writer: turns source changes into expected-revision writes and diff events.

Only the lease holder writes. It reconciles the keys a source reports as changed (and everything, on
taking the lease, once the source is synced, and every ``resync_interval``), writes with the revision it
last saw so a concurrent writer makes it re-read instead of overwriting, and publishes the diff event of
each write that landed. Deletions wait until the source is synced, so a new leader never clears good state
it simply has not relearnt yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from tether.destination.lease_keeper import latest_revision
from tether.destination.metrics import DestinationMetrics
from tether.destination.model import EndpointSet, decode_endpoint_set
from tether.destination.reconcile import Current, DesiredService, Put, Write, plan
from tether.destination.sources.base import Source
from tether.destination.state import EndpointStore
from tether.shared import subjects
from tether.shared.aio import cancel_and_wait, wait_event
from tether.shared.bus import Bus, KeyValue
from tether.shared.errors import BusError, RevisionMismatch

log = structlog.get_logger(__name__)

RETRY_DELAY = 0.2


class Writer:
    def __init__(
        self,
        bus: Bus,
        kv: KeyValue,
        raw_kv: Any,
        store: EndpointStore,
        source: Source,
        metrics: DestinationMetrics,
        instance: str,
        watch_synced: asyncio.Event,
        resync_interval: float = 60.0,
    ) -> None:
        self._bus = bus
        self._kv = kv
        self._raw_kv = raw_kv
        self._store = store
        self._source = source
        self._metrics = metrics
        self._instance = instance
        self._watch_synced = watch_synced
        self._resync_interval = resync_interval
        self._dirty: set[str] = set()
        self._full_resync = True
        self._leader = False
        self._wake = asyncio.Event()
        self._written: dict[str, Current] = {}
        self._generations: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()

    def mark_dirty(self, keys: set[str]) -> None:
        self._dirty |= keys
        self.idle.clear()
        self._wake.set()

    def leadership_changed(self, leader: bool) -> None:
        self._leader = leader
        self._metrics.leader.set(1 if leader else 0)
        if leader:
            changed = self._source.on_leadership(
                [s.value for s in self._store.items().values()], time.monotonic()
            )
            self._dirty |= changed
            self._full_resync = True
            self._written.clear()
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="writer")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        last_resync = time.monotonic()
        while True:
            timeout = max(0.0, last_resync + self._resync_interval - time.monotonic())
            await wait_event(self._wake, timeout)
            self._wake.clear()
            if time.monotonic() - last_resync >= self._resync_interval:
                self._full_resync = True
            if not self._leader:
                continue
            if not self._watch_synced.is_set():
                # What the bucket holds decides what to write: wait for the watch's initial values. Nothing
                # else wakes this loop when they arrive, so wait here rather than skipping the round.
                await self._watch_synced.wait()
            if self._full_resync and not self._source.synced:
                continue  # wait for the source; the source's first sync wakes us again
            if self._full_resync:
                keys = self._source.keys() | set(self._store.items()) | self._dirty
                self._full_resync = False
                last_resync = time.monotonic()
            else:
                keys = self._dirty
            self._dirty = set()
            if not keys:
                self.idle.set()
                continue
            retry = await self._reconcile(keys)
            if retry:
                self._dirty |= retry
                await asyncio.sleep(RETRY_DELAY)
                self._wake.set()
            elif not self._dirty:
                self.idle.set()

    def _current(self, key: str) -> Current | None:
        """What this writer believes the bucket holds for ``key`` (its own writes win until the watch
        catches up)."""
        latest = self._store.revision(key) or 0
        written = self._written.get(key)
        if written is not None and written.revision >= latest:
            return written
        generation = self._generations.get(key, 0)
        if self._store.is_deleted(key):
            return Current(revision=latest, value=None, generation=generation, deleted=True)
        stored = self._store.items().get(key)
        if stored is None:
            return None if latest == 0 else Current(revision=latest, value=None, generation=generation)
        generation = max(generation, stored.value.generation)
        if stored.revision < latest:  # the latest value is garbage: rewrite it
            return Current(revision=latest, value=None, generation=generation)
        return Current(revision=stored.revision, value=stored.value, generation=generation)

    async def _reconcile(self, keys: set[str]) -> set[str]:
        desired: dict[str, DesiredService] = {}
        current: dict[str, Current] = {}
        synced = self._source.synced
        for key in keys:
            want = self._source.desired(key)
            if want is not None:
                desired[key] = want
            have = self._current(key)
            if have is not None and (want is not None or synced):
                current[key] = have  # never delete before the source has a complete picture
        retry: set[str] = set()
        for write in plan(desired, current, self._instance, keys):
            if not self._leader:
                retry.add(write.key)
                continue
            if not await self._apply(write):
                retry.add(write.key)
        return retry

    async def _apply(self, write: Write) -> bool:
        key = write.key
        try:
            if isinstance(write, Put):
                expected = write.expected_revision
                if expected is None:
                    expected = self._store.revision(key) or 0
                value = _stamped(write.value)
                revision = await self._kv.put(key, value, expected_revision=expected)
                self._written[key] = Current(revision=revision, value=value, generation=value.generation)
                self._generations[key] = value.generation
            else:
                await self._kv.delete(key, expected_revision=write.expected_revision)
                self._generations[key] = write.event.generation
                # The deletion's revision is unknown here; the watch or a conflict's re-read supplies it.
                self._written.pop(key, None)
        except RevisionMismatch:
            self._metrics.writes.labels("conflict").inc()
            await self._refresh(key)
            return False
        except (BusError, TimeoutError) as exc:
            self._metrics.writes.labels("error").inc()
            log.warning("endpoint_write_failed", key=key, error=str(exc)[:300])
            with contextlib.suppress(BusError, TimeoutError):
                await self._refresh(key)
            return False
        self._metrics.writes.labels("written").inc()
        event = write.event
        try:
            await self._bus.publish(subjects.endpoints(event.namespace, event.service), event)
        except (BusError, ValueError) as exc:
            log.warning("endpoint_event_publish_failed", key=key, error=str(exc)[:300])
        return True

    async def _refresh(self, key: str) -> None:
        """After a conflict: learn the key's real latest revision (the watch may skip undecodable values)."""
        revision, data = await latest_revision(self._raw_kv, key)
        value: EndpointSet | None = None
        if data is not None:
            try:
                value = decode_endpoint_set(data)
            except ValueError:
                value = None
        generation = max(self._generations.get(key, 0), value.generation if value else 0)
        self._generations[key] = generation
        if revision == 0:
            self._written.pop(key, None)
        else:
            self._written[key] = Current(
                revision=revision, value=value, generation=generation, deleted=data is None
            )


def _stamped(value: EndpointSet) -> EndpointSet:
    import msgspec

    return msgspec.structs.replace(value, written_at=round(time.time(), 6))
