"""Services and their endpoints: kube-proxy's rules on the node and the registry destination reads.

Discovery is where Kubernetes cannot run: destination reads the local registry file (``--source local``),
which :meth:`ServiceEndpoints.sync_endpoints` rewrites whenever endpoints change, listing each Service with
its virtual address and ports and each endpoint as the Kubernetes source sees an EndpointSlice (address,
``ready``, the identity of a pod with a ``tether-proxy`` container, labels pod/workload/ServiceAccount). A
terminating pod's endpoint stays listed with ``ready: false`` until the pod is gone. A Service without a
selector lists the endpoints given to :meth:`ServiceEndpoints.set_endpoints` (a hand-written EndpointSlice).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from e2e_kube import Doc
from e2e_node import Backend, Node, ServiceRule
from e2e_objects import ManualEndpoint, Pod, Service, ServicePort
from mesh_pods import eventually


class ServiceEndpoints:
    """Part of :class:`e2e_cluster.Cluster`: its Services, their endpoints and what follows from them."""

    node: Node
    pods: dict[str, Pod]
    services: dict[tuple[str, str], Service]
    extra_registry: list[dict[str, Any]]
    registry_dir: Path
    _lock: threading.RLock

    if TYPE_CHECKING:

        def tether(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]: ...

    def add_service(self, doc: Doc) -> Service:
        meta, spec = doc["metadata"], doc["spec"]
        namespace = meta.get("namespace", "default")
        opaque = {
            p.strip() for p in (meta.get("annotations") or {}).get("tether.io/opaque-ports", "").split(",")
        }
        ports = [
            ServicePort(
                p.get("name", ""),
                int(p["port"]),
                p.get("targetPort", p["port"]),
                str(p["port"]) in opaque or p.get("name", "") in opaque,
            )
            for p in spec.get("ports") or []
        ]
        selector = dict(spec.get("selector") or {})
        service = Service(
            namespace, meta["name"], self.node.allocate_vip(), ports, selector, None if selector else []
        )
        with self._lock:
            self.services[(namespace, service.name)] = service
            self.node.set_service_names((s.vip, s.name, s.namespace) for s in self.services.values())
            self.sync_endpoints()
        return service

    def set_endpoints(self, namespace: str, name: str, endpoints: Sequence[ManualEndpoint]) -> None:
        """The endpoints of a selector-less Service (registry and kube-proxy rules rewritten now)."""
        with self._lock:
            service = self.services[(namespace, name)]
            assert service.manual is not None, (
                f"{namespace}/{name} has a selector: its pods are its endpoints"
            )
            service.manual = list(endpoints)
            self.sync_endpoints()

    def service(self, name: str, namespace: str = "shop") -> Service:
        return self.services[(namespace, name)]

    def _selected(self, service: Service) -> list[Pod]:
        return [
            pod
            for pod in self.pods.values()
            if pod.namespace == service.namespace
            and service.selector
            and all(pod.labels.get(k) == v for k, v in service.selector.items())
        ]

    @staticmethod
    def _target(pod: Pod, port: ServicePort) -> int:
        if isinstance(port.target_port, int) or str(port.target_port).isdigit():
            return int(port.target_port)
        for container in pod.run.containers:
            if port.target_port in container.ports:
                return container.ports[str(port.target_port)]
        return port.port

    def sync_endpoints(self) -> None:
        """Registry file and kube-proxy rules from the Services and their pods' readiness, now."""
        with self._lock:
            rules: list[ServiceRule] = []
            entries: list[dict[str, Any]] = []
            for service in self.services.values():
                if service.manual is not None:
                    for port in service.ports:
                        backends = tuple(
                            Backend(e.address, e.ports.get(port.name, int(port.target_port)))
                            for e in service.manual
                            if e.ready
                        )
                        rules.append(
                            ServiceRule(
                                f"{service.namespace}/{service.name}:{port.port}",
                                service.vip,
                                port.port,
                                backends,
                            )
                        )
                    entries.append(self._manual_entry(service))
                    continue
                pods = self._selected(service)
                serving = [pod for pod in pods if pod.ready and not pod.terminating]
                for port in service.ports:
                    backends = tuple(Backend(pod.ip, self._target(pod, port)) for pod in serving)
                    rules.append(
                        ServiceRule(
                            f"{service.namespace}/{service.name}:{port.port}",
                            service.vip,
                            port.port,
                            backends,
                        )
                    )
                listed = [pod for pod in pods if pod.ready or pod.terminating]
                entries.append(self._registry_entry(service, listed))
            self.node.sync_services(rules)
            self._write_registry([*entries, *self.extra_registry])

    def _registry_entry(self, service: Service, pods: Sequence[Pod]) -> dict[str, Any]:
        ports = []
        for port in service.ports:
            entry: dict[str, Any] = {"name": port.name, "port": port.port}
            if pods:
                entry["target_port"] = self._target(pods[0], port)
            if port.opaque:
                entry["opaque"] = True
            ports.append(entry)
        endpoints = []
        for pod in pods:
            endpoint: dict[str, Any] = {"address": pod.ip, "ready": pod.ready and not pod.terminating}
            if pod.identity is not None:
                endpoint["identity"] = pod.identity
            endpoint["labels"] = {
                "pod": pod.name,
                "deployment": pod.workload,
                "serviceaccount": pod.run.meta.service_account,
            }
            endpoints.append(endpoint)
        return _service_entry(service, ports, endpoints)

    @staticmethod
    def _manual_entry(service: Service) -> dict[str, Any]:
        assert service.manual is not None
        ports = []
        for port in service.ports:
            entry: dict[str, Any] = {
                "name": port.name,
                "port": port.port,
                "target_port": int(port.target_port),
            }
            if port.opaque:
                entry["opaque"] = True
            ports.append(entry)
        endpoints = []
        for manual in service.manual:
            endpoint: dict[str, Any] = {"address": manual.address, "ready": manual.ready}
            if manual.ports:
                endpoint["ports"] = dict(manual.ports)
            if manual.identity is not None:
                endpoint["identity"] = manual.identity
            if manual.labels:
                endpoint["labels"] = dict(manual.labels)
            endpoints.append(endpoint)
        return _service_entry(service, ports, endpoints)

    def _write_registry(self, services: Sequence[Mapping[str, Any]]) -> None:
        path = self.registry_dir / "registry.yaml"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(yaml.safe_dump({"services": list(services)}, sort_keys=False))
        temporary.chmod(0o644)
        temporary.replace(path)

    def endpoints(self, authority: str) -> list[tuple[str, int]] | None:
        """What destination resolves ``authority`` to (``tether endpoints``): (address, port) pairs; None
        when it does not know the authority."""
        done = self.tether("endpoints", authority, "-o", "json")
        if done.returncode != 0:
            return None
        answer = json.loads(done.stdout)
        if not answer.get("exists"):
            return None
        found = []
        for endpoint in answer.get("endpoints") or []:
            ip = endpoint["addr"]["ip"]
            address = str(ipaddress.ip_address(ip["ipv4"])) if "ipv4" in ip else str(ip)
            found.append((address, int(endpoint["addr"]["port"])))
        return sorted(found)

    def wait_endpoints(
        self, authority: str, expected: Sequence[tuple[str, int]], timeout: float = 10.0
    ) -> None:
        """Until destination resolves ``authority`` to exactly ``expected`` (address, port) pairs."""
        wanted = sorted(expected)
        eventually(
            lambda: self.endpoints(authority) == wanted, timeout, f"{authority} → {wanted}", interval=0.2
        )


def _service_entry(
    service: Service, ports: list[dict[str, Any]], endpoints: list[dict[str, Any]]
) -> dict[str, Any]:
    """One service of the local registry the harness writes (endpoints left out when it has none)."""
    entry: dict[str, Any] = {
        "namespace": service.namespace,
        "name": service.name,
        "addresses": [service.vip],
        "ports": ports,
    }
    if endpoints:
        entry["endpoints"] = endpoints
    return entry
