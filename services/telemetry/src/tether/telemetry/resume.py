"""Where a proxy's reports resume when it opens a stream here: what any replica already published of them.

A replica acknowledges a report only after publishing the rollup holding it, but the acknowledgement can
still miss the proxy: the replica dies right after publishing, or the proxy is cut off (a partition) while
the replica, which notices nothing, publishes what it received and acknowledges into the void. The proxy
then resends those reports, merged, to whichever replica it reaches next. A replica that knew nothing of
them would fold them again, and consumers would find two rollups overlapping on that proxy's ranges (and,
unable to split either, count only one of them: the rest of the other is lost).

So every replica follows the rollup stream (all replicas' rollups: the last ``lookback`` seconds at start,
then live) and keeps, per proxy process (identity, pod, instance), the highest sequence published. A new
stream's first message to the proxy is ``ReportAck`` of that sequence (0: none): the proxy forgets what it
covers before it resends the rest. What is left is a replica publishing a range after the proxy already
resumed elsewhere: a replica that folded reports whose stream then broke while it stayed up, and that
publishes them after the proxy reconnected to another (at most the next rollup interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.js import api as js_api

from tether.shared import subjects
from tether.shared.bus import DECODE_ERRORS, Bus
from tether.shared.cloudevents import EventDecoder, NotAnEvent
from tether.shared.events import TelemetryRollup
from tether.telemetry.model import ProxyKey

log = structlog.get_logger(__name__)

#: How far back the stream is read at start: longer than a proxy keeps unacknowledged reports (at most 32
#: report intervals of 10 s by default) before they could matter.
LOOKBACK = 600.0
RETRY_INTERVAL = 1.0

_Process = tuple[str, str, str]


class PublishedRanges:
    def __init__(self, lookback: float = LOOKBACK, clock: Any = time.time) -> None:
        self.lookback = lookback
        self._clock = clock
        self._high: dict[_Process, tuple[int, float]] = {}
        self._decoder = EventDecoder(TelemetryRollup)
        self._last_sequence = 0
        #: Set once the stream was read up to its end at least once (before: resume points may be low).
        self.synced = asyncio.Event()

    def add(self, rollup: TelemetryRollup) -> None:
        now = self._clock()
        for r in rollup.ranges:
            key = (r.identity, r.pod, r.instance)
            high = self._high.get(key, (0, now))[0]
            self._high[key] = (max(high, r.last), now)

    def high(self, proxy: ProxyKey, instance: str) -> int:
        """The highest sequence of this proxy process in a published rollup (0: none known)."""
        return self._high.get((proxy.identity, proxy.pod, instance), (0, 0.0))[0]

    def prune(self) -> None:
        oldest = self._clock() - self.lookback
        for key in [key for key, (_, seen) in self._high.items() if seen < oldest]:
            del self._high[key]

    def _on_message(self, data: bytes, sequence: int, pending: int) -> None:
        if sequence and sequence <= self._last_sequence:
            return  # a redelivery after the consumer was made again
        self._last_sequence = max(self._last_sequence, sequence)
        try:
            _envelope, rollup = self._decoder.decode(data)
        except NotAnEvent as exc:
            DECODE_ERRORS.labels("tether.v1.telemetry.rollup", exc.reason).inc()
            return
        self.add(rollup)
        if pending == 0:
            self.synced.set()

    async def follow(self, bus: Bus) -> None:
        """The supervised task: the stream from ``lookback`` ago, then live; made again after failures."""
        while True:
            sub: Any = None
            try:

                async def on_message(msg: Any) -> None:
                    try:
                        sequence, pending = int(msg.metadata.sequence.stream), int(msg.metadata.num_pending)
                    except (AttributeError, ValueError, nats.errors.Error):
                        sequence, pending = 0, 0
                    self._on_message(msg.data, sequence, pending)

                if self._last_sequence:
                    config = js_api.ConsumerConfig(
                        deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=self._last_sequence + 1,
                    )
                else:
                    config = js_api.ConsumerConfig(
                        deliver_policy=js_api.DeliverPolicy.BY_START_TIME,
                        opt_start_time=datetime.fromtimestamp(self._clock() - self.lookback, UTC),
                    )
                sub = await bus.jetstream.subscribe(
                    subjects.ROLLUP_ALL,
                    stream=subjects.ROLLUPS_STREAM,
                    ordered_consumer=True,
                    config=config,
                    cb=on_message,
                )
                if await self._stream_is_empty(bus):
                    self.synced.set()
                while True:
                    await asyncio.sleep(self.lookback / 10)
                    self.prune()
            except (nats.js.errors.Error, nats.errors.Error, TimeoutError) as exc:
                log.warning("published_ranges_unavailable", error=str(exc)[:300] or type(exc).__name__)
                await asyncio.sleep(RETRY_INTERVAL)
            finally:
                if sub is not None:
                    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                        await sub.unsubscribe()

    async def _stream_is_empty(self, bus: Bus) -> bool:
        """Nothing to replay (so nothing will say it caught up): no message since ``lookback`` ago."""
        info = await bus.jetstream.stream_info(subjects.ROLLUPS_STREAM)
        if not info.state.messages:
            return True
        last = await bus.jetstream.get_msg(subjects.ROLLUPS_STREAM, seq=info.state.last_seq)
        when = last.time if isinstance(last.time, datetime) else None
        return when is not None and when.timestamp() < self._clock() - self.lookback
