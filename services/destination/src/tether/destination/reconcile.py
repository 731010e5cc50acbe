"""The writer's pure core: what to write to the bucket so it matches what a source wants.

A source describes each service it knows as a ``DesiredService``. ``plan`` compares that with what the
bucket holds and returns the writes, each carrying the revision it expects to replace (so two writers can
never interleave) and the diff event to publish once the write lands. Content that already matches is not
rewritten, so a new leader's resync is a no-op for every service that did not change while it took over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tether.destination.model import (
    Endpoint,
    EndpointsChanged,
    EndpointSet,
    ServicePort,
    diff_endpoints,
    service_key,
)


@dataclass(frozen=True, slots=True)
class DesiredService:
    namespace: str
    service: str
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...]
    addresses: tuple[str, ...] = ()  # the service's virtual addresses, sorted and unique

    @property
    def key(self) -> str:
        return service_key(self.namespace, self.service)


@dataclass(frozen=True, slots=True)
class Current:
    """What the bucket holds for a key: the latest revision and its decoded value (None if garbage).

    ``deleted``: the latest revision is a deletion; the key is absent, but a new write must still expect
    that revision and continue its generations.
    """

    revision: int
    value: EndpointSet | None
    generation: int = 0
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    expected_revision: int | None  # None: the key must not exist yet
    value: EndpointSet
    event: EndpointsChanged


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    expected_revision: int
    event: EndpointsChanged


Write = Put | Delete


def normalise(
    namespace: str,
    service: str,
    ports: Iterable[ServicePort],
    endpoints: Iterable[Endpoint],
    addresses: Iterable[str] = (),
) -> DesiredService:
    """Sorted ports and addresses, endpoints sorted and unique by address (a ready record wins)."""
    by_address: dict[str, Endpoint] = {}
    for endpoint in endpoints:
        seen = by_address.get(endpoint.address)
        if seen is None or (endpoint.ready and not seen.ready):
            by_address[endpoint.address] = endpoint
    return DesiredService(
        namespace=namespace,
        service=service,
        ports=tuple(sorted(set(ports), key=lambda p: (p.port, p.name))),
        endpoints=tuple(by_address[a] for a in sorted(by_address)),
        addresses=tuple(sorted(set(addresses))),
    )


def plan(
    desired: Mapping[str, DesiredService],
    current: Mapping[str, Current],
    writer: str,
    keys: Iterable[str] | None = None,
) -> list[Write]:
    """Writes for ``keys`` (every key either side knows when None), in key order."""
    candidates = set(desired) | set(current) if keys is None else set(keys)
    writes: list[Write] = []
    for key in sorted(candidates):
        want = desired.get(key)
        have = current.get(key)
        write = _plan_key(key, want, have, writer)
        if write is not None:
            writes.append(write)
    return writes


def _plan_key(key: str, want: DesiredService | None, have: Current | None, writer: str) -> Write | None:
    if want is None:
        if have is None or have.deleted:
            return None
        generation = max(have.generation, have.value.generation if have.value else 0) + 1
        namespace, _, service = key.partition(".")
        old = have.value.endpoints if have.value else ()
        return Delete(
            key=key,
            expected_revision=have.revision,
            event=EndpointsChanged(
                namespace=namespace,
                service=service,
                generation=generation,
                removed=tuple(sorted(e.address for e in old)),
                deleted=True,
            ),
        )
    unchanged = (
        have is not None
        and have.value is not None
        and not have.deleted
        and have.value.ports == want.ports
        and have.value.endpoints == want.endpoints
        and have.value.addresses == want.addresses
    )
    if unchanged:
        return None
    previous_generation = 0
    old_endpoints: tuple[Endpoint, ...] = ()
    if have is not None:
        previous_generation = have.generation
        if have.value is not None:
            previous_generation = max(previous_generation, have.value.generation)
            if not have.deleted:
                old_endpoints = have.value.endpoints
    generation = previous_generation + 1
    added, removed = diff_endpoints(old_endpoints, want.endpoints)
    value = EndpointSet(
        namespace=want.namespace,
        service=want.service,
        generation=generation,
        ports=want.ports,
        endpoints=want.endpoints,
        writer=writer,
        addresses=want.addresses,
    )
    event = EndpointsChanged(
        namespace=want.namespace,
        service=want.service,
        generation=generation,
        added=added,
        removed=removed,
    )
    return Put(key=key, expected_revision=have.revision if have else None, value=value, event=event)
