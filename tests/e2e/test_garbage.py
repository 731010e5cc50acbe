"""Garbage on the bus: random, oversized and well-formed-but-meaningless payloads published on every subject
the services consume, each with the credentials of the component allowed to publish there (its own,
mounted in its pod), while the shop serves a steady load.

Nothing crashes (every control-plane container keeps running, none restarts), every request succeeds, each
consumer counts what it refused (destination its endpoint and lease values, telemetry the tap requests and
match counts, the public API heartbeats, issuer status and rollups), and afterwards discovery is exact
again and ``tether check`` is all green. The one subject no cluster credential may publish on, workload
registrations, is refused to every user.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from e2e_cluster import Cluster, Pod
from e2e_load import steady_load
from e2e_mesh import BOOKS_PORT, SHOP, Mesh
from e2e_scenarios import scenario_record
from mesh_pods import eventually, sample

pytestmark = pytest.mark.netns

HERE = Path(__file__).resolve().parent
NATSPROBE = [sys.executable, str(HERE / "e2e_natsprobe.py")]
RATE = 20.0
SECONDS = 6.0
#: Control-plane workload → (its container, its NATS user, subjects others consume that it may publish on).
PUBLISHERS = {
    "tether-destination": (
        "destination",
        "destination",
        [
            "$KV.tether_endpoints.shop.books",
            "$KV.tether_endpoints.shop.zz-garbage",
            "$KV.tether_leases.destination-writer",
            "tether.v1.health.destination.e2e-garbage",
        ],
    ),
    "tether-identity": (
        "identity",
        "identity",
        [
            "tether.v1.identity.issuer",
            "tether.v1.health.identity.e2e-garbage",
        ],
    ),
    "tether-telemetry": (
        "telemetry",
        "telemetry",
        [
            "tether.v1.tap.matches.e2e-garbage",
            "tether.v1.telemetry.rollup.shop.deployment.web",
            "tether.v1.tap.events.e2e-garbage",
            "tether.v1.health.telemetry.e2e-garbage",
        ],
    ),
    "tether-public-api": (
        "public-api",
        "public-api",
        [
            "tether.v1.tap.requests",
            "tether.v1.health.public-api.e2e-garbage",
        ],
    ),
}
#: docs/ARCHITECTURE.md: a new destination leader within ttl + one poll (9 s + 1.5 s), "well under 15 s".
LEADER_WITHIN = 15.0
#: The counters each consumer keeps of what it refused: (workload, container) → (series, labels).
REJECTS: dict[tuple[str, str], list[tuple[str, dict[str, str]]]] = {
    ("tether-destination", "destination"): [
        ("tether_destination_watch_rejected_total", {}),
        ("tether_bus_decode_errors_total", {"subject": "$KV.tether_leases"}),
    ],
    ("tether-telemetry", "telemetry"): [("tether_bus_decode_errors_total", {})],
    ("tether-public-api", "public-api"): [("tether_bus_decode_errors_total", {})],
}
OWN_SEED, OWN_CA = "/var/run/tether/nats/nkey.seed", "/var/run/tether/nats/ca.crt"


def _rejected(cluster: Cluster, pod: Pod, container: str) -> float:
    text = cluster.metrics(pod, container)
    return sum(sample(text, series, **labels) for series, labels in REJECTS[(pod.workload, container)])


def _leaders(cluster: Cluster, mesh: Mesh) -> int:
    pods = mesh.control_pods("tether-destination")
    return int(sum(sample(cluster.metrics(pod, "destination"), "tether_destination_leader") for pod in pods))


def _processes(mesh: Mesh) -> dict[str, tuple[int, int]]:
    """(pid, restarts) of every control-plane container."""
    found = {}
    for pod in mesh.cluster.pods.values():
        if pod.namespace == "tether":
            for name, container in pod.containers.items():
                assert container.process is not None
                found[f"{pod.name}/{name}"] = (container.process.popen.pid, container.restarts)
    return found


def _publish(cluster: Cluster, pod: Pod, container: str, user: str, subjects: list[str]) -> dict[str, Any]:
    done = cluster.exec_run(
        pod,
        [
            *NATSPROBE,
            "garbage",
            "--user",
            user,
            "--seed",
            OWN_SEED,
            "--ca",
            OWN_CA,
            "--seconds",
            str(SECONDS),
            *subjects,
        ],
        container=container,
        timeout=SECONDS + 60,
    )
    assert done.returncode == 0, f"the garbage publisher in {pod.name} failed: {done.stdout}{done.stderr}"
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_garbage_on_the_bus(healthy_mesh: Mesh, record: Any) -> None:
    mesh, cluster = healthy_mesh, healthy_mesh.cluster
    rec = scenario_record(record, "Garbage on the bus")
    consumers = [(pod, container) for (workload, container) in REJECTS for pod in mesh.control_pods(workload)]
    before = {pod.name: _rejected(cluster, pod, container) for pod, container in consumers}
    processes = _processes(mesh)
    with steady_load(cluster, mesh.client, rate=RATE, name="garbage") as load:
        load.wait_requests(20)
        with ThreadPoolExecutor(len(PUBLISHERS)) as pool:
            runs = {
                workload: pool.submit(
                    _publish, cluster, mesh.control_pods(workload)[0], container, user, subjects
                )
                for workload, (container, user, subjects) in PUBLISHERS.items()
            }
            published = {workload: run.result() for workload, run in runs.items()}
        garbage_ended = time.monotonic()
        # A lease value its holder did not write ends its term (it may not overwrite it); a replica takes
        # the lease once the key has been quiet for a ttl.
        eventually(lambda: _leaders(cluster, mesh) == 1, 30, "one destination replica holding the lease")
        leaderless = time.monotonic() - garbage_ended
        load.wait_requests(len(load.outcomes()) + int(2 * RATE))
    summary = load.stop()
    rec.traffic(summary.sent, summary.failed)
    denied = {workload: answer["denied"] for workload, answer in published.items() if answer["denied"]}
    assert not denied, f"publishing was refused, so it was not garbage from an allowed publisher: {published}"
    rec.measure("garbage_published", sum(answer["published"] for answer in published.values()))
    assert summary.failed == 0, summary.describe()
    assert _processes(mesh) == processes, "a control-plane process crashed or was restarted"
    counted = {
        pod.name: _rejected(cluster, pod, container) - before[pod.name] for pod, container in consumers
    }
    missing = [name for name, count in counted.items() if count <= 0]
    assert not missing, f"these consumers counted no rejected message: {missing} ({counted})"
    for index, (pod, container) in enumerate(consumers):
        rec.measure(f"rejected_by_{container}_{index}", counted[pod.name])
    rec.recovery(leaderless, LEADER_WITHIN)
    assert leaderless <= LEADER_WITHIN, f"no destination leader for {leaderless:.1f} s after the garbage"
    # Afterwards: discovery is exact again, and the control plane is healthy.
    books = sorted((pod.ip, BOOKS_PORT) for pod in mesh.books)
    cluster.wait_endpoints(f"books.{SHOP}.svc.cluster.local:{BOOKS_PORT}", books, timeout=30)
    mesh.wait_healthy()
    eventually(lambda: cluster.tether("check").returncode == 0, 30, "tether check to pass")
    # No one in the cluster may publish workload registrations (only the local mesh's registrar may).
    refused = _registrations_refused(mesh)
    assert refused == {user: True for user in refused}, refused


def _registrations_refused(mesh: Mesh) -> dict[str, bool]:
    cluster = mesh.cluster
    where = mesh.control_pods("tether-public-api")[0]
    answers = {}
    for user in ("destination", "identity", "telemetry", "public-api", "reader"):
        seed, ca = mesh.nats_credentials(user, where)
        done = cluster.exec_run(
            where,
            [
                *NATSPROBE,
                "try",
                "--user",
                user,
                "--seed",
                str(seed),
                "--ca",
                str(ca),
                "pub:tether.v1.registry.register",
            ],
            container="public-api",
        )
        assert done.returncode == 0, done.stdout + done.stderr
        answers[user] = json.loads(done.stdout.strip().splitlines()[-1])["results"][0]["denied"]
    return answers
