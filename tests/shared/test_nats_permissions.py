"""NATS authentication and authorisation, against the real nats-server running the generated configuration.

Every expectation is written out below (``PUBLISH``, ``SUBSCRIBE``, ``BUCKETS``): what each user may and may
not do, as docs/events.md promises it. Nothing here is derived from ``tether.shared.permissions.ROLES``, so
a change to that table that breaks a promise fails here.

* The control plane as real processes, each with its own nkey (one shared server and mesh per module):
  destination writes ``tether_endpoints`` and publishes endpoint events, identity certifies and audits,
  telemetry and public-api send heartbeats, and ``tether version`` lists them all.
* The permission matrix, user by user, on a fresh server each: every publish, subscription and bucket
  operation outside a user's permissions is refused by the server and surfaces as PermissionDenied (or,
  for a fire-and-forget publish, a denial logged once and counted), and the connection still works after.
* The read-only ``reader``, no way in without credentials, revocation, TLS, and no secret in logs or in
  the process list.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import msgspec
import nats.js.kv
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nats.js import api as js_api
from prometheus_client import REGISTRY

from tether.identity.bootstrap import bootstrap
from tether.identity.tokens.local import load_token_key, mint_token
from tether.shared import nats_auth
from tether.shared.bus import Bus, KeyValue, KvEntry, NatsRefused, Synced
from tether.shared.cloudevents import EventData
from tether.shared.errors import PermissionDenied
from tether.shared.events import (
    EndpointsChanged,
    EndpointSet,
    Heartbeat,
    IdentityIssued,
    IdentityRejected,
    LeaseRecord,
    WorkloadRegistration,
)
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.logging import configure
from tether.shared.natsserver import EmbeddedNats, ServerTls, free_port, new_nkey_seed
from tether.shared.proto.identity.v1 import identity_pb2, identity_pb2_grpc
from tether.shared.testing import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

T = TypeVar("T")

# --- what each user may do: the promise, written out ----------------------------------------------------

COMPONENTS = ("destination", "identity", "telemetry", "public-api")
USERS = (*COMPONENTS, "registrar", "reader")

# Subject -> the users that may publish it. Everyone else is refused.
PUBLISH: dict[str, frozenset[str]] = {
    "tether.v1.health.destination.x": frozenset({"destination"}),
    "tether.v1.health.identity.x": frozenset({"identity"}),
    "tether.v1.health.telemetry.x": frozenset({"telemetry"}),
    "tether.v1.health.public-api.x": frozenset({"public-api"}),
    "tether.v1.health.reader.x": frozenset(),
    "tether.v1.health.registrar.x": frozenset(),
    "tether.v1.identity.issued": frozenset({"identity"}),
    "tether.v1.identity.rejected": frozenset({"identity"}),
    "tether.v1.endpoints.x.y": frozenset({"destination"}),
    "tether.v1.registry.register": frozenset({"registrar"}),
    "tether.v1.tap.x": frozenset(),
    "tether.v1.tap.requests": frozenset({"public-api"}),
    "tether.v1.tap.events.t1": frozenset({"telemetry"}),
    "tether.v1.tap.matches.t1": frozenset({"telemetry"}),
    "tether.v1.telemetry.rollup.shop.deployment.web": frozenset({"telemetry"}),
    "tether.v1.other": frozenset(),
    # Bucket writes as plain publishes (a KeyValue.put is a JetStream publish to the same subject).
    "$KV.tether_endpoints.x.y": frozenset({"destination"}),
    "$KV.tether_leases.destination-writer": frozenset({"destination"}),
}

# Subject -> the users that may subscribe to it. Everyone else is refused.
SUBSCRIBE: dict[str, frozenset[str]] = {
    "tether.v1.>": frozenset({"reader"}),
    "tether.v1.health.>": frozenset({"public-api", "reader"}),
    "tether.v1.health.destination.x": frozenset({"public-api", "reader"}),
    "tether.v1.identity.>": frozenset({"reader"}),
    "tether.v1.identity.issued": frozenset({"reader"}),
    "tether.v1.endpoints.>": frozenset({"reader"}),
    "tether.v1.registry.register": frozenset({"destination", "reader"}),
    "tether.v1.tap.>": frozenset(),
    "tether.v1.tap.requests": frozenset({"telemetry"}),
    "tether.v1.tap.events.t1": frozenset({"public-api"}),
    "tether.v1.tap.matches.t1": frozenset({"telemetry"}),
    "tether.v1.telemetry.rollup.>": frozenset({"public-api", "reader"}),
    ">": frozenset(),
    "$KV.tether_endpoints.>": frozenset(),
    # Every user has its own inbox; nobody reads anybody else's replies.
    "_INBOX.destination.>": frozenset({"destination"}),
    "_INBOX.identity.>": frozenset({"identity"}),
    "_INBOX.telemetry.>": frozenset({"telemetry"}),
    "_INBOX.public-api.>": frozenset({"public-api"}),
    "_INBOX.registrar.>": frozenset({"registrar"}),
    "_INBOX.reader.>": frozenset({"reader"}),
    "_INBOX.>": frozenset(),
}

# Bucket operation -> the users allowed it, for both tether_endpoints and tether_leases.
BUCKETS: dict[str, frozenset[str]] = {
    "open": frozenset({"destination", "reader"}),
    "get": frozenset({"destination", "reader"}),
    "watch": frozenset({"destination", "reader"}),
    "put": frozenset({"destination"}),
    "delete": frozenset({"destination"}),
    "purge": frozenset({"destination"}),
    "delete_stream": frozenset({"destination"}),
}

ENDPOINTS = "tether_endpoints"
LEASES = "tether_leases"
TRUST_DOMAIN = "cluster.local"
WEB = WorkloadIdentity("web", "shop", TRUST_DOMAIN)
# The identity service's own TLS name (namespace "tether").
IDENTITY_SERVER_NAME = "identity.tether.serviceaccount.identity.cluster.local"
DEADLINE = 20.0


class Probe(EventData, frozen=True, kw_only=True):
    """What the matrix publishes: a type no service reads, carrying a marker the observer looks for."""

    event_type = "io.tether.test.probe.v1"

    marker: str


# --- helpers -------------------------------------------------------------------------------------------


def denied_total(operation: str) -> float:
    return REGISTRY.get_sample_value("tether_bus_permission_denied_total", {"operation": operation}) or 0.0


def denial_lines(log: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "nats_permission_denied"]


def capture_logs() -> io.StringIO:
    """Route this process's structlog output into a buffer; buses connected afterwards log there."""
    buffer = io.StringIO()
    configure(service="test", instance="test", version="test", fmt="json", stream=buffer)
    return buffer


