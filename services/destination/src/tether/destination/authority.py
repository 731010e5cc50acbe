"""Resolving a proxy's authority (``host:port``) to the service it names.

Accepted forms, case-insensitive, with an optional trailing dot:
``svc.ns.svc.<cluster-domain>:port``, ``svc.ns.svc:port``, ``svc.ns:port`` and ``svc:port`` (namespace from
the ``ns`` key of the JSON ``context_token``). A missing port means 80. Anything else (IP addresses,
other domains, bad labels, bad ports, a short name without a namespace) is not in the mesh: the caller
answers ``no_endpoints{exists: false}``. Only requests that are empty or oversized are invalid.
"""

from __future__ import annotations

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
) -> ServiceAuthority | None:
    """The service an authority names, or None when it is not a mesh service (see module docstring)."""
    validate_request(authority, context_token)
    host, port = _split_port(authority.lower())
    if port is None:
        return None
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
    if authority.startswith("["):
        return authority, None  # an IPv6 literal is never a service name
    host, sep, port_text = authority.rpartition(":")
    if not sep:
        return authority, DEFAULT_PORT
    if not port_text.isdigit() or len(port_text) > 5 or not 1 <= int(port_text) <= 65535:
        return host, None
    return host, int(port_text)


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
