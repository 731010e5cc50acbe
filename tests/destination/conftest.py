"""Harness for the destination acceptance tests: real replica processes, real nats-server, real clients.

Each replica is ``python -m tether.destination`` configured through its environment variables, so these
tests also cover the entry point and configuration. Clients are grpc.aio stubs that keep the endpoint
state a proxy would build from the stream and record every update in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tether.shared.natsserver import free_port
from tether.shared.proto.destination.v1 import destination_pb2 as pb
from tether.shared.proto.destination.v1 import destination_pb2_grpc
from tether.shared.testing import eventually

DEADLINE = 20.0


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    return int(head.split(" ", 2)[1]), body


class Replica:
    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.grpc_port = free_port()
        self.admin_port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.env = {
            **os.environ,
            "TETHER_ADMIN_ADDR": f"127.0.0.1:{self.admin_port}",
            "TETHER_DESTINATION_GRPC_ADDR": f"127.0.0.1:{self.grpc_port}",
            "TETHER_LOG_FORMAT": "json",
            "TETHER_SHUTDOWN_GRACE": "0.5",
            "TETHER_DESTINATION_LEASE_TTL": "3",
            "TETHER_DESTINATION_KEEPALIVE_INTERVAL": "1",
            # Plaintext gRPC: these tests are about discovery (tests/proxy cover destination over TLS).
            "TETHER_DESTINATION_IDENTITY_DISABLED": "true",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tether.destination"], env=self.env, stdout=log, stderr=log
        )
        log.close()

    async def wait_ready(self, timeout: float = DEADLINE) -> None:
        async def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, self.logs()[-3000:]
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                status, _ = await http_get(self.admin_port, "/ready")
                return status == 200
            return False

        await eventually(ready, timeout, lambda: f"{self.name} ready: {self.logs()[-3000:]}", interval=0.05)

    async def is_leader(self) -> bool:
        with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
            _, body = await http_get(self.admin_port, "/metrics")
            return "tether_destination_leader 1.0" in body
        return False

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def stop(self, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        start = time.monotonic()
        while process.poll() is None and time.monotonic() - start < 10:
            await asyncio.sleep(0.02)
        if process.poll() is None:
            process.kill()
            process.wait()


def ipv4_text(addr: Any) -> str:
    if addr.ip.WhichOneof("ip") == "ipv6":
        import ipaddress

        return str(ipaddress.IPv6Address(addr.ip.ipv6))
    value = addr.ip.ipv4
    return ".".join(str((value >> shift) & 255) for shift in (24, 16, 8, 0))


class Client:
    """A proxy-like consumer of one Get stream: its current view and every update received, in order."""

    def __init__(self, target: str, authority: str, context_token: str = "") -> None:
        self.target = target
        self.authority = authority
        self.context_token = context_token
        self.state: dict[str, dict[str, Any]] = {}
        self.exists: bool | None = None
        self.log: list[tuple[str, tuple[str, ...]]] = []  # (kind, addresses) per non-keepalive update
        self.first_messages = 0
        self.error: grpc.aio.AioRpcError | None = None
        self.keepalives = 0
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None

    def start(self) -> Client:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.target)
        stub = destination_pb2_grpc.DestinationStub(self._channel)
        call = stub.Get(pb.GetDestination(authority=self.authority, context_token=self.context_token))
        first = True
        try:
            async for update in call:
                self._apply(update, first)
                first = False
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    def _apply(self, update: pb.Update, first: bool) -> None:
        kind = update.WhichOneof("update")
        if first:
            self.first_messages += 1
            self.state = {}
        if kind == "add":
            if not update.add.addrs and not first:
                self.keepalives += 1
                return
            for weighted in update.add.addrs:
                self.state[ipv4_text(weighted.addr)] = {
                    "port": weighted.addr.port,
                    "identity": weighted.tls_identity.dns_like_identity or None,
                    "h2": weighted.protocol_hint.HasField("h2"),
                    "opaque": weighted.protocol_hint.opaque,
                    "labels": dict(weighted.metric_labels),
                }
            self.exists = True
            self.log.append(("add", tuple(ipv4_text(w.addr) for w in update.add.addrs)))
        elif kind == "remove":
            for addr in update.remove.addrs:
                self.state.pop(ipv4_text(addr), None)
            self.log.append(("remove", tuple(ipv4_text(a) for a in update.remove.addrs)))
        else:
            self.state = {}
            self.exists = update.no_endpoints.exists
            self.log.append(("no_endpoints", (str(update.no_endpoints.exists),)))

    @property
    def addresses(self) -> set[str]:
        return set(self.state)

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            await self._channel.close()


class Mesh:
    """Replicas and clients of one test, torn down together."""

    def __init__(self, workdir: Path, nats_url: str) -> None:
        self.workdir = workdir
        self.nats_url = nats_url
        self.replicas: list[Replica] = []
        self.clients: list[Client] = []

    def replica(self, **env: str) -> Replica:
        name = f"replica-{len(self.replicas)}"
        replica = Replica(name, self.workdir, {"TETHER_NATS_URL": self.nats_url, **env})
        replica.start()
        self.replicas.append(replica)
        return replica

    def client(self, replica: Replica, authority: str, context_token: str = "") -> Client:
        client = Client(replica.target, authority, context_token).start()
        self.clients.append(client)
        return client

    async def leader(self, timeout: float = DEADLINE) -> Replica:
        leaders: list[Replica] = []

        async def elected() -> bool:
            for replica in self.replicas:
                if replica.process is not None and await replica.is_leader():
                    leaders.append(replica)
                    return True
            return False

        await eventually(elected, timeout, "a leader elected", interval=0.05)
        return leaders[0]

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for replica in self.replicas:
            await replica.stop()


IDENTITY = "web.shop.serviceaccount.identity.cluster.local"


def write_registry(path: Path, web: list[str], api: list[str] | None = None) -> None:
    services: list[dict[str, Any]] = [
        {
            "namespace": "shop",
            "name": "web",
            "ports": [{"name": "http", "port": 80, "target_port": 8080}],
            "endpoints": [{"address": a, "identity": IDENTITY, "labels": {"pod": f"web-{a}"}} for a in web],
        }
    ]
    if api is not None:
        services.append(
            {
                "namespace": "shop",
                "name": "api",
                "ports": [{"port": 9090}],
                "endpoints": [{"address": a} for a in api],
            }
        )
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"services": services}))  # JSON is YAML
    os.replace(temporary, path)


def env_for(registry: Path) -> dict[str, str]:
    return {
        "TETHER_DESTINATION_SOURCE": "local",
        "TETHER_DESTINATION_REGISTRY_FILE": str(registry),
        "TETHER_DESTINATION_REGISTRY_POLL_INTERVAL": "0.05",
    }


async def two_replicas(mesh: Mesh, registry: Path) -> None:
    for _ in range(2):
        mesh.replica(**env_for(registry))
    for replica in mesh.replicas:
        await replica.wait_ready()


@pytest.fixture
async def mesh(tmp_path: Path, nats_server: Any) -> AsyncIterator[Mesh]:
    m = Mesh(tmp_path, nats_server.url)
    try:
        yield m
    finally:
        await m.close()
