"""The objects of the cluster harness (tests/e2e/e2e_cluster.py): pods and their containers, Services and
their endpoints, workloads; and the one HTTP client the harness probes and scrapes with."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from e2e_kube import ContainerRun, Doc, PodRun
from e2e_node import CLUSTER_DOMAIN
from mesh_pods import Process, http_get
from netns_harness import Namespace

BIN = Path(sys.executable).parent
PROXY_CONTAINER = "tether-proxy"
PROXY_ADMIN_PORT = 4191
TRUST_DOMAIN = "cluster.local"


def identity_of(serviceaccount: str, namespace: str) -> str:
    return f"{serviceaccount}.{namespace}.serviceaccount.identity.{TRUST_DOMAIN}"


@dataclass
class Container:
    run: ContainerRun
    process: Process | None = None
    restarts: int = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.popen.poll() is None

    @property
    def long_running(self) -> bool:
        """Runs for the pod's whole life: an app container or a native sidecar, not an init container that
        exits once done."""
        return not self.run.init or self.run.sidecar


@dataclass
class Pod:
    name: str
    namespace: str
    workload: str
    labels: dict[str, str]
    netns: Namespace
    ip: str
    ipv6: str
    run: PodRun
    directory: Path
    containers: dict[str, Container] = field(default_factory=dict)
    ready: bool = False
    terminating: bool = False
    watch: bool = False
    #: Wall-clock time at which the pod last became an endpoint of its Services (registry written).
    ready_at: float = 0.0

    @property
    def meshed(self) -> bool:
        return PROXY_CONTAINER in self.containers

    @property
    def identity(self) -> str | None:
        return identity_of(self.run.meta.service_account, self.namespace) if self.meshed else None

    def container(self, name: str = "") -> Container:
        """The named container; without a name the first app container."""
        return self.containers[name or self.run.containers[0].name]

    def admin_port(self, container: str = "") -> int:
        """The admin port: the proxy's (4191) by default in a meshed pod, else the container's admin port."""
        if not container and self.meshed:
            return PROXY_ADMIN_PORT
        ports = self.container(container).run.ports
        return ports.get("admin-http") or ports.get("tether-admin") or ports.get("monitor") or 0

    def log(self, container: str = "") -> str:
        process = self.container(container).process
        return process.log.read_text(errors="replace") if process is not None else ""


@dataclass
class ServicePort:
    name: str
    port: int
    target_port: int | str
    opaque: bool = False


@dataclass(frozen=True)
class ManualEndpoint:
    """An endpoint of a selector-less Service (a hand-written EndpointSlice): any address, any identity."""

    address: str
    identity: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    ready: bool = True


@dataclass
class Service:
    namespace: str
    name: str
    vip: str
    ports: list[ServicePort]
    selector: dict[str, str]
    #: A Service without a selector: its endpoints as given (:meth:`Cluster.set_endpoints`), else None.
    manual: list[ManualEndpoint] | None = None

    @property
    def host(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{CLUSTER_DOMAIN}"

    def authority(self, port: int | None = None) -> str:
        return f"{self.host}:{port if port is not None else self.ports[0].port}"


@dataclass
class Workload:
    """A Deployment or StatefulSet: its (injected) pod template, and the extra settings its pods get."""

    kind: str
    name: str
    namespace: str
    template: Doc
    translator_options: dict[str, Any] = field(default_factory=dict)
    watch: bool = False
    ordinal: int = 0

    @property
    def template_hash(self) -> str:
        digest = hashlib.sha256(yaml.safe_dump(self.template, sort_keys=True).encode()).hexdigest()
        return "".join(ch for ch in digest if ch in "bcdfghjklmnpqrstvwxz2456789")[:10]


def http_status(namespace: Namespace, url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET ``url`` from inside ``namespace`` without any proxy settings; (0, b"") when nothing answered."""
    return http_get(namespace, url, timeout)
