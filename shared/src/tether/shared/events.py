"""Every message that crosses NATS, as msgspec Structs, JSON-encoded.

External subscribers in any language read these: each carries ``schema_version``; a change that breaks
readers bumps it. docs/events.md documents each subject and payload with an example.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypeVar

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


# Destination: endpoint sets in the tether_endpoints bucket, their diffs, and local registrations.

Origin = Literal["kubernetes", "file", "registration"]
ProtocolHint = Literal["h2"]


class ServicePort(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """A port of the service, as clients address it (the port in the authority)."""

    name: str = ""
    port: int


class Workload(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """The workload that owns an endpoint, e.g. ``Workload("deployment", "web")``."""

    kind: str
    name: str


class Endpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False, omit_defaults=True):
    """One address of the service.

    ``ports`` maps a service port name to the port this address listens on for it, so that one record
    serves every port of a multi-port service. Not-ready endpoints stay in the set with ``ready=False``
    (they are not served to proxies); terminating endpoints are not in the set at all.
    """

    address: str
    ports: dict[str, int]
    ready: bool = True
    identity: str | None = None
    protocol_hint: ProtocolHint | None = None
    pod: str | None = None
    workload: Workload | None = None
    serviceaccount: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    origin: Origin = "file"
    instance: str | None = None


class EndpointSet(Event, frozen=True, kw_only=True):
    """The full endpoint set of one service: value of key ``<namespace>.<service>``.

    ``generation`` increases by at least one with every write of the key; ``endpoints`` are sorted by
    address and unique by address. ``writer`` names the replica that wrote it and ``written_at`` is its
    wall-clock time of writing (Unix seconds), which readers use to measure how far behind they are.
    """

    namespace: str
    service: str
    generation: int
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...]
    writer: str = ""
    written_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.namespace}.{self.service}"


class EndpointsChanged(Event, frozen=True, kw_only=True):
    """Diff event on ``tether.v1.endpoints.<namespace>.<service>``.

    ``added`` holds endpoints that are new or whose record changed (the full new record); ``removed``
    holds addresses that left the set. ``deleted`` is true when the service itself is gone.
    """

    namespace: str
    service: str
    generation: int
    added: tuple[Endpoint, ...] = ()
    removed: tuple[str, ...] = ()
    deleted: bool = False


class WorkloadRegistration(Event, frozen=True, kw_only=True):
    """A local workload announcing itself on ``tether.v1.registry.register``.

    The workload re-sends the same message as a heartbeat; the endpoint leaves the set ``ttl_seconds``
    after the last one, or at once when ``deregister`` is true. Registering into a service the registry
    file does not declare declares it with a single unnamed port ``port``.
    """

    namespace: str
    service: str
    instance: str
    address: str
    port: int
    identity: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    ttl_seconds: float = 10.0
    deregister: bool = False


class LeaseRecord(Event, frozen=True, kw_only=True):
    """Value of the lease key. ``holder`` empty: released, anyone may take it at once."""

    holder: str
    ttl_seconds: float


_encoder = msgspec.json.Encoder()


def encode(event: msgspec.Struct) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes, event_type: type[T]) -> T:
    return msgspec.json.decode(data, type=event_type)
