"""The proxy's options: ``--outbound-addr`` / ``TETHER_PROXY_OUTBOUND_ADDR`` and so on."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tether.shared.config import AdminAddr, IdentityClientConfig, ProcessConfig, check_addr
from tether.shared.identity_names import InvalidIdentityName, parse_identity
from tether.shared.telemetry_scopes import MAX_SCOPES

#: The proxy's own ports besides its listeners: never forwarded to by the inbound side.
PROXY_CONTROL_PORT = 4190
PROXY_ADMIN_PORT = 4191
#: Linkerd's default opaque ports: protocols where the server speaks first (SMTP, MySQL), or that are not
#: HTTP and gain nothing from detection (PostgreSQL, Redis, Elasticsearch transport, memcached, ...).
DEFAULT_OPAQUE_PORTS = (25, 587, 3306, 4444, 5432, 6379, 9300, 11211)

Port = Annotated[int, Meta(ge=1, le=65535)]
#: ``PORT:/PATH`` (``--probe-paths``): an HTTP probe's port and path, the path without query.
ProbePath = Annotated[str, Meta(pattern=r"^[1-9][0-9]{0,4}:/[!-~]*$", max_length=2048)]
#: An HTTP field name (RFC 9110 token), any case: ``--tap-sensitive-headers`` values.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class H2LimitsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What one HTTP/2 client may do on either listener: the ``--h2-*`` options (see core.abuse)."""

    max_header_count: Annotated[int, Meta(ge=8, le=10_000, description="header fields per request (431)")] = (
        100
    )
    max_header_list_bytes: Annotated[
        int,
        Meta(
            ge=4096,
            le=1 << 20,
            description="decoded header bytes per request (SETTINGS_MAX_HEADER_LIST_SIZE)",
        ),
    ] = 64 * 1024
    handshake_timeout: Annotated[
        float, Meta(gt=0.0, le=300.0, description="seconds for a client's TLS handshake and HTTP/2 preface")
    ] = 10.0
    max_connections: Annotated[
        int, Meta(ge=1, le=1_000_000, description="client connections open at once, per listener")
    ] = 10_000
    reset_burst: Annotated[
        int, Meta(ge=1, description="young streams a client may reset before their response, in a burst")
    ] = 200
    reset_rate: Annotated[
        float,
        Meta(
            gt=0.0,
            description="the reset burst refills at this many per second (beyond: rapid reset, cut off)",
        ),
    ] = 100.0
    max_queued_control_replies: Annotated[
        int,
        Meta(
            ge=1, description="PING/SETTINGS replies queued to a client that does not read; also their burst"
        ),
    ] = 1000
    control_frame_rate: Annotated[
        float, Meta(gt=0.0, description="PING/SETTINGS per second a client may keep sending after a burst")
    ] = 100.0
    max_consecutive_empty_frames: Annotated[
        int, Meta(ge=0, description="DATA frames in a row without payload or END_STREAM")
    ] = 1
    max_priority_per_stream: Annotated[int, Meta(ge=1, description="PRIORITY frames per stream opened")] = 100
    max_window_updates_per_data: Annotated[
        int, Meta(ge=1, description="WINDOW_UPDATE frames per DATA frame sent")
    ] = 10


