"""The public API: the gRPC API the ``tether`` CLI uses.

Version and Check are answered from the control plane's heartbeats on NATS. StatSummary, Tap, ListWorkloads
and Endpoints answer UNIMPLEMENTED until the telemetry and destination issues wire them.
"""

from __future__ import annotations

import time

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tether.public_api.components import ComponentTable
from tether.public_api.config import PublicApiConfig
from tether.shared import subjects
from tether.shared.events import Heartbeat
from tether.shared.grpcserver import start_grpc_server
from tether.shared.proto.public.v1 import public_pb2, public_pb2_grpc
from tether.shared.runtime import Context, Service

API_VERSION = "v1"


class ApiServicer(public_pb2_grpc.ApiServicer):
    def __init__(self, table: ComponentTable, bus_connected: BusProbe) -> None:
        self._table = table
        self._bus_connected = bus_connected

    async def Version(
        self, request: public_pb2.VersionRequest, context: grpc.aio.ServicerContext
    ) -> public_pb2.VersionResponse:
        components = []
        for c in self._table.alive(time.time()):
            seen = Timestamp()
            seen.FromNanoseconds(int(c.last_seen * 1e9))
            components.append(
                public_pb2.ComponentVersion(
                    service=c.service, instance=c.instance, version=c.version, ready=c.ready, last_seen=seen
                )
            )
        return public_pb2.VersionResponse(api_version=API_VERSION, components=components)

    async def Check(
        self, request: public_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> public_pb2.CheckResponse:
        outcomes = self._table.check(time.time(), self._bus_connected())
        return public_pb2.CheckResponse(
            ok=all(o.ok for o in outcomes),
            results=[
                public_pb2.CheckResult(category=o.category, description=o.description, ok=o.ok, hint=o.hint)
                for o in outcomes
            ],
        )


class BusProbe:
    def __init__(self) -> None:
        self.ctx: Context | None = None

    def __call__(self) -> bool:
        return self.ctx is not None and self.ctx.bus.is_connected


class PublicApiService(Service):
    def __init__(self, config: PublicApiConfig) -> None:
        self.config = config
        self.table = ComponentTable(config.heartbeat_timeout)
        self._probe = BusProbe()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, ctx: Context) -> None:
        self._probe.ctx = ctx

        async def on_heartbeat(beat: Heartbeat, _subject: str) -> None:
            self.table.observe(beat, time.time())

        await ctx.bus.subscribe(subjects.HEALTH_ALL, Heartbeat, on_heartbeat)
        servicer = ApiServicer(self.table, self._probe)
        self._server, self.port = await start_grpc_server(
            self.config.grpc_addr,
            lambda server: public_pb2_grpc.add_ApiServicer_to_server(servicer, server),
            option="--grpc-addr",
        )
        ctx.log.info("public_api_listening", grpc_port=self.port)

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)

    def ready(self) -> bool:
        return self._server is not None
