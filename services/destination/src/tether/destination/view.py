"""What one proxy stream sees: an endpoint set projected onto a port, and the frames that move a stream
from what it was last sent to the latest state.

A stream never queues intermediate states: it keeps only the latest ``Resolution`` and, when it is able to
send, ``StreamCore.frames`` computes the diff from what it sent last. A slow stream therefore coalesces
any number of changes into one diff and its memory stays bounded.

A named authority is projected from its service's set (``project``); an ``IP:port`` authority from the
sets that know that address (``project_address``): a service's virtual address resolves like the
service's name, a pod's own address to that one endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tether.destination.model import Endpoint, EndpointSet
from tether.shared.events import in_port_ranges

AddrKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ResolvedAddr:
    """One address as a proxy receives it."""

    ip: str
    port: int
    identity: str | None
    h2: bool
    labels: tuple[tuple[str, str], ...]
    opaque: bool = False

    @property
    def key(self) -> AddrKey:
        return (self.ip, self.port)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The served state of one authority: whether the service exists and its ready addresses."""

    exists: bool
    set_labels: tuple[tuple[str, str], ...] = ()
    addrs: Mapping[AddrKey, ResolvedAddr] = field(default_factory=dict)


NOT_IN_MESH = Resolution(exists=False)


@dataclass(frozen=True, slots=True)
class AddFrame:
    addrs: tuple[ResolvedAddr, ...]
    set_labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RemoveFrame:
    addrs: tuple[AddrKey, ...]


@dataclass(frozen=True, slots=True)
class NoEndpointsFrame:
    exists: bool


Frame = AddFrame | RemoveFrame | NoEndpointsFrame


def project(endpoint_set: EndpointSet | None, port: int) -> Resolution:
    """The ready addresses serving ``port`` of the service; a port the service lacks is not in the mesh."""
    if endpoint_set is None:
        return NOT_IN_MESH
    service_port = next((p for p in endpoint_set.ports if p.port == port), None)
    if service_port is None:
        return NOT_IN_MESH
    addrs: dict[AddrKey, ResolvedAddr] = {}
    for endpoint in endpoint_set.endpoints:
        target = endpoint.ports.get(service_port.name)
        if not endpoint.ready or target is None:
            continue
        addr = ResolvedAddr(
            ip=endpoint.address,
            port=target,
            identity=endpoint.identity,
            h2=endpoint.protocol_hint == "h2",
            labels=_labels(endpoint_set, endpoint, with_service=True),
            opaque=service_port.opaque or in_port_ranges(target, endpoint.opaque_ports),
        )
        addrs[addr.key] = addr
    return Resolution(exists=True, set_labels=_base(endpoint_set, with_service=True), addrs=addrs)


def project_address(
    ip: str,
    port: int,
    services: Sequence[EndpointSet],
    members: Sequence[tuple[EndpointSet, Endpoint]],
) -> Resolution:
    """An ``IP:port`` authority, given the sets whose virtual addresses include ``ip`` and the records of
    ``ip`` in every set that has it as an endpoint (both in key order, so the answer is deterministic).

    A virtual address resolves exactly like the service's name. A pod's address resolves to itself on
    the port asked for, whether or not a service lists that port and whether or not it is ready: the
    client chose that pod, and its proxy intercepts every port, so what matters is its identity.
    """
    if services:
        return project(services[0], port)
    if not members:
        return NOT_IN_MESH
    chosen_set, chosen = next(((s, e) for s, e in members if e.ready), members[0])
    opaque = any(
        in_port_ranges(port, endpoint.opaque_ports)
        or any(p.opaque and endpoint.ports.get(p.name) == port for p in endpoint_set.ports)
        for endpoint_set, endpoint in members
    )
    # No service label: a pod may back several services, and its series must not change with them.
    addr = ResolvedAddr(
        ip=ip,
        port=port,
        identity=chosen.identity,
        h2=chosen.protocol_hint == "h2",
        labels=_labels(chosen_set, chosen, with_service=False),
        opaque=opaque,
    )
    return Resolution(exists=True, set_labels=_base(chosen_set, with_service=False), addrs={addr.key: addr})


def _base(endpoint_set: EndpointSet, with_service: bool) -> tuple[tuple[str, str], ...]:
    if with_service:
        return (("namespace", endpoint_set.namespace), ("service", endpoint_set.service))
    return (("namespace", endpoint_set.namespace),)


def _labels(endpoint_set: EndpointSet, endpoint: Endpoint, with_service: bool) -> tuple[tuple[str, str], ...]:
    labels = dict(_base(endpoint_set, with_service))
    labels.update(endpoint.labels)
    if endpoint.pod:
        labels["pod"] = endpoint.pod
    if endpoint.workload is not None:
        labels[endpoint.workload.kind] = endpoint.workload.name
    if endpoint.serviceaccount:
        labels["serviceaccount"] = endpoint.serviceaccount
    return tuple(sorted(labels.items()))


class StreamCore:
    """The per-stream protocol: first message, then diffs in order. No I/O, no clock."""

    def __init__(self) -> None:
        self._started = False
        self._exists = False
        self._sent: dict[AddrKey, ResolvedAddr] = {}

    @property
    def started(self) -> bool:
        return self._started

    def frames(self, target: Resolution) -> list[Frame]:
        """Frames taking the client from what it was sent to ``target``; records them as sent."""
        if not self._started:
            self._started = True
            return self._reset_to(target)
        if not target.addrs:
            if self._sent and not target.exists:
                return self._reset_to(target)
            if self._sent:
                removed = tuple(sorted(self._sent))
                self._sent = {}
                self._exists = True
                return [RemoveFrame(removed)]
            if self._exists != target.exists:
                return self._reset_to(target)
            return []
        added = tuple(a for key, a in sorted(target.addrs.items()) if self._sent.get(key) != a)
        removed = tuple(sorted(key for key in self._sent if key not in target.addrs))
        self._sent = dict(target.addrs)
        self._exists = True
        frames: list[Frame] = []
        if added:
            frames.append(AddFrame(added, target.set_labels))
        if removed:
            frames.append(RemoveFrame(removed))
        return frames

    def _reset_to(self, target: Resolution) -> list[Frame]:
        self._sent = dict(target.addrs)
        self._exists = target.exists
        if target.addrs:
            return [AddFrame(tuple(a for _, a in sorted(target.addrs.items())), target.set_labels)]
        return [NoEndpointsFrame(target.exists)]
