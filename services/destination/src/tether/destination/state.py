"""The replica's in-memory view of the bucket and the registry of proxy subscriptions per authority.

``EndpointStore`` applies key-value entries (value bytes, or a deletion) in revision order; a value that
does not decode is reported and skipped so the previous good set stays served. It also indexes every
address it holds (services' virtual addresses and endpoint addresses) to the keys that hold it, so an
``IP:port`` authority is resolved without scanning the bucket. ``SubscriptionRegistry`` maps each service
key, and each address, to the streams watching one of its ports and hands every one of them the new
``Resolution`` when it changes, projecting once per port rather than once per stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from tether.destination.model import Endpoint, EndpointSet, decode_endpoint_set
from tether.destination.view import Resolution, project, project_address


@dataclass(frozen=True, slots=True)
class Stored:
    revision: int
    value: EndpointSet


@dataclass(frozen=True, slots=True)
class Applied:
    """The key's served set changed (``value`` None: the key was deleted).

    ``addresses``: every address the key held before or holds now, whose resolution may have changed.
    """

    key: str
    value: EndpointSet | None
    addresses: frozenset[str] = field(default=frozenset())


@dataclass(frozen=True, slots=True)
class Rejected:
    """A value was garbage and was skipped; the previous good set (if any) stays."""

    key: str
    revision: int
    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing to do: an old revision, or a rewrite of identical content."""

    key: str


ApplyResult = Applied | Rejected | Ignored


