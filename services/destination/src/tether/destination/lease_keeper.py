"""The asyncio side of leader election: reads and writes the lease key as ``LeaseCore`` decides."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import structlog

from tether.destination.lease import Acquire, LeaseCore, Renew
from tether.shared.aio import cancel_and_wait
from tether.shared.bus import KeyValue
from tether.shared.errors import BusError, RevisionMismatch
from tether.shared.events import LeaseRecord

log = structlog.get_logger(__name__)

LEASE_KEY = "destination-writer"


async def latest_revision(raw_kv: Any, key: str) -> tuple[int, bytes | None]:
    """The key's latest revision (deletions included, 0 when never written) and its value."""
    try:
        entry = await raw_kv.get(key)
    except nats.js.errors.KeyNotFoundError as exc:
        entry = getattr(exc, "entry", None)
        return (int(entry.revision) if entry is not None and entry.revision else 0), None
    except (nats.errors.Error, TimeoutError) as exc:
        raise BusError(f"get {key} failed: {exc}") from exc
    return int(entry.revision or 0), entry.value


class LeaseKeeper:
    def __init__(
        self,
        kv: KeyValue,
        raw_kv: Any,
        me: str,
        ttl: float,
        on_change: Callable[[bool], None],
    ) -> None:
        self._kv = kv
        self._raw_kv = raw_kv
        self.core = LeaseCore(me, ttl)
        self._on_change = on_change
        self._leader = False
        self._task: asyncio.Task[None] | None = None
        self._poll = max(0.05, ttl / 6)
        self._log = log.bind(lease=LEASE_KEY, me=me)

    @property
    def is_leader(self) -> bool:
        return self.core.is_leader(time.monotonic())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lease")

    async def stop(self, release: bool = True) -> None:
        await cancel_and_wait(self._task)
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
            revision, _ = await latest_revision(self._raw_kv, LEASE_KEY)
            record = LeaseRecord(holder="", ttl_seconds=self.core.ttl)
            await self._kv.put(LEASE_KEY, record, expected_revision=revision)
            self._log.info("lease_released")
        except (BusError, TimeoutError) as exc:
            self._log.warning("lease_release_failed", error=str(exc))

    def _set_leader(self, leader: bool) -> None:
        if leader != self._leader:
            self._leader = leader
            self._log.info("lease_acquired" if leader else "lease_lost")
            self._on_change(leader)

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except (BusError, TimeoutError) as exc:
                self._log.warning("lease_step_failed", error=str(exc)[:300])
            self._set_leader(self.core.is_leader(time.monotonic()))
            await asyncio.sleep(self._poll)

    async def _step(self) -> None:
        revision, data = await latest_revision(self._raw_kv, LEASE_KEY)
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
