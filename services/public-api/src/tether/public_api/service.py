"""The public API: the gRPC service ``tether.public.v1.Api`` the ``tether`` CLI uses, with the standard gRPC
health service and server reflection.

Version and Check come from the control plane's heartbeats on NATS (Check also from the rollups: meshed pods
whose proxies stopped reporting); ListWorkloads, StatSummary and Edges from the telemetry replicas' rollups,
merged exactly (:mod:`tether.public_api.rollups`, fed by :mod:`tether.public_api.follower`); Tap drives a tap
over NATS (:mod:`tether.public_api.tap`); Endpoints asks the destination service's Get stream once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tether.public_api import queries
from tether.public_api.access import Access
from tether.public_api.authz import Authorizer, build_authorizer
from tether.public_api.ca_health import IssuerTable
from tether.public_api.components import CheckOutcome, ComponentTable
from tether.public_api.config import PublicApiConfig
from tether.public_api.dashboard.app import Dashboard, start_dashboard
from tether.public_api.follower import RollupFollower
from tether.public_api.rollups import RollupStore
from tether.public_api.tap import run_tap, validate_tap
from tether.shared import subjects
from tether.shared.events import ISSUER_STATUS_INTERVAL, Heartbeat, IssuerStatus
from tether.shared.grpcserver import start_grpc_server
from tether.shared.grpctls import grpc_channel_credentials
from tether.shared.proto.destination.v1 import destination_pb2, destination_pb2_grpc
from tether.shared.proto.public.v1 import public_pb2, public_pb2_grpc
from tether.shared.proto.telemetry.v1 import telemetry_pb2
from tether.shared.runtime import Context, Service
from tether.shared.tls import read_trust_anchors

API_VERSION = "v1"
SERVICE_NAME = "tether.public.v1.Api"
_STATUS = {
    "ok": public_pb2.CHECK_STATUS_OK,
    "warning": public_pb2.CHECK_STATUS_WARNING,
    "error": public_pb2.CHECK_STATUS_ERROR,
}


def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class BusProbe:
    def __init__(self) -> None:
        self.ctx: Context | None = None

    def __call__(self) -> bool:
        return self.ctx is not None and self.ctx.bus.is_connected


class ApiServicer(public_pb2_grpc.ApiServicer):
    def __init__(
        self,
        config: PublicApiConfig,
        table: ComponentTable,
        bus_connected: BusProbe,
        store: RollupStore,
        follower: RollupFollower,
        issuers: IssuerTable,
        destination_anchors: bytes | None = None,
    ) -> None:
        self._config = config
        #: The PEM bundle destination's certificate must chain to (None: plaintext to destination).
        self._destination_anchors = destination_anchors
        self._table = table
        self._issuers = issuers
        self._bus_connected = bus_connected
        self._store = store
        self._follower = follower
        self._destination: grpc.aio.Channel | None = None
        # Who may Tap and ask Endpoints (--authz), set when the service starts.
        self.access: Access | None = None

    async def close(self) -> None:
        if self._destination is not None:
            await self._destination.close()

    async def Version(
        self, request: public_pb2.VersionRequest, context: grpc.aio.ServicerContext
    ) -> public_pb2.VersionResponse:
        components = [
            public_pb2.ComponentVersion(
                service=c.service,
                instance=c.instance,
                version=c.version,
                ready=c.ready,
                last_seen=timestamp(c.last_seen),
            )
            for c in self._table.alive(time.time())
        ]
        return public_pb2.VersionResponse(api_version=API_VERSION, components=components)

    async def Check(
        self, request: public_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> public_pb2.CheckResponse:
        now = time.time()
        outcomes = self._table.check(now, self._bus_connected())
        outcomes.extend(self._issuers.check(now))
        outcomes.append(
            CheckOutcome(
                "telemetry",
                "public API reads the telemetry rollups",
                True,
                ""
                if self._follower.following
                else f"stream {subjects.ROLLUPS_STREAM}: {self._follower.error} (is telemetry running?)",
                level="ok" if self._follower.following else "warning",
            )
        )
        silent = queries.silent_pods(self._store, now, self._config.report_timeout)
        outcomes.append(
            CheckOutcome(
                "data-plane",
                "meshed pods' proxies are reporting",
                True,
                (
                    "not reporting for more than "
                    f"{self._config.report_timeout:g}s: "
                    + ", ".join(f"{p.namespace}/{p.pod}" for p in silent)
                    + " (stopped, or cannot reach telemetry: check the proxy's log)"
                )
                if silent
                else "",
                level="warning" if silent else "ok",
            )
        )
        statuses = [o.status for o in outcomes]
        worst = "error" if "error" in statuses else "warning" if "warning" in statuses else "ok"
        return public_pb2.CheckResponse(
            ok=worst != "error",
            status=_STATUS[worst],
            results=[
                public_pb2.CheckResult(
                    category=o.category,
                    description=o.description,
                    ok=o.status != "error",
                    hint=o.hint,
                    status=_STATUS[o.status],
                )
                for o in outcomes
            ],
        )

    async def ListWorkloads(
        self, request: public_pb2.ListWorkloadsRequest, context: grpc.aio.ServicerContext
    ) -> public_pb2.ListWorkloadsResponse:
        if request.namespace:
            await queries.check_label(context, "namespace", request.namespace)
        return queries.list_workloads(
            self._store, time.time(), request.namespace, self._config.report_timeout
        )

    async def StatSummary(
        self, request: public_pb2.StatSummaryRequest, context: grpc.aio.ServicerContext
    ) -> public_pb2.StatSummaryResponse:
        return await queries.stat_summary(self._store, time.time(), request, context)

    async def Edges(
        self, request: public_pb2.EdgesRequest, context: grpc.aio.ServicerContext
    ) -> public_pb2.EdgesResponse:
        return await queries.edges(self._store, time.time(), request, context)

    async def Tap(
        self, request: public_pb2.TapRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[telemetry_pb2.TapEvent]:
        assert self._bus_connected.ctx is not None
        tap = await validate_tap(request, context)
        assert self.access is not None
        await self.access.admit_tap(tap, context)
        async for event in run_tap(self._bus_connected.ctx.bus, tap, request):
            yield event

    def _destination_channel(self) -> grpc.aio.Channel:
        if self._destination is None:
            config = self._config
            if self._destination_anchors is not None:
                credentials = grpc_channel_credentials(self._destination_anchors)
                self._destination = grpc.aio.secure_channel(
                    config.destination_addr,
                    credentials,
                    options=[("grpc.ssl_target_name_override", config.destination_server_name)],
                )
            else:
                self._destination = grpc.aio.insecure_channel(config.destination_addr)
        return self._destination

    async def Endpoints(
        self, request: public_pb2.EndpointsRequest, context: grpc.aio.ServicerContext
    ) -> public_pb2.EndpointsResponse:
        if not request.authority:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "authority: required (host:port)")
        if len(request.authority) > 512:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "authority: longer than 512 characters")
        if request.namespace:
            await queries.check_label(context, "namespace", request.namespace)
        assert self.access is not None
        await self.access.admit_endpoints(request.authority, request.namespace, context)
        token = f'{{"ns":"{request.namespace}"}}' if request.namespace else ""
        stub = destination_pb2_grpc.DestinationStub(self._destination_channel())
        call = stub.Get(destination_pb2.GetDestination(authority=request.authority, context_token=token))
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"authority: {exc.details()}")
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the destination service at {self._config.destination_addr} did not answer: {exc.details()}",
            )
        finally:
            call.cancel()
        if first is grpc.aio.EOF or not isinstance(first, destination_pb2.Update):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the destination service ended the stream")
        assert isinstance(first, destination_pb2.Update)
        if first.WhichOneof("update") == "add":
            return public_pb2.EndpointsResponse(exists=True, endpoints=list(first.add.addrs))
        if first.no_endpoints.exists:
            return public_pb2.EndpointsResponse(exists=True)
        await context.abort(
            grpc.StatusCode.NOT_FOUND, f"authority: {request.authority} is not known to the mesh"
        )
        raise AssertionError("unreachable")


class PublicApiService(Service):
    def __init__(self, config: PublicApiConfig) -> None:
        self.config = config
        self.table = ComponentTable(config.heartbeat_timeout)
        # Identity publishes every STATUS_INTERVAL seconds: three missed ones mean it is gone.
        self.issuers = IssuerTable(max(3 * ISSUER_STATUS_INTERVAL, config.heartbeat_timeout))
        self.store = RollupStore()
        self.follower = RollupFollower(self.store)
        self._probe = BusProbe()
        self._server: grpc.aio.Server | None = None
        self._servicer: ApiServicer | None = None
        self._health = health.aio.HealthServicer()
        self.port = 0
        self.dashboard: Dashboard | None = None
        self._authorizer: Authorizer | None = None
        self.destination_anchors: bytes | None = None

    async def prepare(self) -> None:
        """Destination's trust anchors; with --authz kubernetes, the Kubernetes client once the API answers
        (before NATS)."""
        from tether.shared.kube import KubeSettings

        if self.config.destination_trust_anchors:
            self.destination_anchors = read_trust_anchors(
                "--destination-trust-anchors",
                self.config.destination_trust_anchors,
                "mount the mesh's trust anchors there (the tether-trust-roots ConfigMap), or pass "
                "--destination-trust-anchors '' if destination serves plaintext",
            )
        self._authorizer = await build_authorizer(
            self.config.authz, KubeSettings.from_config(self.config.kube), timeout=self.config.authz_timeout
        )

    async def start(self, ctx: Context) -> None:
        self._probe.ctx = ctx

        async def on_heartbeat(beat: Heartbeat, _subject: str) -> None:
            self.table.observe(beat, time.time())

        await ctx.bus.subscribe(subjects.HEALTH_ALL, Heartbeat, on_heartbeat)

        async def on_issuer_status(status: IssuerStatus, _subject: str) -> None:
            self.issuers.observe(status, time.time())

        await ctx.bus.subscribe(subjects.IDENTITY_ISSUER, IssuerStatus, on_issuer_status)
        bus = ctx.bus

        async def follow() -> None:
            await self.follower.run(bus)

        ctx.spawn("rollups", follow)
        if self._authorizer is None:
            await self.prepare()
        assert self._authorizer is not None
        servicer = ApiServicer(
            self.config,
            self.table,
            self._probe,
            self.store,
            self.follower,
            self.issuers,
            destination_anchors=self.destination_anchors,
        )
        self._servicer = servicer
        servicer.access = Access(self._authorizer, ctx.bus.publish, ctx.instance)
        health_servicer = self._health

        def register(server: grpc.aio.Server) -> None:
            public_pb2_grpc.add_ApiServicer_to_server(servicer, server)
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            reflection.enable_server_reflection(
                (
                    SERVICE_NAME,
                    health.SERVICE_NAME,
                    reflection.SERVICE_NAME,
                ),
                server,
            )

        self._server, self.port = await start_grpc_server(
            self.config.grpc_addr, register, option="--grpc-addr"
        )
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        ctx.log.info("public_api_listening", grpc_port=self.port)
        self.dashboard = await start_dashboard(ctx, self.config, self.port)

    async def stop(self, grace: float) -> None:
        if self.dashboard is not None:
            await self.dashboard.close()  # its taps end before the gRPC server they call
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            await self._server.stop(grace)
        if self._servicer is not None:
            await self._servicer.close()
        if self._authorizer is not None:
            await self._authorizer.close()

    def ready(self) -> bool:
        return self._server is not None


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value
