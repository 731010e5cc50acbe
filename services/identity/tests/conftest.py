"""Fixtures for the identity service tests: CA material on disk, token minting, CSR building, a running
server with a real grpc.aio TLS client, and a log scan that fails any test whose log lines contain a
token, a private key or a CSR registered in `secrets`."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from tether.identity.bootstrap import CertifiedKey, generate_issuer, generate_trust_anchor, write_file
from tether.identity.ca import IssuerFiles
from tether.identity.certifier import CertifierSettings
from tether.identity.observe import CertifyReporter, EventPublisher, IdentityMetrics, Publish
from tether.identity.ratelimit import BucketPolicy
from tether.identity.server import IdentityServer, ServerSettings
from tether.identity.tokens import TokenVerifier
from tether.identity.tokens.local import LocalTokenVerifier, TokenKey, mint_token
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.logging import configure
from tether.shared.proto.identity.v1 import identity_pb2, identity_pb2_grpc
from tether.shared.testing import RecordingSupervisor

TRUST_DOMAIN = "cluster.local"
WEB = WorkloadIdentity("web", "shop", TRUST_DOMAIN)
GENEROUS = BucketPolicy(rate=10_000.0, burst=10_000.0)


@dataclass
class Secrets:
    """Material that must never appear in a log line."""

    items: set[str] = field(default_factory=set)

    def add(self, value: bytes | str) -> None:
        raw = value if isinstance(value, bytes) else value.encode()
        if isinstance(value, str):
            self.items.add(value)
        self.items.add(base64.b64encode(raw).decode())
        self.items.add(raw.hex())
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return
        self.items.add(text)
        # PEM: every base64 body line on its own, so a partial leak is caught too.
        self.items.update(
            line for line in text.splitlines() if len(line) > 40 and not line.startswith("-----")
        )

    def add_private_key(self, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> None:
        self.add(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        if isinstance(key, ec.EllipticCurvePrivateKey):
            self.add(format(key.private_numbers().private_value, "x"))
            self.add(str(key.private_numbers().private_value))


@pytest.fixture(autouse=True)
def log_output() -> Iterator[io.StringIO]:
    """Every log line of the test, rendered by the real logging setup (JSON), including grpc/stdlib."""
    buffer = io.StringIO()
    configure(service="identity", instance="test", version="test", fmt="json", level="debug", stream=buffer)
    yield buffer


@pytest.fixture(autouse=True)
def secrets(log_output: io.StringIO) -> Iterator[Secrets]:
    registry = Secrets()
    yield registry
    text = log_output.getvalue()
    leaked = sorted(item[:12] + "..." for item in registry.items if item and item in text)
    assert not leaked, f"secret material in log lines: {leaked}"
    assert "PRIVATE KEY" not in text


def make_csr(
    identity: WorkloadIdentity | None = WEB,
    key: Any = None,
    dns_names: list[str] | None = None,
    uris: list[str] | None = None,
    extra: list[x509.GeneralName] | None = None,
    common_name: str | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A DER CSR; by default one a proxy would send for `identity` (DNS SAN + SPIFFE URI SAN)."""
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    if dns_names is None:
        dns_names = [identity.dns_name] if identity else []
    if uris is None:
        uris = [identity.spiffe_id] if identity else []
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    names += extra or []
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    hash_algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(key, hash_algorithm)
    return key, csr.public_bytes(serialization.Encoding.DER)


@dataclass
class CaOnDisk:
    directory: Path
    files: IssuerFiles
    anchor: CertifiedKey
    issuer: CertifiedKey

    def write(self, anchor: CertifiedKey | None = None, issuer: CertifiedKey | None = None) -> None:
        if anchor is not None:
            self.anchor = anchor
            write_file(self.files.trust_anchors, anchor.certificate_pem, 0o644)
        if issuer is not None:
            self.issuer = issuer
            # Certificate and key land one after the other, as a careless rotation would do it.
            write_file(self.files.issuer_certificate, issuer.certificate_pem, 0o644)
            write_file(self.files.issuer_key, issuer.key_pem, 0o600)

    def new_issuer(self, anchor: CertifiedKey | None = None) -> CertifiedKey:
        return generate_issuer(anchor or self.anchor, datetime.now(UTC), TRUST_DOMAIN)


