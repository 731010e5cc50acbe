"""The replica's in-memory view of the bucket and the registry of proxy subscriptions per authority.

``EndpointStore`` applies key-value entries (value bytes, or a deletion) in revision order; a value that
does not decode is reported and skipped so the previous good set stays served. ``SubscriptionRegistry``
maps each service key to the streams watching one of its ports and hands every one of them the new
``Resolution`` when the key changes, projecting once per port rather than once per stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from tether.destination.model import EndpointSet, decode_endpoint_set
from tether.destination.view import Resolution, project


@dataclass(frozen=True, slots=True)
class Stored:
    revision: int
    value: EndpointSet


@dataclass(frozen=True, slots=True)
class Applied:
    """The key's served set changed (``value`` None: the key was deleted)."""

    key: str
    value: EndpointSet | None


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

    def apply(self, key: str, revision: int, data: bytes | None) -> ApplyResult:
        if revision <= self._revisions.get(key, 0):
            return Ignored(key)
        self._revisions[key] = revision
        if data is None:
            self._deleted.add(key)
            if self._sets.pop(key, None) is None:
                return Ignored(key)
            return Applied(key, None)
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
        return Applied(key, value)


def _same_content(a: EndpointSet, b: EndpointSet) -> bool:
    return a.ports == b.ports and a.endpoints == b.endpoints


Offer = Callable[[Resolution], None]


class SubscriptionRegistry:
    """Streams by service key and port. A subscriber is its ``offer`` callback (no I/O happens here)."""

    def __init__(self, store: EndpointStore) -> None:
        self._store = store
        self._by_key: dict[str, dict[int, set[Offer]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def subscribe(self, key: str, port: int, offer: Offer) -> Resolution:
        """Registers ``offer`` and returns the current resolution (the stream's first state)."""
        self._by_key.setdefault(key, {}).setdefault(port, set()).add(offer)
        self._count += 1
        return project(self._store.get(key), port)

    def unsubscribe(self, key: str, port: int, offer: Offer) -> None:
        ports = self._by_key.get(key)
        if ports is None or offer not in ports.get(port, ()):
            return
        ports[port].discard(offer)
        self._count -= 1
        if not ports[port]:
            del ports[port]
        if not ports:
            del self._by_key[key]

    def publish(self, key: str) -> int:
        """Offers the key's current state to each of its subscribers; returns how many were offered."""
        ports = self._by_key.get(key)
        if not ports:
            return 0
        value = self._store.get(key)
        offered = 0
        for port, offers in ports.items():
            resolution = project(value, port)
            for offer in list(offers):
                offer(resolution)
                offered += 1
        return offered

    def publish_all(self) -> int:
        return sum(self.publish(key) for key in list(self._by_key))
