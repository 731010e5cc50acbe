"""The process runtime: every long-running Tether process runs inside it, the proxy included.

It owns what is the same for every process: parse and validate configuration once, configure logging,
build the component, run it under uvloop, and stop gracefully on SIGTERM/SIGINT. On top of that:

* the admin listener (``/live``, ``/ready``, ``/metrics``, loopback-only ``/debug/tasks`` and
  ``/debug/modules``), up before anything else so that a process waiting for NATS is live but not ready;
* the :class:`~tether.shared.supervisor.Supervisor` every long-lived task starts through: a critical task
  that fails turns ``/ready`` false and ends the process with exit 1 within ``--shutdown-grace`` + 1 s;
* for control-plane services, the NATS connection (one backoff, ``--nats-connect-timeout``) and heartbeats;
* start-up failures as one plain-text line (``tether-<component>: error: <cause>; <remedy>``), exit 2 for
  setup errors and 1 for the rest, with a traceback only at ``--log-level debug``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, TypeVar

import structlog
import uvloop

from tether.shared import subjects
from tether.shared.admin import AdminResponse, AdminServer, Route, Routes, health_routes, is_loopback
from tether.shared.cloudevents import source_for
from tether.shared.config import CommonConfig, ProcessConfig, load_config, parse_hostport
from tether.shared.errors import BusError, FatalError, PermissionDenied, SetupError
from tether.shared.events import Heartbeat
from tether.shared.failure import report
from tether.shared.listen import bind_failure
from tether.shared.logging import configure, tracebacks_wanted
from tether.shared.supervisor import SupervisedTask, Supervisor, TaskFactory

if TYPE_CHECKING:
    # Imported when a component uses NATS: the proxy never loads nats-py or prometheus_client.
    from tether.shared.bus import Bus

HEARTBEAT_INTERVAL = 2.0
#: How often readiness is looked at, to announce a change in a heartbeat at once.
READINESS_POLL = 0.1
# Beyond --shutdown-grace: closing NATS and the admin listener once the component has drained.
STOP_MARGIN = 0.8

log = structlog.get_logger(__name__)


def instance_id() -> str:
    """The pod name in Kubernetes (HOSTNAME), else host plus a short random suffix; a valid subject token."""
    base = socket.gethostname().split(".")[0] or "local"
    suffix = uuid.uuid4().hex[:6]
    raw = f"{base}-{suffix}"
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in raw)


class Context:
    """What a running component gets from the runtime."""

    def __init__(
        self,
        *,
        service: str,
        instance: str,
        version: str,
        config: ProcessConfig,
        supervisor: Supervisor,
        request_stop: Callable[[], None],
        bus: Bus | None = None,
    ) -> None:
        self.service = service
        self.instance = instance
        self.version = version
        self.config = config
        self.supervisor = supervisor
        self.request_stop = request_stop
        self._bus = bus
        self.log = structlog.get_logger(service).bind(service=service)

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError(f"{self.service} runs without NATS")
        return self._bus

    def spawn(self, name: str, factory: TaskFactory, *, critical: bool = True) -> SupervisedTask:
        """Start a long-lived task under the supervisor (see tether.shared.supervisor)."""
        return self.supervisor.spawn(name, factory, critical=critical)


class Service(abc.ABC):
    """A long-running component: started once the runtime is up, stopped on SIGTERM."""

    #: Control-plane services talk to NATS; the proxy does not.
    uses_nats: ClassVar[bool] = True

    async def prepare(self) -> None:
        """Check and load what needs no NATS (files, the Kubernetes configuration), before connecting.

        A setup error found here is reported at once instead of after the NATS connect timeout.
        """
        return None

    @abc.abstractmethod
    async def start(self, ctx: Context) -> None:
        """Start serving; return once listeners accept (long-running work goes in supervised tasks)."""

    @abc.abstractmethod
    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight work finish within ``grace`` seconds, release resources.

        Called also after a start that failed half-way: release whatever was acquired.
        """

    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether the component can do its job now (drives ``/ready`` and heartbeats)."""

    def admin_routes(self, ctx: Context) -> Mapping[str, Mapping[str, Route]]:
        """Extra admin routes of this component."""
        return {}

    def render_metrics(self) -> bytes | None:
        """The component's metrics in the Prometheus text format; None: prometheus_client's registry."""
        return None


def _render_default_registry() -> bytes:
    from prometheus_client import REGISTRY, generate_latest

    return bytes(generate_latest(REGISTRY))


class Runtime:
    """Runs one component until it is told to stop. Usable in-process by tests (``start``/``stop``)."""

    def __init__(
        self,
        service_name: str,
        config: ProcessConfig,
        service: Service,
        *,
        version: str,
        instance: str | None = None,
    ) -> None:
        self.name = service_name
        self.config = config
        self.service = service
        self.version = version
        self.instance = instance or instance_id()
        self.started_at = time.monotonic()
        self.bus: Bus | None = None
        self.admin: AdminServer | None = None
        self.supervisor = Supervisor(self._critical_task_failed)
        self.failure: FatalError | None = None
        self.stop_requested = asyncio.Event()
        self._service_starting = False
        self._service_started = False
        self._stopping = False
        self.log = log.bind(service=service_name, instance=self.instance)

    def ready(self) -> bool:
        if not self._service_started or self._stopping or self.failure is not None:
            return False
        if self.service.uses_nats and (self.bus is None or not self.bus.is_connected):
            return False
        return self.service.ready()

    def request_stop(self) -> None:
        self.stop_requested.set()

    def _critical_task_failed(self, name: str, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = FatalError(
                f"critical task {name} failed: {type(exc).__name__}: {exc}",
                "the process exits so that its supervisor restarts it; see the task_failed log line",
            )
        self.stop_requested.set()

    async def start(self) -> None:
        """Admin listener, NATS (when used), the component, heartbeats. Raises FatalError."""
        host, port = parse_hostport(self.config.admin_addr)
        routes = dict(health_routes(self.ready, self._render_metrics))
        routes["/debug/tasks"] = {"GET": self._debug_tasks}
        routes["/debug/modules"] = {"GET": self._debug_modules}
        self.admin = AdminServer(Routes(routes), host, port)
        try:
            await self.admin.start()
        except OSError as exc:
            raise bind_failure("--admin-addr", self.config.admin_addr, exc) from None
        await self.service.prepare()
        if self.service.uses_nats:
            from tether.shared.bus import Bus

            assert isinstance(self.config, CommonConfig)
            self.bus = await Bus.connect(
                self.config.nats_settings(self.name),
                name=f"{self.name}-{self.instance}",
                source=source_for(self.name, self.instance),
            )
        ctx = Context(
            service=self.name,
            instance=self.instance,
            version=self.version,
            config=self.config,
            supervisor=self.supervisor,
            request_stop=self.request_stop,
            bus=self.bus,
        )
        try:
            if self.bus is not None:
                # Not ready yet, and confirmed: another component's credentials cannot publish this
                # component's heartbeat, so a wrong user fails here, before any work.
                await self._publish_heartbeat(confirm=True)
            self._service_starting = True
            await self.service.start(ctx)
        except PermissionDenied as exc:
            # Not transient, and not a bug: these credentials are another component's, or the server's
            # permissions are out of date.
            raise SetupError(
                str(exc),
                f"give tether-{self.name} its own NATS user (--nats-creds, --nats-nkey or --nats-user); "
                "docs/events.md lists what each user may do",
            ) from None
        extra = self.service.admin_routes(ctx)
        if extra:
            self.admin.routes = Routes({**routes, **extra})
        self._service_started = True
        # What starting allocated (modules, configuration, contexts, caches) lives as long as the process:
        # out of the collector's generations, so full collections stop rescanning it. At saturation the
        # proxy's took 10-57 ms every 1-2 s and freed nothing, a latency spike each time.
        gc.collect()  # not to freeze start-up's garbage along with it
        gc.freeze()
        if self.bus is not None:
            self.supervisor.spawn("heartbeats", self._heartbeats)
        self.log.info("service_started", admin_addr=f"{host}:{self.admin.port}")

    def _render_metrics(self) -> bytes:
        own = self.service.render_metrics()
        body = own if own is not None else _render_default_registry()
        return body + self.supervisor.render_metrics().encode()

    def _debug_tasks(self, peer: str) -> AdminResponse:
        # Which asyncio tasks run, and whether the supervisor started them: tests fail on any long-lived
        # task of ours that bypassed it. Loopback only: it names internals.
        if not is_loopback(peer):
            return AdminResponse(403, b"only from loopback\n")
        tasks = []
        for task in asyncio.all_tasks():
            coro = task.get_coro()
            code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            module = str(frame.f_globals.get("__name__", "")) if frame is not None else ""
            qualname = getattr(coro, "__qualname__", "") or (code.co_name if code else repr(coro))
            tasks.append(
                {
                    "id": id(task),
                    "name": task.get_name(),
                    "coroutine": f"{module}.{qualname}" if module else qualname,
                    "file": code.co_filename if code else "",
                    "supervised": self.supervisor.is_supervised(task),
                }
            )
        return AdminResponse(200, json.dumps(tasks).encode(), b"application/json")

    def _debug_modules(self, peer: str) -> AdminResponse:
        # The modules this process imported (what a memory budget is spent on: the proxy must never load
        # grpc or cryptography, and a test asks it). Loopback only, like the tasks.
        if not is_loopback(peer):
            return AdminResponse(403, b"only from loopback\n")
        return AdminResponse(200, json.dumps(sorted(sys.modules)).encode(), b"application/json")

    async def _heartbeats(self) -> None:
        # Every HEARTBEAT_INTERVAL, and at once when readiness changes: `tether check` run just after a
        # component turned ready (or stopped being ready) should not see the old state for two seconds.
        last_ready: bool | None = None
        last_sent = -HEARTBEAT_INTERVAL
        while True:
            ready, now = self.ready(), time.monotonic()
            if ready != last_ready or now - last_sent >= HEARTBEAT_INTERVAL:
                await self._publish_heartbeat()
                last_ready, last_sent = ready, now
            await asyncio.sleep(READINESS_POLL)

    async def _publish_heartbeat(self, *, confirm: bool = False) -> None:
        if self.bus is None or not self.bus.is_connected:
            return
        beat = Heartbeat(
            service=self.name,
            instance=self.instance,
            version=self.version,
            uptime_seconds=round(time.monotonic() - self.started_at, 3),
            ready=self.ready(),
        )
        try:
            await self.bus.publish(subjects.health(self.name, self.instance), beat, confirm=confirm)
        except PermissionDenied:
            if confirm:
                raise
        except BusError as exc:
            self.log.warning("heartbeat_failed", error=str(exc))

    async def stop(self) -> None:
        """Stop accepting, drain within the configured grace, announce not-ready, disconnect.

        Bounded: returns within ``shutdown_grace`` + 1 s whatever the component or NATS do.
        """
        if self._stopping:
            return
        self._stopping = True
        grace = self.config.shutdown_grace
        self.log.info("service_stopping", grace=grace)
        began = time.monotonic()
        if self._service_starting:
            try:
                async with asyncio.timeout(grace + 0.3):
                    await self.service.stop(grace)
            except TimeoutError:
                self.log.warning("service_stop_timed_out", grace=grace)
            except Exception as exc:
                self.log.warning("service_stop_failed", error=f"{type(exc).__name__}: {exc}")
        drained = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3):
                await self.supervisor.stop()
        if self._service_started:  # one that never started has nothing to take back
            await self._publish_heartbeat()
        if self.bus is not None:
            await self.bus.close(drain_timeout=0.2)
        if self.admin is not None:
            await self.admin.close()
        self.log.info(
            "service_stopped",
            drain_seconds=round(drained - began, 3),
            disconnect_seconds=round(time.monotonic() - drained, 3),
        )


async def serve_until_signalled(runtime: Runtime) -> FatalError | None:
    """Run ``runtime`` until SIGTERM/SIGINT or a critical failure; returns what ended it, if a failure."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.request_stop)
    starting = asyncio.create_task(runtime.start(), name="runtime-start")
    stopped = asyncio.create_task(runtime.stop_requested.wait(), name="runtime-stop-requested")
    failure: FatalError | None = None
    try:
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a start-up failure raises here
            await stopped
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, FatalError):
                await starting
    except FatalError as exc:
        failure = exc
    finally:
        stopped.cancel()
        await runtime.stop()
    return failure or runtime.failure


