"""What one proxy stream sees: an endpoint set projected onto a port, and the frames that move a stream
from what it was last sent to the latest state.

A stream never queues intermediate states: it keeps only the latest ``Resolution`` and, when it is able to
send, ``StreamCore.frames`` computes the diff from what it sent last. A slow stream therefore coalesces
any number of changes into one diff and its memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tether.destination.model import EndpointSet

AddrKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ResolvedAddr:
    """One address as a proxy receives it."""

    ip: str
    port: int
    identity: str | None
    h2: bool
    labels: tuple[tuple[str, str], ...]

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
    port_name = next((p.name for p in endpoint_set.ports if p.port == port), None)
    if port_name is None:
        return NOT_IN_MESH
    base = {"namespace": endpoint_set.namespace, "service": endpoint_set.service}
    addrs: dict[AddrKey, ResolvedAddr] = {}
    for endpoint in endpoint_set.endpoints:
        target = endpoint.ports.get(port_name)
        if not endpoint.ready or target is None:
            continue
        labels = dict(base)
        labels.update(endpoint.labels)
        if endpoint.pod:
            labels["pod"] = endpoint.pod
        if endpoint.workload is not None:
            labels[endpoint.workload.kind] = endpoint.workload.name
        if endpoint.serviceaccount:
            labels["serviceaccount"] = endpoint.serviceaccount
        addr = ResolvedAddr(
            ip=endpoint.address,
            port=target,
            identity=endpoint.identity,
            h2=endpoint.protocol_hint == "h2",
            labels=tuple(sorted(labels.items())),
        )
        addrs[addr.key] = addr
    return Resolution(exists=True, set_labels=tuple(sorted(base.items())), addrs=addrs)


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
