"""proxy-init options: flags ``--inbound-port`` etc. and environment ``TETHER_PROXY_INIT_*``."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tether.shared.config import LoggingConfig

IptablesMode = Literal["auto", "nft", "legacy"]
Ipv6Mode = Literal["auto", "on", "off"]
Port = Annotated[int, Meta(ge=1, le=65535)]

SERVICE = "proxy-init"


class PortRange(msgspec.Struct, frozen=True):
    """An inclusive TCP port range; a single port has ``first == last``."""

    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """Parse ``"4190"`` or ``"9000-9100"``."""
        first_text, sep, last_text = text.strip().partition("-")
        try:
            first = int(first_text)
            last = int(last_text) if sep else first
        except ValueError:
            raise ValueError(f"expected a port or a range like 9000-9100, got {text!r}") from None
        if not (1 <= first <= last <= 65535):
            raise ValueError(f"ports must be 1..65535 and ranges ascending, got {text!r}")
        return cls(first, last)

    def iptables(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}:{self.last}"


class ProxyInitConfig(LoggingConfig, frozen=True, kw_only=True):
    """What proxy-init intercepts in the pod's network namespace."""

    inbound_port: Annotated[Port, Meta(description="port the proxy accepts redirected inbound TCP on")] = 4143
    outbound_port: Annotated[Port, Meta(description="port the proxy accepts redirected outbound TCP on")] = (
        4140
    )
    proxy_uid: Annotated[
        int,
        Meta(ge=0, le=4294967294, description="UID the proxy runs as; its own traffic is never redirected"),
    ] = 2102
    inbound_skip_ports: Annotated[
        tuple[str, ...], Meta(description="inbound destination ports (or ranges a-b) left alone")
    ] = ("4190", "4191")
    outbound_skip_ports: Annotated[
        tuple[str, ...], Meta(description="outbound destination ports (or ranges a-b) left alone")
    ] = ()
    outbound_skip_subnets: Annotated[
        tuple[str, ...],
        Meta(
            description=(
                "outbound destination CIDRs left alone, IPv4 or IPv6 (each family's rules get its own), "
                "e.g. 169.254.169.254/32,fd00:ec2::254/128"
            )
        ),
    ] = ()
    iptables_mode: Annotated[
        IptablesMode,
        Meta(description="iptables backend: nft, legacy, or auto (the system's iptables-restore)"),
    ] = "auto"
    ipv6: Annotated[
        Ipv6Mode,
        Meta(
            description=(
                "the same rules for IPv6 with ip6tables: auto (when the pod has IPv6, else one log line and "
                "IPv4 only), on (missing IPv6 is an error), off (IPv4 only)"
            )
        ),
    ] = "auto"

    def __post_init__(self) -> None:
        if self.inbound_port == self.outbound_port:
            raise ValueError("inbound_port and outbound_port must differ")
        for name in ("inbound_skip_ports", "outbound_skip_ports"):
            for text in getattr(self, name):
                try:
                    PortRange.parse(text)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        for text in self.outbound_skip_subnets:
            if "%" in text:
                raise ValueError(
                    f"outbound_skip_subnets: expected an IPv4 or IPv6 CIDR, got {text!r}: "
                    "a zone index (%...) cannot be matched by ip6tables"
                )
            try:
                ipaddress.ip_network(text.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(
                    f"outbound_skip_subnets: expected an IPv4 or IPv6 CIDR, got {text!r}: {exc}"
                ) from None