def raw_bucket(bus: Bus, bucket: str) -> KeyValue:
    """A bucket handle without opening it: for users that may not even read the bucket's stream info."""
    store = nats.js.kv.KeyValue(
        name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.", js=bus.jetstream, direct=False
    )
    return KeyValue(bus, bucket, store)


async def first_entries(kv: KeyValue, value_type: type[T], timeout: float = 5.0) -> list[KvEntry[T]]:
    """A watch's initial values, up to its SYNCED marker."""
    watch = kv.watch(value_type)
    entries: list[KvEntry[T]] = []
    try:
        async with asyncio.timeout(timeout):
            async for item in watch:
                if isinstance(item, Synced):
                    return entries
                entries.append(item)
    finally:
        await watch.aclose()
    raise AssertionError("the watch ended before SYNCED")


async def http_status(port: int, path: str) -> int | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5.0)
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


class Events:
    """Every mesh event one bus received, by type, in arrival order."""

    def __init__(self) -> None:
        self.received: list[tuple[str, EventData]] = []

    async def subscribe(self, bus: Bus) -> None:
        for subject, event_type in (
            ("tether.v1.health.>", Heartbeat),
            ("tether.v1.identity.issued", IdentityIssued),
            ("tether.v1.identity.rejected", IdentityRejected),
            ("tether.v1.endpoints.>", EndpointsChanged),
            ("tether.v1.registry.register", WorkloadRegistration),
        ):
            await bus.subscribe(subject, event_type, self._on_event)

    async def _on_event(self, event: EventData, subject: str) -> None:
        self.received.append((subject, event))

    async def heartbeat(self, service: str, ready: bool | None = None) -> tuple[str, Heartbeat]:
        """A heartbeat of ``service`` (with ``ready``, if given)."""

        def match(_subject: str, beat: Heartbeat) -> bool:
            return beat.service == service and ready in (None, beat.ready)

        return await self.wait_for(Heartbeat, match, f"a {service} heartbeat (ready: {ready})")

    def of(self, event_type: type[T]) -> list[tuple[str, T]]:
        return [(subject, event) for subject, event in self.received if isinstance(event, event_type)]

    async def wait_for(
        self, event_type: type[T], match: Callable[[str, T], bool], what: str, timeout: float = DEADLINE
    ) -> tuple[str, T]:
        found: list[tuple[str, T]] = []

        def seen() -> bool:
            found[:] = [(s, e) for s, e in self.of(event_type) if match(s, e)]
            return bool(found)

        await eventually(seen, timeout, what)
        return found[0]


