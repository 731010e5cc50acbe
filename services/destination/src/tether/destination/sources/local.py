"""The local registry source: a YAML file of services (polled for changes) plus NATS registrations.

``LocalState`` is the pure core (file contents and registrations in, desired sets out); ``LocalSource``
feeds it: it re-reads the file when its size, mtime or inode change, subscribes to registrations and
expires them on time. An invalid file is logged with the line at fault and the last good contents stay.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterable

import structlog

from tether.destination.errors import RegistryFileError
from tether.destination.metrics import DestinationMetrics
from tether.destination.model import EndpointSet, ServicePort, WorkloadRegistration
from tether.destination.reconcile import DesiredService, normalise
from tether.destination.sources.base import ChangeCallback, Spawn
from tether.destination.sources.registrations import (
    InvalidRegistration,
    RegistrationTable,
    validate_registration,
)
from tether.destination.sources.registry_file import parse_registry
from tether.shared import subjects
from tether.shared.aio import wait_event
from tether.shared.bus import Bus, Subscription
from tether.shared.errors import SetupError
from tether.shared.supervisor import SupervisedTask

log = structlog.get_logger(__name__)


def check_registry_file(path: str, trust_domain: str) -> None:
    """Raise SetupError unless ``path`` (if set) is a readable, valid registry file."""
    if not path:
        return
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", errors="replace")
    except OSError as exc:
        raise SetupError(f"--registry-file {path} cannot be read: {exc.strerror}", _FILE_REMEDY) from None
    try:
        parse_registry(text, path, trust_domain)
    except RegistryFileError as exc:
        raise SetupError(f"--registry-file {exc}", _FILE_REMEDY) from None


_FILE_REMEDY = "fix the file, or pass --registry-file '' to serve registrations only"


class LocalState:
    def __init__(self, trust_domain: str, max_registrations: int = 10_000) -> None:
        self.trust_domain = trust_domain
        self.file_services: dict[str, DesiredService] = {}
        self.registrations = RegistrationTable(max_registrations)
        self.file_loaded = False

    def load_file(self, text: str, path: str) -> set[str]:
        """Replaces the file's services; raises RegistryFileError and keeps the old ones if invalid."""
        services = parse_registry(text, path, self.trust_domain)
        changed = {
            k for k in set(services) | set(self.file_services) if services.get(k) != self.file_services.get(k)
        }
        self.file_services = services
        self.file_loaded = True
        return changed

    def register(self, reg: WorkloadRegistration, now: float) -> set[str]:
        validate_registration(reg, self.trust_domain)
        key = self.registrations.apply(reg, now)
        return {key} if key else set()

    def expire(self, now: float) -> set[str]:
        return self.registrations.expire(now)

    def adopt(self, sets: Iterable[EndpointSet], now: float, ttl: float) -> set[str]:
        return self.registrations.adopt(sets, now, ttl)

    def keys(self) -> set[str]:
        return set(self.file_services) | self.registrations.keys()

    def desired(self, key: str) -> DesiredService | None:
        declared = self.file_services.get(key)
        first_port = self.registrations.first_port(key)
        if declared is None and first_port is None:
            return None
        if declared is not None:
            ports = declared.ports
            registered = self.registrations.endpoints(key, ports)
            if not registered:
                return declared
            return normalise(
                declared.namespace,
                declared.service,
                ports,
                [*declared.endpoints, *registered],
                declared.addresses,
            )
        assert first_port is not None
        namespace, _, service = key.partition(".")
        ports = (ServicePort(name="", port=first_port),)
        return normalise(namespace, service, ports, self.registrations.endpoints(key, ports))


