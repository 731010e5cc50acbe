"""Test support shared by every test directory: one wait-until, and a supervisor that fails the test.

Kept in the library (like :mod:`tether.shared.natsserver`) because tests of every package and the
benchmarks use it; nothing in a production code path imports it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from tether.shared.supervisor import Supervisor


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float = 20.0,
    what: str | Callable[[], str] = "condition",
    interval: float = 0.02,
) -> float:
    """Poll ``condition`` (sync or async) until it is true; the seconds it took. AssertionError on timeout.

    ``what`` names the condition in the failure; a callable is asked only then (e.g. for a log's tail).
    """
    start = time.monotonic()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {described}")
        await asyncio.sleep(interval)


class RecordingSupervisor(Supervisor):
    """A supervisor for components started by a test: critical failures are recorded, not fatal."""

    def __init__(self) -> None:
        super().__init__(self._record)
        self.failures: list[tuple[str, BaseException]] = []

    def _record(self, name: str, exc: BaseException) -> None:
        self.failures.append((name, exc))
