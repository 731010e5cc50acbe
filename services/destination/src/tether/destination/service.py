"""One destination replica: the watch, the served state, the gRPC server, and (when elected) the writer."""

from __future__ import annotations

from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from tether.destination.buckets import open_buckets
from tether.destination.config import DestinationConfig
from tether.destination.lease_keeper import LeaseKeeper
from tether.destination.metrics import DestinationMetrics
from tether.destination.server import GRPC_SERVER_OPTIONS, DestinationServicer
from tether.destination.sources.base import Source
from tether.destination.sources.local import LocalSource, check_registry_file
from tether.destination.state import EndpointStore, SubscriptionRegistry
from tether.destination.watcher import EndpointWatcher
from tether.destination.writer import Writer
from tether.shared.bus import Bus
from tether.shared.grpcserver import start_grpc_server
from tether.shared.proto.destination.v1 import destination_pb2_grpc
from tether.shared.runtime import Context, Service
from tether.shared.serving_identity import ServingIdentity

log = structlog.get_logger(__name__)


class DestinationService(Service):
    def __init__(self, config: DestinationConfig, metrics_registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.metrics = DestinationMetrics(metrics_registry)
        self.store = EndpointStore()
        self.registry = SubscriptionRegistry(self.store)
        self.grpc_port = 0
        self.instance = ""
        self._server: Any = None
        self._servicer: DestinationServicer | None = None
        self._watcher: EndpointWatcher | None = None
        self._source: Source | None = None
        self._writer: Writer | None = None
        self._lease: LeaseKeeper | None = None
        self._kube_client: Any = None
        self.serving_identity = None if config.identity.disabled else ServingIdentity(config.identity)

    @property
    def is_leader(self) -> bool:
        return self._lease is not None and self._lease.is_leader

    @property
    def writer(self) -> Writer | None:
        return self._writer

    def ready(self) -> bool:
        serving = self._watcher is not None and self._watcher.synced.is_set() and self._server is not None
        return serving and (self.serving_identity is None or self.serving_identity.ready())

    async def prepare(self) -> None:
        """The Kubernetes configuration and API, or the registry file: checked before NATS is awaited."""
        config = self.config
        if self.serving_identity is not None:
            self.serving_identity.prepare()
        if config.source == "local":
            check_registry_file(config.registry_file, config.trust_domain)
            return
        # Imported here: the kubernetes client takes half a second to import and local meshes never need it.
        from tether.shared.kube import KubeSettings, api_client, kube_remedy, wait_reachable

        settings = KubeSettings.from_config(config.kube)
        self._kube_client = api_client(settings, remedy=kube_remedy("use --source local"))
        await wait_reachable(
            self._kube_client,
            settings.connect_timeout,
            what_to_check="check --kube-api-url or the kubeconfig, and that the API server is up",
        )

    def _build_source(self, bus: Bus) -> Source:
        config = self.config
        if config.source == "local":
            return LocalSource(
                bus,
                config.registry_file,
                config.trust_domain,
                self.metrics,
                poll_interval=config.registry_poll_interval,
                adopt_ttl=config.registration_ttl,
                max_registrations=config.max_registrations,
            )
        from tether.destination.sources.kubernetes import KubernetesSource

        assert self._kube_client is not None, "prepare() builds the client"
        return KubernetesSource(
            self._kube_client,
            config.trust_domain,
            self.metrics,
            watch_timeout=config.kube_watch_timeout,
        )

    async def start(self, ctx: Context) -> None:
        config = self.config
        bus = ctx.bus
        self.instance = ctx.instance
        if config.source == "kubernetes" and self._kube_client is None:
            await self.prepare()  # in-process users may start without the runtime's prepare step
        source = self._build_source(bus)
        self._source = source
        kv, lease_kv = await open_buckets(bus, config.kv_replicas, ctx.log)

        watcher = EndpointWatcher(kv, self.store, self.registry, self.metrics)
        self._watcher = watcher
        writer = Writer(
            bus,
            kv,
            self.store,
            source,
            self.metrics,
            ctx.instance,
            watcher.synced,
            resync_interval=config.resync_interval,
        )
        self._writer = writer
        # Every replica skips a garbage value; the leader also rewrites it from the source.
        watcher.on_rejected = lambda key: writer.mark_dirty({key})
        watcher.start(ctx.spawn)
        writer.start(ctx.spawn)
        await source.start(writer.mark_dirty, ctx.spawn)
        self._lease = LeaseKeeper(lease_kv, ctx.instance, config.lease_ttl, writer.leadership_changed)
        self._lease.start(ctx.spawn)

        self._servicer = DestinationServicer(
            self.registry,
            self.metrics,
            self._watcher.synced,
            keepalive_interval=config.keepalive_interval,
            max_streams_per_peer=config.max_streams_per_peer,
            cluster_domain=config.cluster_domain,
            max_stream_age=config.max_stream_age,
        )
        servicer = self._servicer

        def register(server: Any) -> None:
            destination_pb2_grpc.add_DestinationServicer_to_server(servicer, server)

        credentials = None
        if self.serving_identity is not None:
            credentials = self.serving_identity.credentials()
            self.serving_identity.start(ctx.spawn)
        self._server, self.grpc_port = await start_grpc_server(
            config.grpc_addr,
            register,
            option="--grpc-addr",
            credentials=credentials,
            extra_options=GRPC_SERVER_OPTIONS,
        )
        log.info("destination_serving", grpc_port=self.grpc_port, source=config.source)

    async def stop(self, grace: float) -> None:
        """Drain streams (UNAVAILABLE: reconnect elsewhere), hand the lease over, stop everything."""
        if self._servicer is not None:
            self._servicer.drain()
        if self._lease is not None:
            await self._lease.stop(release=True)
        if self._writer is not None:
            await self._writer.stop()
        if self._source is not None:
            await self._source.stop()
        if self._server is not None:
            await self._server.stop(grace)
        if self._watcher is not None:
            await self._watcher.stop()
        if self.serving_identity is not None:
            await self.serving_identity.stop()

    async def abandon(self) -> None:
        """Stops without releasing the lease, as a crashed replica would (tests)."""
        if self._lease is not None:
            await self._lease.stop(release=False)
        await self.stop(0)
