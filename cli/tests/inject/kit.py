"""What the ``tether inject`` tests share: the corpus, running the CLI in-process, and what Kubernetes
would do with an injected pod (resolve its environment, mount its volumes), emulated closely enough to hand
the proxy's own parsers exactly what its process would see."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tether.cli.__main__ import main

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
GOLDEN = HERE / "golden"
ANCHORS = HERE / "trust-anchors.pem"
REPO = HERE.parents[2]
KUBECTL = REPO / ".venv" / "bin" / "kubectl"
# Goldens name a fixed version, so that a release does not rewrite them.
VERSION = "0.1.0"
FILES = sorted(path.name for path in CORPUS.glob("*.yaml"))
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")


@dataclass
class Result:
    code: int
    out: str
    err: str


def tether(*argv: str, stdin: str = "") -> Result:
    """``tether ARGV...`` in this process, with its own stdin, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        sys.stdin = saved
    return Result(code, out.getvalue(), err.getvalue())


def inject(path: Path | str, *extra: str) -> Result:
    return tether("inject", str(path), "--trust-anchors", str(ANCHORS), "--proxy-version", VERSION, *extra)


def documents(text: str) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def objects(text: str) -> Iterator[dict[str, Any]]:
    """Every object of a stream, the items of Lists included."""
    for doc in documents(text):
        if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and "items" in doc:
            yield from doc["items"]
        elif isinstance(doc, dict):
            yield doc


def template(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return obj
    if obj["kind"] == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"])
    return dict(obj["spec"]["template"])


@dataclass
class Pod:
    """An injected workload's pod as the kubelet would run it."""

    workload: dict[str, Any]
    metadata: dict[str, Any]
    spec: dict[str, Any]

    @property
    def namespace(self) -> str:
        return str(self.workload.get("metadata", {}).get("namespace") or "default")

    def container(self, name: str) -> dict[str, Any]:
        for key in ("initContainers", "containers"):
            for container in self.spec.get(key) or []:
                if container["name"] == name:
                    return dict(container)
        raise AssertionError(f"no container {name}")

    def field(self, path: str) -> str:
        """What a downward-API fieldRef gives (the ServiceAccount admission defaults the account)."""
        name = self.metadata.get("name") or self.workload["metadata"].get("name", "pod")
        values = {
            "metadata.name": f"{name}-x1",
            "metadata.namespace": self.namespace,
            "spec.serviceAccountName": self.spec.get("serviceAccountName") or "default",
        }
        if path.startswith("metadata.annotations['"):
            return str(self.metadata.get("annotations", {})[path[len("metadata.annotations['") : -2]])
        return values[path]

    def environment(self, container: dict[str, Any]) -> dict[str, str]:
        """The container's environment: fieldRefs resolved, then ``$(NAME)`` expanded from the variables
        defined before it, ``$$`` an escaped ``$``, unknown references left as they are (Kubernetes'
        rules)."""
        env: dict[str, str] = {}
        for item in container.get("env") or []:
            if "valueFrom" in item:
                env[item["name"]] = self.field(item["valueFrom"]["fieldRef"]["fieldPath"])
            else:
                env[item["name"]] = expand(str(item.get("value", "")), env)
        return env

    def volume_for(self, container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
        """The volume a file path lies on in this container, and the path within it."""
        target = PurePosixPath(path)
        for mount in container.get("volumeMounts") or []:
            root = PurePosixPath(mount["mountPath"])
            if target.is_relative_to(root) and target != root:
                volume = next(v for v in self.spec["volumes"] if v["name"] == mount["name"])
                return volume, str(target.relative_to(root))
        raise AssertionError(f"{path} lies on no volume mounted in {container['name']}")


def expand(value: str, env: dict[str, str]) -> str:
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and ")" in value[i:]:
            end = value.index(")", i)
            name = value[i + 2 : end]
            out.append(env.get(name, value[i : end + 1]))
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def injected_pods(text: str) -> list[Pod]:
    pods = []
    for obj in objects(text):
        if obj.get("kind") not in WORKLOAD_KINDS:
            continue
        tpl = template(obj)
        names = [c["name"] for key in ("initContainers", "containers") for c in tpl["spec"].get(key) or []]
        if "tether-proxy" in names:
            pods.append(Pod(obj, tpl.get("metadata") or {}, tpl["spec"]))
    return pods


def render_deploy(overlay: str = "") -> str:
    path = REPO / "deploy" / overlay if overlay else REPO / "deploy"
    env = os.environ | {"PATH": f"{KUBECTL.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, check=False, env=env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
