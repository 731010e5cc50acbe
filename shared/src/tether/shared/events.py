"""Every message that crosses NATS, as msgspec Structs, JSON-encoded.

External subscribers in any language read these: each carries ``schema_version``; a change that breaks
readers bumps it. docs/events.md documents each subject and payload with an example.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

import msgspec

T = TypeVar("T")


class Event(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Base of every bus payload. Unknown fields are ignored so newer publishers don't break older readers."""

    schema_version: int = 1


class Heartbeat(Event, frozen=True, kw_only=True):
    """Published every 2 s by every service instance on ``tether.v1.health.<service>.<instance>``."""

    service: str
    instance: str
    version: str
    uptime_seconds: float
    ready: bool


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


_encoder = msgspec.json.Encoder()


def encode(event: msgspec.Struct) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes, event_type: type[T]) -> T:
    return msgspec.json.decode(data, type=event_type)
