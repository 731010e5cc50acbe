"""Acceptance: leader failover, a nats-server crash, and garbage in the bucket, with two real replicas."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import msgspec

from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.natsserver import EmbeddedNats
from tether.shared.testing import eventually

from .conftest import Mesh, Replica, two_replicas, write_registry

FAILOVER_BUDGET = 15.0


def logged_both_rejections(replica: Replica) -> bool:
    return "endpoint_value_rejected" in replica.logs() and "kv_decode_failed" in replica.logs()


async def test_stopping_the_leader_fails_over_without_spurious_removals(mesh: Mesh, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    write_registry(registry, ["10.0.0.1", "10.0.0.2"])
    await two_replicas(mesh, registry)
    leader = await mesh.leader()
    survivor = next(r for r in mesh.replicas if r is not leader)
    clients = [mesh.client(survivor, "web.shop:80") for _ in range(3)]
    await eventually(
        lambda: all(c.addresses == {"10.0.0.1", "10.0.0.2"} for c in clients), what="initial set"
    )

    stopped_at = time.monotonic()
    await leader.stop()  # SIGTERM: graceful, the lease is handed over at once
    assert await mesh.leader(timeout=FAILOVER_BUDGET) is survivor
    assert time.monotonic() - stopped_at < FAILOVER_BUDGET

    write_registry(registry, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    await eventually(
        lambda: all(c.addresses == {"10.0.0.1", "10.0.0.2", "10.0.0.3"} for c in clients), what="add"
    )
    for client in clients:
        assert client.log == [("add", ("10.0.0.1", "10.0.0.2")), ("add", ("10.0.0.3",))], client.log
        assert client.error is None


async def test_killed_leader_fails_over_within_budget_and_resyncs(mesh: Mesh, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    write_registry(registry, ["10.0.0.1", "10.0.0.2"])
    await two_replicas(mesh, registry)
    leader = await mesh.leader()
    survivor = next(r for r in mesh.replicas if r is not leader)
    client = mesh.client(survivor, "web.shop:80")
    await eventually(lambda: client.addresses == {"10.0.0.1", "10.0.0.2"}, what="initial set")

    killed_at = time.monotonic()
    await leader.stop(kill=True)  # a crash: the lease is not released and must go stale
    # The registry changes while nobody writes: the new leader must pick it up when it resyncs.
    write_registry(registry, ["10.0.0.2", "10.0.0.5"])
    assert await mesh.leader(timeout=FAILOVER_BUDGET) is survivor
    took = await eventually(
        lambda: client.addresses == {"10.0.0.2", "10.0.0.5"}, what="resync after failover"
    )
    assert time.monotonic() - killed_at < FAILOVER_BUDGET, took
    assert client.log == [
        ("add", ("10.0.0.1", "10.0.0.2")),
        ("add", ("10.0.0.5",)),
        ("remove", ("10.0.0.1",)),
    ], client.log
    assert client.first_messages == 1


async def test_nats_crash_and_restart_leaves_every_client_correct(
    mesh: Mesh, tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    registry = tmp_path / "registry.yaml"
    write_registry(registry, ["10.0.0.1"], api=["10.0.1.1"])
    await two_replicas(mesh, registry)
    clients = [
        mesh.client(replica, authority)
        for replica in mesh.replicas
        for authority in ("web.shop:80", "api.shop:9090")
    ]
    await eventually(lambda: all(c.addresses for c in clients), what="initial sets")

    await nats_server.stop(kill=True)
    write_registry(registry, ["10.0.0.1", "10.0.0.2"], api=[])  # changes while NATS is down
    await nats_server.start()
    web = {"10.0.0.1", "10.0.0.2"}
    await eventually(
        lambda: all(c.addresses == (web if c.authority.startswith("web") else set()) for c in clients),
        timeout=30.0,
        what="convergence after the NATS restart",
    )
    write_registry(registry, ["10.0.0.2"], api=["10.0.1.9"])  # and the mesh keeps working afterwards
    await eventually(
        lambda: all(
            c.addresses == ({"10.0.0.2"} if c.authority.startswith("web") else {"10.0.1.9"}) for c in clients
        ),
        what="changes after the restart",
    )
    for client in clients:
        assert client.error is None


async def test_garbage_in_the_bucket_is_logged_and_skipped(mesh: Mesh, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    write_registry(registry, ["10.0.0.1", "10.0.0.2"])
    await two_replicas(mesh, registry)
    clients = [mesh.client(replica, "web.shop:80") for replica in mesh.replicas]
    await eventually(
        lambda: all(c.addresses == {"10.0.0.1", "10.0.0.2"} for c in clients), what="initial set"
    )

    bus = await Bus.connect(mesh.nats_url, name="test-vandal")
    try:
        kv = await bus.kv(subjects.ENDPOINTS_BUCKET)
        await kv.put_raw("shop.web", b'{"schema_version": 1, "namespace": "shop", "endpoints": "nope"}')
        await kv.put_raw("shop.web", b"\x00\xffnot json at all")
        for replica in mesh.replicas:

            def tail(replica: Replica = replica) -> str:
                return f"{replica.name} logs the garbage: {replica.logs()[-3000:]}"

            await eventually(partial(logged_both_rejections, replica), what=tail)
        rejected = next(
            json.loads(x) for x in mesh.replicas[0].logs().splitlines() if "endpoint_value_rejected" in x
        )
        assert rejected["key"] == "shop.web" and rejected["level"] == "error"

        # Existing streams saw nothing; a new client still gets the previous good set.
        late = [mesh.client(replica, "web.shop:80") for replica in mesh.replicas]
        await eventually(
            lambda: all(c.addresses == {"10.0.0.1", "10.0.0.2"} for c in late), what="late clients"
        )
        for client in clients:
            assert client.log == [("add", ("10.0.0.1", "10.0.0.2"))]

        # The leader overwrites the garbage with the next change: everyone converges on it.
        write_registry(registry, ["10.0.0.2"])
        await eventually(lambda: all(c.addresses == {"10.0.0.2"} for c in clients + late), what="next change")
        entry = await kv.get("shop.web", msgspec.Raw)
        assert entry is not None and b'"10.0.0.2"' in bytes(entry.value or b"")
    finally:
        await bus.close()
