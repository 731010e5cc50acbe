"""The control-plane table built from heartbeats: pure, time passed in."""

from __future__ import annotations

from tether.public_api.components import CONTROL_PLANE, ComponentTable
from tether.shared.events import Heartbeat


def beat(service: str, instance: str, *, ready: bool = True, version: str = "1.0") -> Heartbeat:
    return Heartbeat(service=service, instance=instance, version=version, uptime_seconds=1.0, ready=ready)


def test_instances_expire_after_the_timeout() -> None:
    table = ComponentTable(timeout=6.0)
    table.observe(beat("destination", "a"), now=100.0)
    table.observe(beat("destination", "b"), now=103.0)
    assert [c.instance for c in table.alive(now=105.0)] == ["a", "b"]
    assert [c.instance for c in table.alive(now=107.0)] == ["b"]
    assert table.alive(now=110.0) == []


def test_latest_heartbeat_wins() -> None:
    table = ComponentTable(timeout=6.0)
    table.observe(beat("identity", "a", ready=False), now=1.0)
    table.observe(beat("identity", "a", ready=True), now=2.0)
    (component,) = table.alive(now=2.0)
    assert component.ready and component.last_seen == 2.0


def test_check_passes_only_with_every_component_ready_on_one_version() -> None:
    table = ComponentTable(timeout=6.0)
    for service in CONTROL_PLANE:
        table.observe(beat(service, f"{service}-0"), now=10.0)
    assert all(outcome.ok for outcome in table.check(now=11.0, bus_connected=True))

    table.observe(beat("identity", "identity-0", ready=False), now=11.0)
    failed = [o for o in table.check(now=11.0, bus_connected=True) if not o.ok]
    assert [o.description for o in failed] == ["identity is running and ready (0/1 instances ready)"]
    assert "identity" in failed[0].hint

    table.observe(beat("identity", "identity-0", version="2.0"), now=12.0)
    failed = [o for o in table.check(now=12.0, bus_connected=False) if not o.ok]
    assert {o.description for o in failed} == {
        "public API is connected to NATS",
        "control-plane components run the same version",
    }
