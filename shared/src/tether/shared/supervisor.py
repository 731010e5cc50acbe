"""Every long-lived task of a process starts here, so that none can die unnoticed.

``spawn(name, factory, critical=True)`` runs ``factory()`` in a task of its own. When a **critical** task
raises (or returns, which a long-lived task must not do), the supervisor reports it once to the process
runtime, which turns ``/ready`` false and exits 1 so that Kubernetes or the local mesh restarts the
process. A **non-critical** task that raises is restarted after a jittered backoff and counted in
``tether_task_restarts_total``; one that returns is simply done. Stopping a task (``await task.stop()``)
or the whole supervisor is never a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from tether.shared.backoff import Backoff
from tether.shared.errors import TetherError
from tether.shared.logging import tracebacks_wanted

log = structlog.get_logger(__name__)

TaskFactory = Callable[[], Coroutine[Any, Any, None]]
FailureHandler = Callable[[str, BaseException], None]


class TaskEnded(TetherError):
    """A critical long-lived task returned although it should run until the process stops."""

    def __init__(self, name: str) -> None:
        super().__init__(f"task {name} ended on its own")


_NOT_STARTED: Any = None


class SupervisedTask:
    """A handle on one supervised task: its name, kind, and a way to stop it."""

    def __init__(self, name: str, critical: bool) -> None:
        self.name = name
        self.critical = critical
        self.task: asyncio.Task[None] = _NOT_STARTED
        self.restarts = 0
        self.stopping = False

    @property
    def kind(self) -> str:
        """The name up to the first ``:`` (``destination-get:web.shop`` is of kind ``destination-get``)."""
        return self.name.split(":", 1)[0]

    @property
    def done(self) -> bool:
        return self.task.done()

    def cancel(self) -> None:
        self.stopping = True
        self.task.cancel()

    async def stop(self) -> None:
        """Cancel the task and wait until it has unwound."""
        self.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class Supervisor:
    def __init__(
        self,
        on_failure: FailureHandler,
        *,
        restart_base: float = 0.1,
        restart_cap: float = 10.0,
        stable_after: float = 30.0,
    ) -> None:
        self._on_failure = on_failure
        self._restart_base = restart_base
        self._restart_cap = restart_cap
        # A non-critical task that ran this long before failing starts its backoff over.
        self._stable_after = stable_after
        self._tasks: dict[asyncio.Task[None], SupervisedTask] = {}
        self._restarts_by_kind: dict[str, int] = {}
        self._failed = False

    def spawn(self, name: str, factory: TaskFactory, *, critical: bool = True) -> SupervisedTask:
        """Start ``factory()`` as a supervised task; see the module docstring for what failure does."""
        handle = SupervisedTask(name, critical)
        handle.task = asyncio.get_running_loop().create_task(self._run(handle, factory), name=name)
        self._tasks[handle.task] = handle
        handle.task.add_done_callback(self._forget)
        return handle

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    def is_supervised(self, task: asyncio.Task[Any]) -> bool:
        return task in self._tasks

    def tasks(self) -> list[SupervisedTask]:
        return list(self._tasks.values())

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts of non-critical tasks so far, by kind."""
        return dict(self._restarts_by_kind)

    async def stop(self) -> None:
        """Cancel every task still running and wait for them (the process is shutting down)."""
        handles = list(self._tasks.values())
        for handle in handles:
            handle.cancel()
        for handle in handles:
            with contextlib.suppress(asyncio.CancelledError):
                await handle.task

    async def _run(self, handle: SupervisedTask, factory: TaskFactory) -> None:
        backoff = Backoff(self._restart_base, self._restart_cap)
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if handle.critical:
                    self._fail(handle, exc)
                    return
                if loop.time() - started >= self._stable_after:
                    backoff.reset()
                delay = backoff.next()
                handle.restarts += 1
                self._restarts_by_kind[handle.kind] = self._restarts_by_kind.get(handle.kind, 0) + 1
                log.warning(
                    "task_restarting",
                    task=handle.name,
                    error=_describe(exc),
                    restarts=handle.restarts,
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay)
                continue
            if handle.critical and not handle.stopping:
                self._fail(handle, TaskEnded(handle.name))
            return

    def _fail(self, handle: SupervisedTask, exc: BaseException) -> None:
        log.error(
            "task_failed",
            task=handle.name,
            error=_describe(exc),
            exc_info=exc if tracebacks_wanted() else None,
        )
        self._on_failure(handle.name, exc)

    def render_metrics(self) -> str:
        """The supervisor's metrics in the Prometheus text format."""
        lines = [
            "# HELP tether_task_restarts_total Restarts of failed non-critical background tasks, by kind.",
            "# TYPE tether_task_restarts_total counter",
            *(
                f'tether_task_restarts_total{{task="{kind}"}} {count}'
                for kind, count in sorted(self._restarts_by_kind.items())
            ),
            "# HELP tether_tasks_running Supervised background tasks running now.",
            "# TYPE tether_tasks_running gauge",
            f"tether_tasks_running {len(self._tasks)}",
        ]
        return "\n".join(lines) + "\n"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
