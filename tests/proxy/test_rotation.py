"""Certificate rotation under load, and what happens when identity goes away: 60-second certificates.

The real identity service issues the shortest leaves it allows (one minute), so a proxy renews at ~42 s.
The two scenarios take about 80 s and 60 s of waiting, so they run side by side, each in a mesh of its
own; the end-to-end suite runs the long versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from proxy_mesh import Mesh, Pod, authority, metric, ready_pod, unary

from tether.shared.natsserver import EmbeddedNats
from tether.shared.testing import eventually

SHORT = timedelta(seconds=60)


@contextlib.asynccontextmanager
async def short_lived(nats_server: EmbeddedNats, directory: Path, first_host: int) -> AsyncIterator[Mesh]:
    directory.mkdir()
    world = Mesh(directory, nats_server, _next_host=first_host)
    try:
        await world.start_identity(leaf_lifetime=SHORT)
        await world.start_destination()
        yield world
    finally:
        await world.close()
        if world.identity is not None:
            await world.identity.stop()


async def test_rotation_under_load_and_expiry_without_identity(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    # Each mesh has its own control plane: its own NATS (one bucket, one destination leader) and identity.
    async with (
        EmbeddedNats(tmp_path / "nats-expiry") as other_nats,
        short_lived(nats_server, tmp_path / "rotation", first_host=2) as rotating,
        short_lived(other_nats, tmp_path / "expiry", first_host=100) as expiring,
    ):
        await asyncio.gather(rotation_under_load(rotating), expiry_without_identity(expiring))


async def served_certificate(mesh: Mesh, pod: Pod) -> str:
    """The fingerprint of the certificate the pod's inbound proxy presents to a new TLS connection."""
    assert mesh.identity is not None and pod.identity is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=mesh.identity.trust_anchors.read_text())
    context.set_alpn_protocols(["h2"])
    _reader, writer = await asyncio.open_connection(
        pod.host, pod.proxy.inbound_port, ssl=context, server_hostname=pod.identity
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return hashlib.sha256(der).hexdigest()


class Load:
    """Requests from the client pod's app, one after another, counting every outcome."""

    def __init__(self, client: Pod, target: str) -> None:
        self.channel = client.channel(authority(target))
        self.call = unary(self.channel)
        self.ok = 0
        self.failures: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                assert await self.call(b"echo:x", timeout=5) == b"echo:x"
                self.ok += 1
            except grpc.aio.AioRpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.channel.close()


async def rotation_under_load(short_lived: Mesh) -> None:
    """Continuous traffic across two renewals of both proxies: not one failure."""
    server = await ready_pod(short_lived, "echo", meshed=True)
    client = await ready_pod(short_lived, meshed=True, serviceaccount="web")
    await short_lived.register("echo", [server])
    first = await served_certificate(short_lived, server)
    load = Load(client, "echo")
    load.start()
    mesh_connections = {"direction": "outbound", "peer": "dst", "tls": "true"}
    try:
        await eventually(lambda: load.ok > 0, 10.0, "the first call")
        assert metric(client, "tcp_open_total", **mesh_connections) == 1
        await eventually(
            lambda: min(metric(p, "identity_cert_refresh_count") for p in (server, client)) >= 3,
            110.0,
            "two renewals of both proxies",
            interval=0.5,
        )
        ok_before = load.ok
        await eventually(lambda: load.ok > ok_before + 10, 10.0, "traffic after the rotations")
    finally:
        await load.stop()
    assert load.failures == [], load.failures[:5]
    assert load.ok > 1000
    # The rotations dropped no connection: every call went over the mTLS connection the first one opened.
    assert metric(client, "tcp_open_total", **mesh_connections) == 1
    assert metric(client, "tcp_close_total", **mesh_connections) == 0
    # New connections get the current certificate at once.
    assert await served_certificate(short_lived, server) != first
    late = await ready_pod(short_lived, meshed=True, serviceaccount="late")
    async with late.channel(authority("echo")) as channel:
        assert await unary(channel)(b"echo:late", timeout=10) == b"echo:late"


async def expiry_without_identity(short_lived: Mesh) -> None:
    """With identity stopped, certificates work until they expire; then not ready; then recovery."""
    assert short_lived.identity is not None
    server = await ready_pod(short_lived, "echo", meshed=True)
    client = await ready_pod(short_lived, meshed=True, serviceaccount="web")
    await short_lived.register("echo", [server])
    await short_lived.identity.stop()
    expiry = min(metric(p, "identity_cert_expiration_timestamp_seconds") for p in (server, client))
    load = Load(client, "echo")
    load.start()
    try:
        # Until the certificates expire: traffic flows and both proxies stay ready.
        while time.time() < expiry - 2.0:
            assert server.runtime.ready() and client.runtime.ready()
            await asyncio.sleep(0.5)
        assert load.failures == [], load.failures[:5]
        assert metric(client, "identity_cert_refresh_failures_total") >= 1  # it kept asking meanwhile
        # Past expiry: not ready, and no new mTLS is offered with an expired certificate.
        await eventually(lambda: not server.runtime.ready() and not client.runtime.ready(), 10.0, "expiry")
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            await served_certificate(short_lived, server)
        assert metric(server, "inbound_connections_refused_total", reason="no_certificate") >= 1
        # Identity comes back: both recover by themselves.
        await short_lived.identity.start()
        await eventually(lambda: server.runtime.ready() and client.runtime.ready(), 40.0, "recovery")
        await served_certificate(short_lived, server)
    finally:
        await load.stop()
