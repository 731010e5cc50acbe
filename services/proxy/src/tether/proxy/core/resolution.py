"""What the proxy knows about one authority, built from a Destination/Get update stream.

Pure state: the I/O layer converts protobuf updates into :class:`Add`,
:class:`Remove` and :class:`NoEndpoints` and applies them here.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tether.proxy.core.balancer import Balancer

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: Address
    weight: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    #: The endpoint is meshed: its inbound proxy speaks HTTP/2.
    h2_hint: bool = False
    tls_identity: str | None = None
    #: The port carries an opaque (non-HTTP) protocol: forward it as TCP, without protocol detection.
    opaque: bool = False


@dataclass(frozen=True, slots=True)
class Add:
    endpoints: Sequence[Endpoint]
    set_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Remove:
    addresses: Sequence[Address]


@dataclass(frozen=True, slots=True)
class NoEndpoints:
    exists: bool


Update = Add | Remove | NoEndpoints


class Status(enum.Enum):
    #: Nothing received yet since the stream was opened for the first time.
    PENDING = "pending"
    #: The authority is in the mesh; ``endpoints`` may be empty.
    KNOWN = "known"
    #: The authority is not in the mesh: use the connection's original destination.
    NOT_IN_MESH = "not-in-mesh"


class Resolution:
    """Endpoint set of one authority and its balancer."""

    def __init__(self, authority: str, rng: random.Random | None = None) -> None:
        self.authority = authority
        self.status = Status.PENDING
        self.endpoints: dict[Address, Endpoint] = {}
        self.set_labels: Mapping[str, str] = {}
        self.balancer: Balancer[Address] = Balancer(rng)
        #: Bumped on every change; lets waiters and caches notice updates cheaply.
        self.version = 0
        self._reset_pending = True

    @property
    def usable(self) -> bool:
        """A request can be routed now (to an endpoint or to the original destination)."""
        return self.status is Status.NOT_IN_MESH or (self.status is Status.KNOWN and bool(self.endpoints))

    def stream_restarted(self) -> None:
        """A new Get stream was opened: its first message replaces everything known so far."""
        self._reset_pending = True

    def apply(self, update: Update, now: float) -> list[Address]:
        """Apply one update; returns the addresses that left the set (their connections can retire)."""
        before = set(self.endpoints)
        reset = self._reset_pending
        self._reset_pending = False
        if isinstance(update, Add):
            if reset:
                self.endpoints = {}
                self.set_labels = {}
            if update.endpoints or reset:
                self.status = Status.KNOWN
            if update.set_labels:
                self.set_labels = dict(update.set_labels)
            for endpoint in update.endpoints:
                self.endpoints[endpoint.address] = endpoint
        elif isinstance(update, Remove):
            if reset:
                self.endpoints = {}
            self.status = Status.KNOWN
            for address in update.addresses:
                self.endpoints.pop(address, None)
        else:
            self.endpoints = {}
            self.status = Status.KNOWN if update.exists else Status.NOT_IN_MESH
        self.balancer.set_endpoints(((e.address, e.weight) for e in self.endpoints.values()), now)
        self.version += 1
        return [address for address in before if address not in self.endpoints]
