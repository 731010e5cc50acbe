"""The Certify decision: rate limits, request rules, token, issuance. No gRPC, no sockets, time passed in.

Checks run cheapest first, so that malformed or abusive requests never reach the token reviewer (the
Kubernetes API server). The per-identity limit is applied to the *authenticated* identity, so nobody can
drain another workload's bucket by merely claiming its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from tether.identity.ca import Authority
from tether.identity.csr import validate_csr
from tether.identity.errors import (
    InvalidRequest,
    IssuerUnavailable,
    PermissionDenied,
    RateLimited,
    Reason,
    Rejection,
)
from tether.identity.issuance import DEFAULT_LEAF_LIFETIME, MIN_LEAF_LIFETIME, IssuedLeaf, issue_leaf
from tether.identity.ratelimit import BucketPolicy, KeyedRateLimiter
from tether.identity.tokens import TokenVerifier
from tether.shared.identity_names import (
    DEFAULT_TRUST_DOMAIN,
    InvalidIdentityName,
    WorkloadIdentity,
    parse_identity,
    validate_trust_domain,
)

_MAX_IDENTITY_CHARS = 253


@dataclass(frozen=True, slots=True)
class CertifierSettings:
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    leaf_lifetime: timedelta = DEFAULT_LEAF_LIFETIME
    identity_limit: BucketPolicy = field(default_factory=lambda: BucketPolicy(rate=5.0, burst=50.0))
    peer_limit: BucketPolicy = field(default_factory=lambda: BucketPolicy(rate=2.0, burst=20.0))
    max_rate_limited_keys: int = 100_000

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        if self.leaf_lifetime < MIN_LEAF_LIFETIME:
            raise ValueError("leaf lifetime must be at least one minute")


@dataclass(frozen=True, slots=True)
class CertifyRequest:
    identity: str
    token: bytes
    csr_der: bytes
    # The caller's address without port, as the rate limit key.
    peer: str

    def __repr__(self) -> str:
        return f"CertifyRequest(identity={self.identity[:_MAX_IDENTITY_CHARS]!r}, peer={self.peer!r})"


class CertifyObserver(Protocol):
    """Told about every outcome (metrics, events, audit log). Must not block."""

    def issued(
        self, identity: WorkloadIdentity, leaf: IssuedLeaf, authority: Authority, now: datetime
    ) -> None: ...

    def rejected(self, rejection: Rejection, request: CertifyRequest, now: datetime) -> None: ...


class Certifier:
    def __init__(
        self,
        settings: CertifierSettings,
        authority: Callable[[], Authority | None],
        verifier: TokenVerifier,
        observer: CertifyObserver,
    ) -> None:
        self._settings = settings
        self._authority = authority
        self._verifier = verifier
        self._observer = observer
        self._peer_limiter = KeyedRateLimiter(settings.peer_limit, settings.max_rate_limited_keys)
        self._identity_limiter = KeyedRateLimiter(settings.identity_limit, settings.max_rate_limited_keys)

    async def certify(self, request: CertifyRequest, now: datetime, monotonic: float) -> IssuedLeaf:
        """Issues a leaf or raises a `Rejection`; `now` is wall-clock UTC, `monotonic` for rate limits."""
        try:
            identity, leaf, authority = await self._certify(request, now, monotonic)
        except Rejection as rejection:
            self._observer.rejected(rejection, request, now)
            raise
        self._observer.issued(identity, leaf, authority, now)
        return leaf

    async def _certify(
        self, request: CertifyRequest, now: datetime, monotonic: float
    ) -> tuple[WorkloadIdentity, IssuedLeaf, Authority]:
        if not self._peer_limiter.allow(request.peer, monotonic):
            raise RateLimited(Reason.RATE_LIMITED, "too many requests from this address; retry later")
        if self._authority() is None:
            raise IssuerUnavailable(Reason.ISSUER_UNAVAILABLE, "no valid issuer is loaded; retry later")
        identity = self._parse_identity(request.identity)
        csr = validate_csr(request.csr_der, identity)
        authenticated = await self._verifier.verify(request.token, now)
        if authenticated != identity:
            raise PermissionDenied(
                Reason.IDENTITY_MISMATCH, "token is for a different identity than requested"
            )
        if not self._identity_limiter.allow(identity.dns_name, monotonic):
            raise RateLimited(Reason.RATE_LIMITED, "too many requests for this identity; retry later")
        # The issuer may have rotated or expired while the token was being reviewed.
        authority = self._authority()
        if authority is None:
            raise IssuerUnavailable(Reason.ISSUER_UNAVAILABLE, "no valid issuer is loaded; retry later")
        try:
            leaf = issue_leaf(authority.issuer, csr.public_key, identity, now, self._settings.leaf_lifetime)
        except ValueError:
            raise IssuerUnavailable(Reason.ISSUER_UNAVAILABLE, "issuer has expired; retry later") from None
        return identity, leaf, authority

    def _parse_identity(self, name: str) -> WorkloadIdentity:
        if len(name) > _MAX_IDENTITY_CHARS:
            raise InvalidRequest(Reason.INVALID_IDENTITY, "identity is longer than 253 characters")
        try:
            return parse_identity(name, self._settings.trust_domain)
        except InvalidIdentityName as error:
            raise InvalidRequest(Reason.INVALID_IDENTITY, f"invalid identity: {error}") from None
