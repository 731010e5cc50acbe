"""Power-of-two-choices load balancing over peak-EWMA latency.

Each endpoint's cost is a latency estimate that jumps up to any slower
observation at once (the "peak") and otherwise decays exponentially towards
newer observations, and towards zero while unobserved, so a slow endpoint is
avoided quickly and retried eventually. Load is cost x (requests in flight + 1)
/ weight; of two endpoints drawn at random the less loaded one wins. An endpoint
that left a request unanswered is not chosen while a check of its connection
(see ``UpstreamConnection.probe``) is outstanding: a host that hangs answers no
check, so no request is spent finding that out again. Time is always passed in.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

KeyT = TypeVar("KeyT", bound=Hashable)

DEFAULT_WEIGHT = 10_000
#: Cost assumed for an endpoint before anything has been observed (seconds).
DEFAULT_RTT = 0.030
#: Time constant of the moving average (seconds).
DEFAULT_DECAY = 10.0


class EndpointLoad(Generic[KeyT]):
    """Latency estimate and in-flight count of one endpoint."""

    __slots__ = ("_decay", "cost", "key", "pending", "stamp", "unanswered", "weight")

    def __init__(self, key: KeyT, weight: int, now: float, decay: float, default_rtt: float) -> None:
        self.key = key
        self.weight = (weight or DEFAULT_WEIGHT) / DEFAULT_WEIGHT
        self.cost = default_rtt
        self.stamp = now
        self.pending = 0
        #: Checks of this endpoint's connections still waiting for an answer: while any is, it is avoided.
        self.unanswered = 0
        self._decay = decay

    def load(self, now: float) -> float:
        if self.unanswered:
            return math.inf
        return self.estimate(now) * (self.pending + 1) / self.weight

    def estimate(self, now: float) -> float:
        """The latency estimate at ``now`` (decayed since the last observation)."""
        elapsed = now - self.stamp
        return self.cost * math.exp(-elapsed / self._decay) if elapsed > 0 else self.cost

    def started(self) -> None:
        self.pending += 1

    def observe(self, rtt: float, now: float) -> None:
        """Record a request's latency (``rtt`` seconds) measured at ``now``."""
        elapsed = now - self.stamp
        self.stamp = now
        if rtt >= self.cost:
            self.cost = rtt
        else:
            weight = math.exp(-elapsed / self._decay) if elapsed > 0 else 1.0
            self.cost = self.cost * weight + rtt * (1.0 - weight)

    def finished(self) -> None:
        if self.pending > 0:
            self.pending -= 1

    def check_started(self) -> None:
        """A check of one of its connections was sent (it left a request unanswered)."""
        self.unanswered += 1

    def check_answered(self) -> None:
        if self.unanswered > 0:
            self.unanswered -= 1


class Balancer(Generic[KeyT]):
    """The endpoints of one destination and the choice between them."""

    def __init__(
        self,
        rng: random.Random | None = None,
        *,
        decay: float = DEFAULT_DECAY,
        default_rtt: float = DEFAULT_RTT,
    ) -> None:
        self._rng = rng or random.Random()
        self._decay = decay
        self._default_rtt = default_rtt
        self._by_key: dict[KeyT, EndpointLoad[KeyT]] = {}
        self._endpoints: list[EndpointLoad[KeyT]] = []

    def __len__(self) -> int:
        return len(self._endpoints)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def get(self, key: KeyT) -> EndpointLoad[KeyT] | None:
        return self._by_key.get(key)

    def set_endpoints(self, weighted: Iterable[tuple[KeyT, int]], now: float) -> None:
        """Replace the endpoint set; endpoints that stay keep their load statistics.

        A new endpoint starts at the median estimate of the known ones when that is below the default RTT:
        started above what a fast service's endpoints are seen to take, it would lose every pick until its
        estimate decayed (some 20 s for a 3 ms service), so a pod added to a service would get no traffic.
        """
        previous = self._by_key
        known = [load.estimate(now) for load in previous.values() if not load.unanswered]
        start = min(self._default_rtt, statistics.median(known)) if known else self._default_rtt
        self._by_key = {}
        for key, weight in weighted:
            load = previous.get(key)
            if load is None:
                load = EndpointLoad(key, weight, now, self._decay, start)
            else:
                load.weight = (weight or DEFAULT_WEIGHT) / DEFAULT_WEIGHT
            self._by_key[key] = load
        self._endpoints = list(self._by_key.values())

    def pick(self, now: float) -> EndpointLoad[KeyT] | None:
        endpoints = self._endpoints
        count = len(endpoints)
        if count == 0:
            return None
        if count == 1:
            return endpoints[0]
        first = self._rng.randrange(count)
        second = self._rng.randrange(count - 1)
        if second >= first:
            second += 1
        a = endpoints[first]
        b = endpoints[second]
        return a if a.load(now) <= b.load(now) else b
