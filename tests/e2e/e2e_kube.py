"""Kubernetes objects turned into what the harness runs: a pod template becomes processes with their exact
command line, environment and volumes, as a kubelet would start them.

Sources, all real: ``kubectl kustomize deploy/`` for the control plane, ``tether inject`` for the
workloads (both run as their own processes), and the objects the bootstrap Job created in the emulated API
(:class:`tether.identity.kube_bootstrap.testing.FakeKubeApi`).

What the kubelet does and this module does too:

* environment: ``envFrom`` (ConfigMaps, Secrets), ``value`` with ``$(VAR)`` references to variables defined
  before (``$$`` for a literal ``$``), ``valueFrom`` (downward API ``fieldRef``, ``configMapKeyRef``,
  ``secretKeyRef``), then ``$(VAR)`` in ``command`` and ``args``; plus the image's own ``ENV`` (the Tether
  images set ``PATH``, ``PYTHONDONTWRITEBYTECODE`` and ``PYTHONUNBUFFERED``) and ``HOSTNAME``;
* volumes: Secrets and ConfigMaps (``items``, ``defaultMode``) written as the kubelet's atomic writer
  writes them (``..data`` symlink swapped on update, so every file changes at once), projected
  ServiceAccount tokens, downward API files, ``emptyDir`` and a claim per pod for ``volumeClaimTemplates``;
* users: ``runAsUser``/``runAsGroup``/``fsGroup`` (files owned accordingly), added capabilities as ambient
  capabilities, ``allowPrivilegeEscalation: false`` as no_new_privs.

Where this differs (Kubernetes cannot run here): the ServiceAccount token is a locally signed one
(``tether-identity mint-token``), and mounts outside ``/run`` and ``/tmp`` (NATS' ``/etc/nats`` and
``/data``, absent on this host) are directories of the pod, their paths rewritten in the command line and
in the mounted ConfigMap files (nats.conf) that name them.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: The ENV of the Tether images (services/*/Dockerfile): their virtual environment first on PATH.
IMAGE_ENV = {
    "PATH": f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
#: Mount points that exist on this host, so a volume can be bind-mounted there in the container's own mount
#: namespace (/run is a fresh tmpfs in each container, as a container's own /run would be).
BINDABLE = ("/run", "/var/run", "/tmp")

Doc = dict[str, Any]


class KubeTranslationError(AssertionError):
    """A manifest asks for something the harness does not emulate."""


def load_documents(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


def kustomize(path: Path) -> list[Doc]:
    """``kubectl kustomize <path>``: what ``kubectl apply -k`` would apply."""
    done = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise KubeTranslationError(f"kubectl kustomize {path} failed: {done.stderr.strip()}")
    return load_documents(done.stdout)


def inject(manifests: Sequence[Doc], trust_anchors: Path, *extra: str) -> list[Doc]:
    """The manifests after ``tether inject --trust-anchors <file>`` (the real CLI, as a user runs it)."""
    done = subprocess.run(
        [str(BIN / "tether"), "inject", "--trust-anchors", str(trust_anchors), *extra, "-"],
        input=yaml.safe_dump_all(list(manifests), sort_keys=False),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise KubeTranslationError(f"tether inject failed ({done.returncode}): {done.stderr.strip()}")
    return load_documents(done.stdout)


def find(docs: Sequence[Doc], kind: str, name: str) -> Doc:
    for doc in docs:
        if doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
            return doc
    raise KubeTranslationError(f"no {kind} {name} in the manifests")


class ObjectStore:
    """ConfigMaps and Secrets by (namespace, name): the rendered manifests' and the emulated API's."""

    def __init__(self) -> None:
        self.configmaps: dict[tuple[str, str], dict[str, bytes]] = {}
        self.secrets: dict[tuple[str, str], dict[str, bytes]] = {}

    def add_manifests(self, docs: Sequence[Doc]) -> None:
        for doc in docs:
            meta = doc.get("metadata", {})
            key = (meta.get("namespace", "default"), meta["name"])
            if doc.get("kind") == "ConfigMap":
                self.configmaps[key] = {k: str(v).encode() for k, v in (doc.get("data") or {}).items()}
            elif doc.get("kind") == "Secret":
                data = {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()}
                data |= {k: str(v).encode() for k, v in (doc.get("stringData") or {}).items()}
                self.secrets[key] = data

    def get(self, kind: str, namespace: str, name: str) -> dict[str, bytes]:
        table = self.configmaps if kind == "configmap" else self.secrets
        try:
            return table[(namespace, name)]
        except KeyError:
            raise KubeTranslationError(f"{kind} {namespace}/{name} does not exist") from None


@dataclass(frozen=True)
class PodMeta:
    """What the downward API can tell a container about its pod."""

    name: str
    namespace: str
    ip: str
    service_account: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    uid: str = ""
    node: str = "node-0"

    def field(self, path: str) -> str:
        simple = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.serviceAccountName": self.service_account,
            "spec.nodeName": self.node,
            "status.podIP": self.ip,
            "status.hostIP": self.ip,
        }
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match is None:
            raise KubeTranslationError(f"downward API field {path} is not emulated")
        source = self.labels if match[1] == "labels" else self.annotations
        return source.get(match[2], "")


@dataclass(frozen=True)
class Mount:
    """A volume mount: ``source`` (a directory, or a file for ``subPath``) seen at ``target``."""

    source: Path
    target: str
    read_only: bool

    @property
    def bindable(self) -> bool:
        return any(self.target == root or self.target.startswith(root + "/") for root in BINDABLE)


@dataclass(frozen=True)
class Probe:
    """``httpGet`` (port, path), ``tcpSocket`` (port) or ``exec`` (command)."""

    kind: str
    port: int = 0
    path: str = ""
    command: tuple[str, ...] = ()
    period: float = 10.0
    failure_threshold: int = 3


@dataclass
class ContainerRun:
    """A container as a process: argv and environment exactly as the kubelet would give them."""

    name: str
    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount]
    uid: int | None
    gid: int | None
    groups: tuple[int, ...] = ()
    caps: tuple[str, ...] = ()
    no_new_privs: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    startup: Probe | None = None
    readiness: Probe | None = None
    #: An init container with ``restartPolicy: Always`` (a native sidecar): started, not awaited.
    sidecar: bool = False
    init: bool = False


@dataclass
class PodRun:
    meta: PodMeta
    init_containers: list[ContainerRun]
    containers: list[ContainerRun]
    #: Secret/ConfigMap (kind, namespace, name) -> the volume directories written from it (for updates).
    volume_sources: dict[tuple[str, str, str], list[tuple[Path, Doc]]] = field(default_factory=dict)

    def all(self) -> list[ContainerRun]:
        return [*self.init_containers, *self.containers]

    def container(self, name: str) -> ContainerRun:
        for container in self.all():
            if container.name == name:
                return container
        raise KeyError(f"pod {self.meta.name} has no container {name}")


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables replaced, ``$$`` a literal ``$``, unknown kept."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return env.get(match[1], match[0])

    return _REFERENCE.sub(replace, value)


def atomic_write(directory: Path, files: Mapping[str, bytes], mode: int, owner: tuple[int, int]) -> None:
    """Write ``files`` into ``directory`` as the kubelet's AtomicWriter does: the data in a timestamped
    directory, ``..data`` a symlink to it, each file a symlink through ``..data``; an update swaps ``..data``
    with one rename, so a reader sees the old set or the new set, never a mix."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    stamp = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    stamp.mkdir()
    for relative, data in files.items():
        target = stamp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.chmod(target, mode)
        os.chown(target, *owner)
    os.chmod(stamp, 0o755)
    data_link = directory / "..data"
    previous = os.readlink(data_link) if data_link.is_symlink() else None
    temporary = directory / "..data_tmp"
    if temporary.is_symlink():
        temporary.unlink()
    temporary.symlink_to(stamp.name)
    temporary.replace(data_link)
    for relative in files:
        top = relative.split("/", 1)[0]
        link = directory / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    if previous is not None:
        shutil.rmtree(directory / previous, ignore_errors=True)