class Component:
    """One control-plane service as a real process: its own nkey, admin port, gRPC port and log files."""

    MODULES = {
        "destination": ["tether.destination"],
        "identity": ["tether.identity", "serve"],
        "telemetry": ["tether.telemetry"],
        "public-api": ["tether.public_api"],
    }

    def __init__(
        self, service: str, workdir: Path, nats_url: str, nkey_file: str, *extra: str, label: str = ""
    ) -> None:
        self.service = service
        self.label = label or service
        self.admin_port = free_port()
        self.grpc_port = free_port()
        self.stdout_path = workdir / f"{self.label}.stdout"
        self.stderr_path = workdir / f"{self.label}.stderr"
        self.args = [
            sys.executable,
            "-m",
            *self.MODULES[service],
            "--nats-url",
            nats_url,
            "--nats-nkey",
            nkey_file,
            "--admin-addr",
            f"127.0.0.1:{self.admin_port}",
            "--grpc-addr",
            f"127.0.0.1:{self.grpc_port}",
            "--log-format",
            "json",
            "--shutdown-grace",
            "0.5",
            # Several public-api processes run at once here: each its own dashboard port, not 8084.
            *(("--dashboard-addr", f"127.0.0.1:{free_port()}") if service == "public-api" else ()),
            # Endpoints (destination over TLS) is not what these tests are about.
            *(("--destination-trust-anchors", "") if service == "public-api" else ()),
            *extra,
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def start(self) -> Component:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=dict(os.environ)
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def logs(self) -> str:
        return "".join(
            path.read_text(errors="replace") for path in (self.stdout_path, self.stderr_path) if path.exists()
        )

    def stderr_lines(self) -> list[str]:
        return self.stderr_path.read_text(errors="replace").splitlines()

    def cmdline(self) -> bytes:
        return Path(f"/proc/{self.pid}/cmdline").read_bytes()

    async def wait_ready(self, timeout: float = DEADLINE) -> None:
        async def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.label} exited with {self.process.returncode}:\n{self.tail()}")
            return await http_status(self.admin_port, "/ready") == 200

        await eventually(ready, timeout, lambda: f"{self.label} to be ready:\n{self.tail()}", interval=0.05)

    async def wait_exit(self, timeout: float = DEADLINE) -> int:
        assert self.process is not None
        process = self.process
        await eventually(lambda: process.poll() is not None, timeout, f"{self.label} to exit", interval=0.02)
        self.returncode = process.returncode
        return process.returncode

    async def stop(self) -> int:
        """SIGTERM and wait (SIGKILL after the deadline); the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return await self.wait_exit(10)
            except AssertionError:
                self.process.kill()
                self.process.wait()
        self.returncode = self.process.returncode
        return self.process.returncode

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])


class ControlPlane:
    """The four services of one test (or module) against one server, started concurrently."""

    def __init__(self, server: EmbeddedNats, workdir: Path, tls_ca: str = "") -> None:
        self.server = server
        self.workdir = workdir
        self.tls_ca = tls_ca
        self.ca_dir = workdir / "identity-ca"
        bootstrap(self.ca_dir, datetime.now(UTC), TRUST_DOMAIN)
        self.registry_file = workdir / "registry.json"
        self.registry_file.write_text(
            json.dumps(
                {
                    "services": [
                        {
                            "namespace": "shop",
                            "name": "web",
                            "ports": [{"name": "http", "port": 80, "target_port": 8080}],
                            "endpoints": [{"address": "10.0.0.1", "identity": WEB.dns_name}],
                        }
                    ]
                }
            )
        )
        self.components: dict[str, Component] = {}

    def extra(self, service: str) -> list[str]:
        tls = ["--nats-tls-ca", self.tls_ca] if self.tls_ca else []
        if service == "destination":
            # Plaintext gRPC: its own mesh certificate from identity is not what this file is about.
            return [
                *tls,
                "--source",
                "local",
                "--registry-file",
                str(self.registry_file),
                "--identity-disabled",
                "true",
            ]
        if service == "telemetry":
            # Plaintext Report streams: proxies' mTLS to telemetry is not what this file is about.
            return [*tls, "--identity-disabled", "true"]
        if service == "identity":
            return [
                *tls,
                "--token-verifier",
                "local",
                "--token-key",
                str(self.ca_dir / "token-signing.key"),
                "--trust-anchors",
                str(self.ca_dir / "ca.crt"),
                "--issuer-certificate",
                str(self.ca_dir / "issuer.crt"),
                "--issuer-key",
                str(self.ca_dir / "issuer.key"),
            ]
        return tls

    def start(self) -> None:
        for service in COMPONENTS:
            self.components[service] = Component(
                service,
                self.workdir,
                self.server.url,
                self.server.users[service].seed_file,
                *self.extra(service),
            ).start()

    async def wait_ready(self, events: Events) -> None:
        """Every component answers /ready."""
        await asyncio.gather(*(self.components[s].wait_ready() for s in COMPONENTS))

    def __getitem__(self, service: str) -> Component:
        return self.components[service]

    async def stop(self) -> dict[str, int]:
        codes = await asyncio.gather(*(c.stop() for c in self.components.values()))
        return dict(zip(self.components, codes, strict=True))

    def token(self, identity: WorkloadIdentity = WEB) -> bytes:
        key = load_token_key((self.ca_dir / "token-signing.key").read_bytes())
        return mint_token(key, identity, datetime.now(UTC), timedelta(minutes=5))

    async def certify(self, token: bytes, identity: WorkloadIdentity = WEB) -> identity_pb2.CertifyResponse:
        """A real Certify over TLS, as a proxy sends it."""
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{self['identity'].grpc_port}",
            grpc.ssl_channel_credentials(root_certificates=(self.ca_dir / "ca.crt").read_bytes()),
            options=[("grpc.ssl_target_name_override", IDENTITY_SERVER_NAME)],
        )
        async with channel:
            response: identity_pb2.CertifyResponse = await identity_pb2_grpc.IdentityStub(channel).Certify(
                identity_pb2.CertifyRequest(
                    identity=identity.dns_name, token=token, certificate_signing_request=csr_for(identity)
                ),
                timeout=10,
            )
        return response


def csr_for(identity: WorkloadIdentity) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(identity.dns_name), x509.UniformResourceIdentifier(identity.spiffe_id)]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


async def run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        f"{sys.prefix}/bin/tether", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


# --- the module's mesh: one authenticated server, the four services, a reader listening to everything ---


@dataclass
class Mesh:
    server: EmbeddedNats
    plane: ControlPlane
    reader: Bus
    events: Events


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    workdir = tmp_path_factory.mktemp("nats-permissions")
    server = EmbeddedNats(
        workdir / "nats",
        users={
            "destination": "destination",
            "identity": "identity",
            "telemetry": "telemetry",
            "public-api": "public-api",
            "registrar": "registrar",
            "reader": "reader",
        },
    )
    await server.start()
    plane = ControlPlane(server, workdir)
    reader: Bus | None = None
    try:
        reader = await Bus.connect(server.settings("reader"), name="reader")
        events = Events()
        await events.subscribe(reader)  # before the services start: their first events count too
        plane.start()
        await plane.wait_ready(events)
        yield Mesh(server, plane, reader, events)
        codes = await plane.stop()
        assert codes == dict.fromkeys(COMPONENTS, 0), {s: plane[s].tail() for s in codes if codes[s]}
    finally:
        for component in plane.components.values():
            await component.stop()
        if reader is not None:
            await reader.close()
        await server.close()


def instance_of(mesh: Mesh, service: str) -> str:
    beats = [beat for _, beat in mesh.events.of(Heartbeat) if beat.service == service]
    assert beats, f"no heartbeat from {service}"
    return beats[-1].instance


# --- 1. each component does its job as a real process with its own nkey -----------------------------------


async def test_destination_writes_the_bucket_and_publishes_endpoint_events(mesh: Mesh) -> None:
    instance = instance_of(mesh, "destination")
    subject, changed = await mesh.events.wait_for(
        EndpointsChanged, lambda _s, e: e.namespace == "shop" and e.service == "web", "shop/web endpoints"
    )
    assert subject == "tether.v1.endpoints.shop.web"
    assert [endpoint.address for endpoint in changed.added] == ["10.0.0.1"]

    kv = await mesh.reader.kv(ENDPOINTS, create=False)
    entry = await kv.get("shop.web", EndpointSet)
    assert entry is not None and entry.value is not None
    assert [e.address for e in entry.value.endpoints] == ["10.0.0.1"]
    assert entry.value.endpoints[0].identity == WEB.dns_name
    assert entry.value.writer == instance


async def test_identity_certifies_and_the_reader_receives_the_audit_events(mesh: Mesh) -> None:
    response = await mesh.plane.certify(mesh.plane.token())
    leaf = x509.load_der_x509_certificate(response.leaf_certificate)
    fingerprint = hashlib.sha256(response.leaf_certificate).hexdigest()
    _, issued = await mesh.events.wait_for(
        IdentityIssued, lambda _s, e: e.fingerprint_sha256 == fingerprint, "the issued event of this leaf"
    )
    assert issued.identity == WEB.dns_name and issued.spiffe_id == WEB.spiffe_id
    assert issued.serial == format(leaf.serial_number, "x")
    assert issued.replica == instance_of(mesh, "identity")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mesh.plane.certify(b"not-a-token")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    started = datetime.now(UTC) - timedelta(seconds=30)
    _, rejected = await mesh.events.wait_for(
        IdentityRejected,
        lambda _s, e: e.reason == "token_invalid" and e.rejected_at >= started,
        "the rejected event",
    )
    assert rejected.status == "UNAUTHENTICATED" and rejected.identity == WEB.dns_name


async def test_every_component_heartbeats_and_the_public_api_lists_them(mesh: Mesh) -> None:
    for service, ready in (
        ("destination", True),
        ("identity", True),
        ("public-api", True),
        ("telemetry", True),
    ):
        subject, beat = await mesh.events.heartbeat(service, ready=ready)
        assert subject == f"tether.v1.health.{service}.{beat.instance}"

    # The public API receives them (its user may subscribe to tether.v1.health.>) and the CLI shows them.
    addr = f"127.0.0.1:{mesh.plane['public-api'].grpc_port}"
    # One row per component: COMPONENT VERSION INSTANCE STATUS.
    rows = {
        service: rf"^{service}\s+\S+\s+{instance_of(mesh, service)}\s+ready\s*$" for service in COMPONENTS
    }
    out = ""

    async def listed() -> bool:
        nonlocal out
        _code, out = await run_cli("--api-addr", addr, "version")
        return all(re.search(row, out, re.MULTILINE) for row in rows.values())

    await eventually(listed, DEADLINE, lambda: f"`tether version` to list every component:\n{out}", 0.1)


async def test_registrar_registers_a_workload_that_destination_serves(mesh: Mesh) -> None:
    registrar = await Bus.connect(mesh.server.settings("registrar"), name="registrar")
    try:
        registration = WorkloadRegistration(
            namespace="shop", service="api", instance="api-1", address="10.0.0.9", port=9090
        )
        await registrar.publish("tether.v1.registry.register", registration)
        await mesh.events.wait_for(
            WorkloadRegistration, lambda _s, e: e.instance == "api-1", "the registration, as the reader"
        )
        _, changed = await mesh.events.wait_for(
            EndpointsChanged,
            lambda _s, e: e.service == "api" and any(a.address == "10.0.0.9" for a in e.added),
            "destination to add the registered endpoint",
        )
        assert changed.namespace == "shop"
        await registrar.publish(
            "tether.v1.registry.register",
            WorkloadRegistration(
                namespace="shop",
                service="api",
                instance="api-1",
                address="10.0.0.9",
                port=9090,
                deregister=True,
            ),
        )
        await mesh.events.wait_for(
            EndpointsChanged, lambda _s, e: e.service == "api" and e.deleted, "the deregistration's delete"
        )
    finally:
        await registrar.close()


# --- 3. the read-only reader ----------------------------------------------------------------------------


async def test_reader_receives_every_documented_event_type(mesh: Mesh) -> None:
    marker = uuid.uuid4().hex[:8]
    issued = await mesh.plane.certify(mesh.plane.token())
    fingerprint = hashlib.sha256(issued.leaf_certificate).hexdigest()
    with pytest.raises(grpc.aio.AioRpcError):
        await mesh.plane.certify(mesh.plane.token(WorkloadIdentity(f"sa-{marker}", "shop")), WEB)
    registrar = await Bus.connect(mesh.server.settings("registrar"), name="registrar")
    try:
        # A short-lived registration: destination adds it, then lets it expire on its own.
        await registrar.publish(
            "tether.v1.registry.register",
            WorkloadRegistration(
                namespace="shop",
                service=f"reg-{marker}",
                instance=f"r-{marker}",
                address="10.0.0.10",
                port=80,
                ttl_seconds=1.0,
            ),
        )
    finally:
        await registrar.close()

    for service in COMPONENTS:
        subject, _beat = await mesh.events.heartbeat(service)
        assert subject.startswith(f"tether.v1.health.{service}.")
    expected: list[tuple[type[Any], str, Callable[[str, Any], bool]]] = [
        (IdentityIssued, "the issuance", lambda s, e: e.fingerprint_sha256 == fingerprint),
        (IdentityRejected, "the rejection", lambda s, e: e.reason == "identity_mismatch"),
        (WorkloadRegistration, "the registration", lambda s, e: e.instance == f"r-{marker}"),
        (EndpointsChanged, "the endpoints", lambda s, e: s == f"tether.v1.endpoints.shop.reg-{marker}"),
    ]
    for event_type, what, match in expected:
        await mesh.events.wait_for(event_type, match, what)
    subjects = {type(event): subject for subject, event in mesh.events.received}
    assert subjects[IdentityIssued] == "tether.v1.identity.issued"
    assert subjects[IdentityRejected] == "tether.v1.identity.rejected"
    assert subjects[WorkloadRegistration] == "tether.v1.registry.register"


async def test_reader_reads_both_buckets_but_may_not_tap_or_publish_anything(mesh: Mesh) -> None:
    log = capture_logs()
    reader = await Bus.connect(mesh.server.settings("reader"), name="reader-probe")
    try:
        endpoints = await reader.kv(ENDPOINTS, create=False)
        leases = await reader.kv(LEASES, create=False)
        web = await endpoints.get("shop.web", EndpointSet)
        assert web is not None and web.value is not None and web.value.service == "web"
        lease = await leases.get("destination-writer", LeaseRecord)
        assert lease is not None and lease.value is not None
        assert lease.value.holder == instance_of(mesh, "destination")
        assert "shop.web" in {e.key for e in await first_entries(endpoints, EndpointSet)}
        assert [e.key for e in await first_entries(leases, LeaseRecord)] == ["destination-writer"]

        async def ignore(_event: Heartbeat, _subject: str) -> None:
            return None

        for subject in ("tether.v1.tap.>", "tether.v1.tap.requests"):
            with pytest.raises(PermissionDenied) as tap:
                await reader.subscribe(subject, Heartbeat, ignore)
            assert tap.value.operation == "subscribe" and tap.value.subject == subject

        for kv in (endpoints, leases):
            with pytest.raises(PermissionDenied):
                await kv.put("shop.web", Probe(marker="x"))
            with pytest.raises(PermissionDenied):
                await kv.delete("shop.web")
            with pytest.raises(PermissionDenied) as purge:
                await reader.purge_stream(f"KV_{kv.bucket}")
            assert purge.value.subject == f"$JS.API.STREAM.PURGE.KV_{kv.bucket}"
            with pytest.raises(PermissionDenied):
                await reader.delete_stream(f"KV_{kv.bucket}")
        before = denied_total("publish")
        publishes = (
            "tether.v1.health.reader.x",
            "tether.v1.identity.issued",
            "tether.v1.endpoints.shop.web",
            "tether.v1.registry.register",
            "tether.v1.tap.x",
            "$KV.tether_endpoints.shop.web",
            "$KV.tether_leases.destination-writer",
            "$JS.API.STREAM.PURGE.KV_tether_endpoints",
            "$JS.API.STREAM.DELETE.KV_tether_leases",
            "$JS.API.STREAM.CREATE.KV_reader_bucket",
            # Only ephemeral consumers (the unnamed create): no named or durable one left on the server.
            "$JS.API.CONSUMER.CREATE.KV_tether_endpoints.kept",
            "$JS.API.CONSUMER.CREATE.KV_tether_endpoints.kept.$KV.tether_endpoints.>",
            "$JS.API.CONSUMER.DURABLE.CREATE.KV_tether_endpoints.kept",
            "$JS.API.CONSUMER.CREATE.tether_rollups.kept",
        )
        for subject in publishes:
            await reader.publish(subject, Probe(marker="x"))
        await eventually(
            lambda: denied_total("publish") - before >= len(publishes), 5, "every reader publish refused"
        )
        denied = {line["subject"] for line in denial_lines(log) if line["operation"] == "publish"}
        assert {s.lower() for s in publishes} <= denied
        # Still connected, still reading: nothing above broke the connection.
        assert reader.is_connected
        assert await endpoints.get("shop.web", EndpointSet) is not None
        # The live data is untouched.
        entry = await endpoints.get("shop.web", EndpointSet)
        assert entry is not None and entry.value is not None and entry.revision == web.revision
    finally:
        await reader.close()


# --- 2. the permission matrix, one user at a time, on a fresh server ---------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def bare(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A fresh authenticated server with both buckets holding one key each, created as destination."""
    server = EmbeddedNats(tmp_path / "nats", users={user: user for user in USERS})
    await server.start()
    try:
        destination = await Bus.connect(server.settings("destination"), name="setup")
        endpoints = await destination.kv(ENDPOINTS)
        leases = await destination.kv(LEASES)
        await endpoints.put("shop.web", Probe(marker="setup"))
        await leases.put("destination-writer", Probe(marker="setup"))
        await destination.close()
        yield server
    finally:
        await server.close()


