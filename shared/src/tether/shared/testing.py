"""Test support shared by every test directory: one wait-until, and a supervisor that fails the test.

Kept in the library (like :mod:`tether.shared.natsserver`) because tests of every package and the
benchmarks use it; nothing in a production code path imports it. The wait-until comes in two forms,
:func:`eventually` for coroutines and :func:`eventually_sync` for threads and plain test functions; both
keep their deadline, interval and failure message in one :class:`_Deadline`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from tether.shared.supervisor import Supervisor

T = TypeVar("T")


class _Deadline:
    """One wait: started now, failing with AssertionError naming ``what`` once ``timeout`` has passed."""

    def __init__(self, timeout: float, what: str | Callable[[], str], interval: float) -> None:
        self.timeout = timeout
        self.what = what
        self.interval = interval
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def pause(self) -> float:
        """The seconds to sleep before the next poll; AssertionError if the wait has timed out.

        ``what`` is evaluated only here, on failure, so it may be costly (e.g. a log's tail).
        """
        if self.elapsed() > self.timeout:
            described = self.what() if callable(self.what) else self.what
            raise AssertionError(f"timed out after {self.timeout}s waiting for {described}")
        return self.interval


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float = 20.0,
    what: str | Callable[[], str] = "condition",
    interval: float = 0.02,
) -> float:
    """Poll ``condition`` (sync or async) until it is true; the seconds it took. AssertionError on timeout.

    ``what`` names the condition in the failure; a callable is asked only then (e.g. for a log's tail).
    An exception from ``condition`` (an assertion that the thing waited for can no longer happen) ends
    the wait at once.
    """
    deadline = _Deadline(timeout, what, interval)
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return deadline.elapsed()
        await asyncio.sleep(deadline.pause())


def eventually_sync(
    check: Callable[[], T | Literal[False] | None],
    timeout: float = 20.0,
    what: str | Callable[[], str] = "condition",
    interval: float = 0.05,
) -> T:
    """:func:`eventually` for synchronous code: poll ``check`` (blocking) until it returns a value.

    Any value but None and False ends the wait and is returned (so ``0`` or ``[]`` count as found);
    the timeout, ``what`` and exceptions from ``check`` behave as in :func:`eventually`. The default
    interval is longer because synchronous checks usually ask another process (a CLI, an HTTP endpoint).
    """
    deadline = _Deadline(timeout, what, interval)
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        time.sleep(deadline.pause())


class RecordingSupervisor(Supervisor):
    """A supervisor for components started by a test: critical failures are recorded, not fatal."""

    def __init__(self) -> None:
        super().__init__(self._record)
        self.failures: list[tuple[str, BaseException]] = []

    def _record(self, name: str, exc: BaseException) -> None:
        self.failures.append((name, exc))
