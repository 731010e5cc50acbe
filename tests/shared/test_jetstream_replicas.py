"""JetStream replica counts: destination's ``--kv-replicas`` (the endpoint and lease buckets) and
telemetry's ``--stream-replicas`` (the ``tether_rollups`` stream), as the HA overlay sets them.

Real nats-server processes: a single server (one replica works; asking for three fails at start-up in one
line naming the cause and the fix, exit 2), and a 3-node JetStream cluster on loopback, where what a
single-replica install created is moved over to three replicas with its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from structlog.testing import capture_logs

from tether.destination.config import DestinationConfig
from tether.destination.service import DestinationService
from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.config import config_from
from tether.shared.events import EndpointSet
from tether.shared.natsserver import EmbeddedNats, free_port, nats_server_binary
from tether.shared.runtime import Runtime
from tether.shared.testing import eventually
from tether.telemetry.config import TelemetryConfig
from tether.telemetry.service import TelemetryService

REGISTRY = {
    "services": [
        {
            "namespace": "shop",
            "name": "web",
            "ports": [{"name": "http", "port": 80, "target_port": 8080}],
            "endpoints": [{"address": "10.0.0.1"}],
        }
    ]
}


def _config(nats_url: str, registry: Path, replicas: int) -> DestinationConfig:
    registry.write_text(json.dumps(REGISTRY))  # JSON is YAML
    return config_from(
        DestinationConfig,
        "destination",
        {"nats_url": nats_url, "admin_addr": "127.0.0.1:0", "grpc_addr": "127.0.0.1:0"},
        {
            "TETHER_DESTINATION_IDENTITY_DISABLED": "true",
            "TETHER_DESTINATION_SOURCE": "local",
            "TETHER_DESTINATION_REGISTRY_FILE": str(registry),
            "TETHER_DESTINATION_KV_REPLICAS": str(replicas),
        },
    )


async def _replicas(nats_url: str, stream: str) -> tuple[int, int]:
    """(configured replicas, replicas the cluster reports current) of ``stream``."""
    client = await nats.connect(nats_url.split(","))
    try:
        info = await client.jetstream().stream_info(stream)
        current = 1 + sum(1 for peer in (info.cluster.replicas or []) if peer.current) if info.cluster else 1
        return int(info.config.num_replicas or 1), current
    finally:
        await client.close()


async def test_one_replica_on_a_single_server(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    config = _config(nats_server.url, tmp_path / "registry.yaml", 1)
    runtime = Runtime("destination", config, DestinationService(config), version="9.9.9")
    await runtime.start()
    try:
        for bucket in (subjects.ENDPOINTS_BUCKET, subjects.LEASES_BUCKET):
            assert await _replicas(nats_server.url, f"KV_{bucket}") == (1, 1)
    finally:
        await runtime.stop()


def test_three_replicas_on_a_single_server_fail_at_start_in_one_line(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    config = _config(nats_server.url, tmp_path / "registry.yaml", 3)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TETHER_")},
        "TETHER_NATS_URL": nats_server.url,
        "TETHER_ADMIN_ADDR": "127.0.0.1:0",
        "TETHER_DESTINATION_GRPC_ADDR": "127.0.0.1:0",
        "TETHER_DESTINATION_IDENTITY_DISABLED": "true",
        "TETHER_DESTINATION_SOURCE": "local",
        "TETHER_DESTINATION_REGISTRY_FILE": config.registry_file,
        "TETHER_DESTINATION_KV_REPLICAS": "3",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tether.destination"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "tether-destination: error: NATS refused 3 replicas for the key-value bucket tether_endpoints "
        "(replicas > 1 not supported in non-clustered mode); run NATS as a cluster of at least 3"
    ), last
    assert "--kv-replicas" in last and "Traceback" not in done.stderr


class NatsCluster:
    """Three nats-server processes in one JetStream cluster on loopback (routes between them)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = [free_port() for _ in range(3)]
        self.routes = [free_port() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.ports)

    async def start(self) -> None:
        for index, (port, route) in enumerate(zip(self.ports, self.routes, strict=True)):
            directory = self.workdir / f"n{index}"
            directory.mkdir(parents=True)
            config: dict[str, Any] = {
                "server_name": f"n{index}",
                "host": "127.0.0.1",
                "port": port,
                "jetstream": {"store_dir": str(directory / "js")},
                "cluster": {
                    "name": "tether",
                    "host": "127.0.0.1",
                    "port": route,
                    "routes": [f"nats://127.0.0.1:{other}" for other in self.routes if other != route],
                },
            }
            (directory / "nats.conf").write_text(json.dumps(config))
            self.processes.append(
                subprocess.Popen(  # returns at once; readiness is awaited below
                    [nats_server_binary(), "--config", str(directory / "nats.conf")],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=(directory / "log").open("wb"),
                )
            )

        async def jetstream_ready() -> bool:
            with contextlib.suppress(Exception):
                client = await nats.connect(self.url.split(","), connect_timeout=1, max_reconnect_attempts=0)
                try:
                    info = await client.jetstream().account_info()
                    return info is not None
                finally:
                    await client.close()
            return False

        await eventually(jetstream_ready, timeout=30, interval=0.2, what="the JetStream meta leader")

    async def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), 10)
            except TimeoutError:
                process.kill()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    running = NatsCluster(tmp_path / "cluster")
    try:
        await running.start()
        yield running
    finally:
        await running.stop()


