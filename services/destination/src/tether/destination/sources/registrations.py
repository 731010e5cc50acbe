"""Workloads that registered themselves over NATS, each kept alive by its heartbeats (pure, time passed in).

A registration lives until ``ttl_seconds`` after its last heartbeat. A replica that becomes leader adopts
the registrations it finds in the bucket with a fresh TTL, so endpoints registered before it started are
neither dropped at takeover nor kept forever if their workload is gone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from tether.destination.errors import DestinationError
from tether.destination.model import Endpoint, EndpointSet, ServicePort, WorkloadRegistration, service_key
from tether.shared.identity_names import InvalidIdentityName, is_dns1123_label, parse_identity


class InvalidRegistration(DestinationError, ValueError):
    """A registration that is refused: malformed, over the table's cap, or claiming another namespace."""


@dataclass(frozen=True, slots=True)
class Registered:
    key: str
    instance: str
    address: str
    port: int
    identity: str | None
    labels: dict[str, str]
    expires_at: float
    #: The port of the service it creates, where the registry file does not declare it.
    service_port: int


def validate_registration(reg: WorkloadRegistration, trust_domain: str) -> None:
    if not (is_dns1123_label(reg.namespace) and is_dns1123_label(reg.service)):
        raise InvalidRegistration("namespace and service must be DNS-1123 labels")
    if not reg.instance or len(reg.instance) > 253:
        raise InvalidRegistration("instance must be 1 to 253 characters")
    try:
        ipaddress.ip_address(reg.address)
    except ValueError:
        raise InvalidRegistration(f"address {reg.address!r} is not an IP address") from None
    if not 1 <= reg.port <= 65535:
        raise InvalidRegistration(f"port {reg.port} is not in 1..65535")
    if reg.service_port is not None and not 1 <= reg.service_port <= 65535:
        raise InvalidRegistration(f"service_port {reg.service_port} is not in 1..65535")
    if not 0 < reg.ttl_seconds <= 3600:
        raise InvalidRegistration("ttl_seconds must be in (0, 3600]")
    if reg.identity is not None:
        try:
            identity = parse_identity(reg.identity, trust_domain)
        except InvalidIdentityName as exc:
            raise InvalidRegistration(f"identity: {exc}") from None
        if identity.namespace != reg.namespace:
            # A workload may only join services of its own namespace: otherwise any registrant could pull
            # another team's traffic to itself (with its own, valid, identity).
            raise InvalidRegistration(
                f"identity {reg.identity} is of namespace {identity.namespace!r}, "
                f"not of the service's namespace {reg.namespace!r}"
            )


class RegistrationTable:
    def __init__(self, max_registrations: int = 10_000) -> None:
        self._by_key: dict[str, dict[str, Registered]] = {}
        self._max = max_registrations
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def apply(self, reg: WorkloadRegistration, now: float) -> str | None:
        """Records a (validated) registration or heartbeat; returns the key whose endpoints changed.

        Raises InvalidRegistration for a new instance once ``max_registrations`` are held.
        """
        key = service_key(reg.namespace, reg.service)
        previous = self._by_key.get(key, {}).get(reg.instance)
        if previous is None and not reg.deregister and self._count >= self._max:
            raise InvalidRegistration(f"the registry already holds its limit of {self._max} registrations")
        instances = self._by_key.setdefault(key, {})
        if reg.deregister:
            if previous is None:
                if not instances:
                    del self._by_key[key]
                return None
            del instances[reg.instance]
            self._count -= 1
            if not instances:
                del self._by_key[key]
            return key
        address = str(ipaddress.ip_address(reg.address))
        record = Registered(
            key,
            reg.instance,
            address,
            reg.port,
            reg.identity,
            dict(reg.labels),
            now + reg.ttl_seconds,
            reg.service_port or reg.port,
        )
        instances[reg.instance] = record
        if previous is None:
            self._count += 1
        if previous is not None and _same_endpoint(previous, record):
            return None
        return key

    def expire(self, now: float) -> set[str]:
        changed: set[str] = set()
        for key in list(self._by_key):
            instances = self._by_key[key]
            for instance in [i for i, r in instances.items() if r.expires_at <= now]:
                del instances[instance]
                self._count -= 1
                changed.add(key)
            if not instances:
                del self._by_key[key]
        return changed

    def next_expiry(self) -> float | None:
        return min((r.expires_at for i in self._by_key.values() for r in i.values()), default=None)

    def adopt(self, sets: Iterable[EndpointSet], now: float, ttl: float) -> set[str]:
        """Takes over registrations found in the bucket that this table does not know yet."""
        changed: set[str] = set()
        for endpoint_set in sets:
            for endpoint in endpoint_set.endpoints:
                if endpoint.origin != "registration" or not endpoint.instance:
                    continue
                instances = self._by_key.setdefault(endpoint_set.key, {})
                if endpoint.instance in instances or not endpoint.ports or self._count >= self._max:
                    continue
                self._count += 1
                port = next(iter(endpoint.ports.values()))
                # A service the registrations created has one unnamed port: that is its service port.
                declared = [p.port for p in endpoint_set.ports if not p.name]
                instances[endpoint.instance] = Registered(
                    endpoint_set.key,
                    endpoint.instance,
                    endpoint.address,
                    port,
                    endpoint.identity,
                    dict(endpoint.labels),
                    now + ttl,
                    declared[0] if len(endpoint_set.ports) == 1 and declared else port,
                )
                changed.add(endpoint_set.key)
        return changed

    def keys(self) -> set[str]:
        return set(self._by_key)

    def endpoints(self, key: str, ports: Iterable[ServicePort]) -> list[Endpoint]:
        names = [p.name for p in ports]
        return [
            Endpoint(
                address=r.address,
                ports=dict.fromkeys(names, r.port),
                identity=r.identity,
                protocol_hint="h2" if r.identity else None,
                labels=r.labels,
                origin="registration",
                instance=r.instance,
            )
            for r in sorted(self._by_key.get(key, {}).values(), key=lambda r: (r.address, r.instance))
        ]

    def first_port(self, key: str) -> int | None:
        records = self._by_key.get(key)
        if not records:
            return None
        return min(records.values(), key=lambda r: r.instance).service_port


def _same_endpoint(a: Registered, b: Registered) -> bool:
    return (a.address, a.port, a.identity, a.labels, a.service_port) == (
        b.address,
        b.port,
        b.identity,
        b.labels,
        b.service_port,
    )
