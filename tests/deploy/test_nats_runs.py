"""The default's NATS configuration runs: a real nats-server on loopback with the rendered nats.conf and
the files its pod would mount, made as the bootstrap Job makes them (Secret tether-nats-server: auth.conf
with every role's nkey and permissions, TLS for clients; Secrets tether-nats-<role>). Only addresses and
mount paths are rewritten (tests/deploy/nats_config.py). Clients connect as the components do: TLS 1.3
verified against the NATS CA, authenticated by their nkey. (The HA overlay's 3-server cluster:
tests/deploy/test_nats_cluster.py.)
"""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.js import api as js_api

from tether.identity.kube_bootstrap.config import DEFAULT_NATS_ROLES
from tether.identity.kube_bootstrap.objects import NatsObjects, nats_objects, nats_server_names
from tether.shared.natsserver import free_port, nats_server_binary
from tether.shared.testing import eventually
from tether.shared.tls import client_ssl_context

from .manifests import NAMESPACE, Manifests
from .nats_config import Ports, localize, pod_files


async def _status(port: int, path: str) -> int:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
    except OSError:
        return 0
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0


async def _connect(material: NatsObjects, role: str, port: int, directory: Path, **options: Any) -> Any:
    """Connect as ``role`` with what Secret tether-nats-<role> holds, as the component would."""
    seed = directory / f"{role}.seed"
    seed.write_bytes(material.roles[role].data["nkey.seed"])
    seed.chmod(0o600)
    return await nats.connect(
        servers=[f"tls://127.0.0.1:{port}"],
        nkeys_seed=str(seed),
        tls=client_ssl_context(material.roles[role].data["ca.crt"]),
        inbox_prefix=f"_INBOX.{role}",
        connect_timeout=5,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        **options,
    )


async def test_default_nats_serves_tls_clients_with_their_nkeys(
    rendered: dict[str, Manifests], tmp_path: Path
) -> None:
    manifests = rendered["default"]
    assert manifests.get("StatefulSet", "tether-nats")["spec"]["replicas"] == 1
    text = manifests.get("ConfigMap", "tether-nats-config")["data"]["nats.conf"]
    material = nats_objects(
        DEFAULT_NATS_ROLES,
        nats_server_names(NAMESPACE, "cluster.local"),
        datetime.now(UTC),
        timedelta(days=1),
        ip_addresses=("127.0.0.1",),
    )
    ports = Ports(client=free_port(), monitor=free_port())
    root = tmp_path / "tether-nats-0"
    conf = pod_files(root, localize(text, root, ports, []), material.server.data)
    with (root / "nats.log").open("wb") as log:
        process = subprocess.Popen(
            [nats_server_binary(), "--config", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"POD_NAME": "tether-nats-0"},  # the StatefulSet's downward-API variable
        )
    try:

        async def healthy(path: str = "/healthz") -> bool:
            assert process.poll() is None, (root / "nats.log").read_text()
            return await _status(ports.monitor, path) == 200

        await eventually(healthy, timeout=20, what=lambda: (root / "nats.log").read_text()[-2000:])
        for probe in ("/healthz?js-enabled-only=true", "/healthz?js-server-only=true"):  # the other probes
            assert await healthy(probe)

        client = await _connect(material, "destination", ports.client, tmp_path)
        try:
            js = client.jetstream()
            kv = await js.create_key_value(config=js_api.KeyValueConfig(bucket="tether_endpoints"))
            await kv.put("shop.web", b"{}")
            assert (await js.stream_info("KV_tether_endpoints")).config.num_replicas == 1
        finally:
            await client.close()

        # Each role has its own permissions: the read-only account may not write endpoints.
        violations: list[str] = []

        async def on_error(error: Exception) -> None:
            violations.append(str(error).lower())

        reader = await _connect(material, "reader", ports.client, tmp_path, error_cb=on_error)
        try:
            await reader.publish("tether.v1.endpoints.shop.web", b"{}")
            await reader.flush()
            await eventually(lambda: any("permissions violation" in v for v in violations))
        finally:
            await reader.close()

        # Without the NATS CA (and so without TLS to it) there is no way in.
        try:
            plain = await nats.connect(
                servers=[f"nats://127.0.0.1:{ports.client}"],
                connect_timeout=2,
                allow_reconnect=False,
                max_reconnect_attempts=0,
            )
        except (nats.errors.Error, OSError, TimeoutError):
            pass
        else:
            await plain.close()
            raise AssertionError("a client without the NATS CA connected")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
