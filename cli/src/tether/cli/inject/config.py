"""``tether inject``'s configuration (flags, parsed once into a frozen Struct) and the per-workload
overrides that ``config.tether.io/*`` annotations give."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tether.cli.inject.errors import InvalidInput
from tether.shared.config import parse_hostport
from tether.shared.identity_names import InvalidIdentityName, validate_trust_domain

NAMESPACE = "tether"
DESTINATION_ADDR = f"tether-destination.{NAMESPACE}.svc.cluster.local:8086"
IDENTITY_ADDR = f"tether-identity.{NAMESPACE}.svc.cluster.local:8080"
TELEMETRY_ADDR = f"tether-telemetry.{NAMESPACE}.svc.cluster.local:8087"
REGISTRY = "ghcr.io/tether-mesh"
TRUST_ROOTS_CONFIGMAP = "tether-trust-roots"
TRUST_ROOTS_KEY = "ca-bundle.crt"
# The ServiceAccount whose identity each control-plane server presents: identity names itself after the
# account `identity` whatever its own; destination and telemetry get theirs from identity with their
# ServiceAccount's token (tether-<component>, docs: the Kubernetes layout contract).
SERVER_ACCOUNTS = {
    "identity": "identity",
    "destination": "tether-destination",
    "telemetry": "tether-telemetry",
}

INJECT_ANNOTATION = "tether.io/inject"
CONFIG_PREFIX = "config.tether.io/"
SKIP_INBOUND = CONFIG_PREFIX + "skip-inbound-ports"
SKIP_OUTBOUND = CONFIG_PREFIX + "skip-outbound-ports"
OPAQUE_PORTS = CONFIG_PREFIX + "opaque-ports"
INBOUND_POLICY = CONFIG_PREFIX + "inbound-policy"
RESOURCE_ANNOTATIONS = {
    CONFIG_PREFIX + "proxy-cpu-request": "cpu_request",
    CONFIG_PREFIX + "proxy-cpu-limit": "cpu_limit",
    CONFIG_PREFIX + "proxy-memory-request": "memory_request",
    CONFIG_PREFIX + "proxy-memory-limit": "memory_limit",
}
KNOWN_ANNOTATIONS = frozenset(
    {SKIP_INBOUND, SKIP_OUTBOUND, OPAQUE_PORTS, INBOUND_POLICY, *RESOURCE_ANNOTATIONS}
)
# The proxy takes opaque ports one by one; a range in the annotation is spelt out, up to this many ports.
MAX_OPAQUE_PORTS = 1024

SidecarMode = Literal["native", "legacy"]
InboundPolicy = Literal["all-unauthenticated", "all-authenticated"]
_POLICIES: tuple[str, ...] = ("all-unauthenticated", "all-authenticated")
_QUANTITY = re.compile(
    r"(?P<number>\+?(?:\d+(?:\.\d*)?|\.\d+))(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": "1e-9", "u": "1e-6", "m": "1e-3", "k": "1e3", "M": "1e6", "G": "1e9", "T": "1e12"}
_DECIMAL |= {"P": "1e15", "E": "1e18"}
# A Docker image tag, and a registry (host[:port][/path]) to prefix the image's name with.
Tag = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]
Registry = Annotated[
    str, Meta(pattern=r"^[a-z0-9]([a-z0-9.:_-]*[a-z0-9])?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*$")
]


def quantity(text: str) -> Decimal:
    """A Kubernetes resource quantity (``100m``, ``1``, ``64Mi``, ``1e3``) as a number; ValueError if not."""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity such as 100m, 1, 64Mi or 1Gi")
    number, suffix = Decimal(match["number"]), match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * Decimal(_DECIMAL[suffix])
    return number * (Decimal(10) ** int(suffix[1:])) if suffix else number


class Resources(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The proxy container's requests and limits."""

    cpu_request: str = "100m"
    cpu_limit: str = "1"
    memory_request: str = "64Mi"
    memory_limit: str = "256Mi"

    def __post_init__(self) -> None:
        for field in self.__struct_fields__:
            try:
                quantity(getattr(self, field))
            except ValueError as exc:
                raise ValueError(f"proxy_{field}: {exc}") from None
        for what in ("cpu", "memory"):
            request, limit = getattr(self, f"{what}_request"), getattr(self, f"{what}_limit")
            if quantity(request) > quantity(limit):
                raise ValueError(f"proxy_{what}_request: {request} is above the limit {limit}")


class InjectConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What ``tether inject`` adds (or, with ``uninject``, removes)."""

    uninject: bool = False
    sidecar_mode: SidecarMode = "native"
    registry: Registry = REGISTRY
    proxy_version: Tag
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    destination_addr: str = DESTINATION_ADDR
    identity_addr: str = IDENTITY_ADDR
    # Empty: the proxy reports no metrics.
    telemetry_addr: str = TELEMETRY_ADDR
    trust_domain: str = "cluster.local"
    # A PEM file; empty: the cluster's ConfigMap tether/tether-trust-roots, read with the kubeconfig.
    trust_anchors: str = ""
    kubeconfig: str = ""
    kube_context: str = ""
    inbound_policy: InboundPolicy = "all-unauthenticated"
    proxy_log_level: Literal["debug", "info", "warning", "error"] = "info"
    resources: Resources = msgspec.field(default_factory=Resources)

    def __post_init__(self) -> None:
        for name in ("destination_addr", "identity_addr", "telemetry_addr"):
            value = getattr(self, name)
            if value or name != "telemetry_addr":
                try:
                    parse_hostport(value)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        try:
            validate_trust_domain(self.trust_domain)
        except InvalidIdentityName as exc:
            raise ValueError(f"trust_domain: {exc}") from None

    @property
    def proxy_image(self) -> str:
        return f"{self.registry}/proxy:{self.proxy_version}"

    def server_name(self, component: str) -> str:
        """The mesh identity a control-plane component presents, which the proxy verifies."""
        account = SERVER_ACCOUNTS[component]
        return f"{account}.{NAMESPACE}.serviceaccount.identity.{self.trust_domain}"


class PortRange(msgspec.Struct, frozen=True):
    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


class Overrides(msgspec.Struct, frozen=True, kw_only=True):
    """One workload's settings after its ``config.tether.io/*`` annotations."""

    skip_inbound_ports: tuple[PortRange, ...] = ()
    skip_outbound_ports: tuple[PortRange, ...] = ()
    # None: the proxy's own default list.
    opaque_ports: tuple[int, ...] | None = None
    inbound_policy: InboundPolicy
    resources: Resources
    unknown: tuple[str, ...] = ()


def parse_ports(text: str) -> tuple[PortRange, ...]:
    """``"25, 3306,4000-4100"``: ports and inclusive ranges; ValueError naming what is wrong."""
    found = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        first_text, dash, last_text = item.partition("-")
        if not first_text.strip().isdigit() or (dash and not last_text.strip().isdigit()):
            raise ValueError(f"{item!r} is not a port or a range like 4000-4100")
        first = int(first_text)
        last = int(last_text) if dash else first
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"{item!r}: ports are 1..65535 and a range goes upwards")
        found.append(PortRange(first, last))
    return tuple(found)


def overrides(annotations: Mapping[str, Any], config: InjectConfig) -> Overrides:
    """The workload's settings; InvalidInput naming the annotation whose value does not parse."""

    def value(key: str) -> str | None:
        raw = annotations.get(key)
        return None if raw is None else str(raw)

    def invalid(key: str, problem: str) -> InvalidInput:
        return InvalidInput(f"annotation {key}: {problem}", "fix or remove the annotation")

    settings: dict[str, Any] = {"inbound_policy": config.inbound_policy}
    for key, field in ((SKIP_INBOUND, "skip_inbound_ports"), (SKIP_OUTBOUND, "skip_outbound_ports")):
        text = value(key)
        if text is not None:
            try:
                settings[field] = parse_ports(text)
            except ValueError as exc:
                raise invalid(key, str(exc)) from None
    text = value(OPAQUE_PORTS)
    if text is not None:
        try:
            ranges = parse_ports(text)
        except ValueError as exc:
            raise invalid(OPAQUE_PORTS, str(exc)) from None
        if sum(r.last - r.first + 1 for r in ranges) > MAX_OPAQUE_PORTS:
            raise invalid(OPAQUE_PORTS, f"more than {MAX_OPAQUE_PORTS} ports; name fewer or smaller ranges")
        settings["opaque_ports"] = tuple(
            sorted({port for r in ranges for port in range(r.first, r.last + 1)})
        )
    policy = value(INBOUND_POLICY)
    if policy is not None:
        if policy not in _POLICIES:
            raise invalid(INBOUND_POLICY, f"{policy!r} is not one of {', '.join(_POLICIES)}")
        settings["inbound_policy"] = policy
    resources = msgspec.structs.asdict(config.resources)
    for key, field in RESOURCE_ANNOTATIONS.items():
        text = value(key)
        if text is not None:
            resources[field] = text.strip()
    try:
        settings["resources"] = Resources(**resources)
    except ValueError as exc:
        field, _, problem = str(exc).partition(": ")
        key = CONFIG_PREFIX + field.replace("_", "-")
        raise invalid(key if key in RESOURCE_ANNOTATIONS else CONFIG_PREFIX + "proxy-*", problem) from None
    settings["unknown"] = tuple(
        sorted(k for k in annotations if k.startswith(CONFIG_PREFIX) and k not in KNOWN_ANNOTATIONS)
    )
    return Overrides(**settings)
