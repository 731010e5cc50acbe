"""Control-plane faults under one steady load, during one certificate-rotation run.

A client pod (``steady-client``) calls Service ``steady`` (3 pods, plain grpcio) at a fixed rate for the
whole module (tests/e2e/steady_load.py records every call). Identity issues 60 s leaves (the suite's
identity runs with ``--leaf-lifetime 60``), so every proxy renews about every 40 s throughout. One after
another, each fault injected, recovered from and restarted (as Kubernetes restarts what dies), each with
zero failed calls:

1. the destination replica holding the writer lease is killed: the other takes the lease over;
2. a destination replica serving Get streams is killed: every stream reopens on the other, proxies routing
   on what they knew meanwhile;
3. nats-server is killed and restarted: every component reconnects and is ready again;
4. one identity replica is killed: Certify through the Service address keeps answering;
5. every identity replica is stopped across renewals that come due: those renewals fail, the certificates
   in use keep working, and each proxy renews once identity is back. (A proxy renews at 70% of its leaf's
   lifetime and keeps its certificate until it expires, so identity may be away for up to the remaining
   30%, 18 s of a 60 s leaf, before anything breaks; this outage spans due renewals and stays under that.)
6. one telemetry replica is killed: the proxies' report streams move to the other, which folds what was not
   acknowledged;
7. the issuer is rotated (new files, same trust anchor): new leaves chain to the new issuer;
8. the client pod is partitioned from the whole control plane for 30 s (iptables DROP both ways), right
   after it renewed: it keeps routing on the endpoints it knows, and after the heal its telemetry catches up.

The rotation run itself is the last test: at least 180 s of load, at least 3 renewals per proxy, zero
failures in all, every leaf chaining to the new issuer, and the merged telemetry (``tether stat``) counting
exactly the calls the client made — across the telemetry kill, the NATS restart and the partition.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from e2e_cluster import Cluster, Pod
from e2e_mesh import CONTROL_NAMESPACE, SHOP, Mesh, app, deployment, issuer_secret, service
from mesh_pods import eventually, inside, sample
from reliability import (
    DESTINATION_REPLICA,
    IDENTITY_OUTAGE,
    IDENTITY_REPLICA,
    LEADER,
    NATS,
    PARTITION,
    ROTATION,
    ROTATION_SECONDS,
    STEADY,
    TELEMETRY_REPLICA,
    Scenario,
    record_result,
)
from steady_load import Call, RunningLoad, describe, failures, started_between

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

HERE = Path(__file__).resolve().parent
STEADY_LOAD = HERE / "steady_load.py"
PORT = 8080
LEAF_LIFETIME = 60.0
#: Renewal is due 0.9-1.0 x 70% of the lifetime after issuance: this long before NotAfter at the earliest.
RENEWAL_DUE_BEFORE_EXPIRY = LEAF_LIFETIME * (1 - 0.7 * 0.9)
IDENTITY_DOWN = 8.0
PARTITION_SECONDS = 30.0
IDENTITY_SERVER = "identity.tether.serviceaccount.identity.cluster.local"
CONTROL = ("tether-destination", "tether-identity", "tether-telemetry", "tether-public-api")


@dataclass
class Run:
    mesh: Mesh
    cluster: Cluster
    client: Pod
    servers: list[Pod]
    load: RunningLoad
    started: float
    refreshes_at_start: dict[str, float]
    #: When the issuer was rotated (wall clock), once it was.
    rotated_at: float | None = None
    new_issuer: x509.Certificate | None = None
    faults: dict[str, float] = field(default_factory=dict)

    @property
    def proxies(self) -> list[Pod]:
        return [self.client, *self.servers]

    def window(self, since: float) -> list[Call]:
        """The calls started since ``since`` (monotonic), once all started before now ended."""
        now = time.monotonic()
        return started_between(self.load.finished(now, STEADY.deadline), since, now)


def _bound(scenario: Scenario) -> float:
    assert scenario.bound is not None
    return scenario.bound


def _control(mesh: Mesh, workload: str) -> list[Pod]:
    return mesh.control_pods(workload)


def _container(workload: str) -> str:
    return workload.removeprefix("tether-")


def _metric(cluster: Cluster, pod: Pod, name: str, container: str = "", **labels: str) -> float:
    return sample(cluster.metrics(pod, container), name, **labels)


@pytest.fixture(scope="module")
def run(mesh: Mesh) -> Iterator[Run]:
    mesh.wait_healthy()
    cluster = mesh.cluster
    server = deployment(
        "steady",
        [sys.executable, str(STEADY_LOAD), "serve", "--port", str(PORT), "--name", "$(POD_NAME)"],
        ports={"grpc": PORT}, readiness={"tcpSocket": {"port": PORT}}, replicas=3,
    )  # fmt: skip
    started = mesh.deploy([server, deployment("steady-client", app("idle")), service("steady", PORT)])
    load: RunningLoad | None = None
    try:
        client = cluster.pods_of("steady-client", SHOP)[0]
        servers = cluster.pods_of("steady", SHOP)
        refreshes = {p.name: _metric(cluster, p, "identity_cert_refresh_count") for p in [client, *servers]}
        load = RunningLoad(
            cluster, client, f"steady.{SHOP}.svc.cluster.local:{PORT}", rate=STEADY.rate,
            deadline=STEADY.deadline, name="steady",
        )  # fmt: skip
        yield Run(mesh, cluster, client, servers, load, load.started, refreshes)
    finally:
        if load is not None:
            load.stop()
        for pod in started:
            cluster.delete_pod(pod)


@pytest.fixture(autouse=True)
def _killed_restarted(run: Run) -> Iterator[None]:
    """After each scenario, restart any control-plane container it left exited (as the kubelet would): a
    scenario that fails between its kill and its restart must not fail every scenario after it."""
    yield
    for workload in (*CONTROL, "tether-nats"):
        for pod in _control(run.mesh, workload):
            for name, container in pod.containers.items():
                if container.long_running and not container.running:
                    run.cluster.restart(pod, name)


#: Each fault's window of calls lasts at least this long (the load held through the recovery and after).
MIN_WINDOW = 5.0


def _zero_failures(run: Run, scenario: Scenario, record: Any, since: float, recovered: float | None,
                   **measured: tuple[float, str]) -> None:  # fmt: skip
    run.faults[scenario.title] = since
    time.sleep(max(0.0, since + MIN_WINDOW - time.monotonic()))
    calls = run.window(since)
    failed = failures(calls)
    record_result(scenario, record, requests=len(calls), failed=len(failed), recovered=recovered,
                  measured=measured, failures=_explained(run, failed))  # fmt: skip


def _explained(run: Run, failed: list[Call], limit: int = 3) -> str:
    """The failed calls (:func:`describe`), each of the first ``limit`` with the fault injected last before
    it and what the client's proxy logged at warning or above within 2 s of it."""
    lines = [describe(failed)] if failed else []
    offset = time.time() - time.monotonic()  # the load's times are this machine's monotonic clock
    for call in failed[:limit]:
        last = max(((at, name) for name, at in run.faults.items() if at <= call.start), default=None)
        after = f"{call.start - last[0]:.1f} s after {last[1]}" if last else "before any fault"
        lines.append(f"#{call.seq}, {after}; the client's proxy logged:")
        around = call.start + offset
        for when, entry in _proxy_log(run.client, "", around - 2.0):
            if when <= around + 2.0 and entry.get("level") in ("warning", "error"):
                lines.append("  " + json.dumps(entry)[:400])
    return "\n".join(lines)


