"""The leader's writer: turns source changes into expected-revision writes and diff events.

Only the lease holder writes. It reconciles the keys a source reports as changed (and everything, on
taking the lease, once the source is synced, and every ``resync_interval``), writes with the revision it
last saw so a concurrent writer makes it re-read instead of overwriting, and publishes the diff event of
each write that landed. Deletions wait until the source is synced, so a new leader never clears good state
it simply has not relearnt yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
import structlog

from tether.destination.metrics import DestinationMetrics
from tether.destination.model import EndpointSet, decode_endpoint_set
from tether.destination.reconcile import Current, DesiredService, Put, Write, plan
from tether.destination.sources.base import Source
from tether.destination.state import EndpointStore
from tether.shared import subjects
from tether.shared.aio import wait_event
from tether.shared.backoff import Backoff
from tether.shared.bus import Bus, KeyValue
from tether.shared.errors import BusError, PermissionDenied, RevisionMismatch
from tether.shared.supervisor import SupervisedTask, TaskFactory

log = structlog.get_logger(__name__)

# Per-key retry delays after a failed write: a key that cannot be written costs a line and a request per
# backoff window, not five a second.
RETRY_BASE = 0.2
RETRY_CAP = 30.0

Spawn = Callable[[str, TaskFactory], SupervisedTask]


class RetrySchedule:
    """Keys whose write failed, each on its own backoff (pure: time passed in)."""

    def __init__(self, base: float = RETRY_BASE, cap: float = RETRY_CAP) -> None:
        self._base = base
        self._cap = cap
        self._backoffs: dict[str, Backoff] = {}
        self._due: dict[str, float] = {}

    def failed(self, key: str, now: float) -> float:
        """Schedule ``key`` again; returns the delay."""
        backoff = self._backoffs.setdefault(key, Backoff(self._base, self._cap))
        delay = backoff.next()
        self._due[key] = now + delay
        return delay

    def attempts(self, key: str) -> int:
        backoff = self._backoffs.get(key)
        return backoff.attempt if backoff is not None else 0

    def succeeded(self, key: str) -> None:
        self._backoffs.pop(key, None)
        self._due.pop(key, None)

    def waiting(self, key: str, now: float) -> bool:
        """Whether ``key`` is backing off until later than ``now``."""
        return self._due.get(key, now) > now

    def due(self, now: float) -> set[str]:
        """The keys whose retry time has come (they stay on their backoff until they succeed)."""
        keys = {key for key, at in self._due.items() if at <= now}
        for key in keys:
            del self._due[key]
        return keys

    def next_due(self) -> float | None:
        return min(self._due.values(), default=None)

    def clear(self) -> None:
        self._backoffs.clear()
        self._due.clear()


class Writer:
    def __init__(
        self,
        bus: Bus,
        kv: KeyValue,
        store: EndpointStore,
        source: Source,
        metrics: DestinationMetrics,
        instance: str,
        watch_synced: asyncio.Event,
        resync_interval: float = 60.0,
    ) -> None:
        self._bus = bus
        self._kv = kv
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
        self._retries = RetrySchedule()
        self._task: SupervisedTask | None = None
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
            self._retries.clear()
        self._wake.set()

    def start(self, spawn: Spawn) -> None:
        self._task = spawn("writer", self._run)

    async def stop(self) -> None:
        if self._task is not None:
            await self._task.stop()
        self._task = None

    async def _run(self) -> None:
        last_resync = time.monotonic()
        while True:
            now = time.monotonic()
            wake_at = last_resync + self._resync_interval
            retry_at = self._retries.next_due()
            if retry_at is not None:
                wake_at = min(wake_at, retry_at)
            await wait_event(self._wake, max(0.0, wake_at - now))
            self._wake.clear()
            now = time.monotonic()
            self._dirty |= self._retries.due(now)
            if now - last_resync >= self._resync_interval:
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
            # A key backing off waits for its turn; its due time wakes this loop.
            later = {key for key in keys if self._retries.waiting(key, now)}
            keys -= later
            self._dirty = set()
            if not keys:
                if not later and self._retries.next_due() is None:
                    self.idle.set()
                continue
            failed = await self._reconcile(keys)
            now = time.monotonic()
            for key in keys - failed:
                self._retries.succeeded(key)
            for key in failed:
                delay = self._retries.failed(key, now)
                self._metrics.write_retries.inc()
                log.debug("endpoint_write_retry_scheduled", key=key, retry_in=round(delay, 3))
            if not failed and not self._dirty and self._retries.next_due() is None:
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
                problem = _invalid(value)
                if problem is not None:
                    # Every reader would reject it: keep the last good value rather than write garbage.
                    self._metrics.writes.labels("invalid").inc()
                    log.error(
                        "endpoint_value_invalid", key=key, error=problem[:300], keeping="last good value"
                    )
                    return True
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
            await self._refresh_or_retry(key)
            return False
        except PermissionDenied:
            raise  # not transient: the replica cannot do its job, and exits
        except (BusError, TimeoutError) as exc:
            self._metrics.writes.labels("error").inc()
            log.warning(
                "endpoint_write_failed",
                key=key,
                error=str(exc)[:300],
                attempts=self._retries.attempts(key) + 1,
            )
            await self._refresh_or_retry(key)
            return False
        self._metrics.writes.labels("written").inc()
        event = write.event
        try:
            await self._bus.publish(subjects.endpoints(event.namespace, event.service), event)
        except (BusError, ValueError) as exc:
            log.warning("endpoint_event_publish_failed", key=key, error=str(exc)[:300])
        return True

    async def _refresh_or_retry(self, key: str) -> None:
        """Re-read the key after a failed write; if that fails too, the key's next retry re-reads it."""
        try:
            await self._refresh(key)
        except PermissionDenied:
            raise
        except (BusError, TimeoutError) as exc:
            log.warning("endpoint_reread_failed", key=key, error=str(exc)[:300])

    async def _refresh(self, key: str) -> None:
        """After a conflict: learn the key's real latest revision (the watch may skip undecodable values)."""
        revision, data = await self._kv.latest(key)
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
    return msgspec.structs.replace(value, written_at=round(time.time(), 6))


def _invalid(value: EndpointSet) -> str | None:
    """Why readers would reject ``value`` (it is decoded with every constraint), or None."""
    try:
        decode_endpoint_set(msgspec.json.encode(value))
    except msgspec.DecodeError as exc:
        return str(exc)
    return None
