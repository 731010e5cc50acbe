"""The golden metrics end to end: real proxies report over mTLS to real telemetry replicas, which publish
rollups on a real nats-server; a consumer merges them. Real identity and destination services; the
application is a real grpcio server.

200 gRPC calls from a client pod to a server pod, 20 of them answered UNAVAILABLE, must give in the merged
rollups exactly 200 requests on the server's inbound side and exactly 200 on the client→server edge, with
a 90.0% success rate — with the two proxies' report streams on two different replicas, and when the replica
they report to dies mid-run. There the proxies reach the replicas through a TCP forwarder standing in for a
Kubernetes Service (one address, whichever replica is alive behind it): the one part that is emulated.
"""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from proxy_mesh import NAMESPACE, Mesh, Pod, authority, unary
from telemetry_harness import Replica, ServiceAddress, reporting_pod, rollup_consumer

from tether.shared.events import TelemetryRollup
from tether.shared.testing import eventually
from tether.telemetry.rollups import merge_rollups

CALLS, FAILED = 200, 20


async def make_calls(client: Pod, indices: range) -> None:
    """The scripted pattern: every tenth call answered UNAVAILABLE by the application."""
    async with client.channel(authority("echo")) as channel:
        call = unary(channel)
        for index in indices:
            if index % (CALLS // FAILED) == 0:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await call(b"status:UNAVAILABLE", timeout=5)
                assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            else:
                assert await call(b"echo:ok", timeout=5) == b"echo:ok"


def tally(rollups: list[TelemetryRollup], name: str, direction: str, **labels: str) -> tuple[int, int, int]:
    """(requests, successes, responses) of one workload's scopes, each report range counted once."""
    kept, conflicts = merge_rollups(rollups)
    assert conflicts == []
    requests = successes = responses = 0
    for rollup in kept:
        for scope in rollup.scopes:
            wanted = all(scope.labels.get(key) == value for key, value in labels.items())
            if rollup.name != name or scope.direction != direction or not wanted:
                continue
            requests += scope.requests
            responses += sum(response.count for response in scope.responses)
            successes += sum(response.count for response in scope.responses if response.success)
    return requests, successes, responses


async def test_golden_metrics_are_exact_across_two_replicas(meshed: Mesh, replicas: list[Replica]) -> None:
    first, second = replicas
    server = await reporting_pod(meshed, second.addr, "echo", "server")
    client = await reporting_pod(meshed, first.addr, None, "client")
    await meshed.register("echo", [server])
    bus, received = await rollup_consumer(meshed)
    try:
        await make_calls(client, range(CALLS))
        # The edge: the client's outbound scopes towards the server's workload (named by discovery).
        edge = {"dst_name": "echo", "server_id": server.identity or ""}

        def counted() -> bool:
            return (
                tally(received, "server", "inbound")[0] == CALLS
                and tally(received, "client", "outbound", **edge)[2] == CALLS
            )

        await eventually(counted, 20.0, "every call in the merged rollups")
        inbound = tally(received, "server", "inbound")
        outbound = tally(received, "client", "outbound", **edge)
        assert inbound == (CALLS, CALLS - FAILED, CALLS)
        assert outbound == (CALLS, CALLS - FAILED, CALLS)
        assert round(100.0 * inbound[1] / inbound[2], 1) == 90.0
        # Each workload's rollups come from the replica its proxy reports to.
        assert {r.replica for r in received if r.name == "server"} == {"telemetry-b"}
        assert {r.replica for r in received if r.name == "client"} == {"telemetry-a"}
        assert {(r.namespace, r.kind) for r in received} == {(NAMESPACE, "deployment")}
        # Later rollups (traffic stopped) never add to the totals: the counts stay exact.
        settled = len(received)
        await eventually(lambda: len(received) > settled + 2, 10.0, "more rollup intervals")
        assert tally(received, "server", "inbound") == (CALLS, CALLS - FAILED, CALLS)
    finally:
        await bus.close()


async def test_a_replica_dying_mid_run_loses_nothing_and_counts_nothing_twice(
    meshed: Mesh, replicas: list[Replica]
) -> None:
    first, second = replicas
    address = ServiceAddress()
    addr = await address.start(first.addr)
    server = await reporting_pod(meshed, addr, "echo", "server")
    client = await reporting_pod(meshed, addr, None, "client")
    await meshed.register("echo", [server])
    bus, received = await rollup_consumer(meshed)
    edge = {"dst_name": "echo", "server_id": server.identity or ""}
    try:
        await make_calls(client, range(CALLS // 2))
        await eventually(lambda: tally(received, "server", "inbound")[0] > 0, 10.0, "a first rollup")
        # The replica dies: what it folded since its last publish is neither published nor acknowledged.
        await first.service.abandon()
        address.fail_over(second.addr)
        await make_calls(client, range(CALLS // 2, CALLS))

        def counted() -> bool:
            return (
                tally(received, "server", "inbound")[0] == CALLS
                and tally(received, "client", "outbound", **edge)[2] == CALLS
            )

        await eventually(counted, 30.0, "every call in the merged rollups, once")
        assert tally(received, "server", "inbound") == (CALLS, CALLS - FAILED, CALLS)
        assert tally(received, "client", "outbound", **edge) == (CALLS, CALLS - FAILED, CALLS)
        assert {r.replica for r in received} == {"telemetry-a", "telemetry-b"}
    finally:
        await bus.close()
        await address.close()


async def test_a_stopping_proxy_reports_what_it_counted_since_its_last_report(
    meshed: Mesh, replicas: list[Replica]
) -> None:
    """A short-lived pod (a Job, a ``tether run`` command) stops before its next report is due: its last
    requests must still reach telemetry, sent as the proxy shuts down."""
    first, _ = replicas
    # Reports every minute: within this test only the final one, on shutdown, can carry the calls.
    server = await reporting_pod(meshed, first.addr, "echo", "server", report_interval=60.0)
    client = await reporting_pod(meshed, first.addr, None, "client", report_interval=60.0)
    await meshed.register("echo", [server])
    bus, received = await rollup_consumer(meshed)
    try:
        await eventually(
            lambda: client.proxy.reporter is not None and client.proxy.reporter.connected,
            10.0,
            "the client's report stream",
        )
        async with client.channel(authority("echo")) as channel:
            call = unary(channel)
            for _ in range(10):
                assert await call(b"echo:ok", timeout=5) == b"echo:ok"
        await client.runtime.stop()
        await server.runtime.stop()
        edge = {"dst_name": "echo", "server_id": server.identity or ""}
        await eventually(
            lambda: (
                tally(received, "client", "outbound", **edge)[2] == 10
                and tally(received, "server", "inbound")[2] == 10
            ),
            10.0,
            "the final reports' calls in the rollups",
        )
    finally:
        await bus.close()
