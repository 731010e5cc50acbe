"""``--max-stream-age``: destination's Get streams and telemetry's Report streams end cleanly after a short
(jittered) age; the proxies reconnect at once, on a new connection, and so spread to a replica added since.

Real proxies, real destination and telemetry replicas (in-process, in the real runtime), real identity and
nats-server, real grpcio applications. The replicas sit behind one address, a TCP forwarder standing in for
a Kubernetes Service: a new connection goes to the backend it currently names, connections already open
stay where they are (scaling out, as opposed to a replica dying).

What must hold across the reconnects: routing never fails (the last endpoints stay in use, no request is
lost) and the telemetry totals are exact (nothing lost, nothing counted twice).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry
from proxy_mesh import Mesh, Pod, authority, unary
from structlog.testing import capture_logs
from telemetry_harness import TELEMETRY, ServiceAddress, reporting_pod, rollup_consumer

from tether.destination.config import DestinationConfig
from tether.destination.service import DestinationService
from tether.shared.events import TelemetryRollup
from tether.shared.runtime import Runtime
from tether.shared.testing import eventually
from tether.telemetry.config import TelemetryConfig
from tether.telemetry.rollups import merge_rollups
from tether.telemetry.service import TelemetryService

AGE = 1.5


class DestinationReplica:
    def __init__(self, name: str, mesh: Mesh) -> None:
        config = DestinationConfig(
            nats_url=mesh.nats.url,
            admin_addr="127.0.0.1:0",
            grpc_addr="127.0.0.1:0",
            source="local",
            registry_file=str(mesh.registry_file),
            identity=mesh.destination_identity(),
            keepalive_interval=5.0,
            shutdown_grace=0.2,
            max_stream_age=AGE,
        )
        self.metrics = CollectorRegistry()
        self.service = DestinationService(config, self.metrics)
        self.runtime = Runtime("destination", config, self.service, version="test", instance=name)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.service.grpc_port}"

    def sample(self, name: str) -> float:
        return self.metrics.get_sample_value(name) or 0.0


class TelemetryReplica:
    def __init__(self, name: str, mesh: Mesh) -> None:
        config = TelemetryConfig(
            nats_url=mesh.nats.url,
            admin_addr="127.0.0.1:0",
            grpc_addr="127.0.0.1:0",
            rollup_interval=1.0,
            shutdown_grace=0.5,
            identity=mesh.identity_config(TELEMETRY),
            max_stream_age=AGE,
        )
        self.metrics = CollectorRegistry()
        self.service = TelemetryService(config, self.metrics)
        self.runtime = Runtime("telemetry", config, self.service, version="test", instance=name)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.service.grpc_port}"

    def sample(self, name: str) -> float:
        return self.metrics.get_sample_value(name) or 0.0


class Traffic:
    """Calls from ``client`` to the echo service, one after the other, until stopped; every outcome kept."""

    def __init__(self, client: Pod, scripted_failures: bool = False) -> None:
        self.client = client
        self.scripted = scripted_failures
        self.calls = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Traffic:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async with self.client.channel(authority("echo")) as channel:
            call = unary(channel)
            while not self._stop.is_set():
                self.calls += 1
                failing = self.scripted and self.calls % 10 == 0
                try:
                    answer = await call(b"status:UNAVAILABLE" if failing else b"echo:ok", timeout=5)
                except grpc.aio.AioRpcError as exc:
                    if not (failing and exc.code() == grpc.StatusCode.UNAVAILABLE):
                        self.failures.append(f"call {self.calls}: {exc.code().name} {exc.details()}")
                else:
                    if failing or answer != b"echo:ok":
                        self.failures.append(f"call {self.calls}: answered {answer!r}")
                await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


async def test_get_streams_end_at_their_age_and_the_proxy_moves_on_without_failing_a_request(
    mesh: Mesh,
) -> None:
    first, second = DestinationReplica("destination-a", mesh), DestinationReplica("destination-b", mesh)
    front = ServiceAddress()
    traffic: Traffic | None = None
    try:
        for replica in (first, second):
            await replica.runtime.start()
            await eventually(replica.service.ready, 10.0, "destination replica ready")
        addr = await front.start(first.addr)
        server = await mesh.pod("echo")
        await mesh.register("echo", [server])
        client = await mesh.pod(None, destination_addr=addr)
        with capture_logs() as logs:
            traffic = Traffic(client).start()
            await eventually(lambda: traffic.calls > 20, 10.0, "calls through the first replica's endpoints")
            assert first.sample("tether_destination_streams_open") == 1.0
            # Scaled out: new connections now reach the second replica; the first keeps what it holds.
            front.backend = second.addr
            await eventually(
                lambda: (
                    second.sample("tether_destination_streams_open") == 1.0
                    and first.sample("tether_destination_streams_open") == 0.0
                ),
                10.0,
                "the client's Get stream on the second replica",
            )
            calls_when_moved = traffic.calls
            # It ages out there too and comes back at once, still routing.
            await eventually(
                lambda: second.sample("tether_destination_streams_expired_total") >= 1.0,
                10.0,
                "a stream aged out on the second replica",
            )
            await eventually(lambda: traffic.calls > calls_when_moved + 20, 10.0, "calls after the move")
            await traffic.stop()
        assert traffic.failures == [], traffic.failures[:5]
        assert first.sample("tether_destination_streams_expired_total") >= 1.0
        # Clean ends: no stream failure, and the proxy's endpoints were never dropped.
        failed = [entry for entry in logs if entry["event"] == "destination_stream_failed"]
        assert failed == []
        await eventually(
            lambda: second.sample("tether_destination_streams_open") == 1.0, 10.0, "the stream reopened"
        )
    finally:
        if traffic is not None:
            await traffic.stop()
        await front.close()
        for replica in (first, second):
            await replica.runtime.stop()


def _tally(rollups: list[TelemetryRollup], name: str, direction: str, **labels: str) -> tuple[int, int, int]:
    """(requests, successes, responses) of one workload's scopes, each report range counted once."""
    kept, conflicts = merge_rollups(rollups)
    assert conflicts == []
    requests = successes = responses = 0
    for rollup in kept:
        for scope in rollup.scopes:
            if rollup.name != name or scope.direction != direction:
                continue
            if any(scope.labels.get(key) != value for key, value in labels.items()):
                continue
            requests += scope.requests
            responses += sum(response.count for response in scope.responses)
            successes += sum(response.count for response in scope.responses if response.success)
    return requests, successes, responses


