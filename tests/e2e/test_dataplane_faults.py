"""Data-plane faults: one endpoint of three misbehaves at the network level while a steady load runs.

Service ``edge`` (selector-less, as with a hand-written EndpointSlice) lists three endpoints, each the
address of a fault relay (tests/e2e/fault_relay.py, a plain pod) forwarding TCP to one ``edge`` pod and
carrying that pod's identity: the client's proxy dials the relay with mTLS and the relay passes the
ciphertext on, as a network path would (this kernel has no ``tc netem``). All three relays are in the path,
so the endpoints differ only by the fault. The load: plain grpcio from the ``edge-client`` pod to
``edge.shop.svc.cluster.local:8080`` at a fixed rate, every call's outcome recorded
(tests/e2e/steady_load.py).

One after another, on that one load (each scenario's allowed failures in tests/e2e/reliability.py):

* latency on one endpoint's path: its share of new calls falls to under half of what it was, nothing fails;
* one endpoint's connections all reset at once: only the calls in flight on them fail;
* one endpoint hangs (accepts, answers nothing): each call sent to it ends at the client's deadline, a
  reset the client's proxy propagates; within 10 s its share of new calls is under 5% and failures stop; a
  fresh connection to it ends at the proxy's connect (TLS handshake) timeout, not never.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_cluster import Cluster, ManualEndpoint, Pod
from e2e_mesh import SHOP, Mesh, app, deployment
from fault_relay import RelayControl
from mesh_pods import eventually, sample
from reliability import DATAPLANE, HANG, LATENCY, RESET, Scenario, record_result
from steady_load import Call, RunningLoad, describe, failures, started_between

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

HERE = Path(__file__).resolve().parent
STEADY_LOAD = HERE / "steady_load.py"
RELAY = HERE / "fault_relay.py"
PORT = 8080
#: Each call takes this long in the application, so that calls are in flight on every endpoint.
WORK_MS = 100
#: The proxy's --connect-timeout default (also its TLS handshake bound); tether inject sets no other.
CONNECT_TIMEOUT = 1.0
LATENCY_MS = 150
OBSERVE = 12.0
#: The issue's bound: a hung endpoint takes under 5% of new calls, and none fail, this long after it hung.
AVOIDED_WITHIN = 10.0


@dataclass
class Endpoint:
    pod: Pod
    relay_pod: Pod
    relay: RelayControl

    @property
    def name(self) -> str:
        return self.pod.name


@dataclass
class Edge:
    cluster: Cluster
    client: Pod
    endpoints: list[Endpoint]
    load: RunningLoad

    def settled(self, within: float = 2.0) -> None:
        """Wait until every endpoint answered calls started in the last ``within`` seconds."""

        def all_answering() -> bool:
            recent = started_between(self.load.calls(), time.monotonic() - within - 1.5)
            answered = {call.backend for call in recent if call.ok}
            return answered >= {endpoint.name for endpoint in self.endpoints}

        eventually(all_answering, 30, "every edge endpoint answering", interval=0.25)

    def finished(self, until: float) -> list[Call]:
        return self.load.finished(until, DATAPLANE.deadline)


def _share(calls: Sequence[Call], backend: str, count_failures: bool = False) -> float:
    if not calls:
        return 0.0
    hits = sum(1 for call in calls if call.backend == backend or (count_failures and not call.ok))
    return hits / len(calls)


def _first_lasting(calls: Sequence[Call], since: float, until: float, ok: Any) -> float | None:
    """The earliest offset from ``since`` (in 0.25 s steps) after which every 2 s window of calls, up to
    ``until``, satisfies ``ok``; None if none does."""
    step, window = 0.25, 2.0
    starts = [since + step * index for index in range(int((until - since - window) / step) + 1)]
    verdicts = [ok(started_between(calls, start, start + window)) for start in starts]
    for index in range(len(starts)):
        if all(verdicts[index:]):
            return starts[index] - since
    return None


def _relay_deployment(index: int, upstream: str, control: Path) -> dict[str, Any]:
    command = [sys.executable, str(RELAY), "--listen", f"0.0.0.0:{PORT}", "--upstream", f"{upstream}:{PORT}"]
    return deployment(
        f"edge-relay-{index}",
        [*command, "--control", str(control)],
        ports={"relay": PORT},
        readiness={"tcpSocket": {"port": PORT}},
    )


@pytest.fixture(scope="module")
def edge(mesh: Mesh) -> Iterator[Edge]:
    mesh.wait_healthy()
    cluster = mesh.cluster
    server = deployment(
        "edge",
        [sys.executable, str(STEADY_LOAD), "serve", "--port", str(PORT), "--name", "$(POD_NAME)",
         "--delay-ms", str(WORK_MS)],
        ports={"grpc": PORT}, readiness={"tcpSocket": {"port": PORT}}, replicas=3,
    )  # fmt: skip
    started: list[Pod] = []
    load: RunningLoad | None = None
    try:
        started += mesh.deploy([server, deployment("edge-client", app("idle"))])
        pods = cluster.pods_of("edge", SHOP)
        controls = [cluster.directory / f"edge-relay-{index}.sock" for index in range(len(pods))]
        relays = [_relay_deployment(index, pod.ip, controls[index]) for index, pod in enumerate(pods)]
        started += mesh.deploy(relays, meshed=False)
        relay_pods = [cluster.pods_of(f"edge-relay-{index}", SHOP)[0] for index in range(len(pods))]
        # A Service without a selector: its endpoints are the relays, each with the identity of its pod.
        cluster.add_service({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "edge", "namespace": SHOP},
            "spec": {"ports": [{"name": "grpc", "port": PORT, "targetPort": PORT}]},
        })  # fmt: skip
        labels = {"deployment": "edge", "serviceaccount": "edge"}
        cluster.set_endpoints(SHOP, "edge", [
            ManualEndpoint(relay.ip, pod.identity, {"pod": pod.name, **labels})
            for pod, relay in zip(pods, relay_pods, strict=True)
        ])  # fmt: skip
        endpoints = [
            Endpoint(pod, relay, RelayControl(control))
            for pod, relay, control in zip(pods, relay_pods, controls, strict=True)
        ]
        client = cluster.pods_of("edge-client", SHOP)[0]
        load = RunningLoad(
            cluster, client, f"edge.{SHOP}.svc.cluster.local:{PORT}", rate=DATAPLANE.rate,
            deadline=DATAPLANE.deadline, name="edge",
        )  # fmt: skip
        yield Edge(cluster, client, endpoints, load)
    finally:
        if load is not None:
            load.stop()
        if (SHOP, "edge") in cluster.services:
            cluster.set_endpoints(SHOP, "edge", [])
        for pod in started:
            cluster.delete_pod(pod)


def _record(record: Any, scenario: Scenario, calls: Sequence[Call], failed: int, recovered: float | None,
            **measured: tuple[float, str]) -> None:  # fmt: skip
    record_result(
        scenario, record, requests=len(calls), failed=failed, recovered=recovered, measured=measured
    )


def test_latency_on_one_endpoint_shifts_load_away(edge: Edge, record: Any) -> None:
    edge.settled()
    now = time.monotonic()
    recent = started_between(edge.load.calls(), now - 3, now)
    # The endpoint taking the most calls now is slowed down: the balancer spreads them unevenly at times (a
    # latency-aware balancer keeps an endpoint that was slow once, on a busy machine, at a lower share for a
    # while), so a fixed choice may start from too small a share to see it fall.
    slow = max(edge.endpoints, key=lambda endpoint: _share(recent, endpoint.name))
    before = _share(recent, slow.name)
    assert before > 0.15, f"{slow.name} took {before:.0%} of the calls before any fault"
    injected = time.monotonic()
    slow.relay.latency(LATENCY_MS)
    calls = started_between(edge.finished(injected + OBSERVE), injected, injected + OBSERVE)
    slow.relay.passing()
    failed = failures(calls)
    assert not failed, describe(failed)
    shifted = _first_lasting(calls, injected, injected + OBSERVE, lambda w: _share(w, slow.name) < before / 2)
    assert shifted is not None, f"{slow.name}'s share never stayed under {before / 2:.0%}"
    after = _share(started_between(calls, injected + shifted, injected + OBSERVE), slow.name)
    _record(record, LATENCY, calls, len(failed), shifted, share_before=(round(100 * before, 1), "%"),
            share_after=(round(100 * after, 1), "%"))  # fmt: skip


def test_resets_fail_only_the_calls_in_flight_on_them(edge: Edge, record: Any) -> None:
    victim = edge.endpoints[1]
    edge.settled()
    sent = time.monotonic()
    stats = victim.relay.reset()
    done = time.monotonic()
    assert stats["reset"] >= 1, f"the relay reset no connection: {stats}"
    calls = started_between(edge.finished(sent + 6), sent - DATAPLANE.deadline, sent + 6)
    in_flight = [call for call in calls if call.start <= done and call.end >= sent]
    failed = failures(calls)
    # Each failure was in flight when the connections went, and failed then (not at its deadline).
    late = [call for call in failed if call not in in_flight or call.end - sent > 0.5]
    assert not late, "failed but not in flight at the reset:\n" + describe(late)
    assert len(failed) <= len(in_flight) - sum(1 for call in in_flight if call.ok)
    again = [call for call in calls if call.backend == victim.name and call.start > done]
    assert again, f"{victim.name} answered nothing after the reset"
    recovered = min(call.end for call in again) - sent
    _record(record, RESET, calls, len(failed), recovered, in_flight_at_reset=(len(in_flight), "calls"),
            connections_reset=(stats["reset"], ""))  # fmt: skip


def _tcp_probe(edge: Edge, address: str) -> tuple[float, str]:
    """A fresh TCP connection from the client pod to ``address`` (intercepted: the proxy dials the endpoint
    anew with mTLS); how long until the client saw it end, and how."""
    script = (
        "import socket, sys, time\n"
        "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)\n"
        "s.settimeout(15); started = time.monotonic(); s.sendall(b'probe\\n')\n"
        "try:\n    end = 'eof' if not s.recv(100) else 'data'\n"
        "except ConnectionResetError:\n    end = 'reset'\n"
        "except TimeoutError:\n    end = 'timeout'\n"
        "print(round(time.monotonic() - started, 3), end)\n"
    )
    done = edge.cluster.exec_run(edge.client, [sys.executable, "-c", script, address, str(PORT)], timeout=30)
    assert done.returncode == 0, done.stderr
    elapsed, how = done.stdout.split()
    return float(elapsed), how


def test_a_hung_endpoint_is_bounded_then_avoided(edge: Edge, record: Any) -> None:
    hung = edge.endpoints[2]
    edge.settled()
    before = edge.cluster.metrics(edge.client)
    injected = time.monotonic()
    hung.relay.hang()
    window = 20.0
    calls = started_between(edge.finished(injected + window), injected, injected + window)
    failed = failures(calls)
    # Bounded by the client's deadline: each failed call is one the client gave up on, at its deadline.
    unbounded = [
        c for c in failed if c.code != "DEADLINE_EXCEEDED" or c.end - c.start > DATAPLANE.deadline + 0.5
    ]
    assert not unbounded, describe(unbounded)
    assert not [call for call in calls if call.backend == hung.name], f"{hung.name} answered while hung"
    # ... and the client's proxy reset each of them upstream (the deadline propagated as a reset).
    after = edge.cluster.metrics(edge.client)
    labels = {"direction": "outbound", "classification": "failure", "error": "CANCEL"}
    cancelled = sample(after, "response_total", **labels) - sample(before, "response_total", **labels)
    assert cancelled >= len(failed), f"{len(failed)} calls gave up, the proxy reset {cancelled:g} upstream"
    # Within 10 s: under 5% of new calls go to it, and no call fails any more.
    settled = started_between(calls, injected + AVOIDED_WITHIN, injected + window)
    assert _share(settled, hung.name, count_failures=True) < 0.05
    assert not failures(settled), describe(failures(settled))
    recovered = max((call.start - injected for call in failed), default=0.0)
    # A fresh connection into the hung host: bounded by the proxy's connect (TLS handshake) timeout.
    probe_failures = "proxy_tcp_forward_failed_total"
    refused_before = sample(edge.cluster.metrics(edge.client), probe_failures, direction="outbound")
    elapsed, how = _tcp_probe(edge, hung.relay_pod.ip)
    refused = sample(edge.cluster.metrics(edge.client), probe_failures, direction="outbound") - refused_before
    assert how in ("eof", "reset") and refused == 1, (elapsed, how, refused)
    assert CONNECT_TIMEOUT <= elapsed <= 3 * CONNECT_TIMEOUT + 1.0, elapsed
    _record(record, HANG, calls, len(failed), recovered, fresh_connection_ended_after=(elapsed, "s"))