class Observer:
    """The reader's view of raw messages carrying one marker: who got through."""

    def __init__(self, marker: str) -> None:
        self.marker = marker.encode()
        self.subjects: list[str] = []

    async def on_message(self, msg: Any) -> None:
        if self.marker in msg.data:
            self.subjects.append(msg.subject)


async def expect_denied(
    operation: str, subject: str, call: Awaitable[Any], denials: list[tuple[str, str]]
) -> None:
    with pytest.raises(PermissionDenied) as refused:
        await asyncio.wait_for(call, 4)
    assert (refused.value.operation, refused.value.subject) == (operation, subject)
    denials.append((operation, subject))


@pytest.mark.parametrize("user", USERS)
async def test_user_is_refused_everything_outside_its_permissions(user: str, bare: EmbeddedNats) -> None:
    log = capture_logs()
    marker = f"probe-{user}-{uuid.uuid4().hex[:8]}"
    observer = Observer(marker)
    watcher = await Bus.connect(bare.settings("reader"), name="observer")
    bus = await Bus.connect(bare.settings(user), name=user)
    before = {op: denied_total(op) for op in ("publish", "subscribe")}
    denials: list[tuple[str, str]] = []  # what PermissionDenied reported
    try:
        await watcher.client.subscribe("tether.v1.>", cb=observer.on_message)
        await watcher.flush()

        # Subscriptions: refused ones raise, allowed ones work.
        async def ignore(_event: Probe, _subject: str) -> None:
            return None

        for subject, allowed in SUBSCRIBE.items():
            if user in allowed:
                await (await bus.subscribe(subject, Probe, ignore)).unsubscribe()
            else:
                await expect_denied("subscribe", subject, bus.subscribe(subject, Probe, ignore), denials)

        # Buckets: open, get, watch, put, delete, purge, delete the stream.
        for bucket, key in ((ENDPOINTS, "shop.web"), (LEASES, "destination-writer")):
            stream = f"KV_{bucket}"
            if user in BUCKETS["open"]:
                kv = await bus.kv(bucket, create=False)
            else:
                await expect_denied(
                    "publish", f"$JS.API.STREAM.INFO.{stream}", bus.kv(bucket, create=False), denials
                )
                kv = raw_bucket(bus, bucket)
            if user in BUCKETS["get"]:
                entry = await kv.get(key, Probe)
                assert entry is not None and entry.value == Probe(marker="setup")
                assert [e.key for e in await first_entries(kv, Probe)] == [key]
            else:
                await expect_denied(
                    "publish", f"$JS.API.STREAM.MSG.GET.{stream}", kv.get(key, Probe), denials
                )
                await expect_denied(
                    "publish", f"$JS.API.CONSUMER.CREATE.{stream}", first_entries(kv, Probe), denials
                )
            if user in BUCKETS["put"]:
                revision = await kv.put(f"{marker}.k", Probe(marker=marker))
                assert revision > 0
            else:
                await expect_denied(
                    "publish",
                    f"$KV.{bucket}.{marker}.k",
                    kv.put(f"{marker}.k", Probe(marker=marker)),
                    denials,
                )
            if user in BUCKETS["delete"]:
                await kv.delete(f"{marker}.k")
            else:
                await expect_denied("publish", f"$KV.{bucket}.{key}", kv.delete(key), denials)
            if user in BUCKETS["purge"]:
                await bus.purge_stream(stream)
                assert await kv.get(key, Probe) is None
            else:
                await expect_denied(
                    "publish", f"$JS.API.STREAM.PURGE.{stream}", bus.purge_stream(stream), denials
                )
            if user in BUCKETS["delete_stream"]:
                await bus.delete_stream(stream)
            else:
                await expect_denied(
                    "publish", f"$JS.API.STREAM.DELETE.{stream}", bus.delete_stream(stream), denials
                )

        # Plain publishes are fire and forget: the server refuses the denied ones (logged and counted when
        # its -ERR arrives) and delivers the rest. A permitted publish goes last, so once the observer has it,
        # anything refused would have arrived before it.
        refused_publishes = [s for s, allowed in PUBLISH.items() if user not in allowed]
        permitted = [s for s, allowed in PUBLISH.items() if user in allowed]
        for subject in refused_publishes + permitted:
            if subject == "tether.v1.registry.register":
                event: EventData = WorkloadRegistration(
                    namespace="probe",
                    service="probe",
                    instance=marker,
                    address="127.0.0.1",
                    port=1,
                    deregister=True,
                )
            else:
                event = Probe(marker=marker)
            await bus.publish(subject, event)
        # (The observer is the read-only user, which may not see tap subjects.)
        observable = [
            s for s in permitted if s.startswith("tether.v1.") and not s.startswith("tether.v1.tap.")
        ]
        await eventually(
            lambda: len(observer.subjects) >= len(observable), 5, f"{user}'s permitted publishes"
        )
        assert observer.subjects == observable, "refused publishes must not be delivered"
        expected_publish_denials = len(refused_publishes) + sum(op == "publish" for op, _ in denials)

        def publish_denials() -> float:
            return denied_total("publish") - before["publish"]

        await eventually(
            lambda: publish_denials() == expected_publish_denials,
            5,
            lambda: f"{expected_publish_denials} publish denials, got {publish_denials()}",
        )
        assert denied_total("subscribe") - before["subscribe"] == sum(op == "subscribe" for op, _ in denials)

        # Each refusal was logged once, at error level, naming the operation and the subject (which nats-py
        # hands over lower-cased).
        lines = denial_lines(log)
        assert all(line["bus"] == user for line in lines)
        # A refusal the caller awaited is raised to it (PermissionDenied, which it reports): a warning here.
        # A refusal of a fire-and-forget publish has no one else to report it: an error.
        awaited = {(op, subject.lower()) for op, subject in denials}
        for line in lines:
            expected_level = "warning" if (line["operation"], line["subject"]) in awaited else "error"
            assert line["level"] == expected_level, line
        logged = sorted((line["operation"], line["subject"]) for line in lines)
        expected_logged = {(op, subject.lower()) for op, subject in denials} | {
            ("publish", subject.lower()) for subject in refused_publishes
        }
        assert logged == sorted(expected_logged)

        # The connection survived all of it: a permitted operation still works.
        assert bus.is_connected
        await bus.flush()
        if observable:
            await bus.publish(observable[-1], Probe(marker=marker))
            await eventually(lambda: len(observer.subjects) > len(observable), 5, "one more publish")
        if user in BUCKETS["get"] and user not in BUCKETS["delete_stream"]:
            assert await (await bus.kv(ENDPOINTS, create=False)).get("shop.web", Probe) is not None
        if user in SUBSCRIBE["tether.v1.>"] or user in SUBSCRIBE["tether.v1.health.>"]:
            await (await bus.subscribe("tether.v1.health.>", Probe, ignore)).unsubscribe()
    finally:
        await bus.close()
        await watcher.close()


