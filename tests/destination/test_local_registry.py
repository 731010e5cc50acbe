"""Acceptance: two destination replicas (real processes) on a real nats-server, fed by the local registry,
watched by real grpc.aio clients."""

from __future__ import annotations

import asyncio
import json
import time
from functools import partial
from pathlib import Path

import msgspec

from tether.destination.model import EndpointsChanged, EndpointSet, WorkloadRegistration
from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.testing import eventually

from .conftest import IDENTITY, Client, Mesh, two_replicas, write_registry


def all_see(clients: list[Client], expected: set[str]) -> bool:
    return all(c.addresses == expected for c in clients)


async def test_initial_set_then_exact_adds_and_removes_in_order(mesh: Mesh, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    write_registry(registry, ["10.0.0.1", "10.0.0.2"])
    bus = await Bus.connect(mesh.nats_url, name="test-observer")
    events: list[EndpointsChanged] = []

    async def on_event(event: EndpointsChanged, _subject: str) -> None:
        events.append(event)

    await bus.subscribe(subjects.endpoints("shop", "web"), EndpointsChanged, on_event)
    await bus.flush()
    await two_replicas(mesh, registry)
    try:
        clients = [
            mesh.client(mesh.replicas[0], "web.shop.svc.cluster.local:80"),
            mesh.client(mesh.replicas[1], "web.shop:80"),
            mesh.client(mesh.replicas[1], "web:80", context_token='{"ns":"shop"}'),
        ]
        await eventually(
            lambda: all(c.addresses == {"10.0.0.1", "10.0.0.2"} for c in clients), what="initial set"
        )
        first = clients[0].state["10.0.0.1"]
        assert first["port"] == 8080 and first["identity"] == IDENTITY and first["h2"]
        assert first["labels"]["pod"] == "web-10.0.0.1" and first["labels"]["namespace"] == "shop"

        steps = [["10.0.0.1", "10.0.0.2", "10.0.0.3"], ["10.0.0.2", "10.0.0.3"], ["10.0.0.3", "10.0.0.4"], []]
        for step in steps:
            write_registry(registry, step)
            await eventually(partial(all_see, clients, set(step)), what=f"set {step}")
        expected = [
            ("add", ("10.0.0.1", "10.0.0.2")),
            ("add", ("10.0.0.3",)),
            ("remove", ("10.0.0.1",)),
            ("add", ("10.0.0.4",)),
            ("remove", ("10.0.0.2",)),
            ("remove", ("10.0.0.3", "10.0.0.4")),
        ]
        for client in clients:
            assert client.log == expected, client.log
            assert client.first_messages == 1 and client.error is None

        # The bucket holds the documented value; every write published its diff, generations increase.
        kv = await bus.kv(subjects.ENDPOINTS_BUCKET)
        entry = await kv.get("shop.web", msgspec.Raw)
        assert entry is not None and entry.value is not None
        stored = msgspec.json.decode(entry.value, type=EndpointSet)
        assert stored.endpoints == () and stored.generation == 5
        await eventually(lambda: len(events) == 5, what="diff events")
        assert [e.generation for e in events] == [1, 2, 3, 4, 5]
        assert [(tuple(a.address for a in e.added), e.removed) for e in events] == [
            (("10.0.0.1", "10.0.0.2"), ()),
            (("10.0.0.3",), ()),
            ((), ("10.0.0.1",)),
            (("10.0.0.4",), ("10.0.0.2",)),
            ((), ("10.0.0.3", "10.0.0.4")),
        ]
    finally:
        await bus.close()


async def test_unknown_service_and_invalid_file(mesh: Mesh, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    write_registry(registry, ["10.0.0.1"])
    await two_replicas(mesh, registry)
    unknown = mesh.client(mesh.replicas[0], "nope.shop:80")
    web = mesh.client(mesh.replicas[1], "web.shop:80")
    await eventually(lambda: unknown.exists is False and web.addresses == {"10.0.0.1"}, what="first messages")

    registry.write_text(
        "services:\n  - namespace: shop\n    name: web\n    ports: [{port: 80}]\n    bogus: 1\n"
    )
    leader = await mesh.leader()
    await eventually(lambda: "registry_file_invalid" in leader.logs(), what="invalid file logged")
    line = next(json.loads(x) for x in leader.logs().splitlines() if "registry_file_invalid" in x)
    assert line["line"] == 5 and "bogus" in line["problem"]
    write_registry(registry, ["10.0.0.1", "10.0.0.7"], api=["10.0.1.1"])
    await eventually(lambda: web.addresses == {"10.0.0.1", "10.0.0.7"}, what="recovery from invalid file")
    assert ("remove", ("10.0.0.1",)) not in web.log  # the invalid file never cleared the last good state


async def test_registered_workload_leaves_when_heartbeats_stop(mesh: Mesh, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    write_registry(registry, ["10.0.0.1"])
    await two_replicas(mesh, registry)
    client = mesh.client(mesh.replicas[0], "web.shop:80")
    await eventually(lambda: client.addresses == {"10.0.0.1"}, what="initial set")
    bus = await Bus.connect(mesh.nats_url, name="test-workload")
    registration = WorkloadRegistration(
        namespace="shop",
        service="web",
        instance="local-web-1",
        address="10.0.0.50",
        port=7000,
        ttl_seconds=1.0,
    )
    try:
        started = time.monotonic()
        while time.monotonic() - started < 2.0:  # heartbeats every 0.2 s keep it in the set
            await bus.publish(subjects.REGISTRY_REGISTER, registration)
            await asyncio.sleep(0.2)
            if "10.0.0.50" in client.addresses:
                assert client.state["10.0.0.50"]["port"] == 7000
        assert client.addresses == {"10.0.0.1", "10.0.0.50"}
        gone_after = await eventually(lambda: client.addresses == {"10.0.0.1"}, what="expiry")
        assert gone_after < 5.0
        assert client.log[-1] == ("remove", ("10.0.0.50",))
        assert [entry for entry in client.log if entry[0] == "remove"] == [("remove", ("10.0.0.50",))]
    finally:
        await bus.close()
