"""Leader election over a NATS key-value lease: the pure decision core.

The lease is one key holding ``LeaseRecord`` (the holder's name). The holder renews it every
``ttl / 3`` with an expected-revision update. A candidate takes the lease with an expected-revision update
of the revision it observed, once that revision has not changed for ``ttl`` on the candidate's *own*
monotonic clock (or at once when the lease is absent or released). Nobody compares wall clocks, and the
server does not need per-key expiry: the same scheme as Kubernetes' client-go leader election, with the
key-value store's compare-and-set as the arbiter.

The holder stops acting as leader ``ttl * SAFETY`` after it *sent* its last successful renewal, which is
before any candidate can have observed that renewal, so a holder that lost contact stands down before a
candidate can take over (given clocks that run at the same rate).
"""

from __future__ import annotations

from dataclasses import dataclass

SAFETY = 0.8


@dataclass(frozen=True, slots=True)
class Acquire:
    expected_revision: int | None  # None: create (the key does not exist)


@dataclass(frozen=True, slots=True)
class Renew:
    expected_revision: int


@dataclass(frozen=True, slots=True)
class Idle:
    pass


LeaseAction = Acquire | Renew | Idle


class LeaseCore:
    def __init__(self, me: str, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        self.me = me
        self.ttl = ttl
        self.renew_every = ttl / 3
        self._observed_revision: int | None = None
        self._observed_holder = ""
        self._observed_at = 0.0
        self._held_revision: int | None = None
        self._valid_until = 0.0
        self._renew_due = 0.0

    def is_leader(self, now: float) -> bool:
        return self._held_revision is not None and now < self._valid_until

    def observe(self, revision: int | None, holder: str, now: float) -> None:
        """The lease key as read from the bucket (revision None: absent or deleted)."""
        if revision != self._observed_revision:
            self._observed_revision = revision
            self._observed_holder = holder
            self._observed_at = now
        held = self._held_revision
        if held is not None and revision is not None and revision > held and holder != self.me:
            self._held_revision = None  # someone else wrote it: we lost it

    def next_action(self, now: float) -> LeaseAction:
        if self._held_revision is not None:
            if now >= self._valid_until:
                self._held_revision = None
            elif now >= self._renew_due:
                return Renew(self._held_revision)
            else:
                return Idle()
        if self._observed_revision is None:
            return Acquire(None)
        if self._observed_holder in ("", self.me) or now - self._observed_at >= self.ttl:
            return Acquire(self._observed_revision)
        return Idle()

    def written(self, revision: int, sent_at: float) -> None:
        """An Acquire or Renew sent at ``sent_at`` succeeded and produced ``revision``."""
        self._held_revision = revision
        self._observed_revision = revision
        self._observed_holder = self.me
        self._observed_at = sent_at
        self._valid_until = sent_at + self.ttl * SAFETY
        self._renew_due = sent_at + self.renew_every

    def conflicted(self) -> None:
        """A write's expected revision was stale: someone else holds the lease now."""
        self._held_revision = None

    def released(self) -> None:
        self._held_revision = None