# --- 1. the destination leader ---------------------------------------------------------------------------


def _leaders(cluster: Cluster, pods: list[Pod]) -> list[Pod]:
    live = [p for p in pods if p.container("destination").running]
    return [p for p in live if _metric(cluster, p, "tether_destination_leader", "destination") == 1]


def test_destination_leader_killed(run: Run, record: Any) -> None:
    cluster, pods = run.cluster, _control(run.mesh, "tether-destination")
    (leader,) = eventually(lambda: _leaders(cluster, pods) or None, 20, "a destination leader")
    since = time.monotonic()
    cluster.kill(leader, "destination")
    (successor,) = eventually(lambda: _leaders(cluster, pods) or None, _bound(LEADER) + 5, "a new leader")
    took = time.monotonic() - since
    assert successor is not leader
    cluster.restart(leader, "destination")
    _zero_failures(run, LEADER, record, since, took)


# --- 2. a destination replica serving streams -------------------------------------------------------------


def _streams(cluster: Cluster, pod: Pod) -> float:
    return _metric(cluster, pod, "tether_destination_streams_open", "destination")


def test_destination_replica_killed(run: Run, record: Any) -> None:
    cluster, pods = run.cluster, _control(run.mesh, "tether-destination")
    busiest, other = sorted(pods, key=lambda pod: _streams(cluster, pod), reverse=True)
    moving, staying = _streams(cluster, busiest), _streams(cluster, other)
    assert moving > 0, "no destination replica serves a stream"
    since, wall_since = time.monotonic(), time.time()
    cluster.kill(busiest, "destination")
    # Each proxy's stream that ended with the replica reopened on the other. Counted on the proxies' side:
    # the killed replica's own count may include streams of peers already gone (a pod deleted by an earlier
    # scenario, until keep-alive finds it dead), which nobody reopens.
    moved: list[set[str]] = [set()]

    def reopened() -> bool:
        failed, unrecovered = _discovery_streams_failed(run, wall_since)
        moved[0] = failed
        return bool(failed) and not unrecovered and _streams(cluster, other) >= staying + len(failed)

    def described() -> str:
        failed, unrecovered = _discovery_streams_failed(run, wall_since)
        return (
            f"the streams of {busiest.name} ({moving:g}) reopened on {other.name} (it had {staying:g}, now "
            f"{_streams(cluster, other):g}); proxies' streams failed: {sorted(failed)}, not yet reopened: "
            f"{sorted(unrecovered)}"
        )

    eventually(reopened, _bound(DESTINATION_REPLICA) + 5, described, interval=0.1)
    took = time.monotonic() - since
    cluster.restart(busiest, "destination")
    _zero_failures(run, DESTINATION_REPLICA, record, since, took, streams_moved=(len(moved[0]), "streams"))


