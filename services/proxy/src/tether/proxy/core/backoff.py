"""Reconnect delays: exponential, capped, with jitter so proxies do not reconnect in lockstep."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, rng: random.Random, *, base: float = 0.1, cap: float = 10.0) -> float:
    """Seconds to wait before reconnect ``attempt`` (0 for the first retry): in [ceiling/2, ceiling]."""
    ceiling: float = min(cap, base * 2.0 ** min(attempt, 32))
    jitter: float = rng.uniform(0.0, ceiling / 2)
    return ceiling / 2 + jitter
