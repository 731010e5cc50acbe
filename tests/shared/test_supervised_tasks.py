"""Every long-lived task of every component runs under the supervisor, observed in real processes.

The whole control plane runs as processes against a real nats-server: identity (a CA from ``bootstrap``,
locally minted tokens), destination (local registry, serving gRPC over TLS with its certificate from
identity), telemetry and public-api; then a ``tether-proxy run`` sidecar (its own certificate, discovery
from that destination) carries one gRPC request for a registered authority, so that its discovery tasks
exist. Each process's ``/debug/tasks`` is sampled twice a few hundred milliseconds apart while idle: a task
in both samples is long-lived, and one that runs Tether code must have been started by the supervisor (a
task that bypassed it would die unnoticed, and the process would carry on half-working).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

import tether
from tether.identity.bootstrap import bootstrap
from tether.identity.tokens.local import load_token_key, mint_token
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.natsserver import EmbeddedNats, free_port
from tether.shared.testing import eventually

TRUST_DOMAIN = "cluster.local"
AUTHORITY = "web.shop.svc.cluster.local:80"
SAMPLE_GAP = 0.3
# Where Tether's code lives: every directory of the `tether` namespace package (shared, cli, services).
TETHER_DIRS = tuple(Path(path).resolve() for path in tether.__path__)

# Supervised tasks each component must be running once idle (the proxy after one request).
EXPECTED = {
    "identity": {"issuer-reload", "identity-events", "heartbeats"},
    "destination": {
        "writer",
        "lease",
        "endpoint-watch",
        "registry-file",
        "registry-expiry",
        "heartbeats",
        "identity-certificate",
    },
    "telemetry": {"heartbeats", "rollup-publisher", "identity-certificate"},
    "public-api": {"heartbeats"},
    "proxy": {"proxy-sweeper", f"destination-get:{AUTHORITY}", "identity-certificate"},
}


async def http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@dataclass
class Component:
    """One Tether process: how to start it, its admin port and its log."""

    name: str
    argv: list[str]
    workdir: Path
    admin_host: str = "127.0.0.1"
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    *self.argv,
                    "--admin-addr",
                    f"{self.admin_host}:{self.admin_port}",
                    "--log-format",
                    "json",
                    "--shutdown-grace",
                    "0.2",
                ],
                env=dict(os.environ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def logs(self, tail: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def tasks(self) -> list[dict[str, Any]]:
        assert self.alive(), f"{self.name} exited: {self.logs()}"
        status, body = await http_get("127.0.0.1", self.admin_port, "/debug/tasks")
        assert status == 200, (status, body)
        tasks: list[dict[str, Any]] = json.loads(body)
        return tasks

    async def ready(self) -> bool:
        assert self.alive(), f"{self.name} exited: {self.logs()}"
        with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
            status, _ = await http_get("127.0.0.1", self.admin_port, "/ready")
            return status == 200
        return False

    async def supervised_names(self) -> set[str]:
        with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
            return {task["name"] for task in await self.tasks() if task["supervised"]}
        return set()

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def is_tether_code(task: dict[str, Any]) -> bool:
    if str(task["coroutine"]).startswith("tether."):
        return True
    file = task["file"]
    if not file:
        return False
    path = Path(file).resolve()
    return any(path.is_relative_to(directory) for directory in TETHER_DIRS)


async def long_lived_unsupervised(component: Component) -> tuple[list[dict[str, Any]], int]:
    """Tether tasks alive in both samples (same id and name: ids alone may be reused) but not supervised."""
    first = await component.tasks()
    await asyncio.sleep(SAMPLE_GAP)
    second = await component.tasks()
    earlier = {(task["id"], task["name"]) for task in first}
    both = [task for task in second if (task["id"], task["name"]) in earlier]
    return [task for task in both if is_tether_code(task) and not task["supervised"]], len(both)


class EchoApp:
    """The application behind the registered service: a grpc.aio server echoing its request."""

    def __init__(self) -> None:
        self.server = grpc.aio.server()
        self.port = 0
        self.calls = 0

    async def start(self) -> None:
        async def echo(request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            self.calls += 1
            return b"echo:" + request

        handlers = {"Unary": grpc.unary_unary_rpc_method_handler(echo)}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop(0)


@dataclass
class ControlPlane:
    workdir: Path
    nats: EmbeddedNats
    components: dict[str, Component] = field(default_factory=dict)

    def add(self, name: str, argv: list[str], admin_host: str = "127.0.0.1") -> Component:
        component = Component(name, argv, self.workdir, admin_host)
        self.components[name] = component
        component.start()
        return component

    def stop(self) -> None:
        for component in self.components.values():
            component.stop()


@pytest.fixture
async def app() -> AsyncIterator[EchoApp]:
    echo = EchoApp()
    await echo.start()
    try:
        yield echo
    finally:
        await echo.stop()


@pytest.fixture
def plane(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[ControlPlane]:
    control = ControlPlane(tmp_path, nats_server)
    try:
        yield control
    finally:
        control.stop()


def write_token(ca: Path, serviceaccount: str, namespace: str) -> Path:
    key = load_token_key((ca / "token-signing.key").read_bytes())
    token = mint_token(
        key, WorkloadIdentity(serviceaccount, namespace, TRUST_DOMAIN), datetime.now(UTC), timedelta(hours=1)
    )
    path = ca / f"{namespace}-{serviceaccount}.token"
    path.write_bytes(token)
    return path


def identity_client_flags(ca: Path, identity_addr: str, serviceaccount: str, namespace: str) -> list[str]:
    """The ``--identity-*`` options ``tether inject`` would give a workload."""
    return [
        "--identity-name",
        WorkloadIdentity(serviceaccount, namespace, TRUST_DOMAIN).dns_name,
        "--identity-addr",
        identity_addr,
        "--identity-trust-anchors",
        str(ca / "ca.crt"),
        "--identity-token-file",
        str(write_token(ca, serviceaccount, namespace)),
    ]


def start_control_plane(plane: ControlPlane, app_port: int) -> tuple[str, str]:
    """Identity, destination, telemetry and public-api processes; returns the identity and destination
    gRPC addresses."""
    ca = plane.workdir / "ca"
    bootstrap(ca, datetime.now(UTC), TRUST_DOMAIN)
    registry = plane.workdir / "registry.yaml"
    registry.write_text(
        json.dumps(  # JSON is YAML
            {
                "services": [
                    {
                        "namespace": "shop",
                        "name": "web",
                        "ports": [{"name": "http", "port": 80, "target_port": app_port}],
                        "endpoints": [{"address": "127.0.0.1"}],
                    }
                ]
            }
        )
    )
    nats = ["--nats-url", plane.nats.url]
    identity_addr = f"127.0.0.1:{free_port()}"
    destination_addr = f"127.0.0.1:{free_port()}"
    plane.add(
        "identity",
        [
            "tether.identity",
            "serve",
            *nats,
            "--grpc-addr",
            identity_addr,
            "--trust-anchors",
            str(ca / "ca.crt"),
            "--issuer-certificate",
            str(ca / "issuer.crt"),
            "--issuer-key",
            str(ca / "issuer.key"),
            "--token-verifier",
            "local",
            "--token-key",
            str(ca / "token-signing.key"),
        ],
    )
    plane.add(
        "destination",
        [
            "tether.destination",
            *nats,
            "--grpc-addr",
            destination_addr,
            "--source",
            "local",
            "--registry-file",
            str(registry),
            *identity_client_flags(ca, identity_addr, "destination", "tether"),
        ],
    )
    plane.add(
        "telemetry",
        [
            "tether.telemetry",
            *nats,
            "--grpc-addr",
            "127.0.0.1:0",
            *identity_client_flags(ca, identity_addr, "telemetry", "tether"),
        ],
    )
    plane.add(
        "public-api",
        [
            "tether.public_api",
            *nats,
            "--grpc-addr",
            "127.0.0.1:0",
            "--destination-trust-anchors",
            str(ca / "ca.crt"),
        ],
    )
    return identity_addr, destination_addr


async def all_ready(components: list[Component]) -> bool:
    return all([await component.ready() for component in components])


async def test_every_long_lived_task_of_every_component_is_supervised(
    plane: ControlPlane, app: EchoApp
) -> None:
    started = time.monotonic()
    identity_addr, destination_addr = start_control_plane(plane, app.port)
    ca = plane.workdir / "ca"
    outbound = free_port()
    plane.add(
        "proxy",
        [
            "tether.proxy",
            "run",
            "--destination-addr",
            destination_addr,
            "--outbound-addr",
            f"127.0.0.1:{outbound}",
            "--inbound-addr",
            f"127.0.0.1:{free_port()}",
            "--pod-namespace",
            "shop",
            *identity_client_flags(ca, identity_addr, "client", "shop"),
        ],
    )
    components = plane.components
    serving = [components[name] for name in ("identity", "destination", "public-api", "proxy")]
    await eventually(
        lambda: all_ready(serving),
        timeout=30.0,
        what=lambda: "ready: " + " | ".join(f"{c.name}: {c.logs(1500)}" for c in serving),
    )

    # One request through the sidecar's outbound listener, for the registered authority.
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{outbound}", options=[("grpc.default_authority", AUTHORITY)]
    ) as channel:
        answer = await channel.unary_unary("/test.Echo/Unary")(b"hello", timeout=10)
    assert answer == b"echo:hello" and app.calls == 1

    for name, expected in EXPECTED.items():
        component = components[name]
        await eventually(
            partial(_has_all, component, expected),
            timeout=10.0,
            what=partial(_missing, component, expected),
        )
    setup = time.monotonic() - started

    report = {}
    for name, component in components.items():
        offenders, long_lived = await long_lived_unsupervised(component)
        assert not offenders, f"{name}: long-lived Tether tasks outside the supervisor: {offenders}"
        report[name] = long_lived
    # Each sample saw the component's tasks, not an empty list (the supervised ones at least).
    for name, expected in EXPECTED.items():
        assert report[name] >= len(expected), (name, report)
    assert setup < 30.0


async def _has_all(component: Component, expected: set[str]) -> bool:
    return expected <= await component.supervised_names()


def _missing(component: Component, expected: set[str]) -> str:
    return f"{component.name} runs {sorted(expected)}: {component.logs()}"


def non_loopback_address() -> str | None:
    """An address of this host that is not loopback (the route to a documentation address), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_debug_tasks_is_refused_from_a_non_loopback_peer(tmp_path: Path) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to connect from")
    proxy = Component(
        "proxy",
        [
            "tether.proxy",
            "run",
            "--destination-addr",
            "",
            "--identity-disabled",
            "true",
            "--outbound-addr",
            "127.0.0.1:0",
            "--inbound-addr",
            "127.0.0.1:0",
        ],
        tmp_path,
        admin_host="0.0.0.0",
    )
    proxy.start()
    try:
        await eventually(proxy.ready, timeout=15.0, what=lambda: f"proxy ready: {proxy.logs()}")
        status, body = await http_get(address, proxy.admin_port, "/debug/tasks")
        assert status == 403, (status, body)
        assert b"proxy-sweeper" not in body
        status, _ = await http_get(address, proxy.admin_port, "/ready")
        assert status == 200  # the rest of the admin port is for everyone
        assert any(task["name"] == "proxy-sweeper" for task in await proxy.tasks())  # loopback: allowed
    finally:
        proxy.stop()
