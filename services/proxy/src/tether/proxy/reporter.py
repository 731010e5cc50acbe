"""The report client: one long-lived ``Telemetry/Report`` stream to the telemetry service.

Runs as one supervised task (``run``). It waits for the proxy's first certificate (telemetry accepts only
mTLS clients, and checks the hello against the certificate), opens the stream over the proxy's own gRPC
client (``grpc_h2``), sends a ``ProxyHello``, then every ``interval`` seconds an ``IntervalReport`` with
the deltas of ``reportstate.ReportState`` -- every interval, **even an empty one**: an empty report says
"no traffic" as opposed to "no news", and lets the server's windows close on time for this proxy.

``ReportAck(sequence)`` forgets every report up to it. When the stream fails (or the server ends it, or
acknowledges nothing for ``ack_timeout`` seconds), the connection is dropped so the next one may land on
another replica; what was not acknowledged is resent as one merged report once the next stream's first
message, a ``ReportAck`` of what telemetry already published of it (an acknowledgement can be lost after
the publish), said where to resume (``resume_timeout`` without one: everything is resent).
Reconnects back off exponentially with jitter, as discovery's streams do; a stream that worked and that
telemetry ended with OK (its ``--max-stream-age``) is reopened at once. Deltas keep being taken every
interval meanwhile, into bounded memory (see ``reportstate``).

Tap: the server's ``TapSubscription`` messages go to ``on_tap`` (none: ignored); ``on_stream_lost`` (if
set) is called whenever a stream ends, so that the taps it started can stop (the next replica re-sends the
live ones). A tap module sends its events with :meth:`TelemetryReporter.send_tap_event` (synchronous,
False when dropped). That is the whole interface.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable

import structlog
from google.protobuf.message import DecodeError

from tether.proxy.config import ProxyConfig
from tether.proxy.errors import GrpcCallError
from tether.proxy.grpc_h2 import INTERNAL, UNAVAILABLE, BidiStream, GrpcChannel, Spawn
from tether.proxy.identity import ProxyIdentity
from tether.proxy.metrics import MetricsRegistry
from tether.proxy.reportstate import ReportState
from tether.proxy.tlsconfig import ALPN_H2, ClientTls
from tether.shared import __version__
from tether.shared.backoff import backoff_delay
from tether.shared.proto.telemetry.v1 import telemetry_pb2

log = structlog.get_logger(__name__)

REPORT_PATH = b"/tether.telemetry.v1.Telemetry/Report"
#: Receives the tap subscriptions telemetry sends (start, renew or stop a tap); must not block.
TapCallback = Callable[[telemetry_pb2.TapSubscription], None]
#: Request bytes that may wait for the server's flow-control window; beyond, no new report is built and
#: tap events are refused (the deltas wait in the report state instead).
MAX_BUFFERED_BYTES = 4 * 1024 * 1024
_CERTIFICATE_POLL = 0.1
#: How long a new stream waits for the server's first acknowledgement (where to resume) before resending.
RESUME_TIMEOUT = 10.0


class TelemetryReporter:
    def __init__(
        self,
        channel: GrpcChannel,
        registry: MetricsRegistry,
        hello: Callable[[], telemetry_pb2.ProxyHello],
        *,
        interval: float,
        max_scopes: int,
        ready: Callable[[], bool] = lambda: True,
        on_tap: TapCallback | None = None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 10.0,
        ack_timeout: float | None = None,
    ) -> None:
        self.channel = channel
        self.registry = registry
        self.interval = interval
        self._hello = hello
        self._ready = ready
        self.on_tap = on_tap
        self.on_stream_lost: Callable[[], None] | None = None
        self._wall = wall
        self._clock = clock
        self._rng = rng or random.Random()
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        #: A stream on which nothing is acknowledged for this long is taken for stuck and replaced.
        self.ack_timeout = ack_timeout if ack_timeout is not None else max(6 * interval, 60.0)
        self.state = ReportState(wall(), max_scopes=max_scopes)
        self._stream: BidiStream | None = None
        self._acknowledged = False  # the current (or last) stream acknowledged something
        self._next_tick = clock() + interval
        #: Streams opened after the first (each one a reconnect), and tap subscriptions received.
        self.reconnects = 0
        self.streams_opened = 0
        self.tap_subscriptions = 0
        self.tap_events_sent = 0

    @property
    def connected(self) -> bool:
        return self._stream is not None

    def send_tap_event(self, event: telemetry_pb2.TapEvent) -> bool:
        """Send one tap event on the stream; False (dropped) when there is none or it is backed up."""
        stream = self._stream
        if stream is None or stream.buffered > MAX_BUFFERED_BYTES:
            return False
        try:
            stream.send(telemetry_pb2.ReportRequest(tap=event).SerializeToString())
        except GrpcCallError:
            return False
        self.tap_events_sent += 1
        return True

    async def run(self) -> None:
        """Report until cancelled (a supervised task)."""
        while not self._ready():
            await asyncio.sleep(_CERTIFICATE_POLL)
        attempt = 0
        failing = False
        while True:
            try:
                await self._session()
                failure: tuple[int, str] = (0, "the server ended the stream")
            except asyncio.CancelledError:
                raise
            except GrpcCallError as exc:
                failure = (exc.code, exc.message)
            except Exception as exc:  # a bug here must not end reporting for good
                log.exception("telemetry_stream_error")
                failure = (INTERNAL, repr(exc))
            finally:
                self._stream = None
                self.state.stream_lost()
                self.channel.reset()  # the next stream may land on another replica
                if self.on_stream_lost is not None:
                    self.on_stream_lost()
            if failure[0] == 0 and self._acknowledged:
                # Telemetry ended a stream that worked, with OK: its maximum age. Again at once, over the
                # new connection (which may reach another replica), with what was not acknowledged.
                self._acknowledged = False
                attempt = 0
                failing = False
                log.debug("telemetry_stream_ended", target=self.channel.target)
                continue
            if self._acknowledged:  # the stream worked: start the backoff over
                self._acknowledged = False
                attempt = 0
                failing = False
            if not failing:
                failing = True
                log.warning(
                    "telemetry_stream_failed",
                    target=self.channel.target,
                    code=failure[0],
                    error=failure[1],
                    unacknowledged_scopes=self.state.held_scopes,
                )
            delay = backoff_delay(
                attempt, base=self._backoff_base, cap=self._backoff_cap, jitter=self._rng.random()
            )
            attempt += 1
            await self._wait(self._clock() + delay)

    async def _wait(self, deadline: float) -> None:
        """Sleep until ``deadline``, taking deltas on every interval that passes meanwhile."""
        while True:
            now = self._clock()
            if now >= self._next_tick:
                self._tick(now)
            until = min(deadline, self._next_tick) - now
            if now >= deadline:
                return
            await asyncio.sleep(max(until, 0.0))

    async def flush(self, timeout: float) -> bool:
        """On shutdown: send what was counted since the last report and wait up to ``timeout`` seconds for
        it to be acknowledged, so a short-lived pod (a Job, a ``tether run`` command) is not lost to
        telemetry. True when everything was acknowledged."""
        stream = self._stream
        if stream is None:
            return not self.state.in_flight
        self._tick(self._clock())
        self._report(stream)
        deadline = self._clock() + timeout
        # The session task reads the acknowledgements; this only watches them land.
        while self.state.in_flight and self._stream is stream and self._clock() < deadline:
            await asyncio.sleep(0.01)
        return not self.state.in_flight

    def _tick(self, now: float) -> None:
        self.state.take([*self.registry.route_handles(), *self.registry.tcp_handles()])
        self._next_tick = max(self._next_tick + self.interval, now)

    async def _session(self) -> None:
        stream = await self.channel.bidi(REPORT_PATH)
        self._acknowledged = False
        try:
            stream.send(telemetry_pb2.ReportRequest(hello=self._hello()).SerializeToString())
            self._stream = stream
            self.streams_opened += 1
            if self.streams_opened > 1:
                self.reconnects += 1
            log.info("telemetry_stream_opened", target=self.channel.target, reconnects=self.reconnects)
            if self.state.resuming and not await self._resume(stream):
                return
            if self.state.carrying:
                self._report(stream)  # what the last stream left unacknowledged, at once
            while True:
                now = self._clock()
                if now >= self._next_tick:
                    self._tick(now)
                    self._report(stream)
                    self._check_acknowledgements()
                    continue
                try:
                    async with asyncio.timeout(self._next_tick - now):
                        message = await stream.receive()
                except TimeoutError:
                    continue
                if message is None:
                    return
                self._handle(message)
        finally:
            stream.cancel()

    async def _resume(self, stream: BidiStream) -> bool:
        """Wait for the new stream's first acknowledgement and resume after it; False if the stream ended."""
        resumed = 0
        try:
            async with asyncio.timeout(RESUME_TIMEOUT):
                while self.state.resuming:
                    message = await stream.receive()
                    if message is None:
                        return False
                    response = self._decode(message)
                    if response.WhichOneof("message") == "ack":
                        resumed = response.ack.sequence
                        break
                    self._handle(message)
        except TimeoutError:
            log.warning("telemetry_resume_unknown", target=self.channel.target, timeout=RESUME_TIMEOUT)
        self.state.resume(resumed)
        return True

    def _report(self, stream: BidiStream) -> None:
        if stream.buffered > 0:
            return  # the server is not reading what we sent: the deltas wait, merged
        report = self.state.build(self._wall())
        if report is not None:
            stream.send(telemetry_pb2.ReportRequest(report=report.to_proto()).SerializeToString())

    def _check_acknowledgements(self) -> None:
        oldest = self.state.in_flight[0].end if self.state.in_flight else None
        if oldest is not None and self._wall() - oldest > self.ack_timeout:
            raise GrpcCallError(INTERNAL, f"no acknowledgement for {self.ack_timeout:g}s")

    @staticmethod
    def _decode(message: bytes) -> telemetry_pb2.ReportResponse:
        try:
            return telemetry_pb2.ReportResponse.FromString(message)
        except DecodeError:
            raise GrpcCallError(INTERNAL, "telemetry sent an undecodable message") from None

    def _handle(self, message: bytes) -> None:
        response = self._decode(message)
        kind = response.WhichOneof("message")
        if kind == "ack":
            if self.state.acknowledge(response.ack.sequence):
                self._acknowledged = True
        elif kind == "tap_subscription":
            self.tap_subscriptions += 1
            if self.on_tap is not None:
                try:
                    self.on_tap(response.tap_subscription)
                except Exception:
                    log.exception("tap_subscription_failed", tap_id=response.tap_subscription.tap_id)

    def render_metrics(self) -> str:
        lines = [
            *self.state.render_metrics(),
            "# HELP proxy_telemetry_connected Whether the report stream to telemetry is open.",
            "# TYPE proxy_telemetry_connected gauge",
            f"proxy_telemetry_connected {int(self.connected)}",
            "# HELP proxy_telemetry_stream_reconnects_total Report streams opened after the first.",
            "# TYPE proxy_telemetry_stream_reconnects_total counter",
            f"proxy_telemetry_stream_reconnects_total {self.reconnects}",
            "# HELP proxy_telemetry_tap_subscriptions_total Tap subscriptions received from telemetry.",
            "# TYPE proxy_telemetry_tap_subscriptions_total counter",
            f"proxy_telemetry_tap_subscriptions_total {self.tap_subscriptions}",
        ]
        return "\n".join(lines) + "\n"


