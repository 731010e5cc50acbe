"""Follows the JetStream stream ``tether_rollups``: an ordered consumer from the stream's start (the last
hour) at start-up, then live, into a :class:`~tether.public_api.rollups.RollupStore`.

A consumer that has to be made again (the stream did not exist yet, NATS restarted) resumes after the last
stream sequence it delivered, so no rollup is counted twice even when it carries no ranges.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.js import api as js_api

from tether.public_api.rollups import RollupStore
from tether.shared import subjects
from tether.shared.bus import DECODE_ERRORS, Bus
from tether.shared.cloudevents import EventDecoder, NotAnEvent
from tether.shared.events import TelemetryRollup

log = structlog.get_logger(__name__)

PRUNE_INTERVAL = 30.0
RETRY_INTERVAL = 1.0


class RollupFollower:
    def __init__(self, store: RollupStore) -> None:
        self.store = store
        self.last_sequence = 0
        self.following = False
        self.error = ""
        self._decoder = EventDecoder(TelemetryRollup)

    def _on_message(self, data: bytes, sequence: int) -> None:
        if sequence and sequence <= self.last_sequence:
            return
        self.last_sequence = max(self.last_sequence, sequence)
        try:
            _envelope, rollup = self._decoder.decode(data)
        except NotAnEvent as exc:
            DECODE_ERRORS.labels("tether.v1.telemetry.rollup", exc.reason).inc()
            log.error("bus_decode_failed", subject=subjects.ROLLUPS_STREAM, reason=exc.reason, size=len(data))
            return
        self.store.add(rollup, time.time())

    async def run(self, bus: Bus) -> None:
        while True:
            sub: Any = None
            try:

                async def on_message(msg: Any) -> None:
                    sequence = 0

                    try:
                        sequence = int(msg.metadata.sequence.stream)
                    except (AttributeError, ValueError, nats.errors.Error):
                        sequence = 0
                    self._on_message(msg.data, sequence)

                config = (
                    js_api.ConsumerConfig(
                        deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=self.last_sequence + 1,
                    )
                    if self.last_sequence
                    else js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.ALL)
                )
                sub = await bus.jetstream.subscribe(
                    subjects.ROLLUP_ALL,
                    stream=subjects.ROLLUPS_STREAM,
                    ordered_consumer=True,
                    config=config,
                    cb=on_message,
                )
                self.following, self.error = True, ""
                log.info("rollups_following", stream=subjects.ROLLUPS_STREAM, after=self.last_sequence)
                while True:
                    await asyncio.sleep(PRUNE_INTERVAL)
                    self.store.prune(time.time())
            except (nats.js.errors.Error, nats.errors.Error, TimeoutError) as exc:
                self.following = False
                if not self.error:
                    log.warning("rollups_unavailable", stream=subjects.ROLLUPS_STREAM, error=str(exc)[:300])
                self.error = str(exc) or type(exc).__name__
                await asyncio.sleep(RETRY_INTERVAL)
            finally:
                if sub is not None:
                    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                        await sub.unsubscribe()
