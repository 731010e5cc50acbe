"""A workload's certificate lifecycle as a pure state machine: when to ask identity, what may be used.

Used by every workload that holds a mesh certificate: the proxies, and the control-plane services that
serve TLS with one (destination, telemetry). Time is passed in (wall-clock Unix seconds, since certificate
validity is wall-clock); the asyncio adapter in :mod:`tether.shared.certmanager` does the I/O.

* Renewal is due at 70% of a certificate's lifetime, the interval clamped to [10 s, 24 h] and jittered so
  that a fleet issued at the same moment does not renew in lockstep.
* A failed renewal keeps the current certificate in use and retries at 70% of what remains (at least 1 s
  later); without a usable certificate, retries follow the shared jittered backoff.
* A certificate is never used past its NotAfter: the holder turns not ready (``state`` is EXPIRED) and
  recovers by itself once identity answers again.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from tether.shared.backoff import Backoff

RENEW_AT = 0.7
MIN_REFRESH = 10.0
MAX_REFRESH = 24 * 3600.0
MIN_RETRY = 1.0


class CertificateState(enum.Enum):
    WAITING = "waiting"  # no certificate yet
    VALID = "valid"
    EXPIRED = "expired"  # the last one expired and no new one arrived


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A leaf and its issuer chain (PEM, leaf first) with its validity, as identity returned it."""

    chain_pem: bytes
    not_after: float
    issued_at: float


class Lifecycle:
    def __init__(
        self,
        *,
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self._jitter = jitter or random.random
        self._backoff = Backoff(retry_base, retry_cap, self._jitter)
        self.certificate: IssuedCertificate | None = None
        self._next_attempt = 0.0
        self.refreshes = 0
        self.failures = 0

    def state(self, now: float) -> CertificateState:
        if self.certificate is None:
            return CertificateState.WAITING
        return CertificateState.VALID if now < self.certificate.not_after else CertificateState.EXPIRED

    def usable(self, now: float) -> IssuedCertificate | None:
        """The certificate to present now, or None (never an expired one)."""
        return self.certificate if self.state(now) is CertificateState.VALID else None

    def next_attempt(self) -> float:
        """When to ask identity next (Unix seconds)."""
        return self._next_attempt

    def due(self, now: float) -> bool:
        return now >= self._next_attempt

    def issued(self, certificate: IssuedCertificate, now: float) -> float:
        """Identity answered; returns when to renew."""
        self.certificate = certificate
        self.refreshes += 1
        self._backoff.reset()
        lifetime = max(0.0, certificate.not_after - now)
        interval = min(MAX_REFRESH, max(MIN_REFRESH, lifetime * RENEW_AT))
        interval = min(interval, lifetime)  # a certificate shorter than 10 s: renew before it expires
        # Jitter downwards by up to 10%: spread, and never renew later than planned.
        self._next_attempt = now + interval * (0.9 + 0.1 * self._jitter())
        return self._next_attempt

    def failed(self, now: float) -> float:
        """A Certify attempt failed; returns when to try again."""
        self.failures += 1
        held = self.usable(now)
        if held is not None:
            remaining = held.not_after - now
            delay = max(MIN_RETRY, remaining * RENEW_AT * (0.9 + 0.1 * self._jitter()))
        else:
            delay = self._backoff.next()
        self._next_attempt = now + delay
        return self._next_attempt