async def test_a_repeated_refusal_is_raised_and_counted_every_time_but_logged_once(
    bare: EmbeddedNats,
) -> None:
    log = capture_logs()
    bus = await Bus.connect(bare.settings("identity"), name="identity")
    try:
        kv = raw_bucket(bus, ENDPOINTS)
        before = denied_total("publish")
        for _ in range(3):
            with pytest.raises(PermissionDenied):
                await kv.put("shop.web", Probe(marker="x"))
        assert denied_total("publish") - before == 3
        assert [line["subject"] for line in denial_lines(log)] == ["$kv.tether_endpoints.shop.web"]
    finally:
        await bus.close()


async def test_a_revoked_user_is_refused_what_it_could_do(bare: EmbeddedNats) -> None:
    bare.add_user("analyst", "reader")
    await bare.reload()
    # A bucket that allows direct gets (as `nats kv add` creates one) is read on other API subjects.
    destination = await Bus.connect(bare.settings("destination"), name="destination")
    await destination.delete_stream("KV_tether_endpoints")
    await destination.jetstream.create_key_value(js_api.KeyValueConfig(bucket=ENDPOINTS, direct=True))
    await (await destination.kv(ENDPOINTS)).put("shop.web", Probe(marker="direct"))
    await destination.close()

    # nats-server applies a reload asynchronously: wait until the new user is let in.
    connected: list[Bus] = []

    async def let_in() -> bool:
        with contextlib.suppress(NatsRefused):
            connected.append(await Bus.connect(bare.settings("analyst"), name="analyst"))
        return bool(connected)

    await eventually(let_in, 10, "the new user to be let in", interval=0.1)
    analyst = connected[0]
    try:
        endpoints = await analyst.kv(ENDPOINTS, create=False)
        leases = await analyst.kv(LEASES, create=False)
        assert endpoints.raw._direct and not leases.raw._direct
        assert (await endpoints.get("shop.web", Probe)) is not None
        assert (await leases.get("destination-writer", Probe)) is not None

        bare.revoke("analyst")
        await bare.reload()

        async def refused() -> bool:
            # Refused at once, not after a request timeout (that would be a BusError, failing the test).
            try:
                await asyncio.wait_for(leases.get("destination-writer", Probe), 2)
            except PermissionDenied:
                return True
            return False

        await eventually(refused, 10, "the revocation to apply", interval=0.1)

        async def ignore(_event: Probe, _subject: str) -> None:
            return None

        started = time.monotonic()
        with pytest.raises(PermissionDenied):
            await endpoints.get("shop.web", Probe)  # a direct get
        with pytest.raises(PermissionDenied):
            await leases.get("destination-writer", Probe)
        with pytest.raises(PermissionDenied):
            await first_entries(leases, Probe)
        with pytest.raises(PermissionDenied):
            await analyst.kv(ENDPOINTS, create=False)
        with pytest.raises(PermissionDenied):
            await analyst.subscribe("tether.v1.health.>", Probe, ignore)
        # Refused at once, not after a request timeout; and the connection stays up.
        assert time.monotonic() - started < 2.0
        assert analyst.is_connected
    finally:
        await analyst.close()


