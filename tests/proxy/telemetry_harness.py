"""Real telemetry replicas in this process for the proxy tests, and one address in front of them."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry
from proxy_mesh import Mesh, Pod, ready_pod

from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.events import TelemetryRollup
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.runtime import Runtime
from tether.telemetry.config import TelemetryConfig
from tether.telemetry.service import TelemetryService

TELEMETRY = WorkloadIdentity("telemetry", "tether", "cluster.local")


class Replica:
    def __init__(self, name: str, mesh: Mesh) -> None:
        config = TelemetryConfig(
            nats_url=mesh.nats.url,
            admin_addr="127.0.0.1:0",
            grpc_addr="127.0.0.1:0",
            rollup_interval=1.0,
            shutdown_grace=0.5,
            identity=mesh.identity_config(TELEMETRY),
        )
        self.service = TelemetryService(config, CollectorRegistry())
        self.runtime = Runtime("telemetry", config, self.service, version="test", instance=name)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.service.grpc_port}"


class ServiceAddress:
    """One address in front of the replicas, as a Service gives them: each new connection goes to the
    current backend; a backend's death resets the connections it held. ``hold`` keeps what the replicas
    send back to the proxies (their acknowledgements), as a partition would, until ``fail_over``."""

    def __init__(self) -> None:
        self.backend = ""
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._server: asyncio.Server | None = None
        self._held: set[asyncio.StreamWriter] = set()

    async def start(self, backend: str) -> str:
        self.backend = backend
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def hold(self) -> None:
        self.flowing.clear()

    def fail_over(self, backend: str) -> None:
        self.backend = backend
        for writer in list(self._held):
            writer.transport.abort()
        self.flowing.set()

    async def close(self) -> None:
        self.fail_over("")
        if self._server is not None:
            self._server.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.backend.rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.transport.abort()
            return
        held = {writer, up_writer}
        self._held |= held

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, holdable: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    if holdable:
                        await self.flowing.wait()
                    if sink.transport.is_closing():
                        return
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        self._held -= held


async def reporting_pod(
    mesh: Mesh, addr: str, app: str | None, serviceaccount: str, report_interval: float = 1.0
) -> Pod:
    return await ready_pod(
        mesh,
        app,
        meshed=True,
        serviceaccount=serviceaccount,
        pod_name=f"{serviceaccount}-0",
        telemetry_addr=addr,
        telemetry_server_name=TELEMETRY.dns_name,
        report_interval=report_interval,
        workload_labels=(f"deployment={serviceaccount}",),
    )


async def rollup_consumer(mesh: Mesh) -> tuple[Bus, list[TelemetryRollup]]:
    """A NATS client receiving every rollup the replicas publish, into the returned list (close the bus)."""
    received: list[TelemetryRollup] = []
    bus = await Bus.connect(mesh.nats.settings(None), name="rollup-consumer")

    async def on_rollup(rollup: TelemetryRollup, _subject: str) -> None:
        received.append(rollup)

    await bus.subscribe(subjects.ROLLUP_ALL, TelemetryRollup, on_rollup)
    return bus, received
