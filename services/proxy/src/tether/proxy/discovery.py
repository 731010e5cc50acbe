"""Destination/Get client: one shared stream per authority, cached and evicted when idle.

Every request for an authority uses the same :class:`Resolution`. While the
destination service is unreachable the last known endpoints stay in use; the
stream is reopened with jittered backoff, and the first message on a reopened
stream replaces what was known (the server sends the full set first). A stream
the service ended cleanly after serving it (its maximum age) is reopened at once,
the last known endpoints in use meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, Callable

import structlog

from tether.proxy.core.resolution import NoEndpoints, Resolution, Update
from tether.proxy.errors import AuthorityLimitError, GrpcCallError
from tether.proxy.origdst import Address
from tether.shared.backoff import backoff_delay
from tether.shared.supervisor import SupervisedTask, TaskFactory

log = structlog.get_logger(__name__)

INVALID_ARGUMENT = 3
#: Distinct authorities resolved at once unless told otherwise.
DEFAULT_MAX_AUTHORITIES = 1000

#: Opens a Get stream for an authority and yields its updates.
StreamOpener = Callable[[str], AsyncGenerator[Update, None]]
#: Starts a long-lived task under the process supervisor.
Spawn = Callable[..., SupervisedTask]


class _Watch:
    __slots__ = ("authority", "changed", "last_used", "resolution", "task", "waiters")

    def __init__(self, authority: str, now: float, rng: random.Random) -> None:
        self.authority = authority
        self.resolution = Resolution(authority, rng)
        self.changed = asyncio.Event()
        self.last_used = now
        self.waiters = 0
        self.task: SupervisedTask | None = None


class DestinationClient:
    """Resolves authorities through the destination service."""

    def __init__(
        self,
        open_stream: StreamOpener,
        *,
        spawn: Spawn,
        on_removed: Callable[[list[Address]], None] = lambda _addresses: None,
        rng: random.Random | None = None,
        backoff_base: float = 0.1,
        backoff_cap: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_authorities: int = DEFAULT_MAX_AUTHORITIES,
    ) -> None:
        self._open_stream = open_stream
        self._spawn = spawn
        self.max_authorities = max_authorities
        #: Lookups of new authorities refused because ``max_authorities`` were being resolved.
        self.rejected = 0
        self._at_limit = False
        self._on_removed = on_removed
        self._rng = rng or random.Random()
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._clock = clock
        self._watches: dict[bytes, _Watch] = {}
        self._closed = False

    def resolve(self, authority: bytes, now: float) -> Resolution:
        """The shared resolution of ``authority``, opening its stream on first use.

        Raises AuthorityLimitError for a new authority while ``max_authorities`` are
        being resolved: each costs a stream to the destination service, and clients
        inventing names must not grow that without bound. Known ones keep working.
        """
        watch = self._watches.get(authority)
        if watch is None:
            watch = self._start(authority, now)
        watch.last_used = now
        return watch.resolution

    def _start(self, authority: bytes, now: float) -> _Watch:
        if len(self._watches) >= self.max_authorities:
            self.rejected += 1
            if not self._at_limit:
                # Logged once per episode: a flood of invented names must not flood the log too.
                self._at_limit = True
                log.warning(
                    "authority_limit_reached",
                    limit=self.max_authorities,
                    authority=authority.decode("utf-8", "replace")[:256],
                )
            raise AuthorityLimitError(self.max_authorities)
        if self._at_limit:
            self._at_limit = False
            log.info("authority_limit_cleared", limit=self.max_authorities, rejected_total=self.rejected)
        text = authority.decode("utf-8", "replace")
        watch = self._watches[authority] = _Watch(text, now, self._rng)
        if not self._closed:
            factory: TaskFactory = lambda: self._follow(watch)  # noqa: E731
            # Not critical: one authority's stream failing must not take the proxy down; it is restarted.
            watch.task = self._spawn(f"destination-get:{text[:200]}", factory, critical=False)
        return watch

    async def wait_usable(self, authority: bytes, timeout: float) -> Resolution | None:
        """Wait up to ``timeout`` seconds for the authority to have a route; None if it does not.

        Raises AuthorityLimitError like :meth:`resolve`.
        """
        watch = self._watches.get(authority)
        if watch is None:
            self.resolve(authority, self._clock())  # may raise AuthorityLimitError
            watch = self._watches[authority]
        resolution = watch.resolution
        if resolution.usable:
            return resolution
        watch.waiters += 1
        try:
            async with asyncio.timeout(timeout):
                while not resolution.usable:
                    await watch.changed.wait()
        except TimeoutError:
            return None
        finally:
            watch.waiters -= 1
            watch.last_used = self._clock()
        return resolution

    async def _follow(self, watch: _Watch) -> None:
        attempt = 0
        failing = False
        resolution = watch.resolution
        while True:
            resolution.stream_restarted()
            served = False
            try:
                async with contextlib.aclosing(self._open_stream(watch.authority)) as updates:
                    async for update in updates:
                        removed = resolution.apply(update, self._clock())
                        attempt = 0
                        served = True
                        if failing:
                            failing = False
                            log.info("destination_stream_recovered", authority=watch.authority)
                        watch.changed.set()
                        watch.changed.clear()
                        if removed:
                            self._on_removed(removed)
                if served:
                    # Ended by the service after serving it (its maximum age): again at once.
                    log.debug("destination_stream_ended", authority=watch.authority)
                    continue
            except asyncio.CancelledError:
                raise
            except GrpcCallError as exc:
                if exc.code == INVALID_ARGUMENT:
                    # The destination service cannot resolve this name at all: treat it
                    # like an authority outside the mesh and stop asking.
                    log.warning("destination_rejected_authority", authority=watch.authority)
                    resolution.apply(NoEndpoints(exists=False), self._clock())
                    watch.changed.set()
                    watch.changed.clear()
                    return
                if not failing:
                    failing = True
                    log.warning(
                        "destination_stream_failed",
                        authority=watch.authority,
                        code=exc.code,
                        error=exc.message,
                        keeping_endpoints=len(resolution.endpoints),
                    )
            except Exception:
                if not failing:
                    failing = True
                    log.exception("destination_stream_failed", authority=watch.authority)
            await asyncio.sleep(
                backoff_delay(
                    attempt, base=self._backoff_base, cap=self._backoff_cap, jitter=self._rng.random()
                )
            )
            attempt += 1

    def evict_idle(self, now: float, idle_timeout: float) -> list[Resolution]:
        """Close the streams of authorities unused for ``idle_timeout`` seconds."""
        idle = [
            key
            for key, watch in self._watches.items()
            if watch.waiters == 0 and now - watch.last_used >= idle_timeout
        ]
        evicted = []
        for key in idle:
            watch = self._watches.pop(key)
            if watch.task is not None:
                watch.task.cancel()
            evicted.append(watch.resolution)
        return evicted

    def __len__(self) -> int:
        return len(self._watches)

    async def close(self) -> None:
        self._closed = True
        tasks = [watch.task for watch in self._watches.values() if watch.task is not None]
        self._watches.clear()
        for task in tasks:
            await task.stop()