class LocalSource:
    kind = "local"

    def __init__(
        self,
        bus: Bus,
        path: str,
        trust_domain: str,
        metrics: DestinationMetrics,
        poll_interval: float = 0.5,
        adopt_ttl: float = 10.0,
        max_registrations: int = 10_000,
    ) -> None:
        self._bus = bus
        self._path = path
        self._state = LocalState(trust_domain, max_registrations)
        self._metrics = metrics
        self._poll_interval = poll_interval
        self._adopt_ttl = adopt_ttl
        self._file_signature: tuple[int, int, int] | None = None
        self._file_digest = b""
        self._on_change: ChangeCallback | None = None
        self._tasks: list[SupervisedTask] = []
        self._subscription: Subscription | None = None
        self._expiry_changed = asyncio.Event()
        self._log = log.bind(source="local", path=path)

    @property
    def synced(self) -> bool:
        return self._state.file_loaded

    @property
    def state(self) -> LocalState:
        return self._state

    def keys(self) -> set[str]:
        return self._state.keys()

    def desired(self, key: str) -> DesiredService | None:
        return self._state.desired(key)

    def on_leadership(self, current: Iterable[EndpointSet], now: float) -> set[str]:
        changed = self._state.adopt(current, now, self._adopt_ttl)
        self._expiry_changed.set()
        return changed

    async def start(self, on_change: ChangeCallback, spawn: Spawn) -> None:
        """Reads the file (it must be valid now: later changes that are not keep the last good state)."""
        self._on_change = on_change
        problem = self._poll_file()
        if problem is not None:
            raise SetupError(f"--registry-file {problem}", _FILE_REMEDY)
        self._subscription = await self._bus.subscribe(
            subjects.REGISTRY_REGISTER, WorkloadRegistration, self._on_registration
        )
        self._tasks = [
            spawn("registry-file", self._watch_file),
            spawn("registry-expiry", self._expire_registrations),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await task.stop()
        self._tasks = []
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    def _notify(self, keys: set[str]) -> None:
        if keys and self._on_change is not None:
            self._on_change(keys)

    async def _watch_file(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            self._poll_file()

    def _poll_file(self) -> str | None:
        """Reload the file if it changed; what is wrong with it, if it cannot be used."""
        if not self._path:  # registrations only
            self._state.file_loaded = True
            return None
        starting = not self._state.file_loaded
        try:
            info = os.stat(self._path)
        except OSError as exc:
            if self._file_signature != (0, 0, 0):
                self._file_signature = (0, 0, 0)
                if not starting:
                    self._log.error("registry_file_unreadable", error=exc.strerror, keeping="last good state")
            return f"{self._path} cannot be read: {exc.strerror}"
        signature = (info.st_ino, info.st_size, info.st_mtime_ns)
        if signature == self._file_signature:
            return None
        self._file_signature = signature
        try:
            with open(self._path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            if not starting:
                self._log.error("registry_file_unreadable", error=exc.strerror, keeping="last good state")
            return f"{self._path} cannot be read: {exc.strerror}"
        digest = hashlib.sha256(data).digest()
        if digest == self._file_digest:
            return None
        self._file_digest = digest
        self._metrics.source_events.labels("local", "file").inc()
        try:
            changed = self._state.load_file(data.decode("utf-8", errors="replace"), self._path)
        except RegistryFileError as exc:
            if not starting:
                self._log.error(
                    "registry_file_invalid", line=exc.line, problem=exc.problem, keeping="last good state"
                )
            return str(exc)
        self._log.info("registry_file_loaded", services=len(self._state.file_services), changed=len(changed))
        self._notify(changed)
        return None

    async def _on_registration(self, reg: WorkloadRegistration, _subject: str) -> None:
        self._metrics.source_events.labels("local", "registration").inc()
        try:
            changed = self._state.register(reg, time.monotonic())
        except InvalidRegistration as exc:
            self._metrics.source_rejected.labels("local", "registration").inc()
            self._log.warning(
                "registration_rejected",
                service=f"{reg.namespace}.{reg.service}",
                instance=reg.instance[:64],
                problem=str(exc),
            )
            return
        self._expiry_changed.set()
        self._notify(changed)

    async def _expire_registrations(self) -> None:
        while True:
            next_expiry = self._state.registrations.next_expiry()
            timeout = None if next_expiry is None else max(0.0, next_expiry - time.monotonic())
            self._expiry_changed.clear()
            await wait_event(self._expiry_changed, timeout)
            changed = self._state.expire(time.monotonic())
            if changed:
                self._metrics.source_events.labels("local", "expiry").inc()
                self._log.info("registrations_expired", services=sorted(changed)[:10])
                self._notify(changed)
