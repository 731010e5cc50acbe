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


class CertificateStatus(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One CA certificate as identity sees it: who it is, when it expires, which exact certificate."""

    subject: Annotated[str, Meta(max_length=1024)]
    not_after: datetime
    fingerprint_sha256: HexDigest


MAX_TRUST_ANCHORS = 16
#: Identity publishes its IssuerStatus this often (seconds), besides on every change.
ISSUER_STATUS_INTERVAL = 10.0


class IssuerStatus(EventData, frozen=True, kw_only=True):
    """What one identity replica signs with and trusts. Published on ``tether.v1.identity.issuer`` when it
    changes and every 10 s, so ``tether check`` can warn before the CA expires without reading its files."""

    event_type = "io.tether.identity.issuer.v1"

    replica: SubjectToken
    # False: no usable issuer is loaded (missing, expired, or not chaining): Certify answers UNAVAILABLE.
    issuer_loaded: bool
    # The issuer being served, when one is loaded; it chains to ``trust_anchors`` (verified at load).
    issuer: CertificateStatus | None = None
    trust_anchors: Annotated[list[CertificateStatus], Meta(max_length=MAX_TRUST_ANCHORS)] = []
    # Why the files on disk could not be loaded, if they could not ("" when they loaded): with an issuer
    # still loaded, the previous one keeps serving.
    load_error: Annotated[str, Meta(max_length=512)] = ""
    observed_at: datetime

    def event_subject(self) -> str:
        return self.replica


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
    file does not declare declares it with a single unnamed port ``service_port`` (default ``port``).
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
    #: The service's port when the registration creates the service (the file does not declare it);
    #: None: ``port``. (``tether run``: the application's port, while ``port`` is its proxy's.)
    service_port: Port | None = None

    def __post_init__(self) -> None:
        check_ip_literal(self.address)

    def event_subject(self) -> str:
        return f"{self.namespace}/{self.service}/{self.instance}"


# --- telemetry: partial rollups of proxies' reports --------------------------------------------------------

#: Counts are exact integers below 2**53 (so JSON readers that use doubles read them exactly).
Count = Annotated[int, Meta(ge=0, le=1 << 53)]
MAX_ROLLUP_SCOPES = 100_000
MAX_ROLLUP_RESPONSES = 256
MAX_ROLLUP_RANGES = 100_000
# Linkerd's latency buckets plus one for slower responses: tether.shared.telemetry_scopes.HISTOGRAM_LENGTH.
ROLLUP_HISTOGRAM_LENGTH = 26


class RollupResponse(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Responses of one status and classification within a scope, with their latency histogram."""

    status_code: Annotated[int, Meta(ge=0, le=999)]
    # -1: no grpc-status.
    grpc_status: Annotated[int, Meta(ge=-1, le=255)]
    success: bool
    count: Count
    # Counts per latency bucket (docs/events.md); the last counts responses slower than the last bound.
    latency_buckets: Annotated[
        tuple[Count, ...], Meta(min_length=ROLLUP_HISTOGRAM_LENGTH, max_length=ROLLUP_HISTOGRAM_LENGTH)
    ]
    latency_sum_ms: Annotated[float, Meta(ge=0.0)]


class RollupScope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One traffic scope of the workload: a direction and the peer's labels, with its counts."""

    direction: Literal["inbound", "outbound"]
    # Peer labels (tether.shared.telemetry_scopes.SCOPE_LABELS): authority, dst_*, client_id, tls...
    labels: Annotated[dict[LabelName, LabelValue], Meta(max_length=MAX_LABELS)]
    requests: Count = 0
    responses: Annotated[tuple[RollupResponse, ...], Meta(max_length=MAX_ROLLUP_RESPONSES)] = ()
    tcp_opened: Count = 0
    tcp_closed: Count = 0
    bytes_read: Count = 0
    bytes_written: Count = 0


class SequenceRange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Reports ``[first, last]`` of one proxy process (identity, pod, instance) whose deltas a rollup has."""

    identity: IdentityName
    pod: ShortText
    first: Annotated[int, Meta(ge=1)]
    last: Annotated[int, Meta(ge=1)]
    # The proxy process (its ProxyHello.instance): sequences start again at 1 in a new one.
    instance: Annotated[str, Meta(max_length=128)] = ""
    # What the proxy said in its latest hello: its version and its certificate's NotAfter (None: unknown).
    proxy_version: Annotated[str, Meta(max_length=64)] = ""
    certificate_expiry: datetime | None = None

    def __post_init__(self) -> None:
        if self.first > self.last:
            raise ValueError(f"sequence range [{self.first}, {self.last}] is empty")


class TelemetryRollup(EventData, frozen=True, kw_only=True):
    """One replica's partial rollup of one workload over one interval, on
    ``tether.v1.telemetry.rollup.<namespace>.<kind>.<name>`` (and in the stream ``tether_rollups``).

    Mergeable: counts add, histograms add bucket by bucket. ``ranges`` name the proxies' reports it contains;
    a consumer combining replicas counts each range once.
    """

    event_type = "io.tether.telemetry.rollup.v1"

    replica: SubjectToken
    namespace: DnsLabel
    kind: SubjectToken
    name: SubjectToken
    interval_start: datetime
    interval_end: datetime
    scopes: Annotated[tuple[RollupScope, ...], Meta(max_length=MAX_ROLLUP_SCOPES)] = ()
    ranges: Annotated[tuple[SequenceRange, ...], Meta(max_length=MAX_ROLLUP_RANGES)] = ()
    # Deltas the reporting proxies dropped (bounded memory while telemetry was unreachable), by scope count.
    dropped_scopes: Count = 0

    def event_subject(self) -> str:
        return f"{self.namespace}/{self.kind}/{self.name}"


# --- tap: requests, match counts, captured events (see tether.shared.tap_requests) -----------------------

#: Headers whose values are never captured, whatever a tap asks for (lowercase).
SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization"})

MAX_TAP_RATE = 10_000.0
MAX_HEADER_NAMES = 16
MAX_REQUESTS_LIMIT = (1 << 32) - 1

#: A tap id is one NATS subject token (``tether.v1.tap.events.<tap-id>``).
TapId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$", min_length=1, max_length=64)]
#: A pod name: a DNS-1123 subdomain.
PodName = Annotated[str, Meta(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)]
#: A lowercase HTTP field name (RFC 9110 token).
HeaderName = Annotated[str, Meta(pattern=r"^[a-z0-9!#$%&'*+.^_`|~-]+$", min_length=1, max_length=64)]
FilterText = Annotated[str, Meta(max_length=1024)]
ReplicaId = Annotated[str, Meta(min_length=1, max_length=253)]

TapAction = Literal["start", "renew", "cancel"]


class TapTarget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False, omit_defaults=True):
    """Which proxies a tap runs on: a namespace plus exactly one of a workload, a pod or a service.

    ``workload`` matches proxies whose hello labels carry ``<kind>=<name>`` (kind lowercased, e.g.
    ``deployment=web``); ``pod`` the proxy of that pod; ``service`` proxies whose hello label ``service``
    names it (a comma-separated list when the pod backs several services).
    """

    namespace: DnsLabel
    workload: Workload | None = None
    pod: PodName | None = None
    service: DnsLabel | None = None

    def __post_init__(self) -> None:
        chosen = sum(value is not None for value in (self.workload, self.pod, self.service))
        if chosen != 1:
            raise ValueError("a tap target names exactly one of workload, pod or service")
        if self.workload is not None and not (self.workload.kind and self.workload.name):
            raise ValueError("a tap target's workload needs a kind and a name")


class TapFilter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False, omit_defaults=True):
    """Request filters: a request matches when it equals every non-empty field (``path_prefix``: starts
    with it; ``authority`` and ``method`` compare case-insensitively). The proxy's ``TapMatch``."""

    method: Annotated[str, Meta(max_length=32)] = ""
    authority: FilterText = ""
    path_prefix: FilterText = ""
    destination_namespace: Annotated[str, Meta(max_length=63)] = ""
    destination_service: Annotated[str, Meta(max_length=63)] = ""


class TapRequest(EventData, frozen=True, kw_only=True):
    """Start, renew or cancel a tap. Published by the public API on ``tether.v1.tap.requests``.

    ``start`` and ``renew`` carry the whole request (``target`` required); ``cancel`` needs only the id.
    ``max_events_per_second`` is the whole tap's rate, split by telemetry across every matching proxy;
    ``max_requests`` (0: no limit) is passed to each proxy, and the public API stops the tap once it has
    delivered that many. ``expires_at`` is the requested end (absent: until cancelled or no longer renewed).
    """

    event_type = "io.tether.tap.request.v1"

    action: TapAction
    tap_id: TapId
    target: TapTarget | None = None
    match: TapFilter = msgspec.field(default_factory=TapFilter)
    max_events_per_second: Annotated[float, Meta(gt=0.0, le=MAX_TAP_RATE)] = 100.0
    max_requests: Annotated[int, Meta(ge=0, le=MAX_REQUESTS_LIMIT)] = 0
    header_names: Annotated[tuple[HeaderName, ...], Meta(max_length=MAX_HEADER_NAMES)] = ()
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.action != "cancel" and self.target is None:
            raise ValueError(f"a tap {self.action} needs a target")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at needs a time zone")

    def event_subject(self) -> str:
        return self.tap_id


class TapMatchCount(EventData, frozen=True, kw_only=True):
    """How many proxies connected to one telemetry replica match a tap, published by that replica on
    ``tether.v1.tap.matches.<tap-id>`` whenever the count changes and every
    :data:`MATCH_COUNT_INTERVAL_SECONDS` while it is not zero. ``at`` is the replica's clock; readers
    order one replica's counts by it and judge staleness by when they received it."""

    event_type = "io.tether.tap.matches.v1"

    replica: ReplicaId
    tap_id: TapId
    matching: Annotated[int, Meta(ge=0, le=1_000_000)]
    at: datetime

    def event_subject(self) -> str:
        return f"{self.tap_id}/{self.replica}"


TapLabelName = Annotated[str, Meta(min_length=1, max_length=253)]
TapLabels = Annotated[dict[TapLabelName, LabelValue], Meta(max_length=MAX_LABELS)]
Micros = Annotated[int, Meta(ge=0, le=1 << 53)]
MAX_TAP_HEADERS = MAX_HEADER_NAMES
MAX_TAP_HEADER_VALUE = 4096


class TapAddress(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """A socket address of a tapped request's side: the IP address as text and the TCP port."""

    ip: Annotated[str, Meta(max_length=45)]
    port: Annotated[int, Meta(ge=0, le=65535)]


class TapRequestInit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The request started: its pseudo-headers."""

    method: Annotated[str, Meta(max_length=32)]
    scheme: Annotated[str, Meta(max_length=32)]
    authority: FilterText
    path: Annotated[str, Meta(max_length=8192)]


class TapResponseInit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The response started: its status and the latency so far (time to the response's first byte)."""

    status_code: Annotated[int, Meta(ge=0, le=999)]
    since_request_init_us: Micros


class TapResponseEnd(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The stream ended: its ``grpc-status`` (-1: none) or the reset code, duration and response bytes."""

    grpc_status: Annotated[int, Meta(ge=-1, le=255)]
    since_request_init_us: Micros
    response_bytes: Count
    reset_error_code: Annotated[int, Meta(ge=0, le=(1 << 32) - 1)]


class TapEvent(EventData, frozen=True, kw_only=True):
    """One phase of one request a proxy captured for a live tap, relayed by the telemetry replica the proxy
    reports to on ``tether.v1.tap.events.<tap-id>``. The fields of the proxy's ``TapEvent`` (proto), plus
    the relaying ``replica`` and the reporting proxy's ``namespace`` and ``pod`` (``stream_id`` correlates
    the phases of one request within that proxy). Exactly one of ``request_init``, ``response_init`` and
    ``response_end`` is set. ``headers`` holds only names the tap asked for, never a sensitive one
    (:data:`SENSITIVE_HEADERS` or configured): a replica drops any other the proxy sent.
    """

    event_type = "io.tether.tap.event.v1"

    tap_id: TapId
    replica: ReplicaId
    namespace: DnsLabel
    pod: ShortText
    direction: Literal["inbound", "outbound", "unspecified"]
    stream_id: Count
    at: datetime
    source: TapAddress | None
    destination: TapAddress | None
    source_labels: TapLabels
    destination_labels: TapLabels
    source_identity: ShortText
    destination_identity: ShortText
    tls: ShortText
    request_init: TapRequestInit | None = None
    response_init: TapResponseInit | None = None
    response_end: TapResponseEnd | None = None
    headers: Annotated[
        dict[HeaderName, Annotated[str, Meta(max_length=MAX_TAP_HEADER_VALUE)]],
        Meta(max_length=MAX_TAP_HEADERS),
    ] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        phases = (self.request_init, self.response_init, self.response_end)
        if sum(phase is not None for phase in phases) != 1:
            raise ValueError("a tap event has exactly one of request_init, response_init, response_end")
        if SENSITIVE_HEADERS & set(self.headers):
            raise ValueError("a tap event never carries a sensitive header")

    def event_subject(self) -> str:
        return f"{self.tap_id}/{self.namespace}/{self.pod}"


MAX_AUDIT_GROUPS = 64


class TapAudit(EventData, frozen=True, kw_only=True):
    """The audit trail of tap: one event per Tap call the public API decided (allowed or not), naming the
    caller as the Kubernetes API authenticated them (empty with ``--authz none``), the target and filters.
    Published by the public API on ``tether.v1.audit.tap`` before the tap starts. Never carries a token."""

    event_type = "io.tether.audit.tap.v1"

    tap_id: TapId
    decision: Literal["allowed", "denied", "unauthenticated", "unavailable"]
    status: Annotated[str, Meta(pattern=r"^[A-Z_]+$", max_length=64)]
    reason: Annotated[str, Meta(max_length=1024)] = ""
    authz: Literal["none", "kubernetes"]
    username: ShortText = ""
    uid: ShortText = ""
    groups: Annotated[tuple[ShortText, ...], Meta(max_length=MAX_AUDIT_GROUPS)] = ()
    target: TapTarget
    match: TapFilter = msgspec.field(default_factory=TapFilter)
    max_events_per_second: Annotated[float, Meta(gt=0.0, le=MAX_TAP_RATE)]
    max_requests: Annotated[int, Meta(ge=0, le=MAX_REQUESTS_LIMIT)] = 0
    header_names: Annotated[tuple[HeaderName, ...], Meta(max_length=MAX_HEADER_NAMES)] = ()
    peer: Annotated[str, Meta(max_length=64)] = ""
    replica: ReplicaId
    at: datetime

    def event_subject(self) -> str:
        return f"{self.target.namespace}/{self.tap_id}"


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
