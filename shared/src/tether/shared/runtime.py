"""The service runtime: every Tether control-plane service runs inside it.

It owns what is the same for every service: uvloop, logging, the NATS connection, heartbeats, the admin
listener, and graceful shutdown on SIGTERM/SIGINT (stop accepting, drain within a bound, exit 0).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import structlog
import uvloop

from tether.shared import subjects
from tether.shared.admin import AdminServer, Routes, health_routes
from tether.shared.aio import cancel_and_wait
from tether.shared.bus import Bus
from tether.shared.config import CommonConfig, load_config, parse_hostport
from tether.shared.errors import BusError
from tether.shared.events import Heartbeat
from tether.shared.logging import configure

HEARTBEAT_INTERVAL = 2.0

log = structlog.get_logger(__name__)


def instance_id() -> str:
    """The pod name in Kubernetes (HOSTNAME), else host plus a short random suffix; a valid subject token."""
    base = socket.gethostname().split(".")[0] or "local"
    suffix = uuid.uuid4().hex[:6]
    raw = f"{base}-{suffix}"
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in raw)


class Context:
    """What a running service gets from the runtime."""

    def __init__(self, *, service: str, instance: str, version: str, config: CommonConfig, bus: Bus) -> None:
        self.service = service
        self.instance = instance
        self.version = version
        self.config = config
        self.bus = bus
        self.log = structlog.get_logger(service).bind(service=service)


class Service(abc.ABC):
    """A control-plane service: started once the bus is up, stopped on SIGTERM."""

    @abc.abstractmethod
    async def start(self, ctx: Context) -> None:
        """Start serving; return once listeners accept (long-running work goes in tasks)."""

    @abc.abstractmethod
    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight work finish within ``grace`` seconds, release resources."""

    def ready(self) -> bool:
        """Whether the service can serve requests now (drives ``/ready`` and heartbeats)."""
        return True


class Runtime:
    """Runs one service until it is told to stop. Usable in-process by tests (``start``/``stop``)."""

    def __init__(
        self,
        service_name: str,
        config: CommonConfig,
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
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._service_started = False
        self._stopping = False
        self.log = log.bind(service=service_name, instance=self.instance)

    def ready(self) -> bool:
        return (
            self._service_started
            and not self._stopping
            and self.bus is not None
            and self.bus.is_connected
            and self.service.ready()
        )

    async def start(self) -> None:
        host, port = parse_hostport(self.config.admin_addr)
        self.admin = AdminServer(Routes(health_routes(self.ready)), host, port)
        await self.admin.start()
        self.bus = await Bus.connect(
            self.config.nats_servers, name=f"{self.name}-{self.instance}", initial_timeout=None
        )
        ctx = Context(
            service=self.name, instance=self.instance, version=self.version, config=self.config, bus=self.bus
        )
        await self.service.start(ctx)
        self._service_started = True
        self._heartbeat_task = asyncio.create_task(self._heartbeats(), name="heartbeats")
        self.log.info("service_started", admin_addr=f"{host}:{self.admin.port}")

    async def _heartbeats(self) -> None:
        while True:
            await self._publish_heartbeat()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def _publish_heartbeat(self) -> None:
        if self.bus is None:
            return
        beat = Heartbeat(
            service=self.name,
            instance=self.instance,
            version=self.version,
            uptime_seconds=round(time.monotonic() - self.started_at, 3),
            ready=self.ready(),
        )
        try:
            await self.bus.publish(subjects.health(self.name, self.instance), beat)
        except BusError as exc:
            self.log.warning("heartbeat_failed", error=str(exc))

    async def stop(self) -> None:
        """Stop accepting, drain within the configured grace, announce not-ready, disconnect."""
        if self._stopping:
            return
        self._stopping = True
        self.log.info("service_stopping", grace=self.config.shutdown_grace)
        await cancel_and_wait(self._heartbeat_task)
        began = time.monotonic()
        if self._service_started:
            try:
                await asyncio.wait_for(
                    self.service.stop(self.config.shutdown_grace), self.config.shutdown_grace + 0.5
                )
            except TimeoutError:
                self.log.warning("service_stop_timed_out")
        drained = time.monotonic()
        await self._publish_heartbeat()
        if self.admin is not None:
            await self.admin.close()
        if self.bus is not None:
            await self.bus.close()
        self.log.info(
            "service_stopped",
            drain_seconds=round(drained - began, 3),
            disconnect_seconds=round(time.monotonic() - drained, 3),
        )


async def serve_until_signalled(runtime: Runtime) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(runtime.start())
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if starting in done:
        starting.result()
        await stopped
    else:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, BusError):
            await starting
    await runtime.stop()


def run_service(
    service_name: str,
    config: CommonConfig,
    build: Callable[[], Service],
    *,
    version: str,
) -> int:
    """The body of every service's ``main()``: configure logging, build the service, run it, exit 0."""
    instance = instance_id()
    configure(
        service=service_name,
        instance=instance,
        version=version,
        fmt=config.log_format,
        level=config.log_level,
    )
    runtime = Runtime(service_name, config, build(), version=version, instance=instance)
    try:
        uvloop.run(serve_until_signalled(runtime))
    except Exception:
        runtime.log.exception("service_failed")
        return 1
    return 0


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


ServiceConfigT = TypeVar("ServiceConfigT", bound=CommonConfig)


def service_main(
    config_type: type[ServiceConfigT],
    service_name: str,
    build: Callable[[ServiceConfigT], Service],
    argv: Sequence[str] | None = None,
    *,
    description: str = "",
    prog: str | None = None,
) -> int:
    """A whole control-plane entry point: parse flags and environment once, then run the service.

    The version is that of the ``tether-<service>`` distribution.
    """
    config = load_config(config_type, service_name, argv, env(), prog=prog, description=description)
    return run_service(
        service_name, config, lambda: build(config), version=package_version(f"tether-{service_name}")
    )