class ProxyConfig(ProcessConfig, frozen=True, kw_only=True):
    admin_addr: AdminAddr = "0.0.0.0:4191"
    outbound_addr: Annotated[
        str, Meta(description="outbound listener: the application's requests, host:port")
    ] = "127.0.0.1:4140"
    inbound_addr: Annotated[
        str, Meta(description="inbound listener: requests for the local application, host:port")
    ] = "0.0.0.0:4143"
    inbound_app_host: Annotated[
        str,
        Meta(
            description="address the inbound side forwards to (empty: the connection's original "
            "destination, the pod's own address; set it only where there is no iptables redirect)"
        ),
    ] = ""
    inbound_app_port: Annotated[
        int,
        Meta(
            ge=0,
            le=65535,
            description="application port the inbound side forwards to when a connection was not redirected "
            "(a mesh without iptables, e.g. tether run); 0: such connections are refused",
        ),
    ] = 0
    destination_addr: Annotated[
        str, Meta(description="destination service (gRPC), host:port; empty disables discovery")
    ] = "tether-destination.tether.svc.cluster.local:8086"
    pod_namespace: Annotated[str, Meta(description="namespace of this pod (qualifies short authorities)")] = (
        "default"
    )
    pod_name: Annotated[str, Meta(description="name of this pod")] = ""
    connect_timeout: Annotated[
        float, Meta(gt=0.0, le=60.0, description="seconds to establish an upstream connection")
    ] = 1.0
    fail_fast_timeout: Annotated[
        float,
        Meta(gt=0.0, le=60.0, description="seconds a request may wait for a route before failing fast"),
    ] = 3.0
    idle_timeout: Annotated[
        float,
        Meta(gt=0.0, description="seconds before an unused destination lookup or connection pool is evicted"),
    ] = 60.0
    downstream_idle_timeout: Annotated[
        float,
        Meta(
            ge=0.01,
            le=86400.0,
            description="seconds a client connection may stay open with no request in flight",
        ),
    ] = 300.0
    max_authorities: Annotated[
        int,
        Meta(
            ge=1,
            le=1_000_000,
            description="distinct authorities resolved at once; requests for more fail with 503",
        ),
    ] = 1000
    identity: IdentityClientConfig = msgspec.field(default_factory=IdentityClientConfig)
    destination_server_name: Annotated[
        str, Meta(description="the identity the destination service must present")
    ] = "destination.tether.serviceaccount.identity.cluster.local"
    inbound_policy: Annotated[
        Literal["all-unauthenticated", "all-authenticated"],
        Meta(description="inbound plaintext: accepted (all-unauthenticated) or refused (all-authenticated)"),
    ] = "all-unauthenticated"
    require_identity_ports: Annotated[
        tuple[Port, ...],
        Meta(description="inbound ports on which plaintext is refused (meshed clients only)"),
    ] = ()
    probe_ports: Annotated[
        tuple[Port, ...],
        Meta(
            description="inbound ports that accept plaintext whatever the policy (the kubelet's liveness "
            "and readiness probes)"
        ),
    ] = ()
    probe_paths: Annotated[
        tuple[ProbePath, ...],
        Meta(
            description="PORT:/PATH of the kubelet's HTTP probes (e.g. 8080:/healthz): on a probe port that "
            "the policy would refuse plaintext on, plaintext may only GET or HEAD these paths"
        ),
    ] = ()
    opaque_ports: Annotated[
        tuple[Port, ...],
        Meta(
            description="ports forwarded as TCP without protocol detection, both directions (server-speaks-"
            "first protocols must be here); destination can name more per endpoint"
        ),
    ] = DEFAULT_OPAQUE_PORTS
    detect_timeout: Annotated[
        float,
        Meta(
            gt=0.0,
            le=60.0,
            description="seconds to wait for a connection's first bytes to tell its protocol; after that "
            "it is forwarded as TCP",
        ),
    ] = 10.0
    tcp_idle_timeout: Annotated[
        float,
        Meta(gt=0.0, le=7 * 86400.0, description="seconds a TCP connection may carry no bytes either way"),
    ] = 3600.0
    h2: H2LimitsConfig = msgspec.field(default_factory=H2LimitsConfig)
    telemetry_addr: Annotated[
        str,
        Meta(
            description="telemetry service (gRPC, mTLS), host:port, where the proxy reports its metrics; "
            "empty disables reporting (so does --identity-disabled: telemetry accepts only mTLS)"
        ),
    ] = "tether-telemetry.tether.svc.cluster.local:8087"
    telemetry_server_name: Annotated[
        str, Meta(description="the identity the telemetry service must present")
    ] = "telemetry.tether.serviceaccount.identity.cluster.local"
    report_interval: Annotated[
        float, Meta(ge=1.0, le=300.0, description="seconds between two metric reports to telemetry")
    ] = 10.0
    report_max_scopes: Annotated[
        int,
        Meta(
            ge=1,
            le=MAX_SCOPES,
            description="traffic scopes held for telemetry until it acknowledges them (beyond: dropped and "
            "counted)",
        ),
    ] = 5000
    workload_labels: Annotated[
        tuple[str, ...],
        Meta(description="the pod's workload labels for telemetry, key=value (e.g. deployment=web)"),
    ] = ()
    tap_sensitive_headers: Annotated[
        tuple[str, ...],
        Meta(
            description="header names a tap never captures, besides authorization, cookie, set-cookie and "
            "proxy-authorization (always sensitive)"
        ),
    ] = ()
    max_concurrent_streams: Annotated[
        int, Meta(ge=1, le=2**31 - 1, description="streams a client may open on one connection")
    ] = 2048

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("outbound_addr", "inbound_addr"):
            check_addr(name, getattr(self, name))
        if self.destination_addr:
            check_addr("destination_addr", self.destination_addr)
        if self.telemetry_addr:
            check_addr("telemetry_addr", self.telemetry_addr)
        for label in self.workload_labels:
            if not label.partition("=")[0] or "=" not in label:
                raise ValueError(f"workload_labels: expected key=value, got {label!r}")
        for name in self.tap_sensitive_headers:
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"tap_sensitive_headers: not a header name: {name!r}")
        for port, _path in self.probe_path_pairs():
            if port > 65535:
                raise ValueError(f"probe_paths: port {port} is not 1..65535")
        self.identity.required()
        if not self.identity.disabled:
            for name in ("destination_server_name", "telemetry_server_name"):
                try:
                    parse_identity(getattr(self, name))
                except InvalidIdentityName as exc:
                    raise ValueError(f"{name}: {exc}") from None

    def probe_path_pairs(self) -> list[tuple[int, bytes]]:
        """``--probe-paths`` as (port, path) pairs."""
        pairs = []
        for entry in self.probe_paths:
            port, _, path = entry.partition(":")
            pairs.append((int(port), path.encode()))
        return pairs

    @property
    def context_token(self) -> str:
        """What the destination service is told about this proxy (the namespace qualifies names)."""
        import json

        return json.dumps({"ns": self.pod_namespace, "pod": self.pod_name}, separators=(",", ":"))