def reporter_for(
    config: ProxyConfig, identity: ProxyIdentity, registry: MetricsRegistry, spawn: Spawn
) -> TelemetryReporter:
    """The proxy's reporter: to ``--telemetry-addr``, verified as ``--telemetry-server-name``, presenting
    the proxy's own certificate (never plaintext: without a valid certificate there is no connection)."""

    def tls() -> ClientTls:
        context = identity.client_context(ALPN_H2)
        if context is None:
            raise GrpcCallError(UNAVAILABLE, "no valid certificate to present to telemetry")
        return ClientTls(context, config.telemetry_server_name)

    channel = GrpcChannel(config.telemetry_addr, spawn=spawn, tls=tls, connect_timeout=config.connect_timeout)
    # One per proxy process (a reporter is made once per proxy): its report sequences start at 1 with it.
    instance = new_instance()
    return TelemetryReporter(
        channel,
        registry,
        lambda: proxy_hello(config, identity, instance),
        interval=config.report_interval,
        max_scopes=config.report_max_scopes,
        ready=identity.ready,
    )


def new_instance() -> str:
    """A random id for one proxy process (``ProxyHello.instance``): 16 hex digits."""
    return secrets.token_hex(8)


def proxy_hello(config: ProxyConfig, identity: ProxyIdentity, instance: str) -> telemetry_pb2.ProxyHello:
    """Who this proxy is: namespace, pod, workload labels (``serviceaccount`` included), version, identity,
    the current certificate's expiry and this process's ``instance`` id."""
    labels = {"serviceaccount": identity.identity.serviceaccount}
    for label in config.workload_labels:
        key, _, value = label.partition("=")
        labels[key] = value
    hello = telemetry_pb2.ProxyHello(
        namespace=config.pod_namespace,
        pod=config.pod_name,
        labels=labels,
        proxy_version=__version__,
        identity=identity.identity.dns_name,
        instance=instance,
    )
    manager = identity.manager
    if manager is not None and manager.not_after:
        hello.certificate_expiry.FromNanoseconds(int(manager.not_after * 1e9))
    return hello
