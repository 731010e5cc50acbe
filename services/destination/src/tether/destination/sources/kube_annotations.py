"""What the Kubernetes source reads from annotations and address fields, each value on its own.

``config.tether.io/opaque-ports`` (the name ``tether inject`` reads too, as Linkerd's
``config.linkerd.io/opaque-ports``; the earlier ``tether.io/opaque-ports`` is still read where the new one
is absent) lists ports that carry an opaque (non-HTTP) protocol, so proxies skip protocol detection for
them: comma-separated port numbers or inclusive ranges, ``"25,3306,4000-4100"``. On a Service the numbers
are its service ports (the port in the authority); on a Pod, the pod's own ports. A value that does not
parse is the caller's to report: it is ignored as a whole, never half-applied.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from tether.shared.events import MAX_PORT_RANGES, MAX_SERVICE_ADDRESSES, PortRange

OPAQUE_PORTS_ANNOTATION = "config.tether.io/opaque-ports"
LEGACY_OPAQUE_PORTS_ANNOTATION = "tether.io/opaque-ports"
#: Read in this order: the first one an object carries is its value.
OPAQUE_PORTS_ANNOTATIONS = (OPAQUE_PORTS_ANNOTATION, LEGACY_OPAQUE_PORTS_ANNOTATION)
MAX_ANNOTATION_LENGTH = 4096


class InvalidAnnotation(ValueError):
    """An annotation value that does not parse; the message says why (without echoing the value)."""


def parse_opaque_ports(value: str) -> tuple[PortRange, ...]:
    """The sorted, merged ranges ``value`` names; raises InvalidAnnotation."""
    if len(value) > MAX_ANNOTATION_LENGTH:
        raise InvalidAnnotation(f"longer than {MAX_ANNOTATION_LENGTH} characters")
    ranges: list[PortRange] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            if value.strip():
                raise InvalidAnnotation("an empty entry between commas")
            continue
        first_text, dash, last_text = item.partition("-")
        first = _port(first_text.strip())
        last = _port(last_text.strip()) if dash else first
        if first > last:
            raise InvalidAnnotation(f"range {item!r} ends before it starts")
        ranges.append((first, last))
    merged = merge_port_ranges(ranges)
    if len(merged) > MAX_PORT_RANGES:
        raise InvalidAnnotation(f"more than {MAX_PORT_RANGES} separate ranges")
    return merged


def merge_port_ranges(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Sorted, with overlapping and adjacent ranges joined (the form Endpoint.opaque_ports requires)."""
    merged: list[PortRange] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return tuple(merged)


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise InvalidAnnotation(f"{text[:16]!r} is not a port number 1-65535")
    return int(text)


def cluster_addresses(cluster_ips: Iterable[str] | None, cluster_ip: str | None) -> tuple[str, ...]:
    """A Service's virtual addresses: ``spec.clusterIPs``, else ``spec.clusterIP``, canonical and sorted.

    ``None`` (a headless service), empty strings and anything that is not an IP literal are no address.
    """
    candidates = list(cluster_ips or ()) or ([cluster_ip] if cluster_ip else [])
    addresses: set[str] = set()
    for text in candidates:
        try:
            parsed = ipaddress.ip_address(text)
        except ValueError:
            continue
        if isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id is not None:
            continue
        addresses.add(str(parsed))
    return tuple(sorted(addresses))[:MAX_SERVICE_ADDRESSES]
