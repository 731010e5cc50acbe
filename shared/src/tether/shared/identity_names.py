"""Workload identity names: the DNS-style name and the SPIFFE ID of a ServiceAccount.

A workload identity is `<sa>.<ns>.serviceaccount.identity.<trust-domain>`; the same identity as a SPIFFE
ID is `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`. ServiceAccount and namespace names must be DNS-1123
labels so that the DNS-style name is unambiguous to parse back; the trust domain is a DNS name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tether.shared.errors import TetherError

DEFAULT_TRUST_DOMAIN = "cluster.local"
IDENTITY_INFIX = "serviceaccount.identity"
SERVICEACCOUNT_USERNAME_PREFIX = "system:serviceaccount:"

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_MAX_LABEL = 63
_MAX_DNS_NAME = 253


class InvalidIdentityName(TetherError, ValueError):
    """A string is not a well-formed workload identity, label or trust domain."""


def is_dns1123_label(value: str) -> bool:
    return len(value) <= _MAX_LABEL and _DNS1123_LABEL.fullmatch(value) is not None


def validate_trust_domain(trust_domain: str) -> str:
    """Returns the trust domain if it is a lowercase DNS name of DNS-1123 labels, else raises."""
    if not trust_domain or len(trust_domain) > _MAX_DNS_NAME:
        raise InvalidIdentityName("trust domain must be 1 to 253 characters")
    if not all(is_dns1123_label(label) for label in trust_domain.split(".")):
        raise InvalidIdentityName("trust domain must be dot-separated DNS-1123 labels")
    return trust_domain


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """A ServiceAccount in a namespace, within a trust domain."""

    serviceaccount: str
    namespace: str
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    def __post_init__(self) -> None:
        if not is_dns1123_label(self.serviceaccount):
            raise InvalidIdentityName("serviceaccount must be a DNS-1123 label")
        if not is_dns1123_label(self.namespace):
            raise InvalidIdentityName("namespace must be a DNS-1123 label")
        validate_trust_domain(self.trust_domain)
        if len(self.dns_name) > _MAX_DNS_NAME:
            raise InvalidIdentityName("identity name is longer than 253 characters")

    @property
    def dns_name(self) -> str:
        return f"{self.serviceaccount}.{self.namespace}.{IDENTITY_INFIX}.{self.trust_domain}"

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.serviceaccount}"

    @property
    def kubernetes_username(self) -> str:
        return f"{SERVICEACCOUNT_USERNAME_PREFIX}{self.namespace}:{self.serviceaccount}"

    def __str__(self) -> str:
        return self.dns_name


def workload_identity(serviceaccount: str, namespace: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """The DNS-style identity name, `<sa>.<ns>.serviceaccount.identity.<trust-domain>`."""
    return WorkloadIdentity(serviceaccount, namespace, trust_domain).dns_name


def spiffe_id(serviceaccount: str, namespace: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """The SPIFFE ID, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`."""
    return WorkloadIdentity(serviceaccount, namespace, trust_domain).spiffe_id


def parse_identity(name: str, trust_domain: str | None = None) -> WorkloadIdentity:
    """Parses a DNS-style identity name; if `trust_domain` is given, the name must be in it."""
    sa, sep1, rest = name.partition(".")
    ns, sep2, rest = rest.partition(".")
    infix = IDENTITY_INFIX + "."
    if not (sep1 and sep2 and rest.startswith(infix)):
        raise InvalidIdentityName(f"identity must look like <sa>.<ns>.{IDENTITY_INFIX}.<trust-domain>")
    parsed = WorkloadIdentity(sa, ns, rest[len(infix) :])
    if trust_domain is not None and parsed.trust_domain != trust_domain:
        raise InvalidIdentityName("identity is not in this trust domain")
    return parsed


def parse_spiffe_id(uri: str) -> WorkloadIdentity:
    """Parses `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`."""
    prefix = "spiffe://"
    if not uri.startswith(prefix):
        raise InvalidIdentityName("SPIFFE ID must start with spiffe://")
    parts = uri[len(prefix) :].split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
        raise InvalidIdentityName("SPIFFE ID must look like spiffe://<trust-domain>/ns/<ns>/sa/<sa>")
    return WorkloadIdentity(parts[4], parts[2], parts[0])


def parse_kubernetes_username(username: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> WorkloadIdentity:
    """Parses `system:serviceaccount:<ns>:<sa>` (each part a DNS-1123 label)."""
    if not username.startswith(SERVICEACCOUNT_USERNAME_PREFIX):
        raise InvalidIdentityName("username is not a ServiceAccount (system:serviceaccount:<ns>:<sa>)")
    parts = username[len(SERVICEACCOUNT_USERNAME_PREFIX) :].split(":")
    if len(parts) != 2:
        raise InvalidIdentityName("username must be system:serviceaccount:<ns>:<sa>")
    return WorkloadIdentity(parts[1], parts[0], trust_domain)