async def test_destination_administers_its_buckets(bare: EmbeddedNats) -> None:
    destination = await Bus.connect(bare.settings("destination"), name="destination")
    try:
        for bucket in (ENDPOINTS, LEASES):
            kv = await destination.kv(bucket)
            await kv.put("a.b", Probe(marker="x"))
            await destination.purge_stream(f"KV_{bucket}")
            assert await kv.get("a.b", Probe) is None
            await destination.delete_stream(f"KV_{bucket}")
            recreated = await destination.kv(bucket)
            assert await recreated.put("a.b", Probe(marker="y")) == 1
        # Its permissions end at its own buckets.
        with pytest.raises(PermissionDenied):
            await destination.kv("another_bucket")
        with pytest.raises(PermissionDenied):
            await destination.delete_stream("KV_another_bucket")
    finally:
        await destination.close()


async def test_a_destination_with_the_readers_key_exits_2_before_any_work(
    bare: EmbeddedNats, tmp_path: Path
) -> None:
    """A refusal surfaces in a real process too: a replica with the reader's key (and the reader's inbox) is
    refused its first, confirmed heartbeat, which only destination's own user may publish, and stops at once
    with one line naming it, before it tried the lease. (A replica whose permissions are revoked while it
    runs: tests/destination/test_supervision.py.)"""
    setup = await Bus.connect(bare.settings("destination"), name="setup")
    await (await setup.kv(LEASES)).delete("destination-writer")  # a free lease: the replica tries to take it
    await setup.close()
    registry = tmp_path / "registry.json"
    registry.write_text('{"services": []}')
    imposter = Component(
        "destination",
        tmp_path,
        bare.url,
        bare.users["reader"].seed_file,
        "--nats-inbox-prefix",
        "_INBOX.reader",
        "--source",
        "local",
        "--registry-file",
        str(registry),
        "--identity-disabled",
        "true",
        label="destination-as-reader",
    ).start()
    try:
        assert await imposter.wait_exit() == 2
    finally:
        await imposter.stop()
    lines = [json.loads(line) for line in imposter.stderr_lines() if line.startswith("{")]
    assert not [line for line in lines if line["level"] == "error"], lines
    denied = [
        (line["operation"], line["subject"]) for line in lines if line["event"] == "nats_permission_denied"
    ]
    assert len(denied) == 1 and denied[0][0] == "publish", denied
    assert denied[0][1].startswith("tether.v1.health.destination."), denied
    last = imposter.stderr_lines()[-1]
    assert last.startswith("tether-destination: error: NATS refused publish on tether.v1.health."), last
    assert "its own NATS user" in last, last
    # It did nothing: the free lease is still free.
    setup = await Bus.connect(bare.settings("destination"), name="check")
    try:
        lease = await (await setup.kv(LEASES)).get("destination-writer", Probe)
        assert lease is not None and lease.value is None, lease  # deleted above, never written since
    finally:
        await setup.close()