def run_process(
    service_name: str,
    config: ProcessConfig,
    build: Callable[[], Service],
    *,
    version: str,
    command: str = "",
    help_command: str = "",
    instance: str | None = None,
) -> int:
    """The body of every component's ``main()``: configure logging, build, run; the exit code.

    Start-up and critical failures end with one plain-text line on stderr, written after the event loop
    has closed so that it is always the last line.
    """
    command = command or f"tether-{service_name}"
    instance = instance or instance_id()
    configure(
        service=service_name,
        instance=instance,
        version=version,
        fmt=config.log_format,
        level=config.log_level,
    )
    failure: FatalError | None
    try:
        runtime = Runtime(service_name, config, build(), version=version, instance=instance)
        failure = uvloop.run(serve_until_signalled(runtime))
    except FatalError as exc:
        failure = exc
    except Exception as exc:
        # A bug, not a failure a user can cause: keep the traceback for the report.
        log.error("unexpected_error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        failure = FatalError(
            f"unexpected {type(exc).__name__}: {exc}", "this is a bug: please report it with the log above"
        )
    if failure is None:
        return 0
    if tracebacks_wanted() and failure.__traceback__ is not None:
        log.debug("failure_traceback", traceback="".join(traceback.format_exception(failure)))
    return report(command, failure, help_command=help_command or command)


def env() -> Mapping[str, str]:
    """The process environment: read only by entry points, then passed down as config."""
    return os.environ


def package_version(distribution: str) -> str:
    """The installed version of a Tether distribution (e.g. ``tether-destination``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "0.0.0+unknown"


ConfigT = TypeVar("ConfigT", bound=ProcessConfig)


def service_main(
    config_type: type[ConfigT],
    service_name: str,
    build: Callable[[ConfigT], Service],
    argv: Sequence[str] | None = None,
    *,
    description: str = "",
    prog: str | None = None,
    environ: Mapping[str, str] | None = None,
    instance: Callable[[ConfigT], str] | None = None,
) -> int:
    """A whole entry point: parse flags and environment once, then run the component.

    The version is that of the ``tether-<service>`` distribution.
    """
    prog = prog or f"tether-{service_name}"
    config = load_config(
        config_type,
        service_name,
        argv,
        env() if environ is None else environ,
        prog=prog,
        description=description,
    )
    return run_process(
        service_name,
        config,
        lambda: build(config),
        version=package_version(f"tether-{service_name}"),
        command=prog.split()[0],
        help_command=prog,
        instance=instance(config) if instance is not None else None,
    )