def _discovery_streams_failed(run: Run, after: float) -> tuple[set[str], set[str]]:
    """The proxies' discovery streams (``pod: authority``) that failed after ``after`` (wall clock), and
    those of them not reopened since, from the proxies' logs."""
    failed: set[str] = set()
    unrecovered: set[str] = set()
    for pod in _meshed(run):
        for _, entry in _proxy_log(pod, "destination_stream_", after):
            stream = f"{pod.name}: {entry.get('authority')}"
            if entry["event"] == "destination_stream_failed":
                failed.add(stream)
                unrecovered.add(stream)
            elif entry["event"] == "destination_stream_recovered":
                unrecovered.discard(stream)
    return failed, unrecovered


def _proxy_log(pod: Pod, event_prefix: str, after: float) -> Iterator[tuple[float, dict[str, Any]]]:
    """The pod's proxy log entries whose event starts with ``event_prefix``, logged after ``after`` (wall
    clock): (when, entry)."""
    for line in pod.log("tether-proxy").splitlines():
        if not line.startswith("{") or f'"{event_prefix}' not in line:
            continue
        entry = json.loads(line)
        stamp = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
        if stamp > after and entry["event"].startswith(event_prefix):
            yield stamp, entry


# --- 3. nats-server -------------------------------------------------------------------------------------


def _control_not_ready(cluster: Cluster, mesh: Mesh) -> list[str]:
    """The control-plane containers whose /ready does not answer 200."""
    return [
        f"{pod.name}/{_container(workload)}"
        for workload in CONTROL
        for pod in _control(mesh, workload)
        if cluster.admin_get(pod, "/ready", container=_container(workload))[0] != 200
    ]


def test_nats_killed_and_restarted(run: Run, record: Any) -> None:
    cluster, mesh = run.cluster, run.mesh
    (nats,) = _control(mesh, "tether-nats")
    since = time.monotonic()
    cluster.kill(nats, "nats")
    eventually(lambda: _control_not_ready(cluster, mesh) or None, 15, "components to notice NATS is gone")
    time.sleep(max(0.0, since + 2.0 - time.monotonic()))
    restarted = time.monotonic()
    cluster.restart(nats, "nats")
    eventually(lambda: not _control_not_ready(cluster, mesh), _bound(NATS) + 5,
               lambda: f"every component ready again; not ready: {_control_not_ready(cluster, mesh)}",
               interval=0.2)  # fmt: skip
    took = time.monotonic() - restarted
    _zero_failures(run, NATS, record, since, took, nats_down=(round(restarted - since, 1), "s"))


# --- 4. one identity replica ----------------------------------------------------------------------------

