"""A replica publishes reports whose acknowledgements never reach the proxy (a partition swallows them);
the proxy moves to the other replica: every call is still counted exactly once (a regression test found by
the e2e partition fault, tests/e2e/test_faults_during_rotation.py).

Before, the proxy resent everything unacknowledged, merged, and the second replica folded it again: the
consumers saw two rollups overlapping on the proxy's ranges and, unable to split either, dropped one (the
calls after the partition were lost). Now every replica reads back what was published (``resume``) and a new
stream's first message is ``ReportAck`` of it: the proxy resends only the rest.

Real proxies and real replicas (in this process), a real nats-server; the Service address in front of the
replicas is a TCP forwarder that can hold what the replicas send back, as a partition would.
"""

from __future__ import annotations

from proxy_mesh import Mesh, Pod, authority, unary
from telemetry_harness import Replica, ServiceAddress, reporting_pod, rollup_consumer

from tether.shared.events import TelemetryRollup
from tether.shared.testing import eventually
from tether.telemetry.rollups import merge_rollups


def _counted(rollups: list[TelemetryRollup], name: str, direction: str) -> int:
    """Requests of one workload's scopes, each report range counted once; no rollup may conflict."""
    kept, conflicts = merge_rollups(rollups)
    assert conflicts == [], f"rollups overlapping counted ranges: {[r.ranges for r in conflicts]}"
    return sum(
        scope.requests
        for rollup in kept
        if rollup.name == name
        for scope in rollup.scopes
        if scope.direction == direction
    )


async def _calls(client: Pod, count: int) -> None:
    async with client.channel(authority("echo")) as channel:
        call = unary(channel)
        for _ in range(count):
            assert await call(b"echo:ok", timeout=5) == b"echo:ok"


async def test_acknowledgements_lost_after_publishing_are_not_counted_twice_elsewhere(
    meshed: Mesh, replicas: list[Replica]
) -> None:
    first, second = replicas
    address = ServiceAddress()
    addr = await address.start(first.addr)
    server = await reporting_pod(meshed, addr, "echo", "server")
    client = await reporting_pod(meshed, addr, None, "client")
    await meshed.register("echo", [server])
    bus, received = await rollup_consumer(meshed)
    try:
        await _calls(client, 50)
        await eventually(lambda: _counted(received, "server", "inbound") == 50, 15.0, "the first calls")
        # The partition: the replica still gets the reports and publishes them; its acknowledgements are lost.
        address.hold()
        await _calls(client, 50)
        await eventually(
            lambda: (
                _counted(received, "server", "inbound") == 100
                and _counted(received, "client", "outbound") == 100
            ),
            15.0,
            "the replica publishing what it cannot acknowledge",
        )
        assert client.proxy.reporter is not None and client.proxy.reporter.state.in_flight
        # The proxies move to the other replica, which tells them what is published already.
        address.fail_over(second.addr)
        await _calls(client, 50)
        await eventually(
            lambda: (
                _counted(received, "server", "inbound") == 150
                and _counted(received, "client", "outbound") == 150
            ),
            20.0,
            "every call counted once",
        )
        settled = len(received)
        await eventually(lambda: len(received) > settled + 2, 10.0, "more rollup intervals")
        assert _counted(received, "server", "inbound") == 150
        assert _counted(received, "client", "outbound") == 150
        assert {r.replica for r in received} == {"telemetry-a", "telemetry-b"}
    finally:
        await bus.close()
        await address.close()
