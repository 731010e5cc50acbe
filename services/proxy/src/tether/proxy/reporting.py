"""Reporting to telemetry wired into the proxy: the report client, the tap core, and the sender between them.

Built by the proxy when it reports (identity on and ``--telemetry-addr`` set). The :class:`Taps` is the data
path's tap observer (the routers call it); the reporter hands it the subscriptions telemetry sends
(``Taps.apply``, with the data path's monotonic clock and the wall clock) and forgets every tap when its
stream ends (``Taps.reset``: the next replica re-sends the live ones). Captured events wake one sender task,
which moves them from the taps' outbox onto the report stream (``send_tap_event``); the proxy's sweeper
expires lapsed taps (:meth:`Reporting.expire`). Both tasks run under the proxy's supervisor, not critical:
telemetry being away never takes the data path down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import structlog

from tether.proxy.config import ProxyConfig
from tether.proxy.grpc_h2 import Spawn
from tether.proxy.identity import ProxyIdentity
from tether.proxy.metrics import MetricsRegistry
from tether.proxy.reporter import TapCallback, TelemetryReporter, reporter_for
from tether.proxy.tap import Taps
from tether.shared.proto.telemetry.v1 import telemetry_pb2
from tether.shared.supervisor import SupervisedTask

log = structlog.get_logger(__name__)

#: Events sent per turn of the sender before it lets the event loop run again.
SEND_BATCH = 256


def own_labels(config: ProxyConfig, identity: ProxyIdentity | None) -> dict[str, str]:
    """This pod's labels as tap events show them: ``namespace``, ``pod``, ``serviceaccount`` and the
    configured workload labels (``deployment=web``...)."""
    labels = {"namespace": config.pod_namespace}
    if config.pod_name:
        labels["pod"] = config.pod_name
    if identity is not None:
        labels["serviceaccount"] = identity.identity.serviceaccount
    for label in config.workload_labels:
        key, _, value = label.partition("=")
        labels[key] = value
    return labels


class Reporting:
    """The reporter and the taps of one proxy, and the task that sends captured tap events."""

    def __init__(
        self,
        reporter: TelemetryReporter,
        *,
        sensitive_headers: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_tap: TapCallback | None = None,
    ) -> None:
        self.reporter = reporter
        self._clock = clock
        self._wall = wall
        self._on_tap = on_tap
        self._wake = asyncio.Event()
        self.taps = Taps(sensitive_headers=sensitive_headers, notify=self._wake.set)
        #: Events the report stream refused (none open, or backed up).
        self.events_unsent = 0
        reporter.on_tap = self.apply
        reporter.on_stream_lost = self.taps.reset
        self._tasks: list[SupervisedTask] = []

    def apply(self, subscription: telemetry_pb2.TapSubscription) -> None:
        """A subscription from telemetry: start, renew or stop a tap (then ``on_tap``, if any)."""
        if not self.taps.apply(subscription, self._clock(), self._wall()):
            log.warning("tap_subscription_refused", tap_id=subscription.tap_id[:64])
        if self._on_tap is not None:
            self._on_tap(subscription)

    def expire(self, now: float) -> None:
        self.taps.expire(now)

    def start(self, spawn: Spawn) -> None:
        # Not critical: telemetry being away must never take the data path down; neither returns.
        self._tasks = [
            spawn("telemetry-report", self.reporter.run, critical=False),
            spawn("telemetry-tap-sender", self.send_events, critical=False),
        ]

    async def stop(self, flush_timeout: float = 0.0) -> None:
        if flush_timeout > 0 and not await self.reporter.flush(flush_timeout):
            log.warning("telemetry_final_report_unacknowledged", timeout=flush_timeout)
        for task in self._tasks:
            await task.stop()
        await self.reporter.channel.close()

    async def send_events(self) -> None:
        """Move captured events onto the report stream, as they come (a supervised task)."""
        taps = self.taps
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                events = taps.drain(SEND_BATCH)
                for event in events:
                    if not self.reporter.send_tap_event(event):
                        self.events_unsent += 1
                if taps.outbox_size == 0:
                    break
                await asyncio.sleep(0)

    def render_metrics(self) -> str:
        taps = self.taps
        counters: Mapping[str, tuple[str, int]] = {
            "proxy_tap_requests_total": ("Requests some tap captured.", taps.requests_captured),
            "proxy_tap_events_total": ("Tap events captured.", taps.events_captured),
            "proxy_tap_events_sent_total": (
                "Tap events sent to telemetry.",
                self.reporter.tap_events_sent,
            ),
            "proxy_tap_events_unsent_total": (
                "Tap events dropped: no report stream, or it was backed up.",
                self.events_unsent,
            ),
            "proxy_tap_rate_limited_total": (
                "Matching requests not captured: over the tap's rate share (per tap).",
                taps.rate_limited,
            ),
            "proxy_tap_outbox_dropped_total": ("Tap events lost to a full outbox.", taps.outbox_dropped),
            "proxy_tap_streams_dropped_total": (
                "Captured streams forgotten before their end (too many open).",
                taps.streams_dropped,
            ),
            "proxy_tap_subscriptions_refused_total": (
                "Tap subscriptions refused (invalid, or too many taps).",
                taps.subscriptions_refused,
            ),
        }
        lines: list[str] = []
        for name, (help_text, value) in counters.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
        lines += [
            "# HELP proxy_tap_active Taps capturing requests now.",
            "# TYPE proxy_tap_active gauge",
            f"proxy_tap_active {taps.taps_active}",
        ]
        return self.reporter.render_metrics() + "\n".join(lines) + "\n"


def reporting_for(
    config: ProxyConfig,
    identity: ProxyIdentity,
    registry: MetricsRegistry,
    spawn: Spawn,
    *,
    clock: Callable[[], float],
    on_tap: TapCallback | None = None,
) -> Reporting:
    reporter = reporter_for(config, identity, registry, spawn)
    return Reporting(reporter, sensitive_headers=config.tap_sensitive_headers, clock=clock, on_tap=on_tap)