_CERTIFY_LOOP = """
import asyncio, json, sys, time
from tether.shared.grpc_certify import GrpcCertify
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.keygen import make_key_and_csr

address, anchors, server_name, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
token = sys.stdin.buffer.read().strip()
identity = WorkloadIdentity("steady-client", "shop", "cluster.local")
csr = make_key_and_csr(identity).csr_der

async def main():
    stop = time.monotonic() + seconds
    print(json.dumps({"ready": True}), flush=True)
    while time.monotonic() < stop:
        certify = GrpcCertify(address, open(anchors, "rb").read(), server_name, timeout=2)  # a new connection
        started = time.monotonic()
        try:
            await certify(identity, token, csr)
            error = None
        except Exception as exc:
            error = str(exc)[:200]
        await certify.close()
        print(json.dumps({"t": started, "ok": error is None, "error": error}), flush=True)
        await asyncio.sleep(0.6)  # under identity's Certify rate limit per peer address (2/s)

asyncio.run(main())
"""


def test_identity_replica_killed(run: Run, record: Any) -> None:
    cluster, mesh = run.cluster, run.mesh
    victim = _control(mesh, "tether-identity")[0]
    address = cluster.service("tether-identity", CONTROL_NAMESPACE).authority(8080)
    token = cluster.token(SHOP, "steady-client").decode()
    argv = [
        sys.executable,
        "-c",
        _CERTIFY_LOOP,
        address,
        str(mesh.control.trust_anchors),
        IDENTITY_SERVER,
        "8",
    ]
    attempts: list[dict[str, Any]] = []

    def certify_loop() -> None:
        done = subprocess.run(cluster.node.namespace.argv(argv), input=token, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        attempts.extend(json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))
        assert done.returncode == 0, done.stderr

    looping = threading.Thread(target=certify_loop)
    looping.start()
    time.sleep(2.5)  # a few answers before the fault (the loop's start-up is within this)
    since = time.monotonic()
    cluster.kill(victim, "identity")
    looping.join(60)
    cluster.restart(victim, "identity")
    after = [a for a in attempts if "t" in a and a["t"] >= since]
    assert after and after[-1]["ok"], f"Certify through {address} did not answer after the kill: {attempts}"
    failed = [a for a in after if not a["ok"]]
    took = max((a["t"] for a in failed), default=since) - since
    _zero_failures(run, IDENTITY_REPLICA, record, since, took, certify_attempts=(len(after), ""),
                   certify_failed_at_the_kill=(len(failed), ""))  # fmt: skip


# --- 5. every identity replica --------------------------------------------------------------------------


def _meshed(run: Run) -> list[Pod]:
    return [p for p in run.cluster.pods.values() if p.meshed and not p.terminating and p.ready]


def _cert_state(cluster: Cluster, pod: Pod) -> tuple[float, float, float]:
    """(NotAfter, renewals, failed renewals) of the pod's proxy."""
    metrics = cluster.metrics(pod)
    return (
        sample(metrics, "identity_cert_expiration_timestamp_seconds"),
        sample(metrics, "identity_cert_refresh_count"),
        sample(metrics, "identity_cert_refresh_failures_total"),
    )


def _restart_all(cluster: Cluster, pods: list[Pod], container: str) -> None:
    threads = [threading.Thread(target=cluster.restart, args=(pod, container)) for pod in pods]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def test_every_identity_replica_stopped_across_renewals(run: Run, record: Any) -> None:
    cluster, mesh = run.cluster, run.mesh
    pods = _control(mesh, "tether-identity")
    proxies = _meshed(run)
    # Start the outage just before the soonest renewal that comes due among the proxies, so it spans one.
    states = {p.name: _cert_state(cluster, p) for p in proxies}
    wall = time.time()
    starts = sorted(not_after - RENEWAL_DUE_BEFORE_EXPIRY - 1.0 for not_after, _, _ in states.values())
    start_at = next(s for s in starts if s > wall + 0.5)
    time.sleep(start_at - wall)
    since = time.monotonic()
    for pod in pods:
        cluster.kill(pod, "identity")
    time.sleep(IDENTITY_DOWN)
    _restart_all(cluster, pods, "identity")
    back = time.monotonic()
    down = back - since
    states_back = {p.name: _cert_state(cluster, p) for p in proxies}
    failed = [p for p in proxies if states_back[p.name][2] > states[p.name][2]]
    assert failed, "no renewal came due while identity was away"
    # Each proxy whose renewal failed still held its certificate, and renews now.
    assert all(states_back[p.name][0] > time.time() for p in proxies), "a certificate expired"
    renewed_at: dict[str, float] = {}

    def all_renewed() -> bool:
        for pod in failed:
            if pod.name not in renewed_at and _cert_state(cluster, pod)[1] > states_back[pod.name][1]:
                renewed_at[pod.name] = time.monotonic()
        return len(renewed_at) == len(failed)

    eventually(all_renewed, _bound(IDENTITY_OUTAGE) + 5, "every failed renewal retried", interval=0.25)
    took = max(renewed_at.values()) - back
    _zero_failures(run, IDENTITY_OUTAGE, record, since, took, identity_away=(round(down, 1), "s"),
                   renewals_failed=(len(failed), "proxies"))  # fmt: skip


