"""What the destination service stores on NATS and publishes about it.

``EndpointSet`` is the value of key ``<namespace>.<service>`` in the JetStream key-value bucket
``tether_endpoints``: the complete endpoint set of one service, JSON-encoded. ``EndpointsChanged`` is the
diff event published on ``tether.v1.endpoints.<namespace>.<service>`` after every write.
Readers ignore fields they do not know; a change that breaks readers bumps ``schema_version``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from tether.shared.events import Event

Origin = Literal["kubernetes", "file", "registration"]
ProtocolHint = Literal["h2"]


class ServicePort(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """A port of the service, as clients address it (the port in the authority)."""

    name: str = ""
    port: int


class Workload(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """The workload that owns an endpoint, e.g. ``Workload("deployment", "web")``."""

    kind: str
    name: str


class Endpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False, omit_defaults=True):
    """One address of the service.

    ``ports`` maps a service port name to the port this address listens on for it, so that one record
    serves every port of a multi-port service. Not-ready endpoints stay in the set with ``ready=False``
    (they are not served to proxies); terminating endpoints are not in the set at all.
    """

    address: str
    ports: dict[str, int]
    ready: bool = True
    identity: str | None = None
    protocol_hint: ProtocolHint | None = None
    pod: str | None = None
    workload: Workload | None = None
    serviceaccount: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    origin: Origin = "file"
    instance: str | None = None


class EndpointSet(Event, frozen=True, kw_only=True):
    """The full endpoint set of one service: value of key ``<namespace>.<service>``.

    ``generation`` increases by at least one with every write of the key; ``endpoints`` are sorted by
    address and unique by address. ``writer`` names the replica that wrote it and ``written_at`` is its
    wall-clock time of writing (Unix seconds), which readers use to measure how far behind they are.
    """

    namespace: str
    service: str
    generation: int
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...]
    writer: str = ""
    written_at: float = 0.0

    @property
    def key(self) -> str:
        return service_key(self.namespace, self.service)


class EndpointsChanged(Event, frozen=True, kw_only=True):
    """Diff event on ``tether.v1.endpoints.<namespace>.<service>``.

    ``added`` holds endpoints that are new or whose record changed (the full new record); ``removed``
    holds addresses that left the set. ``deleted`` is true when the service itself is gone.
    """

    namespace: str
    service: str
    generation: int
    added: tuple[Endpoint, ...] = ()
    removed: tuple[str, ...] = ()
    deleted: bool = False


class WorkloadRegistration(Event, frozen=True, kw_only=True):
    """A local workload announcing itself on ``tether.v1.registry.register``.

    The workload re-sends the same message as a heartbeat; the endpoint leaves the set ``ttl_seconds``
    after the last one, or at once when ``deregister`` is true. Registering into a service the registry
    file does not declare declares it with a single unnamed port ``port``.
    """

    namespace: str
    service: str
    instance: str
    address: str
    port: int
    identity: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    ttl_seconds: float = 10.0
    deregister: bool = False


def service_key(namespace: str, service: str) -> str:
    return f"{namespace}.{service}"


def diff_endpoints(
    before: Iterable[Endpoint], after: Iterable[Endpoint]
) -> tuple[tuple[Endpoint, ...], tuple[str, ...]]:
    """(added-or-changed, removed addresses) taking ``before`` to ``after``."""
    old = {e.address: e for e in before}
    new = {e.address: e for e in after}
    added = tuple(e for address, e in sorted(new.items()) if old.get(address) != e)
    removed = tuple(sorted(address for address in old if address not in new))
    return added, removed


_set_decoder = msgspec.json.Decoder(EndpointSet)
_encoder = msgspec.json.Encoder()


def encode(value: msgspec.Struct) -> bytes:
    return _encoder.encode(value)


def decode_endpoint_set(data: bytes) -> EndpointSet:
    """Decodes a bucket value; raises msgspec.DecodeError / ValidationError on garbage."""
    return _set_decoder.decode(data)
