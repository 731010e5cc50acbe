"""Token-bucket rate limiting per key (identity, peer address), time passed in, memory bounded."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BucketPolicy:
    """`rate` tokens per second, up to `burst` banked."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be positive and burst at least 1")


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class KeyedRateLimiter:
    """One token bucket per key. Keeps at most `max_keys` buckets, forgetting the least recently used;
    those are the ones most likely to have refilled, so forgetting them rarely changes a decision."""

    def __init__(self, policy: BucketPolicy, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._policy = policy
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float) -> bool:
        """Takes one token from `key`'s bucket if it has one; `now` is a monotonic time in seconds."""
        policy = self._policy
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(policy.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(policy.burst, bucket.tokens + elapsed * policy.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False