# --- 6. one telemetry replica ---------------------------------------------------------------------------


def test_telemetry_replica_killed(run: Run, record: Any) -> None:
    cluster, mesh = run.cluster, run.mesh
    replicas = _control(mesh, "tether-telemetry")
    victim = max(replicas, key=lambda p: _metric(cluster, p, "tether_telemetry_streams_open", "telemetry"))
    streams = _metric(cluster, victim, "tether_telemetry_streams_open", "telemetry")
    acked = {p.name: _metric(cluster, p, "proxy_telemetry_reports_acknowledged_total") for p in run.proxies}
    since = time.monotonic()
    cluster.kill(victim, "telemetry")

    def all_acknowledged() -> bool:
        now = {p.name: _metric(cluster, p, "proxy_telemetry_reports_acknowledged_total") for p in run.proxies}
        return all(now[name] > count for name, count in acked.items())

    eventually(all_acknowledged, _bound(TELEMETRY_REPLICA) + 5, "every proxy's reports acknowledged again",
               interval=0.5)  # fmt: skip
    took = time.monotonic() - since
    cluster.restart(victim, "telemetry")
    _zero_failures(run, TELEMETRY_REPLICA, record, since, took, streams_on_it=(int(streams), "streams"))


# --- 7. the issuer --------------------------------------------------------------------------------------


def test_issuer_rotated(run: Run) -> None:
    """The Secret's files change under both identity replicas; what follows is checked at the run's end."""
    secret = issuer_secret(run.mesh.control.anchor)
    run.new_issuer = x509.load_pem_x509_certificate(secret["tls.crt"])
    run.rotated_at = time.time()
    run.faults["the issuer rotation"] = time.monotonic()
    run.cluster.update_secret(CONTROL_NAMESPACE, "tether-identity-issuer", secret)


# --- 8. a proxy partitioned from the control plane ------------------------------------------------------


def test_proxy_partitioned_from_the_control_plane(run: Run, record: Any) -> None:
    cluster, client = run.cluster, run.client
    # Right after a renewal, so that none comes due while it cannot reach identity.
    renewals = _cert_state(cluster, client)[1]
    eventually(lambda: _cert_state(cluster, client)[1] > renewals, LEAF_LIFETIME, "the client to renew",
               interval=0.2)  # fmt: skip
    since = time.monotonic()
    with cluster.partition(client):
        time.sleep(PARTITION_SECONDS)
    healed = time.monotonic()
    acked = _metric(cluster, client, "proxy_telemetry_reports_acknowledged_total")
    eventually(
        lambda: _metric(cluster, client, "proxy_telemetry_reports_acknowledged_total") > acked,
        _bound(PARTITION) + 5,
        "the partitioned proxy's reports acknowledged again",
        interval=0.5,
    )
    took = time.monotonic() - healed
    _zero_failures(run, PARTITION, record, since, took, partitioned=(round(healed - since, 1), "s"))


# --- the rotation run -----------------------------------------------------------------------------------


def _presented_leaf(cluster: Cluster, pod: Pod, port: int, server_name: str) -> x509.Certificate:
    """The certificate the pod presents on ``port`` to a TLS client asking for ``server_name``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only read it; trust is checked below, against the issuer
    context.set_alpn_protocols(["h2"])

    def handshake() -> bytes:
        with (
            socket.create_connection((pod.ip, port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der

    return x509.load_der_x509_certificate(inside(cluster.node.namespace, handshake))


def _chains(leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _await_chained(
    cluster: Cluster, pod: Pod, port: int, name: str, issuer: x509.Certificate, timeout: float
) -> None:
    eventually(lambda: _chains(_presented_leaf(cluster, pod, port, name), issuer), timeout,
               f"{pod.name}'s certificate under the new issuer", interval=1)  # fmt: skip


def _issued_after(pod: Pod, moment: float) -> list[float]:
    """When the pod's proxy logged each certificate it was issued after ``moment`` (wall clock)."""
    return [
        when
        for when, entry in _proxy_log(pod, "certificate_issued", moment)
        if entry["event"] == "certificate_issued"
    ]


