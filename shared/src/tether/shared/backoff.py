"""Retry delays: exponential, capped, jittered so that many clients do not retry in lockstep.

The one backoff of the project: the NATS bus (first connection and reconnects), the proxy's discovery
streams, the Kubernetes reflector, the supervisor's restarts and the destination writer all use it. It is
pure: the random source is passed in, so tests pin it.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Seconds before retry ``attempt`` (0 first): ``jitter`` in [0, 1) picks a point in [c/2, c).

    The ceiling ``c`` doubles from ``base`` with every attempt, up to ``cap``.
    """
    ceiling: float = min(cap, base * 2.0 ** min(attempt, 32))
    return ceiling * (0.5 + jitter / 2)


class Backoff:
    """Consecutive failures of one thing: each :meth:`next` waits longer, :meth:`reset` starts over."""

    def __init__(self, base: float, cap: float, jitter: Callable[[], float] | None = None) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self._jitter = jitter or random.random
        self.attempt = 0

    def next(self) -> float:
        """The delay before the next retry; counts one more failure."""
        delay = backoff_delay(self.attempt, base=self.base, cap=self.cap, jitter=self._jitter())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