@pytest.fixture
async def aging_replicas(meshed: Mesh) -> AsyncIterator[list[TelemetryReplica]]:
    started = [TelemetryReplica(name, meshed) for name in ("telemetry-a", "telemetry-b")]
    for replica in started:
        await replica.runtime.start()
        await eventually(replica.runtime.ready, 15.0, "telemetry ready")
    try:
        yield started
    finally:
        for replica in started:
            await replica.runtime.stop()


async def test_report_streams_end_at_their_age_and_the_totals_stay_exact(
    meshed: Mesh, aging_replicas: list[TelemetryReplica]
) -> None:
    first, second = aging_replicas
    front = ServiceAddress()
    addr = await front.start(first.addr)
    bus, received = await rollup_consumer(meshed)
    traffic: Traffic | None = None
    try:
        server = await reporting_pod(meshed, addr, "echo", "server")
        client = await reporting_pod(meshed, addr, None, "client")
        await meshed.register("echo", [server])
        open_streams = "tether_telemetry_streams_open"
        await eventually(lambda: first.sample(open_streams) == 2.0, 10.0, "both proxies on the first replica")
        with capture_logs() as logs:
            traffic = Traffic(client, scripted_failures=True).start()
            await eventually(lambda: traffic.calls > 50, 10.0, "traffic counted by the first replica")
            front.backend = second.addr  # scaled out
            await eventually(
                lambda: second.sample(open_streams) == 2.0 and first.sample(open_streams) == 0.0,
                15.0,
                "both proxies' Report streams moved to the second replica",
            )
            # The streams age out on the second replica too (and come back to it) while traffic goes on.
            await eventually(
                lambda: second.sample("tether_telemetry_streams_expired_total") >= 2.0,
                15.0,
                "streams aged out on the second replica",
            )
            await traffic.stop()
        assert [entry for entry in logs if entry["event"] == "telemetry_stream_failed"] == []
        calls = traffic.calls
        assert traffic.failures == [], traffic.failures[:5]
        failed = calls // 10
        edge = {"dst_name": "echo", "server_id": server.identity or ""}

        def counted() -> bool:
            return (
                _tally(received, "server", "inbound")[0] == calls
                and _tally(received, "client", "outbound", **edge)[2] == calls
            )

        await eventually(counted, 20.0, lambda: f"all {calls} calls in the merged rollups")
        assert _tally(received, "server", "inbound") == (calls, calls - failed, calls)
        assert _tally(received, "client", "outbound", **edge) == (calls, calls - failed, calls)
        assert {r.replica for r in received if r.scopes} == {"telemetry-a", "telemetry-b"}
        assert first.sample("tether_telemetry_streams_expired_total") >= 2.0
        # More intervals and more reconnects add nothing: the totals stay exact.
        expired = second.sample("tether_telemetry_streams_expired_total")
        await eventually(
            lambda: second.sample("tether_telemetry_streams_expired_total") >= expired + 2,
            15.0,
            "another round of aged-out streams",
        )
        settled = len(received)
        await eventually(lambda: len(received) > settled + 2, 10.0, "more rollups")
        assert _tally(received, "server", "inbound") == (calls, calls - failed, calls)
        assert _tally(received, "client", "outbound", **edge) == (calls, calls - failed, calls)
    finally:
        if traffic is not None:
            with contextlib.suppress(Exception):
                await traffic.stop()
        await bus.close()
        await front.close()