@dataclass
class Translator:
    """Turns one pod template into a :class:`PodRun` for a pod of its own."""

    store: ObjectStore
    pod_dir: Path
    #: (namespace, ServiceAccount, audience, seconds) -> token bytes.
    token: Callable[[str, str, str, int], bytes]
    image_env: Callable[[str], Mapping[str, str]] = lambda image: IMAGE_ENV
    #: Variables set on top of what the manifest says, by container name (where Kubernetes cannot run).
    overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: Extra volumes (name -> host directory) and mounts (container -> [(name, path)]) for the overrides.
    extra_volumes: Mapping[str, Path] = field(default_factory=dict)
    extra_mounts: Mapping[str, Sequence[tuple[str, str]]] = field(default_factory=dict)

    def pod(self, template: Doc, meta: PodMeta) -> PodRun:
        spec = template.get("spec", {})
        security = spec.get("securityContext") or {}
        run = PodRun(meta, [], [])
        volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
        for container in spec.get("initContainers") or []:
            translated = self._container(container, meta, volumes, security, run)
            translated.init = True
            translated.sidecar = container.get("restartPolicy") == "Always"
            run.init_containers.append(translated)
        for container in spec.get("containers") or []:
            run.containers.append(self._container(container, meta, volumes, security, run))
        return run

    # --- environment ---

    def _env(self, container: Doc, meta: PodMeta) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self.store.get("configmap", meta.namespace, source["configMapRef"]["name"])
            else:
                data = self.store.get("secret", meta.namespace, source["secretRef"]["name"])
            env |= {prefix + key: value.decode() for key, value in data.items()}
        for variable in container.get("env") or []:
            name = variable["name"]
            if "value" in variable:
                env[name] = expand(str(variable["value"]), env)
                continue
            source = variable.get("valueFrom") or {}
            if "fieldRef" in source:
                env[name] = meta.field(source["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                env[name] = self.store.get("configmap", meta.namespace, ref["name"])[ref["key"]].decode()
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                env[name] = self.store.get("secret", meta.namespace, ref["name"])[ref["key"]].decode()
            else:
                raise KubeTranslationError(f"env {name}: valueFrom {sorted(source)} is not emulated")
        env |= self.overrides.get(container["name"], {})
        return env

    # --- volumes ---

    def _volume(
        self, volume: Doc, meta: PodMeta, owner: tuple[int, int], run: PodRun, relocated_to: Path | None
    ) -> Path:
        """The volume's directory (written now); at ``relocated_to`` when the mount point is relocated."""
        name = volume["name"]
        if name in self.extra_volumes:
            return self.extra_volumes[name]
        directory = relocated_to or self.pod_dir / "volumes" / name
        if directory.exists() and ("emptyDir" in volume or "persistentVolumeClaim" in volume):
            return directory  # a container restart keeps the pod's emptyDir and claims
        files: dict[str, bytes] = {}
        mode = 0o644
        if "secret" in volume or "configMap" in volume:
            kind = "secret" if "secret" in volume else "configmap"
            source = volume["secret" if kind == "secret" else "configMap"]
            object_name = source["secretName" if kind == "secret" else "name"]
            data = self.store.get(kind, meta.namespace, object_name)
            files = _items(data, source.get("items"))
            mode = source.get("defaultMode", 0o644)
            run.volume_sources.setdefault((kind, meta.namespace, object_name), []).append((directory, source))
        elif "projected" in volume:
            for projection in volume["projected"].get("sources") or []:
                if "serviceAccountToken" in projection:
                    token = projection["serviceAccountToken"]
                    files[token["path"]] = self.token(
                        meta.namespace,
                        meta.service_account,
                        token.get("audience", ""),
                        int(token.get("expirationSeconds", 3600)),
                    )
                elif "downwardAPI" in projection:
                    files |= self._downward(projection["downwardAPI"], meta)
                else:
                    raise KubeTranslationError(f"projected source {sorted(projection)} is not emulated")
            mode = 0o600
        elif "downwardAPI" in volume:
            files = self._downward(volume["downwardAPI"], meta)
        elif "emptyDir" in volume or "persistentVolumeClaim" in volume:
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o777)  # as the kubelet makes an emptyDir
            return directory
        else:
            raise KubeTranslationError(f"volume {name}: {sorted(set(volume) - {'name'})} is not emulated")
        if relocated_to is not None:  # plain files: nothing updates a relocated volume
            for relative, content in files.items():
                target = directory / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                os.chmod(target, mode)
                os.chown(target, *owner)
            return directory
        atomic_write(directory, files, mode, owner)
        return directory

    @staticmethod
    def _downward(source: Doc, meta: PodMeta) -> dict[str, bytes]:
        files = {}
        for item in source.get("items") or []:
            if "fieldRef" not in item:
                raise KubeTranslationError("downwardAPI resourceFieldRef is not emulated")
            files[item["path"]] = meta.field(item["fieldRef"]["fieldPath"]).encode()
        return files

    # --- containers ---

    def _container(
        self, container: Doc, meta: PodMeta, volumes: Mapping[str, Doc], pod_security: Doc, run: PodRun
    ) -> ContainerRun:
        name = container["name"]
        security = pod_security | (container.get("securityContext") or {})
        uid = security.get("runAsUser")
        gid = security.get("runAsGroup", uid)
        fs_group = pod_security.get("fsGroup")
        owner = (uid or 0, fs_group if fs_group is not None else (gid or 0))
        env = dict(self.image_env(container.get("image", "")))
        env["HOSTNAME"] = meta.name
        env |= self._env(container, meta)
        mounts: list[Mount] = []
        relocations: dict[str, Path] = {}
        root = self.pod_dir / "root"
        declared = [
            (m["name"], m["mountPath"], m.get("subPath", ""), m.get("readOnly", False))
            for m in container.get("volumeMounts") or []
        ]
        declared += [(volume, path, "", True) for volume, path in self.extra_mounts.get(name, ())]
        for volume_name, path, sub_path, read_only in declared:
            volume = volumes.get(volume_name) or {"name": volume_name, "emptyDir": {}}
            probe = Mount(Path("/"), path, read_only)
            relocated = None if probe.bindable else root / path.lstrip("/")
            if relocated is not None and sub_path:
                source = self._volume(volume, meta, owner, run, None)
                relocated.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / sub_path, relocated)
                os.chown(relocated, *owner)
            else:
                source = self._volume(volume, meta, owner, run, relocated)
            if relocated is not None:
                relocations[path] = relocated
                continue
            mounts.append(Mount(source / sub_path if sub_path else source, path, read_only))
        argv = [
            expand(str(part), env)
            for part in [*(container.get("command") or []), *(container.get("args") or [])]
        ]
        if not argv:
            raise KubeTranslationError(f"container {name}: no command (the image's ENTRYPOINT is not known)")
        if relocations:
            argv = [_relocate(part, relocations) for part in argv]
            for target in relocations.values():
                for text_file in [target] if target.is_file() else []:
                    text_file.write_text(_relocate(text_file.read_text(), relocations))
        caps = tuple((security.get("capabilities") or {}).get("add") or ())
        ports = {
            str(p.get("name", p["containerPort"])): int(p["containerPort"])
            for p in container.get("ports") or []
        }
        return ContainerRun(
            name=name,
            argv=argv,
            env=env,
            mounts=mounts,
            uid=uid,
            gid=gid,
            groups=(fs_group,) if fs_group is not None else (),
            caps=caps,
            no_new_privs=security.get("allowPrivilegeEscalation") is False,
            ports=ports,
            startup=_probe(container.get("startupProbe"), ports),
            readiness=_probe(container.get("readinessProbe"), ports),
        )