class EndpointStore:
    def __init__(self) -> None:
        self._sets: dict[str, Stored] = {}
        self._revisions: dict[str, int] = {}
        self._deleted: set[str] = set()
        self._virtual: dict[str, set[str]] = {}  # address -> keys whose service has it as virtual address
        self._members: dict[str, dict[str, int]] = {}  # address -> key -> its position in the key's endpoints

    def get(self, key: str) -> EndpointSet | None:
        stored = self._sets.get(key)
        return stored.value if stored else None

    def revision(self, key: str) -> int | None:
        """The latest revision seen for the key, garbage and deletions included."""
        return self._revisions.get(key)

    def is_deleted(self, key: str) -> bool:
        """Whether the key's latest revision is a deletion."""
        return key in self._deleted

    def items(self) -> dict[str, Stored]:
        return dict(self._sets)

    def __len__(self) -> int:
        return len(self._sets)

    def by_address(self, ip: str) -> tuple[list[EndpointSet], list[tuple[EndpointSet, Endpoint]]]:
        """The sets with ``ip`` as a virtual address, and ``ip``'s record in each set listing it, by key."""
        services = [self._sets[key].value for key in sorted(self._virtual.get(ip, ()))]
        members = []
        for key, position in sorted(self._members.get(ip, {}).items()):
            value = self._sets[key].value
            members.append((value, value.endpoints[position]))
        return services, members

    def apply(self, key: str, revision: int, data: bytes | None) -> ApplyResult:
        if revision <= self._revisions.get(key, 0):
            return Ignored(key)
        self._revisions[key] = revision
        if data is None:
            self._deleted.add(key)
            removed = self._sets.pop(key, None)
            if removed is None:
                return Ignored(key)
            return Applied(key, None, self._reindex(key, removed.value, None))
        self._deleted.discard(key)
        try:
            value = decode_endpoint_set(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return Rejected(key, revision, str(exc))
        if value.key != key:
            return Rejected(key, revision, f"value names service {value.key!r}, not the key")
        previous = self._sets.get(key)
        self._sets[key] = Stored(revision, value)
        if previous is not None and _same_content(previous.value, value):
            return Ignored(key)
        return Applied(key, value, self._reindex(key, previous.value if previous else None, value))

    def _reindex(self, key: str, old: EndpointSet | None, new: EndpointSet | None) -> frozenset[str]:
        """Moves the key's addresses in the index from ``old`` to ``new``; returns both sides' addresses."""
        touched: set[str] = set()
        if old is not None:
            for ip in old.addresses:
                _discard(self._virtual, ip, key)
            for endpoint in old.endpoints:
                positions = self._members.get(endpoint.address)
                if positions is not None:
                    positions.pop(key, None)
                    if not positions:
                        del self._members[endpoint.address]
            touched.update(old.addresses)
            touched.update(e.address for e in old.endpoints)
        if new is not None:
            for ip in new.addresses:
                self._virtual.setdefault(ip, set()).add(key)
            for position, endpoint in enumerate(new.endpoints):
                # Another writer's value may repeat an address; the first record is the one served.
                self._members.setdefault(endpoint.address, {}).setdefault(key, position)
            touched.update(new.addresses)
            touched.update(e.address for e in new.endpoints)
        return frozenset(touched)


def _discard(index: dict[str, set[str]], ip: str, key: str) -> None:
    keys = index.get(ip)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[ip]


def _same_content(a: EndpointSet, b: EndpointSet) -> bool:
    return a.ports == b.ports and a.endpoints == b.endpoints and a.addresses == b.addresses


Offer = Callable[[Resolution], None]


class SubscriptionRegistry:
    """Streams by service key or address, and port. A subscriber is its ``offer`` callback (no I/O here)."""

    def __init__(self, store: EndpointStore) -> None:
        self._store = store
        self._by_key: dict[str, dict[int, set[Offer]]] = {}
        self._by_address: dict[str, dict[int, set[Offer]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def subscribe(self, key: str, port: int, offer: Offer) -> Resolution:
        """Registers ``offer`` and returns the current resolution (the stream's first state)."""
        self._add(self._by_key, key, port, offer)
        return project(self._store.get(key), port)

    def unsubscribe(self, key: str, port: int, offer: Offer) -> None:
        self._remove(self._by_key, key, port, offer)

    def subscribe_address(self, ip: str, port: int, offer: Offer) -> Resolution:
        """Like ``subscribe``, for an ``IP:port`` authority (``ip`` in canonical form)."""
        self._add(self._by_address, ip, port, offer)
        return project_address(ip, port, *self._store.by_address(ip))

    def unsubscribe_address(self, ip: str, port: int, offer: Offer) -> None:
        self._remove(self._by_address, ip, port, offer)

    def publish(self, key: str, addresses: Iterable[str] = ()) -> int:
        """Offers the current state to the key's subscribers and to those of ``addresses`` (the ones the
        change touched, ``Applied.addresses``); returns how many were offered."""
        offered = 0
        ports = self._by_key.get(key)
        if ports:
            value = self._store.get(key)
            for port, offers in ports.items():
                offered += _offer_all(offers, project(value, port))
        if self._by_address:
            touched = frozenset(addresses)
            # The smaller side: a change to a large set touches many addresses that nobody watches.
            if len(self._by_address) < len(touched):
                targets = [ip for ip in self._by_address if ip in touched]
            else:
                targets = [ip for ip in touched if ip in self._by_address]
            for ip in targets:
                offered += self._publish_address(ip)
        return offered

    def publish_all(self) -> int:
        by_key = sum(self.publish(key) for key in list(self._by_key))
        return by_key + sum(self._publish_address(ip) for ip in list(self._by_address))

    def _publish_address(self, ip: str) -> int:
        ports = self._by_address.get(ip)
        if not ports:
            return 0
        services, members = self._store.by_address(ip)
        return sum(
            _offer_all(offers, project_address(ip, port, services, members)) for port, offers in ports.items()
        )

    def _add(self, index: dict[str, dict[int, set[Offer]]], name: str, port: int, offer: Offer) -> None:
        index.setdefault(name, {}).setdefault(port, set()).add(offer)
        self._count += 1

    def _remove(self, index: dict[str, dict[int, set[Offer]]], name: str, port: int, offer: Offer) -> None:
        ports = index.get(name)
        if ports is None or offer not in ports.get(port, ()):
            return
        ports[port].discard(offer)
        self._count -= 1
        if not ports[port]:
            del ports[port]
        if not ports:
            del index[name]


def _offer_all(offers: set[Offer], resolution: Resolution) -> int:
    snapshot = list(offers)
    for offer in snapshot:
        offer(resolution)
    return len(snapshot)
