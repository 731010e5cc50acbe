"""The asyncio side of leader election: reads and writes the lease key as ``LeaseCore`` decides."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
import structlog

from tether.destination.lease import Acquire, LeaseCore, Renew
from tether.shared.bus import KeyValue
from tether.shared.errors import BusError, PermissionDenied, RevisionMismatch
from tether.shared.events import LeaseRecord
from tether.shared.supervisor import SupervisedTask, TaskFactory

log = structlog.get_logger(__name__)

LEASE_KEY = "destination-writer"
RELEASE_TIMEOUT = 0.5

Spawn = Callable[[str, TaskFactory], SupervisedTask]


class LeaseKeeper:
    def __init__(
        self,
        kv: KeyValue,
        me: str,
        ttl: float,
        on_change: Callable[[bool], None],
    ) -> None:
        self._kv = kv
        self.core = LeaseCore(me, ttl)
        self._on_change = on_change
        self._leader = False
        self._task: SupervisedTask | None = None
        self._poll = max(0.05, ttl / 6)
        self._log = log.bind(lease=LEASE_KEY, me=me)

    @property
    def is_leader(self) -> bool:
        return self.core.is_leader(time.monotonic())

    def start(self, spawn: Spawn) -> None:
        self._task = spawn("lease", self._run)

    async def stop(self, release: bool = True) -> None:
        if self._task is not None:
            await self._task.stop()
        self._task = None
        if release and self._leader:
            await self._release()
        self._set_leader(False)

    async def _release(self) -> None:
        held = self.core.is_leader(time.monotonic())
        self.core.released()
        if not held:
            return
        try:
            # Bounded: with NATS down the release cannot land, and shutdown must not wait on it (the lease
            # then expires after its ttl, as a crashed holder's would).
            async with asyncio.timeout(RELEASE_TIMEOUT):
                revision, _ = await self._kv.latest(LEASE_KEY)
                record = LeaseRecord(holder="", ttl_seconds=self.core.ttl)
                await self._kv.put(LEASE_KEY, record, expected_revision=revision)
            self._log.info("lease_released")
        except (BusError, TimeoutError) as exc:
            self._log.warning("lease_release_failed", error=str(exc) or "timed out")

    def _set_leader(self, leader: bool) -> None:
        if leader != self._leader:
            self._leader = leader
            self._log.info("lease_acquired" if leader else "lease_lost")
            self._on_change(leader)

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except PermissionDenied:
                self._set_leader(False)
                raise  # this replica may not hold the lease at all: it exits rather than retry forever
            except (BusError, TimeoutError) as exc:
                self._log.warning("lease_step_failed", error=str(exc)[:300])
            self._set_leader(self.core.is_leader(time.monotonic()))
            await asyncio.sleep(self._poll)

    async def _step(self) -> None:
        revision, data = await self._kv.latest(LEASE_KEY)
        holder = ""
        if data is not None:
            try:
                holder = msgspec.json.decode(data, type=LeaseRecord).holder
            except msgspec.DecodeError:
                holder = "?"  # unreadable: treat as held by someone else until it goes stale
        now = time.monotonic()
        self.core.observe(revision or None, holder, now)
        action = self.core.next_action(now)
        if not isinstance(action, Acquire | Renew):
            return
        sent_at = time.monotonic()
        expected = action.expected_revision or revision
        try:
            written = await self._kv.put(
                LEASE_KEY,
                LeaseRecord(holder=self.core.me, ttl_seconds=self.core.ttl),
                expected_revision=expected,
            )
        except RevisionMismatch:
            self.core.conflicted()
            return
        self.core.written(written, sent_at)