def _items(data: Mapping[str, bytes], items: Sequence[Doc] | None) -> dict[str, bytes]:
    if not items:
        return dict(data)
    return {item["path"]: data[item["key"]] for item in items}


def _relocate(text: str, relocations: Mapping[str, Path]) -> str:
    """``text`` with each relocated mount path (a whole path component) replaced by its directory."""
    for path in sorted(relocations, key=len, reverse=True):
        text = re.sub(rf"(?<![\w/.]){re.escape(path)}(?=[/\"'\s]|$)", str(relocations[path]), text)
    return text


def _probe(spec: Doc | None, ports: Mapping[str, int]) -> Probe | None:
    if not spec:
        return None
    timing = {
        "period": float(spec.get("periodSeconds", 10)),
        "failure_threshold": spec.get("failureThreshold", 3),
    }

    def port(value: Any) -> int:
        return int(value) if isinstance(value, int) or str(value).isdigit() else ports[str(value)]

    if "httpGet" in spec:
        return Probe("http", port(spec["httpGet"]["port"]), spec["httpGet"].get("path", "/"), **timing)
    if "tcpSocket" in spec:
        return Probe("tcp", port(spec["tcpSocket"]["port"]), **timing)
    if "exec" in spec:
        return Probe("exec", command=tuple(spec["exec"]["command"]), **timing)
    raise KubeTranslationError(f"probe {sorted(spec)} is not emulated")