# --- 4. no credentials, no connection -----------------------------------------------------------------


async def test_a_client_without_credentials_or_with_an_unknown_key_cannot_connect(
    bare: EmbeddedNats, tmp_path: Path
) -> None:
    with pytest.raises(NatsRefused) as anonymous:
        await Bus.connect(bare.settings(None), name="anonymous")
    assert bare.url in str(anonymous.value)
    assert anonymous.value.exit_code == 2

    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(new_nkey_seed())
    with pytest.raises(NatsRefused) as unknown:
        await Bus.connect(
            msgspec.structs.replace(bare.settings("reader"), nkey_seed_file=str(stranger)), name="stranger"
        )
    assert bare.url in str(unknown.value)


# --- 5. TLS ----------------------------------------------------------------------------------------------


def write_tls_material(directory: Path) -> tuple[ServerTls, Path, Path]:
    """A CA and a server certificate it signs for 127.0.0.1/localhost, made as the bootstrap Job makes
    them (:func:`tether.shared.nats_auth.generate_server_tls`), and another CA's bundle."""
    directory.mkdir(parents=True, exist_ok=True)
    now, lifetime = datetime.now(UTC), timedelta(hours=1)
    tls = nats_auth.generate_server_tls(
        ["localhost"], now, lifetime, ip_addresses=["127.0.0.1"], ca_name="tether test nats CA"
    )
    other = nats_auth.generate_server_tls(["localhost"], now, lifetime, ca_name="some other CA")
    ca_file, other_ca_file = directory / "ca.crt", directory / "other-ca.crt"
    cert_file, key_file = directory / "server.crt", directory / "server.key"
    ca_file.write_bytes(tls.ca_certificate)
    other_ca_file.write_bytes(other.ca_certificate)
    cert_file.write_bytes(tls.certificate)
    key_file.write_bytes(tls.key)
    key_file.chmod(0o600)
    return ServerTls(str(cert_file), str(key_file)), ca_file, other_ca_file


