"""Baseline: the shop's three services calling each other through the mesh, and the harness as promised.

client → web over HTTP/1.1, web → books over gRPC, books → redis over TCP (RESP), at a steady 20 requests/s.
Every request succeeds; every hop is mTLS with the expected identities, seen by the applications (the
``tether-client-id`` web and books receive) and by the inbound proxies' metrics (``client_id``, ``tls``);
``tether stat``, ``tether edges`` and ``tether tap`` (the real CLI against the public API's Service
address) show that traffic. First, what the harness promises about each pod: no default route, the
interception rules in both families, and a proxy running as UID 2102 with exactly the command line and
environment ``tether inject`` wrote.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from e2e_cluster import PROXY_CONTAINER, Cluster, Pod, identity_of
from e2e_load import steady_load
from e2e_mesh import SHOP, Mesh
from e2e_node import assert_no_default_route
from e2e_scenarios import scenario_record
from mesh_pods import eventually, sample

pytestmark = pytest.mark.netns

RATE = 20.0
REQUESTS = 200
IMAGE_VARIABLES = {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "HOSTNAME"}


def _expected_proxy_env(pod: Pod, template: dict[str, Any]) -> dict[str, str]:
    """What the kubelet makes of the injected tether-proxy container's ``env`` for this pod (resolved here
    independently of the harness' own translation)."""
    sidecar = next(c for c in template["spec"]["initContainers"] if c["name"] == PROXY_CONTAINER)
    fields = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "spec.serviceAccountName": template["spec"]["serviceAccountName"],
    }
    env: dict[str, str] = {}
    for variable in sidecar["env"]:
        if "value" in variable:
            env[variable["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), variable["value"]
            )
        else:
            env[variable["name"]] = fields[variable["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def _process(pod: Pod, container: str) -> tuple[list[str], dict[str, str], str]:
    process = pod.containers[container].process
    assert process is not None and process.popen.poll() is None
    proc = Path(f"/proc/{process.popen.pid}")
    argv = proc.joinpath("cmdline").read_bytes().decode().split("\0")[:-1]
    environ = dict(
        item.split("=", 1)
        for item in proc.joinpath("environ").read_bytes().decode().split("\0")
        if "=" in item
    )
    uid = next(line for line in proc.joinpath("status").read_text().splitlines() if line.startswith("Uid:"))
    return argv, environ, uid


def _assert_pod_as_promised(cluster: Cluster, pod: Pod) -> None:
    assert_no_default_route(pod.netns)
    for saver in ("iptables-save", "ip6tables-save"):
        rules = pod.netns.run([saver, "-t", "nat"]).stdout
        for chain in ("TETHER_PROXY_INBOUND", "TETHER_PROXY_OUTBOUND"):
            assert f"-j {chain}" in rules, f"{pod.name}: no {chain} hook in {saver}:\n{rules}"
    template = cluster.workloads[(pod.namespace, pod.workload)].template
    argv, environ, uid = _process(pod, PROXY_CONTAINER)
    sidecar = next(c for c in template["spec"]["initContainers"] if c["name"] == PROXY_CONTAINER)
    # The interpreter runs the console script: what follows it is the container's command and args.
    assert [Path(argv[1]).name, *argv[2:]] == [*sidecar["command"], *sidecar["args"]], argv
    assert {k: v for k, v in environ.items() if k not in IMAGE_VARIABLES} == _expected_proxy_env(
        pod, template
    )
    assert environ["HOSTNAME"] == pod.name
    assert uid.split()[1:] == ["2102"] * 4, f"{pod.name}'s proxy runs as {uid}"


def _assert_ipv6_intercepted(cluster: Cluster, mesh: Mesh) -> None:
    """web's application listens on IPv4 only: an HTTP answer on its pod's IPv6 address comes from its
    inbound proxy, through the ip6tables rules (it finds nothing to relay to there: 502)."""
    url = f"http://[{mesh.web.ipv6}]:8080/healthz"
    done = cluster.exec_run(
        mesh.plain, ["curl", "-sS", "-g", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", url]
    )
    assert done.stdout.strip() == "502", f"{url} from {mesh.plain.name}: {done.stdout} {done.stderr}"


def _chain_identities(mesh: Mesh) -> dict[str, str]:
    return {"web": identity_of("client", SHOP), "books": identity_of("web", SHOP)}


def test_baseline(healthy_mesh: Mesh, record: Any) -> None:
    mesh, cluster = healthy_mesh, healthy_mesh.cluster
    rec = scenario_record(record, "Baseline")
    for pod in [mesh.client, mesh.web, *mesh.books, mesh.redis]:
        _assert_pod_as_promised(cluster, pod)
    _assert_ipv6_intercepted(cluster, mesh)
    before = {pod.name: cluster.metrics(pod) for pod in [mesh.web, *mesh.books, mesh.redis]}
    with steady_load(cluster, mesh.client, rate=RATE, name="baseline") as load:
        load.wait_requests(REQUESTS // 2)
        tap = cluster.tether("tap", "deploy/web", "-n", SHOP, "--max-requests", "5", "-o", "json")
        load.wait_requests(REQUESTS)
        stats = eventually(lambda: _stat_rows(cluster), 45, "tether stat to show web, books and redis")
        edges = eventually(lambda: _edges(cluster), 45, "tether edges to show every hop")
    summary = load.stop()
    rec.traffic(summary.sent, summary.failed)
    assert summary.failed == 0, summary.describe()
    # The applications' side: each hop saw its caller's identity, and both books pods served.
    outcomes = load.outcomes()
    assert {json.dumps(o.ids, sort_keys=True) for o in outcomes} == {
        json.dumps(_chain_identities(mesh), sort_keys=True)
    }
    assert {o.by["books"] for o in outcomes} == {pod.name for pod in mesh.books}
    # The mesh's side: the inbound proxies counted exactly these requests, each over mTLS from its caller.
    # Redis: books keeps its connections open across scenarios, so count bytes rather than new connections.
    hops = [(mesh.web, "client", "request_total"), (mesh.redis, "books", "tcp_read_bytes_total")]
    hops += [(pod, "web", "request_total") for pod in mesh.books]
    served = 0
    for pod, caller, series in hops:
        after = cluster.metrics(pod)
        # TCP series count each connection on both sides: the client's (peer="src") and the application's.
        side = {"peer": "src"} if series.startswith("tcp_") else {}
        labels = {"direction": "inbound", "tls": "true", "client_id": identity_of(caller, SHOP), **side}
        count = sample(after, series, **labels) - sample(before[pod.name], series, **labels)
        every = sample(after, series, direction="inbound", **side)
        every -= sample(before[pod.name], series, direction="inbound", **side)
        assert count == every, f"{pod.name}: {every - count} inbound {series} without mTLS from {caller}"
        if pod.workload == "books":
            served += int(count)
        elif pod.workload == "web":
            assert count == summary.sent, f"web's proxy counted {count} requests of {summary.sent}"
        else:
            assert count > 0, f"redis' proxy read nothing from books over mTLS: {count}"
    assert served == summary.sent, f"the books proxies counted {served} requests of {summary.sent}"
    rec.measure("p99_latency_ms", sorted(o.ms for o in outcomes)[int(len(outcomes) * 0.99) - 1], unit="ms")
    # The CLI's side.
    assert tap.returncode == 0, tap.stderr
    events = [json.loads(line) for line in tap.stdout.splitlines() if line.strip()]
    assert events, "tether tap printed nothing"
    assert any("/chain" in json.dumps(event) for event in events), events[:3]
    rec.measure("stat_rows", len(stats))
    check = cluster.tether("check")
    assert check.returncode == 0, check.stdout + check.stderr
    rec.measure("edges", len(edges))


def _stat_rows(cluster: Cluster) -> dict[str, dict[str, Any]] | None:
    """``tether stat deploy/<callee> --from deploy/<caller>`` for each hop, once each shows the traffic: the
    requests (or, for Redis, the connections) all succeeded and all over mTLS."""
    rows: dict[str, dict[str, Any]] = {}
    for caller, callee in (("client", "web"), ("web", "books"), ("books", "redis")):
        done = cluster.tether(
            "stat", f"deploy/{callee}", "--from", f"deploy/{caller}", "-n", SHOP, "-o", "json"
        )
        if done.returncode != 0:
            return None
        [row] = json.loads(done.stdout)
        if callee == "redis":
            if not row["tcp_open_connections"]:
                return None
        else:
            if not row["requests"]:
                return None
            assert row["failure"] == 0 and row["success_rate"] == 1.0, row
            assert row["tls_share"] == 1.0, row
        rows[callee] = row
    return rows


def _edges(cluster: Cluster) -> list[dict[str, Any]] | None:
    done = cluster.tether("edges", "deploy", "-n", SHOP, "-o", "json")
    if done.returncode != 0:
        return None
    edges: list[dict[str, Any]] = json.loads(done.stdout)
    wanted = {("client", "web"), ("web", "books"), ("books", "redis")}
    seen = {(e["src"]["name"], e["dst"]["name"]): e for e in edges}
    if not wanted <= set(seen):
        return None
    for source, destination in wanted:
        edge = seen[(source, destination)]
        assert edge["secured"] is True, edge
        assert edge["client_id"] == identity_of(source, SHOP), edge
        assert edge["server_id"] == identity_of(destination, SHOP), edge
    return edges
