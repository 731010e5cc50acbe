"""Tap on a telemetry replica, wired: NATS and the Report streams around the pure :class:`TapRegistry`.

* ``tether.v1.tap.requests`` (start, renew, cancel) and ``tether.v1.tap.matches.>`` (the other replicas'
  counts) feed the registry; so do the Report streams opening and ending (:meth:`TapRelay.proxy_connected`,
  :meth:`TapRelay.proxy_disconnected`), and a supervised timer (:meth:`TapRelay.run`, due at the registry's
  next deadline: lapsed renewals, requested expiries, stale counts, re-published counts).
* What the registry returns is carried out: each subscription goes down its proxy's stream as
  ``ReportResponse(tap_subscription=...)``, each match count is published on ``tap_matches(tap_id)``.
* Each ``TapEvent`` a proxy sends on its stream is published on ``tap_events(tap_id)`` as a
  :class:`tether.shared.events.TapEvent` CloudEvent, but only when the registry accepts it (a live tap that
  was sent to that very proxy: a proxy cannot publish into another tap) and it converts (one phase, bounded
  fields). Header values are kept only for the names the tap asked for, never a sensitive one, whatever the
  proxy sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import msgspec
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.errors import BusError
from tether.shared.events import (
    TapAddress,
    TapEvent,
    TapMatchCount,
    TapRequest,
    TapRequestInit,
    TapResponseEnd,
    TapResponseInit,
)
from tether.shared.proto.net.v1 import net_pb2
from tether.shared.proto.telemetry.v1 import telemetry_pb2 as pb
from tether.telemetry.metrics import TelemetryMetrics
from tether.telemetry.model import ProxyKey
from tether.telemetry.tap import Changes, ProxyInfo, TapRegistry

log = structlog.get_logger(__name__)

#: The timer wakes at least this often (a new input may bring the next deadline forward).
MAX_TICK_SLEEP = 0.25
_DIRECTIONS = {pb.DIRECTION_INBOUND: "inbound", pb.DIRECTION_OUTBOUND: "outbound"}


class SubscriptionSink(Protocol):
    """Where a proxy's subscriptions go: the server's open stream of that proxy, if any."""

    def send_subscription(self, proxy: ProxyKey, subscription: pb.TapSubscription) -> bool: ...


def _address(address: net_pb2.TcpAddress, present: bool) -> TapAddress | None:
    if not present:
        return None
    kind = address.ip.WhichOneof("ip")
    if kind == "ipv4":
        ip = str(ipaddress.IPv4Address(address.ip.ipv4))
    elif kind == "ipv6":
        ip = str(ipaddress.IPv6Address(address.ip.ipv6))
    else:
        ip = ""
    return TapAddress(ip=ip, port=address.port)


def _wall(timestamp: Timestamp) -> datetime:
    seconds = timestamp.seconds + timestamp.nanos / 1e9
    return datetime.fromtimestamp(max(0.0, seconds), UTC)


def to_event(
    message: pb.TapEvent, *, replica: str, namespace: str, pod: str, allowed_headers: frozenset[str]
) -> TapEvent:
    """The proxy's ``TapEvent`` as the NATS payload; raises ``msgspec.ValidationError`` or ``ValueError``
    when it does not fit (no phase, fields out of bounds)."""
    phase = message.WhichOneof("phase")
    request_init = response_init = response_end = None
    if phase == "request_init":
        init = message.request_init
        request_init = TapRequestInit(
            method=init.method, scheme=init.scheme, authority=init.authority, path=init.path
        )
    elif phase == "response_init":
        response_init = TapResponseInit(
            status_code=message.response_init.status_code,
            since_request_init_us=message.response_init.since_request_init_us,
        )
    elif phase == "response_end":
        end = message.response_end
        response_end = TapResponseEnd(
            grpc_status=max(-1, end.grpc_status),
            since_request_init_us=end.since_request_init_us,
            response_bytes=end.response_bytes,
            reset_error_code=end.reset_error_code,
        )
    headers = {
        name.lower(): value for name, value in message.headers.items() if name.lower() in allowed_headers
    }
    at = _wall(message.at) if message.HasField("at") else datetime.fromtimestamp(time.time(), UTC)
    event = TapEvent(
        tap_id=message.tap_id,
        replica=replica,
        namespace=namespace,
        pod=pod,
        direction=_DIRECTIONS.get(message.direction, "unspecified"),  # type: ignore[arg-type]
        stream_id=message.stream_id,
        at=at,
        source=_address(message.source, message.HasField("source")),
        destination=_address(message.destination, message.HasField("destination")),
        source_labels=dict(message.source_labels),
        destination_labels=dict(message.destination_labels),
        source_identity=message.source_identity,
        destination_identity=message.destination_identity,
        tls=message.tls,
        request_init=request_init,
        response_init=response_init,
        response_end=response_end,
        headers=headers,
    )
    # Constructing a Struct does not check its constraints: a round trip through the decoder does.
    return msgspec.convert(msgspec.to_builtins(event), TapEvent)


class TapRelay:
    """One replica's taps: the registry, fed by NATS and the streams, its changes carried out."""

    def __init__(
        self,
        registry: TapRegistry,
        bus: Bus,
        metrics: TelemetryMetrics,
        sink: SubscriptionSink,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self._bus = bus
        self._metrics = metrics
        self._sink = sink
        self._clock = clock
        self._wake = asyncio.Event()

    async def subscribe(self) -> None:
        await self._bus.subscribe(subjects.TAP_REQUESTS, TapRequest, self._on_request)
        await self._bus.subscribe(subjects.TAP_MATCHES_ALL, TapMatchCount, self._on_match_count)

    async def _on_request(self, message: TapRequest, _subject: str) -> None:
        await self._apply(self.registry.request(message, self._clock()))

    async def _on_match_count(self, message: TapMatchCount, subject: str) -> None:
        if subject != subjects.tap_matches(message.tap_id):
            return  # a count published on another tap's subject: not trusted
        await self._apply(self.registry.match_count(message, self._clock()))

    async def proxy_connected(self, proxy: ProxyKey, hello: pb.ProxyHello) -> None:
        await self._apply(self.registry.proxy_connected(proxy, ProxyInfo.from_hello(hello), self._clock()))

    async def proxy_disconnected(self, proxy: ProxyKey) -> None:
        await self._apply(self.registry.proxy_disconnected(proxy, self._clock()))

    async def run(self) -> None:
        """The timer: ticks the registry at its next deadline (supervised)."""
        while True:
            delay = min(MAX_TICK_SLEEP, max(0.0, self.registry.next_deadline() - self._clock()))
            if not math.isfinite(delay):
                delay = MAX_TICK_SLEEP
            self._wake.clear()
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            await self._apply(self.registry.tick(self._clock()))

    async def tap_event(self, proxy: ProxyKey, namespace: str, message: pb.TapEvent) -> bool:
        """A ``TapEvent`` from ``proxy``'s stream: published when the registry accepts it."""
        tap_id = message.tap_id
        if not self.registry.accepts_event(proxy, tap_id):
            self._metrics.tap_events_refused.labels("not_subscribed").inc()
            return False
        try:
            event = to_event(
                message,
                replica=self.registry.replica,
                namespace=namespace,
                pod=proxy.pod,
                allowed_headers=self.registry.header_names(tap_id),
            )
        except (msgspec.ValidationError, ValueError):
            self._metrics.tap_events_refused.labels("invalid").inc()
            return False
        try:
            await self._bus.publish(subjects.tap_events(tap_id), event)
        except BusError as exc:
            self._metrics.tap_events_refused.labels("publish_failed").inc()
            log.warning("tap_event_publish_failed", tap_id=tap_id, error=str(exc)[:300])
            return False
        self._metrics.tap_events_published.inc()
        return True

    async def _apply(self, changes: Changes) -> None:
        for send in changes.sends:
            assert isinstance(send.proxy, ProxyKey)
            if self._sink.send_subscription(send.proxy, send.subscription):
                self._metrics.tap_subscriptions_sent.inc()
        for count in changes.counts:
            try:
                await self._bus.publish(subjects.tap_matches(count.tap_id), count)
            except BusError as exc:
                log.warning("tap_match_count_publish_failed", tap_id=count.tap_id, error=str(exc)[:300])
        for tap_id in changes.started:
            log.info("tap_started", tap_id=tap_id, matching=self.registry.local_matches(tap_id))
        for ended in changes.ended:
            self._metrics.taps_ended.labels(ended.reason).inc()
            log.info("tap_ended", tap_id=ended.tap_id, reason=ended.reason)
        for refused in changes.refused:
            self._metrics.taps_refused.labels(refused.reason).inc()
            log.warning("tap_refused", tap_id=refused.tap_id, reason=refused.reason)
        self._metrics.taps_live.set(len(self.registry.live_taps))
        if changes:
            self._wake.set()
