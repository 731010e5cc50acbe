"""Every message that crosses NATS, as msgspec Structs with the constraints that make a value meaningful.

Two kinds:

* **Mesh events** (:class:`~tether.shared.cloudevents.EventData` subclasses) are published as CloudEvents 1.0:
  each names its ``type`` (the schema version lives there). External subscribers in any language read them;
  docs/events.md documents each with its subject and an example.
* **Records** (:class:`Record`) are the plain-JSON values of the key-value buckets, with ``schema_version``.

A value that decodes but means nothing (an address that is not an IP literal, port 0, a name that is not a
DNS label, an oversized map) fails validation exactly like bytes that do not decode: readers log, count and
skip it, and keep the last good state.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta

from tether.shared.cloudevents import EventData

T = TypeVar("T")

# --- constrained building blocks -------------------------------------------------------------------------

DnsLabel = Annotated[str, Meta(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
# A NATS subject token taken from a name: no '.', '*', '>' or whitespace.
SubjectToken = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$", max_length=253)]
Port = Annotated[int, Meta(ge=1, le=65535)]
PortName = Annotated[str, Meta(max_length=63)]
ShortText = Annotated[str, Meta(max_length=253)]
IdentityName = Annotated[str, Meta(min_length=1, max_length=253)]
HexDigest = Annotated[str, Meta(pattern=r"^[0-9a-f]*$", max_length=128)]
LabelName = Annotated[str, Meta(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$", max_length=63)]
LabelValue = Annotated[str, Meta(max_length=253)]
MAX_LABELS = 32
Labels = Annotated[dict[LabelName, LabelValue], Meta(max_length=MAX_LABELS)]
MAX_SERVICE_PORTS = 256
MAX_ENDPOINTS = 65_536
MAX_SERVICE_ADDRESSES = 16
MAX_PORT_RANGES = 256


def check_ip_literal(value: str, what: str = "address") -> None:
    """Raise ValueError unless ``value`` is an IP address in its canonical text form."""
    try:
        parsed = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what} {value[:64]!r} is not an IP address") from None
    if str(parsed) != value:
        raise ValueError(f"{what} {value[:64]!r} is not in canonical form ({parsed})")


# --- mesh events -------------------------------------------------------------------------------------------


class Heartbeat(EventData, frozen=True, kw_only=True):
    """Published every 2 s by every service instance on ``tether.v1.health.<service>.<instance>``."""

    event_type = "io.tether.health.heartbeat.v1"

    service: SubjectToken
    instance: SubjectToken
    version: Annotated[str, Meta(max_length=64)]
    uptime_seconds: Annotated[float, Meta(ge=0.0)]
    ready: bool

    def event_subject(self) -> str:
        return f"{self.service}/{self.instance}"


class IdentityIssued(EventData, frozen=True, kw_only=True):
    """A leaf certificate was issued. Published on ``tether.v1.identity.issued``."""

    event_type = "io.tether.identity.issued.v1"

    identity: IdentityName
    spiffe_id: Annotated[str, Meta(max_length=2048)]
    # Lowercase hex, no leading zeros; unique per leaf (128 random bits).
    serial: HexDigest
    not_before: datetime
    not_after: datetime
    # SHA-256 of the leaf's DER, lowercase hex.
    fingerprint_sha256: HexDigest
    # SHA-256 of the signing issuer certificate's DER, so consumers can tell issuers apart.
    issuer_fingerprint_sha256: HexDigest
    replica: ShortText
    issued_at: datetime

    def event_subject(self) -> str:
        return self.identity


class IdentityRejected(EventData, frozen=True, kw_only=True):
    """A Certify request was refused. Published on ``tether.v1.identity.rejected``."""

    event_type = "io.tether.identity.rejected.v1"

    # A stable code, see tether.identity.errors.Reason.
    reason: Annotated[str, Meta(pattern=r"^[a-z_]+$", max_length=64)]
    # The gRPC status name returned to the caller, e.g. "INVALID_ARGUMENT".
    status: Annotated[str, Meta(pattern=r"^[A-Z_]+$", max_length=64)]
    # The requested identity if it is a well-formed identity name, otherwise "".
    identity: Annotated[str, Meta(max_length=253)]
    # The caller's IP address as seen by this replica.
    peer: Annotated[str, Meta(max_length=64)]
    replica: ShortText
    rejected_at: datetime

    def event_subject(self) -> str | None:
        return self.identity or None


# --- destination: endpoint sets in the tether_endpoints bucket, their diffs, and local registrations ------

Origin = Literal["kubernetes", "file", "registration"]
ProtocolHint = Literal["h2"]
# Inclusive ``[first, last]``: a pod annotation may name thousands of ports, so ranges stay ranges.
PortRange = tuple[Port, Port]


def check_port_ranges(ranges: tuple[PortRange, ...], what: str = "opaque_ports") -> None:
    """Raise ValueError unless ``ranges`` are sorted, non-empty, and neither overlap nor touch."""
    previous: int | None = None
    for first, last in ranges:
        if first > last:
            raise ValueError(f"{what}: range [{first}, {last}] is empty")
        if previous is not None and first <= previous + 1:
            raise ValueError(f"{what}: ranges must be sorted and merged, [{first}, {last}] is not")
        previous = last


def in_port_ranges(port: int, ranges: tuple[PortRange, ...]) -> bool:
    return any(first <= port <= last for first, last in ranges)


class ServicePort(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """A port of the service, as clients address it (the port in the authority).

    ``opaque``: the port carries a non-HTTP protocol, so proxies forward it as TCP without detection.
    """

    name: PortName = ""
    port: Port
    opaque: bool = False


class Workload(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """The workload that owns an endpoint, e.g. ``Workload("deployment", "web")``."""

    kind: Annotated[str, Meta(max_length=63)]
    name: ShortText


class Endpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False, omit_defaults=True):
    """One address of the service.

    ``ports`` maps a service port name to the port this address listens on for it, so that one record
    serves every port of a multi-port service. Not-ready endpoints stay in the set with ``ready=False``
    (they are not served to proxies); terminating endpoints are not in the set at all. ``opaque_ports``
    are the ports of this address (any port, not only the service's) that carry a non-HTTP protocol.
    """

    address: Annotated[str, Meta(max_length=64)]
    ports: Annotated[dict[PortName, Port], Meta(max_length=MAX_SERVICE_PORTS)]
    ready: bool = True
    identity: IdentityName | None = None
    protocol_hint: ProtocolHint | None = None
    pod: ShortText | None = None
    workload: Workload | None = None
    serviceaccount: ShortText | None = None
    labels: Labels = msgspec.field(default_factory=dict)
    origin: Origin = "file"
    instance: ShortText | None = None
    opaque_ports: Annotated[tuple[PortRange, ...], Meta(max_length=MAX_PORT_RANGES)] = ()

    def __post_init__(self) -> None:
        check_ip_literal(self.address)
        check_port_ranges(self.opaque_ports)


class EndpointsChanged(EventData, frozen=True, kw_only=True):
    """Diff event on ``tether.v1.endpoints.<namespace>.<service>``.

    ``added`` holds endpoints that are new or whose record changed (the full new record); ``removed``
    holds addresses that left the set. ``deleted`` is true when the service itself is gone.
    """

    event_type = "io.tether.endpoints.changed.v1"

    namespace: DnsLabel
    service: DnsLabel
    generation: Annotated[int, Meta(ge=0)]
    added: Annotated[tuple[Endpoint, ...], Meta(max_length=MAX_ENDPOINTS)] = ()
    removed: Annotated[tuple[Annotated[str, Meta(max_length=64)], ...], Meta(max_length=MAX_ENDPOINTS)] = ()
    deleted: bool = False

    def event_subject(self) -> str:
        return f"{self.namespace}/{self.service}"


class WorkloadRegistration(EventData, frozen=True, kw_only=True):
    """A local workload announcing itself on ``tether.v1.registry.register``.

    The workload re-sends the same message as a heartbeat; the endpoint leaves the set ``ttl_seconds``
    after the last one, or at once when ``deregister`` is true. Registering into a service the registry
    file does not declare declares it with a single unnamed port ``port``.
    """

    event_type = "io.tether.registry.registration.v1"

    namespace: DnsLabel
    service: DnsLabel
    instance: Annotated[str, Meta(min_length=1, max_length=253)]
    address: Annotated[str, Meta(max_length=64)]
    port: Port
    identity: IdentityName | None = None
    labels: Annotated[dict[LabelName, Annotated[str, Meta(max_length=128)]], Meta(max_length=16)] = (
        msgspec.field(default_factory=dict)
    )
    ttl_seconds: Annotated[float, Meta(gt=0.0, le=3600.0)] = 10.0
    deregister: bool = False

    def __post_init__(self) -> None:
        check_ip_literal(self.address)

    def event_subject(self) -> str:
        return f"{self.namespace}/{self.service}/{self.instance}"


# --- key-value records ---------------------------------------------------------------------------------


class Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Base of every key-value value: plain JSON with ``schema_version`` (bumped by a breaking change)."""

    schema_version: Literal[1] = 1


class EndpointSet(Record, frozen=True, kw_only=True):
    """The full endpoint set of one service: value of key ``<namespace>.<service>``.

    ``generation`` increases by at least one with every write of the key; ``endpoints`` are sorted by
    address and unique by address. ``addresses`` are the service's own virtual addresses (a Kubernetes
    ClusterIP), sorted and unique. ``writer`` names the replica that wrote it and ``written_at`` is its
    wall-clock time of writing (Unix seconds), which readers use to measure how far behind they are.
    """

    namespace: DnsLabel
    service: DnsLabel
    generation: Annotated[int, Meta(ge=0)]
    ports: Annotated[tuple[ServicePort, ...], Meta(max_length=MAX_SERVICE_PORTS)]
    endpoints: Annotated[tuple[Endpoint, ...], Meta(max_length=MAX_ENDPOINTS)]
    writer: ShortText = ""
    written_at: Annotated[float, Meta(ge=0.0)] = 0.0
    addresses: Annotated[
        tuple[Annotated[str, Meta(max_length=64)], ...], Meta(max_length=MAX_SERVICE_ADDRESSES)
    ] = ()

    def __post_init__(self) -> None:
        for address in self.addresses:
            check_ip_literal(address, "service address")
        if list(self.addresses) != sorted(set(self.addresses)):
            raise ValueError("service addresses must be sorted and unique")

    @property
    def key(self) -> str:
        return f"{self.namespace}.{self.service}"


class LeaseRecord(Record, frozen=True, kw_only=True):
    """Value of the lease key. ``holder`` empty: released, anyone may take it at once."""

    holder: ShortText
    ttl_seconds: Annotated[float, Meta(gt=0.0, le=3600.0)]


_encoder = msgspec.json.Encoder()


def encode(value: msgspec.Struct) -> bytes:
    return _encoder.encode(value)


def decode(data: bytes, value_type: type[T]) -> T:
    return msgspec.json.decode(data, type=value_type)
