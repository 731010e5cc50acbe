"""What the control plane looks like, from its heartbeats: a pure table, time passed in."""

from __future__ import annotations

import msgspec

from tether.shared.events import Heartbeat

CONTROL_PLANE = ("destination", "identity", "telemetry", "public-api")


class Component(msgspec.Struct, frozen=True):
    service: str
    instance: str
    version: str
    ready: bool
    last_seen: float  # wall-clock seconds


class CheckOutcome(msgspec.Struct, frozen=True):
    category: str
    description: str
    ok: bool
    hint: str = ""
    # "ok", "warning" or "error"; empty: from ``ok``.
    level: str = ""

    @property
    def status(self) -> str:
        return self.level or ("ok" if self.ok else "error")


class ComponentTable:
    """The latest heartbeat of every instance; instances silent for longer than ``timeout`` are dropped."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._components: dict[tuple[str, str], Component] = {}

    def observe(self, beat: Heartbeat, now: float) -> None:
        self._components[(beat.service, beat.instance)] = Component(
            service=beat.service,
            instance=beat.instance,
            version=beat.version,
            ready=beat.ready,
            last_seen=now,
        )

    def alive(self, now: float) -> list[Component]:
        expired = [key for key, c in self._components.items() if now - c.last_seen > self.timeout]
        for key in expired:
            del self._components[key]
        return sorted(self._components.values(), key=lambda c: (c.service, c.instance))

    def check(self, now: float, bus_connected: bool) -> list[CheckOutcome]:
        outcomes = [
            CheckOutcome(
                "control-plane",
                "public API is connected to NATS",
                bus_connected,
                "check TETHER_NATS_URL and that nats-server is running",
            )
        ]
        alive = self.alive(now)
        for service in CONTROL_PLANE:
            instances = [c for c in alive if c.service == service]
            ready = [c for c in instances if c.ready]
            if ready:
                hint = ""
            elif instances:
                hint = f"{len(instances)} {service} instance(s) running, none ready: check its logs, /ready"
            else:
                hint = f"no {service} instance sent a heartbeat in the last {self.timeout:g}s: is it running?"
            outcomes.append(
                CheckOutcome(
                    "control-plane",
                    f"{service} is running and ready ({len(ready)}/{len(instances)} instances ready)",
                    bool(ready),
                    hint,
                )
            )
        versions = {c.version for c in alive}
        outcomes.append(
            CheckOutcome(
                "control-plane",
                "control-plane components run the same version",
                len(versions) <= 1,
                "" if len(versions) <= 1 else "versions seen: " + ", ".join(sorted(versions)),
            )
        )
        return outcomes
