"""The real identity service and telemetry replicas in-process, for the telemetry tests (see conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from tether.identity.bootstrap import bootstrap
from tether.identity.ca import IssuerFiles
from tether.identity.certifier import CertifierSettings
from tether.identity.observe import CertifyReporter, IdentityMetrics
from tether.identity.ratelimit import BucketPolicy
from tether.identity.server import IdentityServer, ServerSettings
from tether.identity.tokens.local import LocalTokenVerifier, load_token_key, mint_token
from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.config import IdentityClientConfig
from tether.shared.events import TelemetryRollup
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.natsserver import EmbeddedNats
from tether.shared.runtime import Runtime
from tether.shared.testing import RecordingSupervisor, eventually
from tether.shared.tls import KeyPair
from tether.telemetry.config import TelemetryConfig
from tether.telemetry.service import TelemetryService
from tether.telemetry.testing import ReportClient, certify

TRUST_DOMAIN = "cluster.local"
GENEROUS = BucketPolicy(rate=1000.0, burst=1000.0)
TELEMETRY = WorkloadIdentity("telemetry", "tether", TRUST_DOMAIN)
IDENTITY_SERVER = WorkloadIdentity("identity", "tether", TRUST_DOMAIN).dns_name


@dataclass
class Identity:
    directory: Path
    supervisor: RecordingSupervisor = field(default_factory=RecordingSupervisor)
    server: IdentityServer | None = None
    port: int = 0

    @property
    def anchors(self) -> bytes:
        return (self.directory / "ca.crt").read_bytes()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        bootstrap(self.directory, datetime.now(UTC), TRUST_DOMAIN)
        key = load_token_key((self.directory / "token-signing.key").read_bytes())
        metrics = IdentityMetrics(CollectorRegistry())
        files = IssuerFiles(
            self.directory / "ca.crt", self.directory / "issuer.crt", self.directory / "issuer.key"
        )
        self.server = IdentityServer(
            CertifierSettings(
                trust_domain=TRUST_DOMAIN,
                leaf_lifetime=timedelta(hours=1),
                identity_limit=GENEROUS,
                peer_limit=GENEROUS,
            ),
            ServerSettings(listen="127.0.0.1:0", files=files, namespace="tether", reload_interval=1.0),
            LocalTokenVerifier(key, TRUST_DOMAIN),
            CertifyReporter("identity-test", metrics, None),
            metrics,
        )
        self.port = await self.server.start(self.supervisor.spawn)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
        await self.supervisor.stop()

    def token_file(self, identity: WorkloadIdentity) -> str:
        key = load_token_key((self.directory / "token-signing.key").read_bytes())
        path = self.directory / f"{identity.namespace}-{identity.serviceaccount}.token"
        path.write_bytes(mint_token(key, identity, datetime.now(UTC), timedelta(hours=1)))
        return str(path)

    def client_config(self, identity: WorkloadIdentity) -> IdentityClientConfig:
        return IdentityClientConfig(
            name=identity.dns_name,
            addr=self.addr,
            server_name=IDENTITY_SERVER,
            trust_anchors=str(self.directory / "ca.crt"),
            token_file=self.token_file(identity),
        )

    async def certificate(self, identity: WorkloadIdentity) -> KeyPair:
        return await certify(identity, self.addr, self.anchors, self.token_file(identity), IDENTITY_SERVER)


class Replica:
    """One telemetry replica in this process: the real service inside the real runtime."""

    def __init__(self, name: str, nats: EmbeddedNats, identity: Identity, interval: float = 1.0) -> None:
        self.name = name
        self.config = TelemetryConfig(
            nats_url=nats.url,
            nats_nkey=nats.users["telemetry"].seed_file if nats.users else "",
            admin_addr="127.0.0.1:0",
            grpc_addr="127.0.0.1:0",
            rollup_interval=interval,
            shutdown_grace=0.5,
            identity=identity.client_config(TELEMETRY),
        )
        self.service = TelemetryService(self.config, CollectorRegistry())
        self.runtime = Runtime("telemetry", self.config, self.service, version="test", instance=name)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.service.grpc_port}"

    async def start(self) -> None:
        await self.runtime.start()
        await eventually(self.runtime.ready, 15.0, f"{self.name} ready")

    async def stop(self) -> None:
        await self.runtime.stop()

    async def crash(self) -> None:
        """Dies as a killed process would: streams cut, what was folded neither published nor acknowledged."""
        await self.service.abandon()
        await self.runtime.stop()


class Rollups:
    """Every rollup on ``tether.v1.telemetry.rollup.>``, as a live subscriber sees them."""

    def __init__(self) -> None:
        self.received: list[TelemetryRollup] = []

    async def subscribe(self, bus: Bus) -> None:
        async def on_rollup(rollup: TelemetryRollup, _subject: str) -> None:
            self.received.append(rollup)

        await bus.subscribe(subjects.ROLLUP_ALL, TelemetryRollup, on_rollup)


async def stored_rollups(bus: Bus, timeout: float = 5.0) -> list[TelemetryRollup]:
    """Every rollup in the JetStream stream, read from its start by a consumer that starts now."""
    from tether.shared.cloudevents import EventDecoder

    decoder = EventDecoder(TelemetryRollup)
    info = await bus.jetstream.stream_info(subjects.ROLLUPS_STREAM)
    wanted = info.state.messages
    found: list[TelemetryRollup] = []
    done = asyncio.Event()

    async def on_message(msg: Any) -> None:
        found.append(decoder.decode(msg.data)[1])
        if len(found) >= wanted:
            done.set()

    if wanted == 0:
        return []
    sub = await bus.jetstream.subscribe(
        subjects.ROLLUP_ALL, stream=subjects.ROLLUPS_STREAM, cb=on_message, ordered_consumer=True
    )
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return found


async def client_for(
    identity: Identity, replica: Replica, workload: WorkloadIdentity, pod: str, deployment: str
) -> tuple[ReportClient, KeyPair]:
    pair = await identity.certificate(workload)
    client = ReportClient(
        namespace=workload.namespace,
        pod=pod,
        identity=workload.dns_name,
        labels={"deployment": deployment, "serviceaccount": workload.serviceaccount},
    )
    await client.connect(replica.target, anchors=identity.anchors, pair=pair, server_name=TELEMETRY.dns_name)
    return client, pair
