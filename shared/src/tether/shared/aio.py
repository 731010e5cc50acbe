"""Small asyncio helpers shared by every service."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` passes; True if it was set.

    Uses ``asyncio.timeout`` rather than ``wait_for``: on Python 3.11, ``wait_for`` can swallow a
    cancellation that arrives just as the event is set, and a loop around it then never stops.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks (None entries are skipped) and wait until each has finished unwinding."""
    pending = [task for task in tasks if task is not None]
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def in_daemon_thread(function: Callable[[], T]) -> T:
    """Run blocking ``function`` in a daemon thread of its own and await its result.

    Unlike ``asyncio.to_thread``, a call still blocked when the process shuts down does not hold up the exit:
    the event loop's default executor is joined on close, a daemon thread is not.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def work() -> None:
        try:
            result = function()
        except BaseException as exc:  # handed to the awaiting coroutine, never lost
            error = exc
            _post(loop, lambda: settle(lambda: future.set_exception(error)))
        else:
            _post(loop, lambda: settle(lambda: future.set_result(result)))

    threading.Thread(target=work, name="blocking-call", daemon=True).start()
    return await future


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed while the call ran: nobody waits any more
        loop.call_soon_threadsafe(callback)
