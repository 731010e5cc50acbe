"""One telemetry replica: the Report server, the aggregation core, and the rollup publisher.

Every ``--rollup-interval`` the publisher cuts the core's partial rollups and publishes each into the
JetStream stream ``tether_rollups`` (one publish both stores the rollup and delivers it to subscribers of
``tether.v1.telemetry.rollup.>``); only once the stream acknowledged it are the proxies whose reports it
holds acknowledged. A rollup that could not be published goes back into the next interval. Ready: serving
``Report`` with a certificate from identity (and NATS connected, which the runtime checks).

Tap: the replica subscribes to ``tether.v1.tap.requests`` and ``tether.v1.tap.matches.>``, ticks its
:class:`~tether.telemetry.tap.TapRegistry` on the supervised task ``tap-timer``, and relays subscriptions and
events between NATS and the Report streams (:mod:`tether.telemetry.taprelay`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from tether.shared import subjects
from tether.shared.bus import replica_refusal
from tether.shared.errors import BusError
from tether.shared.grpcserver import start_grpc_server
from tether.shared.proto.telemetry.v1 import telemetry_pb2_grpc
from tether.shared.runtime import Context, Service
from tether.shared.serving_identity import ServingIdentity
from tether.telemetry.aggregate import Aggregator, PartialRollup
from tether.telemetry.config import TelemetryConfig
from tether.telemetry.metrics import TelemetryMetrics
from tether.telemetry.resume import PublishedRanges
from tether.telemetry.rollups import message_id, to_event
from tether.telemetry.server import TelemetryServicer
from tether.telemetry.tap import TapRegistry
from tether.telemetry.taprelay import TapRelay
from tether.telemetry.windows import Windows, summarise

log = structlog.get_logger(__name__)

GRPC_SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
]
PUBLISH_CONCURRENCY = 64


class TelemetryService(Service):
    def __init__(self, config: TelemetryConfig, metrics_registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.metrics = TelemetryMetrics(metrics_registry)
        self.core = Aggregator(time.time())
        self.windows = Windows()
        self.grpc_port = 0
        self.instance = ""
        self._ctx: Context | None = None
        self._server: Any = None
        self._servicer: TelemetryServicer | None = None
        self.taps: TapRelay | None = None
        self.published = PublishedRanges()
        self._stream_ready = False
        self._publish_lock = asyncio.Lock()
        self._abandoned = False
        self.serving_identity = (
            None
            if config.identity.disabled
            else ServingIdentity(config.identity, require_client_certificates=True)
        )

    def ready(self) -> bool:
        serving = self._server is not None and self._stream_ready
        return serving and (self.serving_identity is None or self.serving_identity.ready())

    async def prepare(self) -> None:
        if self.serving_identity is not None:
            self.serving_identity.prepare()

    async def start(self, ctx: Context) -> None:
        config = self.config
        self._ctx = ctx
        self.instance = ctx.instance
        try:
            await ctx.bus.ensure_stream(
                subjects.ROLLUPS_STREAM,
                [subjects.ROLLUP_ALL],
                max_age=config.rollup_max_age,
                replicas=config.stream_replicas,
            )
        except BusError as exc:
            what = f"the stream {subjects.ROLLUPS_STREAM}"
            refusal = replica_refusal(what, config.stream_replicas, exc, "--stream-replicas")
            if refusal is not None:
                raise refusal from None
            raise
        self._stream_ready = True
        self._servicer = TelemetryServicer(
            self.core,
            self.metrics,
            mtls=self.serving_identity is not None,
            hello_timeout=config.hello_timeout,
            log_interval=config.rollup_interval,
            max_stream_age=config.max_stream_age,
            published=self.published,
        )
        servicer = self._servicer
        self.taps = TapRelay(TapRegistry(self.instance), ctx.bus, self.metrics, servicer)
        servicer.taps = self.taps
        await self.taps.subscribe()

        def register(server: Any) -> None:
            telemetry_pb2_grpc.add_TelemetryServicer_to_server(servicer, server)

        credentials = None
        if self.serving_identity is not None:
            credentials = self.serving_identity.credentials()
            self.serving_identity.start(ctx.spawn)
        else:
            log.warning(
                "telemetry_unauthenticated", detail="--identity-disabled: plaintext, hellos unverified"
            )
        self._server, self.grpc_port = await start_grpc_server(
            config.grpc_addr,
            register,
            option="--grpc-addr",
            credentials=credentials,
            extra_options=GRPC_SERVER_OPTIONS,
        )
        ctx.spawn("published-ranges", lambda: self.published.follow(ctx.bus))
        ctx.spawn("rollup-publisher", self._publish_every_interval)
        ctx.spawn("tap-timer", self.taps.run)
        log.info("telemetry_serving", grpc_port=self.grpc_port, rollup_interval=config.rollup_interval)

    async def _publish_every_interval(self) -> None:
        interval = self.config.rollup_interval
        while True:
            await asyncio.sleep(interval - (time.time() % interval))
            await self.publish_once()

    async def publish_once(self) -> int:
        """Cut and publish the partial rollups; acknowledge what was published. Returns how many were."""
        assert self._ctx is not None and self._servicer is not None
        bus, servicer = self._ctx.bus, self._servicer
        async with self._publish_lock:
            if self._abandoned:
                return 0
            now = time.time()
            rollups = self.core.cut(now)
            semaphore = asyncio.Semaphore(PUBLISH_CONCURRENCY)

            async def publish(rollup: PartialRollup) -> bool:
                event = to_event(rollup, self.instance)
                subject = subjects.rollup(event.namespace, event.kind, event.name)
                async with semaphore:
                    try:
                        await bus.publish_stored(subject, event, message_id=message_id(event))
                    except BusError as exc:
                        self.metrics.publish_failures.inc()
                        log.warning("rollup_publish_failed", subject=subject, error=str(exc)[:300])
                        return False
                return True

            results = await asyncio.gather(*(publish(rollup) for rollup in rollups))
            published = 0
            for rollup, ok in zip(rollups, results, strict=True):
                if not ok:
                    self.core.restore(rollup)
                    continue
                published += 1
                self.metrics.rollups_published.inc()
                self.windows.add(rollup.end, summarise(rollup))
                servicer.acknowledge(self.core.published(rollup))
            self.windows.advance(now)
            self.core.prune(now, self.config.proxy_idle_ttl, set(servicer.sessions))
            return published

    def render_metrics(self) -> bytes:
        self.windows.advance(time.time())
        return self.metrics.render(self.windows)

    async def stop(self, grace: float) -> None:
        """Publish what was folded (so its proxies are acknowledged), end the streams, stop serving."""
        if self._abandoned:
            return
        if self._servicer is not None and self._ctx is not None and self._ctx.bus.is_connected:
            try:
                async with asyncio.timeout(max(0.1, grace / 2)):
                    await self.publish_once()
            except TimeoutError:
                log.warning("final_rollup_publish_timed_out")
        if self._servicer is not None:
            self._servicer.drain()
        if self._server is not None:
            await self._server.stop(grace)
        if self.serving_identity is not None:
            await self.serving_identity.stop()

    async def abandon(self) -> None:
        """Stops at once without publishing what was folded, as a crashed replica would (tests)."""
        self._abandoned = True
        if self._server is not None:
            await self._server.stop(0)
        if self.serving_identity is not None:
            await self.serving_identity.stop()
