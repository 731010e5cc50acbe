"""NATS events published by the identity service (JSON, msgspec). Never carry a token, key or CSR.

Defined here for now; meant to move into tether.shared.events.
"""

from __future__ import annotations

from datetime import datetime

from tether.shared import subjects
from tether.shared.events import Event

SUBJECT_ISSUED = subjects.IDENTITY_ISSUED
SUBJECT_REJECTED = subjects.IDENTITY_REJECTED


class IdentityIssued(Event, frozen=True, kw_only=True):
    """A leaf certificate was issued. Published on ``tether.v1.identity.issued``."""

    identity: str
    spiffe_id: str
    # Lowercase hex, no leading zeros; unique per leaf (128 random bits).
    serial: str
    not_before: datetime
    not_after: datetime
    # SHA-256 of the leaf's DER, lowercase hex.
    fingerprint_sha256: str
    # SHA-256 of the signing issuer certificate's DER, so consumers can tell issuers apart.
    issuer_fingerprint_sha256: str
    replica: str
    issued_at: datetime


class IdentityRejected(Event, frozen=True, kw_only=True):
    """A Certify request was refused. Published on ``tether.v1.identity.rejected``."""

    # A stable code, see tether.identity.errors.Reason.
    reason: str
    # The gRPC status name returned to the caller, e.g. "INVALID_ARGUMENT".
    status: str
    # The requested identity if it is a well-formed identity name, otherwise "".
    identity: str
    # The caller's IP address as seen by this replica.
    peer: str
    replica: str
    rejected_at: datetime