async def test_single_replica_buckets_move_over_to_three_in_a_cluster(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    # What a single-node install left behind: R1 buckets holding the endpoint set.
    first = _config(cluster.url, tmp_path / "registry.yaml", 1)
    runtime = Runtime("destination", first, DestinationService(first), version="9.9.9")
    await runtime.start()
    bus = await Bus.connect(cluster.url, name="reader")
    try:
        kv = await bus.kv(subjects.ENDPOINTS_BUCKET, create=False)

        async def written() -> bool:
            return await kv.get("shop.web", EndpointSet) is not None

        await eventually(written, what="the endpoint set in the R1 bucket")
        await runtime.stop()
        assert await _replicas(cluster.url, f"KV_{subjects.ENDPOINTS_BUCKET}") == (1, 1)

        # The HA overlay's destination: --kv-replicas 3 moves both buckets over, once.
        moved = _config(cluster.url, tmp_path / "registry.yaml", 3)
        with capture_logs() as logs:
            for _ in range(2):  # a second replica (or restart) finds them moved already
                runtime = Runtime("destination", moved, DestinationService(moved), version="9.9.9")
                await runtime.start()
                await runtime.stop()
        raised = [entry for entry in logs if entry["event"] == "bucket_replicas_raised"]
        assert sorted((e["bucket"], e["replicas_before"], e["replicas"]) for e in raised) == [
            (subjects.ENDPOINTS_BUCKET, 1, 3),
            (subjects.LEASES_BUCKET, 1, 3),
        ]
        for bucket in (subjects.ENDPOINTS_BUCKET, subjects.LEASES_BUCKET):

            async def replicated(stream: str = f"KV_{bucket}") -> bool:
                return await _replicas(cluster.url, stream) == (3, 3)

            await eventually(replicated, what=f"{bucket} on three current replicas")
        entry = await kv.get("shop.web", EndpointSet)
        assert entry is not None and entry.value is not None
        assert [e.address for e in entry.value.endpoints] == ["10.0.0.1"]
    finally:
        await bus.close()


def _telemetry(nats_url: str, replicas: int) -> TelemetryConfig:
    return config_from(
        TelemetryConfig,
        "telemetry",
        {"nats_url": nats_url, "admin_addr": "127.0.0.1:0", "grpc_addr": "127.0.0.1:0"},
        {"TETHER_TELEMETRY_IDENTITY_DISABLED": "true", "TETHER_TELEMETRY_STREAM_REPLICAS": str(replicas)},
    )


def test_three_rollup_stream_replicas_on_a_single_server_fail_at_start_in_one_line(
    nats_server: EmbeddedNats,
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TETHER_")},
        "TETHER_NATS_URL": nats_server.url,
        "TETHER_ADMIN_ADDR": "127.0.0.1:0",
        "TETHER_TELEMETRY_GRPC_ADDR": "127.0.0.1:0",
        "TETHER_TELEMETRY_IDENTITY_DISABLED": "true",
        "TETHER_TELEMETRY_STREAM_REPLICAS": "3",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tether.telemetry"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "tether-telemetry: error: NATS refused 3 replicas for the stream tether_rollups"
    ), last
    assert "--stream-replicas" in last and "Traceback" not in done.stderr


async def test_a_single_replica_rollup_stream_moves_over_to_three_in_a_cluster(cluster: NatsCluster) -> None:
    for replicas in (1, 3):  # the single-node install, then the HA overlay's telemetry
        config = _telemetry(cluster.url, replicas)
        runtime = Runtime("telemetry", config, TelemetryService(config), version="9.9.9")
        await runtime.start()
        await runtime.stop()
        if replicas == 1:
            assert await _replicas(cluster.url, subjects.ROLLUPS_STREAM) == (1, 1)

    async def replicated() -> bool:
        return await _replicas(cluster.url, subjects.ROLLUPS_STREAM) == (3, 3)

    await eventually(replicated, what="tether_rollups on three current replicas")