def test_rotation_run(run: Run, record: Any) -> None:
    cluster = run.cluster
    assert run.rotated_at is not None and run.new_issuer is not None, "the issuer was not rotated"
    rotated_at, issuer = run.rotated_at, run.new_issuer

    # Every proxy's leaf chains to the new issuer (a renewal after the files changed, about 40 s at most).
    def renewed_under_new_issuer(pod: Pod) -> bool:
        return bool(_issued_after(pod, rotated_at + 1.5))

    eventually(lambda: all(renewed_under_new_issuer(pod) for pod in run.proxies), _bound(ROTATION) + 5,
               "every proxy renewed under the new issuer", interval=0.5)  # fmt: skip
    took = max(min(_issued_after(pod, rotated_at + 1.5)) for pod in run.proxies) - rotated_at
    for pod in run.proxies:
        _presented_leaf(cluster, pod, 4143, pod.identity or "").verify_directly_issued_by(issuer)
    # So do the control plane's own serving certificates (from the same lifecycle).
    for workload, port in (("tether-destination", 8086), ("tether-telemetry", 8087)):
        name = f"{workload}.tether.serviceaccount.identity.cluster.local"
        within = max(1.0, rotated_at + LEAF_LIFETIME - time.time())
        for pod in _control(run.mesh, workload):
            _await_chained(cluster, pod, port, name, issuer, within)
    # The load ran long enough for at least three renewals per proxy.
    time.sleep(max(0.0, run.started + ROTATION_SECONDS - time.monotonic()))
    renewals = {
        pod.name: _metric(cluster, pod, "identity_cert_refresh_count") - run.refreshes_at_start[pod.name]
        for pod in run.proxies
    }
    calls = run.load.stop()
    failed = failures(calls)
    assert min(renewals.values()) >= 3, renewals
    # The merged telemetry counts exactly the calls the client made: inbound at the servers and on the
    # client's edge to them, across the telemetry kill, the NATS restart and the partition.
    sent = len(calls)
    seen: list[tuple[int, int] | None] = [None]

    def exact() -> tuple[int, int] | None:
        seen[0] = _stat_counts(cluster, sent)
        return seen[0] if seen[0] == (sent, sent) else None

    try:
        eventually(exact, 90, f"tether stat to count {sent} calls", interval=2)
    except AssertionError:
        proxies = (
            sum(_metric(cluster, pod, "request_total", direction="inbound") for pod in run.servers),
            _metric(cluster, run.client, "request_total", direction="outbound"),
        )
        raise AssertionError(f"{sent} calls; tether stat counts {seen[0]}, the proxies {proxies}") from None
    counted = seen[0]
    seconds = (run.load.stopped or time.monotonic()) - run.started
    record_result(ROTATION, record, requests=sent, failed=len(failed), recovered=took,
                  measured={"renewals_per_proxy_min": (min(renewals.values()), ""),
                            "load_held": (round(seconds, 1), "s")},
                  failures=_explained(run, failed))  # fmt: skip
    assert counted == (sent, sent), counted


def _stat_counts(cluster: Cluster, sent: int) -> tuple[int, int] | None:
    """(requests the steady pods counted inbound, requests steady-client counted to them), from the public
    API's merged rollups (None when it does not answer); more than ``sent`` fails at once."""
    counts = []
    for args in (("deploy/steady",), ("deploy/steady-client", "--to", "deploy/steady")):
        done = cluster.tether("stat", *args, "-n", SHOP, "-t", "1h", "-o", "json")
        if done.returncode != 0:
            return None
        rows = [row for row in json.loads(done.stdout) if row["name"] == args[0].split("/")[1]]
        counts.append(int(rows[0]["requests"]) if rows else 0)
    inbound, edge = counts
    assert inbound <= sent and edge <= sent, f"telemetry counted {counts} of {sent} calls: some twice"
    return inbound, edge
