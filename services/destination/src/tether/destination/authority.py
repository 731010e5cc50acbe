"""Resolving a proxy's authority (``host:port``) to the service or address it names.

Two kinds of authority are resolved:

* **Names**, case-insensitive, with an optional trailing dot: ``svc.ns.svc.<cluster-domain>:port``,
  ``svc.ns.svc:port``, ``svc.ns:port`` and ``svc:port`` (namespace from the ``ns`` key of the JSON
  ``context_token``) → :class:`ServiceAuthority`.
* **IP literals**, ``10.96.0.10:6379`` and ``[fd00::10]:6379`` → :class:`AddressAuthority`, in canonical
  form (an IPv4-mapped IPv6 address is its IPv4 address). Whether the address is a service's virtual
  address, a pod's own address or unknown is decided against the endpoint store, not here.

A missing port means 80. Anything else (other domains, bad labels, bad ports, a short name without a
namespace, an IPv6 literal without brackets or with a zone) is not in the mesh: the caller answers
``no_endpoints{exists: false}``. Only requests that are empty or oversized are invalid.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from tether.destination.errors import InvalidRequest
from tether.destination.model import service_key
from tether.shared.identity_names import is_dns1123_label

MAX_AUTHORITY_LENGTH = 253 + len(":65535")
MAX_CONTEXT_TOKEN_LENGTH = 4096
DEFAULT_PORT = 80


@dataclass(frozen=True, slots=True)
class ServiceAuthority:
    namespace: str
    service: str
    port: int

    @property
    def key(self) -> str:
        return service_key(self.namespace, self.service)

    def __str__(self) -> str:
        return f"{self.service}.{self.namespace}:{self.port}"


@dataclass(frozen=True, slots=True)
class AddressAuthority:
    """An ``IP:port`` authority; ``ip`` is canonical, so it compares equal to stored addresses."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


Authority = ServiceAuthority | AddressAuthority


def validate_request(authority: str, context_token: str) -> None:
    """Raises InvalidRequest for requests no well-behaved proxy sends."""
    if not authority:
        raise InvalidRequest("authority is empty")
    if len(authority) > MAX_AUTHORITY_LENGTH:
        raise InvalidRequest(f"authority is longer than {MAX_AUTHORITY_LENGTH} characters")
    if len(context_token) > MAX_CONTEXT_TOKEN_LENGTH:
        raise InvalidRequest(f"context_token is longer than {MAX_CONTEXT_TOKEN_LENGTH} characters")


def parse_authority(
    authority: str, context_token: str = "", cluster_domain: str = "cluster.local"
) -> Authority | None:
    """The service or address an authority names, or None when it is not in the mesh (module docstring)."""
    validate_request(authority, context_token)
    host, port = _split_port(authority.lower())
    if port is None:
        return None
    if host.startswith("["):
        return _address(host[1:-1], port, brackets=True)
    address = _address(host, port, brackets=False)
    if address is not None:
        return address
    host = host.removesuffix(".")
    labels = host.split(".")
    cluster_suffix = ["svc", *cluster_domain.lower().split(".")]
    fully_qualified = len(labels) == 2 + len(cluster_suffix) and labels[2:] == cluster_suffix
    if fully_qualified or (len(labels) == 3 and labels[2] == "svc"):
        service, namespace = labels[0], labels[1]
    elif len(labels) == 2:
        service, namespace = labels
    elif len(labels) == 1:
        service = labels[0]
        found = _namespace_from_token(context_token)
        if found is None:
            return None
        namespace = found
    else:
        return None
    if not (is_dns1123_label(service) and is_dns1123_label(namespace)):
        return None
    return ServiceAuthority(namespace=namespace, service=service, port=port)


def _split_port(authority: str) -> tuple[str, int | None]:
    """(host, port); port None when the authority is malformed. An IPv6 host keeps its brackets."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return authority, None
        host, rest = authority[: close + 1], authority[close + 1 :]
        if not rest:
            return host, DEFAULT_PORT
        if not rest.startswith(":"):
            return host, None
        return host, _port(rest[1:])
    host, sep, port_text = authority.rpartition(":")
    if not sep:
        return authority, DEFAULT_PORT
    if ":" in host:
        return authority, None  # an IPv6 literal without brackets: its port cannot be told apart
    return host, _port(port_text)


def _port(text: str) -> int | None:
    if not text.isdigit() or len(text) > 5 or not 1 <= int(text) <= 65535:
        return None
    return int(text)


def _address(host: str, port: int, brackets: bool) -> AddressAuthority | None:
    """The IP literal ``host`` names, if it is one of the right family for its brackets."""
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address):
        if not brackets or parsed.scope_id is not None:
            return None  # a zone names a link on the caller's host, not an address in the mesh
        if parsed.ipv4_mapped is not None:
            return AddressAuthority(str(parsed.ipv4_mapped), port)
    elif brackets:
        return None  # ``[10.0.0.1]`` is not an authority RFC 3986 allows
    return AddressAuthority(str(parsed), port)


def _namespace_from_token(context_token: str) -> str | None:
    if not context_token:
        return None
    try:
        context = json.loads(context_token)
    except ValueError:
        return None
    if not isinstance(context, dict):
        return None
    namespace = context.get("ns")
    if not isinstance(namespace, str) or not is_dns1123_label(namespace.lower()):
        return None
    return namespace.lower()