@pytest.fixture
def ca(tmp_path: Path, secrets: Secrets) -> CaOnDisk:
    now = datetime.now(UTC)
    anchor = generate_trust_anchor(now, TRUST_DOMAIN)
    issuer = generate_issuer(anchor, now, TRUST_DOMAIN)
    secrets.add_private_key(anchor.key)
    secrets.add_private_key(issuer.key)
    directory = tmp_path / "ca"
    directory.mkdir()
    files = IssuerFiles(directory / "ca.crt", directory / "issuer.crt", directory / "issuer.key")
    on_disk = CaOnDisk(directory, files, anchor, issuer)
    on_disk.write(anchor=anchor, issuer=issuer)
    return on_disk


@dataclass
class TokenMinter:
    key: TokenKey
    secrets: Secrets

    def __call__(self, identity: WorkloadIdentity = WEB, ttl: timedelta = timedelta(hours=1)) -> bytes:
        token = mint_token(self.key, identity, datetime.now(UTC), ttl)
        self.secrets.add(token)
        self.secrets.add(token.rpartition(b".")[2])
        return token


@pytest.fixture
def mint(secrets: Secrets) -> TokenMinter:
    key = TokenKey(os.urandom(32))
    secrets.add(key.secret)
    return TokenMinter(key, secrets)


@dataclass
class RunningIdentity:
    server: IdentityServer
    channel: grpc.aio.Channel
    stub: identity_pb2_grpc.IdentityStub
    registry: CollectorRegistry
    ca: CaOnDisk
    secrets: Secrets

    async def certify(
        self, identity: str, token: bytes, csr: bytes, timeout: float = 10.0
    ) -> identity_pb2.CertifyResponse:
        self.secrets.add(csr)
        request = identity_pb2.CertifyRequest(identity=identity, token=token, certificate_signing_request=csr)
        response: identity_pb2.CertifyResponse = await self.stub.Certify(request, timeout=timeout)
        return response

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


def client_channel(
    port: int, anchor_pem: bytes, server_name: str, host: str = "127.0.0.1"
) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        f"{host}:{port}",
        grpc.ssl_channel_credentials(root_certificates=anchor_pem),
        options=[("grpc.ssl_target_name_override", server_name)],
    )


StartServer = Callable[..., Any]


@pytest.fixture
async def start_identity(
    ca: CaOnDisk, mint: TokenMinter, secrets: Secrets, supervisor: RecordingSupervisor
) -> AsyncIterator[StartServer]:
    """Starts identity servers (real grpc.aio over TLS) and a client channel to each; stops them after."""
    running: list[tuple[RunningIdentity, EventPublisher | None, TokenVerifier]] = []

    async def start(
        *,
        verifier: TokenVerifier | None = None,
        publish: Publish | None = None,
        identity_limit: BucketPolicy = GENEROUS,
        peer_limit: BucketPolicy = GENEROUS,
        leaf_lifetime: timedelta = timedelta(hours=24),
        listen: str = "127.0.0.1:0",
        replica: str = "identity-0",
    ) -> RunningIdentity:
        registry = CollectorRegistry()
        metrics = IdentityMetrics(registry)
        events = EventPublisher(publish, metrics) if publish is not None else None
        if events is not None:
            events.start(supervisor.spawn)
        chosen = verifier or LocalTokenVerifier(mint.key, TRUST_DOMAIN)
        server = IdentityServer(
            CertifierSettings(
                trust_domain=TRUST_DOMAIN,
                leaf_lifetime=leaf_lifetime,
                identity_limit=identity_limit,
                peer_limit=peer_limit,
            ),
            ServerSettings(listen=listen, files=ca.files, namespace="tether", reload_interval=0.05),
            chosen,
            CertifyReporter(replica, metrics, events),
            metrics,
        )
        port = await server.start(supervisor.spawn)
        channel = client_channel(port, ca.anchor.certificate_pem, server.identity.dns_name)
        handle = RunningIdentity(
            server, channel, identity_pb2_grpc.IdentityStub(channel), registry, ca, secrets
        )
        running.append((handle, events, chosen))
        return handle

    yield start
    for handle, events, chosen in running:
        await handle.channel.close()
        await handle.server.stop(0)
        if events is not None:
            await events.stop()
        await chosen.close()


CsrFactory = Callable[..., tuple[ec.EllipticCurvePrivateKey, bytes]]


@pytest.fixture
def csr_for(secrets: Secrets) -> CsrFactory:
    """`make_csr`, registering each generated private key as a secret."""

    def build(*args: Any, **kwargs: Any) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        key, der = make_csr(*args, **kwargs)
        if isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            secrets.add_private_key(key)
        secrets.add(der)
        return key, der

    return build
