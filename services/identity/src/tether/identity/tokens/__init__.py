"""Token verification: proving that a caller is the ServiceAccount it claims to be."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from tether.shared.identity_names import WorkloadIdentity

MAX_TOKEN_BYTES = 8 * 1024


class TokenVerifier(Protocol):
    """Authenticates a bearer token and returns the identity it proves.

    Raises `Unauthenticated` when the token does not authenticate, `IssuerUnavailable` when the
    authority that would decide cannot be reached. Implementations must never log the token.
    """

    async def verify(self, token: bytes, now: datetime) -> WorkloadIdentity: ...

    async def close(self) -> None: ...
