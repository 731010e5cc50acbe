"""Kubernetes objects in, desired endpoint sets out (pure: raw API JSON objects, no client, no I/O).

The index keeps trimmed copies of Services, EndpointSlices (discovery.k8s.io/v1) and Pods, and knows
which services a pod's change affects. Endpoint conditions follow the EndpointSlice API: ``ready`` nil means
ready; ``terminating`` endpoints are left out; not-ready ones stay in the set with ``ready=False``.
A pod is meshed when it runs the ``tether-proxy`` container: only meshed pods get a TLS identity
(``<sa>.<ns>.serviceaccount.identity.<trust-domain>``) and the h2 protocol hint. A Service's virtual
addresses come from ``spec.clusterIPs`` (or ``spec.clusterIP``); opaque ports from the
``config.tether.io/opaque-ports`` annotation (else ``tether.io/opaque-ports``) of the Service (its service
ports) and of the Pod (its own ports).
An annotation that does not parse is ignored and reported once per object and value (``take_warnings``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tether.destination.model import Endpoint, ServicePort, Workload, service_key
from tether.destination.reconcile import DesiredService, normalise
from tether.destination.sources.kube_annotations import (
    OPAQUE_PORTS_ANNOTATIONS,
    InvalidAnnotation,
    cluster_addresses,
    parse_opaque_ports,
)
from tether.destination.sources.kube_objects import (
    Conditions,
    EndpointSliceObject,
    MalformedObject,
    MetadataOnly,
    PodObject,
    PodSpec,
    ServiceObject,
    ServiceSpec,
    convert,
)
from tether.shared.events import PortRange, in_port_ranges
from tether.shared.identity_names import InvalidIdentityName, workload_identity

__all__ = ["KINDS", "AnnotationWarning", "Kind", "KubeIndex", "MalformedObject"]

Kind = Literal["services", "endpointslices", "pods"]
KINDS: tuple[Kind, ...] = ("services", "endpointslices", "pods")
PROXY_CONTAINER = "tether-proxy"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ObjectRef = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class BadAnnotation:
    name: str
    value: str
    problem: str


@dataclass(frozen=True, slots=True)
class AnnotationWarning:
    """An annotation of an object that was ignored because it does not parse."""

    kind: Kind
    namespace: str
    name: str
    annotation: str
    value: str
    problem: str


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    ports: tuple[ServicePort, ...]
    addresses: tuple[str, ...] = ()
    bad_annotation: BadAnnotation | None = None


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool
    terminating: bool
    pod: ObjectRef | None


@dataclass(frozen=True, slots=True)
class SliceInfo:
    service: str  # service key
    ports: tuple[tuple[str, int], ...]
    endpoints: tuple[SliceEndpoint, ...]


@dataclass(frozen=True, slots=True)
class PodInfo:
    serviceaccount: str
    meshed: bool
    workload: Workload | None
    opaque_ports: tuple[PortRange, ...] = ()
    bad_annotation: BadAnnotation | None = None


def object_ref(obj: Mapping[str, Any]) -> ObjectRef:
    metadata = convert(obj, MetadataOnly).metadata
    return (metadata.namespace or "", metadata.name)


def parse_service(obj: Mapping[str, Any]) -> ServiceInfo | None:
    parsed = convert(obj, ServiceObject)
    spec = parsed.spec or ServiceSpec()
    if spec.type == "ExternalName":
        return None
    opaque, bad = _opaque_ports(parsed.metadata.annotations)
    ports = tuple(
        ServicePort(name=port.name or "", port=port.port, opaque=in_port_ranges(port.port, opaque))
        for port in spec.ports or []
        if (port.protocol or "TCP") == "TCP"
    )
    addresses = cluster_addresses(spec.cluster_ips, spec.cluster_ip)
    return ServiceInfo(ports=ports, addresses=addresses, bad_annotation=bad)


def _opaque_ports(
    annotations: Mapping[str, str] | None,
) -> tuple[tuple[PortRange, ...], BadAnnotation | None]:
    present = annotations or {}
    name = next((name for name in OPAQUE_PORTS_ANNOTATIONS if name in present), None)
    if name is None:
        return (), None
    value = present[name]
    try:
        return parse_opaque_ports(value), None
    except InvalidAnnotation as exc:
        return (), BadAnnotation(name, value, str(exc))


def parse_slice(obj: Mapping[str, Any]) -> SliceInfo | None:
    parsed = convert(obj, EndpointSliceObject)
    namespace = parsed.metadata.namespace or ""
    service = (parsed.metadata.labels or {}).get(SERVICE_NAME_LABEL)
    if not service or parsed.address_type not in ("IPv4", "IPv6"):
        return None
    ports = tuple(
        (p.name or "", p.port)
        for p in parsed.ports or []
        if p.port is not None and (p.protocol or "TCP") == "TCP"
    )
    endpoints = []
    for endpoint in parsed.endpoints or []:
        conditions = endpoint.conditions or Conditions()
        ref = endpoint.target_ref
        pod = (
            (ref.namespace or namespace, ref.name)
            if ref is not None and ref.kind == "Pod" and ref.name
            else None
        )
        endpoints.append(
            SliceEndpoint(
                addresses=tuple(endpoint.addresses or ()),
                ready=conditions.ready is not False,
                terminating=conditions.terminating is True,
                pod=pod,
            )
        )
    return SliceInfo(service=service_key(namespace, service), ports=ports, endpoints=tuple(endpoints))


def parse_pod(obj: Mapping[str, Any]) -> PodInfo:
    parsed = convert(obj, PodObject)
    metadata = parsed.metadata
    spec = parsed.spec or PodSpec()
    containers = [*(spec.containers or []), *(spec.init_containers or [])]
    meshed = any(c.name == PROXY_CONTAINER for c in containers)
    owner = next((r for r in metadata.owner_references or [] if r.controller), None)
    workload = None
    if owner is not None and owner.kind and owner.name:
        kind, name = owner.kind, owner.name
        template_hash = (metadata.labels or {}).get("pod-template-hash")
        if kind == "ReplicaSet" and template_hash and name.endswith("-" + template_hash):
            workload = Workload("deployment", name[: -len(template_hash) - 1])
        else:
            workload = Workload(kind.lower(), name)
    opaque, bad = _opaque_ports(metadata.annotations)
    return PodInfo(
        serviceaccount=spec.service_account_name or spec.service_account or "default",
        meshed=meshed,
        workload=workload,
        opaque_ports=opaque,
        bad_annotation=bad,
    )


class KubeIndex:
    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        self._services: dict[ObjectRef, ServiceInfo] = {}
        self._slices: dict[ObjectRef, SliceInfo] = {}
        self._slices_by_service: dict[str, set[ObjectRef]] = {}
        self._pods: dict[ObjectRef, PodInfo] = {}
        self._services_by_pod: dict[ObjectRef, dict[str, int]] = {}
        self._bad_annotations: dict[tuple[Kind, ObjectRef], BadAnnotation] = {}
        self._warnings: list[AnnotationWarning] = []

    def keys(self) -> set[str]:
        return {service_key(ns, name) for ns, name in self._services}

    def take_warnings(self) -> list[AnnotationWarning]:
        """Annotations ignored since the last call, each reported once per object and value."""
        warnings, self._warnings = self._warnings, []
        return warnings

    def _note(self, kind: Kind, ref: ObjectRef, bad: BadAnnotation | None) -> None:
        if bad is None:
            self._bad_annotations.pop((kind, ref), None)
        elif self._bad_annotations.get((kind, ref)) != bad:
            self._bad_annotations[(kind, ref)] = bad
            self._warnings.append(AnnotationWarning(kind, ref[0], ref[1], bad.name, bad.value, bad.problem))

    def apply(self, kind: Kind, event_type: str, obj: Mapping[str, Any]) -> set[str]:
        """An ADDED, MODIFIED or DELETED watch event; returns the service keys it may have changed.

        Raises MalformedObject (changing nothing: the object's previous version stays) for a bad shape.
        """
        ref = object_ref(obj)
        if event_type == "DELETED":
            return self._remove(kind, ref)
        return self._upsert(kind, ref, obj)

    def replace(self, kind: Kind, objects: Iterable[Mapping[str, Any]]) -> tuple[set[str], list[str]]:
        """A fresh list of every object of ``kind`` (after a relist).

        Returns the keys that may differ and a description of each malformed object, which is skipped:
        the version held before (if any) stays, and the rest of the list still counts.
        """
        fresh: dict[ObjectRef, Mapping[str, Any]] = {}
        rejected: list[str] = []
        for obj in objects:
            try:
                fresh[object_ref(obj)] = obj
            except MalformedObject as exc:
                rejected.append(str(exc))
        existing: list[ObjectRef]
        if kind == "services":
            existing = list(self._services)
        elif kind == "endpointslices":
            existing = list(self._slices)
        else:
            existing = list(self._pods)
        changed: set[str] = set()
        for ref in [r for r in existing if r not in fresh]:
            changed |= self._remove(kind, ref)
        for ref, obj in fresh.items():
            try:
                changed |= self._upsert(kind, ref, obj)
            except MalformedObject as exc:
                rejected.append(f"{ref[0]}/{ref[1]}: {exc}")
        return changed, rejected

    def _upsert(self, kind: Kind, ref: ObjectRef, obj: Mapping[str, Any]) -> set[str]:
        if kind == "services":
            service = parse_service(obj)
            if service is None:
                return self._remove(kind, ref)
            self._note(kind, ref, service.bad_annotation)
            if self._services.get(ref) == service:
                return set()
            self._services[ref] = service
            return {service_key(*ref)}
        if kind == "endpointslices":
            parsed = parse_slice(obj)
            if parsed is None:
                return self._remove(kind, ref)
            previous = self._slices.get(ref)
            if previous == parsed:
                return set()
            changed = self._remove(kind, ref) if previous is not None else set()
            self._slices[ref] = parsed
            self._slices_by_service.setdefault(parsed.service, set()).add(ref)
            for pod in _pods_of(parsed):
                counts = self._services_by_pod.setdefault(pod, {})
                counts[parsed.service] = counts.get(parsed.service, 0) + 1
            return changed | {parsed.service}
        pod_info = parse_pod(obj)
        self._note(kind, ref, pod_info.bad_annotation)
        if self._pods.get(ref) == pod_info:
            return set()
        self._pods[ref] = pod_info
        return set(self._services_by_pod.get(ref, {}))

    def _remove(self, kind: Kind, ref: ObjectRef) -> set[str]:
        self._bad_annotations.pop((kind, ref), None)
        if kind == "services":
            return {service_key(*ref)} if self._services.pop(ref, None) is not None else set()
        if kind == "endpointslices":
            previous = self._slices.pop(ref, None)
            if previous is None:
                return set()
            refs = self._slices_by_service.get(previous.service, set())
            refs.discard(ref)
            if not refs:
                self._slices_by_service.pop(previous.service, None)
            for pod in _pods_of(previous):
                counts = self._services_by_pod.get(pod, {})
                counts[previous.service] = counts.get(previous.service, 1) - 1
                if counts[previous.service] <= 0:
                    del counts[previous.service]
                if not counts:
                    self._services_by_pod.pop(pod, None)
            return {previous.service}
        if self._pods.pop(ref, None) is None:
            return set()
        return set(self._services_by_pod.get(ref, {}))

    def desired(self, key: str) -> DesiredService | None:
        namespace, _, name = key.partition(".")
        service = self._services.get((namespace, name))
        if service is None:
            return None
        names = {p.name for p in service.ports}
        endpoints: list[Endpoint] = []
        for slice_ref in sorted(self._slices_by_service.get(key, ())):
            info = self._slices[slice_ref]
            ports = {port_name: port for port_name, port in info.ports if port_name in names}
            if not ports:
                continue
            for slice_endpoint in info.endpoints:
                if slice_endpoint.terminating:
                    continue
                for address in slice_endpoint.addresses:
                    endpoint = self._endpoint(address, ports, slice_endpoint)
                    if endpoint is not None:
                        endpoints.append(endpoint)
        return normalise(namespace, name, service.ports, endpoints, service.addresses)

    def _endpoint(self, address: str, ports: dict[str, int], source: SliceEndpoint) -> Endpoint | None:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            return None
        pod = self._pods.get(source.pod) if source.pod else None
        identity = None
        if pod is not None and pod.meshed and source.pod is not None:
            try:
                identity = workload_identity(pod.serviceaccount, source.pod[0], self.trust_domain)
            except InvalidIdentityName:
                identity = None
        return Endpoint(
            address=address,
            ports=dict(ports),
            ready=source.ready,
            identity=identity,
            protocol_hint="h2" if identity else None,
            pod=source.pod[1] if source.pod else None,
            workload=pod.workload if pod else None,
            serviceaccount=pod.serviceaccount if pod else None,
            origin="kubernetes",
            opaque_ports=pod.opaque_ports if pod else (),
        )


def _pods_of(info: SliceInfo) -> set[ObjectRef]:
    return {e.pod for e in info.endpoints if e.pod is not None}