async def test_every_component_connects_over_tls_and_an_untrusting_client_is_refused(tmp_path: Path) -> None:
    tls, ca_file, other_ca_file = write_tls_material(tmp_path / "tls")
    users = {name: name for name in (*COMPONENTS, "reader")}
    async with EmbeddedNats(tmp_path / "nats", users=users, tls=tls) as server:
        assert server.url.startswith("tls://127.0.0.1:")
        plane = ControlPlane(server, tmp_path, tls_ca=str(ca_file))
        untrusting = Component(
            "telemetry",
            tmp_path,
            server.url,
            server.users["telemetry"].seed_file,
            "--nats-tls-ca",
            str(other_ca_file),
            "--identity-disabled",
            "true",
            label="telemetry-untrusting",
        )
        reader = await Bus.connect(server.settings("reader", tls_ca_file=str(ca_file)), name="reader")
        try:
            events = Events()
            await events.subscribe(reader)
            plane.start()
            untrusting.start()
            await plane.wait_ready(events)
            for service in COMPONENTS:
                await events.heartbeat(service)

            assert await untrusting.wait_exit() == 2
            last = untrusting.stderr_lines()[-1]
            assert last.startswith("tether-telemetry: error: ") and server.url in last, last
            assert "not trusted" in last and "--nats-tls-ca" in last, last

            assert await plane.stop() == dict.fromkeys(COMPONENTS, 0)
        finally:
            await plane.stop()
            await untrusting.stop()
            await reader.close()


# --- 6. secrets stay out of logs and the process list ------------------------------------------------------


async def test_no_seed_or_token_in_logs_or_command_lines(tmp_path: Path) -> None:
    users = {name: name for name in (*COMPONENTS, "reader")}
    async with EmbeddedNats(tmp_path / "nats", users=users) as server:
        seeds = {name: Path(user.seed_file).read_text().strip() for name, user in server.users.items()}
        assert all(seed.startswith("SU") for seed in seeds.values())
        plane = ControlPlane(server, tmp_path)
        # A seed the server does not know: refused, and the refusal must not echo it either.
        stranger_file = tmp_path / "stranger.nk"
        stranger_file.write_bytes(new_nkey_seed() + b"\n")
        stranger_file.chmod(0o600)
        seeds["stranger"] = stranger_file.read_text().strip()
        stranger = Component(
            "telemetry",
            tmp_path,
            server.url,
            str(stranger_file),
            *plane.extra("telemetry"),
            label="telemetry-stranger",
        )
        reader = await Bus.connect(server.settings("reader"), name="reader")
        try:
            events = Events()
            await events.subscribe(reader)
            plane.start()
            stranger.start()
            await plane.wait_ready(events)
            token = plane.token()
            await plane.certify(token)
            with pytest.raises(grpc.aio.AioRpcError):
                await plane.certify(token + b"x")  # a bad signature: rejected and audited

            command_lines = {c.label: c.cmdline() for c in plane.components.values()}
            assert await stranger.wait_exit() == 2
            assert "authorization violation" in stranger.stderr_lines()[-1]
            assert await plane.stop() == dict.fromkeys(COMPONENTS, 0)
        finally:
            await plane.stop()
            await stranger.stop()
            await reader.close()

    secrets = {f"{name} seed": seed for name, seed in seeds.items()}
    secrets |= {f"{name} seed body": seed[2:] for name, seed in seeds.items()}
    secrets["token"] = token.decode()
    secrets["token signature"] = token.decode().rpartition(".")[2]
    outputs = {c.label: c.logs() for c in (*plane.components.values(), stranger)}
    for label, output in outputs.items():
        assert output.count("\n") > 3, f"{label} wrote hardly any log: {output!r}"
        leaked = [what for what, secret in secrets.items() if secret in output]
        assert not leaked, f"{label}'s log holds {leaked}"
    for label, command_line in command_lines.items():
        assert b"--nats-nkey" in command_line
        leaked = [what for what, secret in secrets.items() if secret.encode() in command_line]
        assert not leaked, f"{label}'s command line holds {leaked}"
