"""A Kubernetes cluster of one node in network namespaces: pods started as a kubelet starts them, Services
programmed as kube-proxy programs them, and the endpoints destination's local registry lists.

:class:`Cluster` owns everything: the node (:mod:`e2e_node`), the objects (ConfigMaps, Secrets, pod
templates, Services), the pods and their container processes. A pod starts like this: its network namespace
on the bridge and its hosts file; its volumes written (:mod:`e2e_kube`); init containers run to completion
in order, a native sidecar (``restartPolicy: Always``) started and its startup probe awaited before the next;
then the app containers; once every readiness probe passed it is Ready and becomes an endpoint of the
Services selecting it (:mod:`e2e_endpoints`). Probes are polled every 0.1 s until they first pass (kubelet
waits ``periodSeconds``); pods started with ``watch=True`` (the control plane) stay probed every second
afterwards, and leave their Services' endpoints while not ready or not running (as kubelet and the
EndpointSlice controller do, faster). What tests do to it is in :mod:`e2e_ops`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from e2e_endpoints import ServiceEndpoints
from e2e_kube import ContainerRun, Doc, ObjectStore, PodMeta, Probe, Translator, atomic_write
from e2e_node import NETNS_ETC, Node, container_argv, env_for
from e2e_objects import (
    BIN,
    PROXY_ADMIN_PORT,
    PROXY_CONTAINER,
    TRUST_DOMAIN,
    Container,
    ManualEndpoint,
    Pod,
    Service,
    ServicePort,
    Workload,
    http_status,
    identity_of,
)
from e2e_ops import Operations
from mesh_pods import Process, eventually, inside
from netns_harness import NetnsHarness

__all__ = [
    "PROXY_ADMIN_PORT",
    "PROXY_CONTAINER",
    "TRUST_DOMAIN",
    "Cluster",
    "Container",
    "ManualEndpoint",
    "Pod",
    "Service",
    "ServicePort",
    "Workload",
    "http_status",
    "identity_of",
]


class Cluster(ServiceEndpoints, Operations):
    """See the module docstring. Use :meth:`open` (a context manager that always cleans up)."""

    def __init__(self, harness: NetnsHarness, directory: Path) -> None:
        self.harness = harness
        self.directory = directory
        self.node = Node(harness)
        self.store = ObjectStore()
        self.pods: dict[str, Pod] = {}
        self.services: dict[tuple[str, str], Service] = {}
        self.workloads: dict[tuple[str, str], Workload] = {}
        #: Services written into the registry as they are (for tests that need discovery to lie).
        self.extra_registry: list[dict[str, Any]] = []
        self.registry_dir = directory / "registry"
        self.registry_dir.mkdir()
        self.registry_dir.chmod(0o755)
        self._lock = threading.RLock()
        self._tokens: dict[tuple[str, str], bytes] = {}
        self.token_key: Path | None = None
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._write_registry([])

    @classmethod
    @contextlib.contextmanager
    def open(cls) -> Iterator[Cluster]:
        harness = NetnsHarness()
        # Not under /tmp: control-plane containers mount an emptyDir over /tmp, hiding volumes below it.
        directory = Path(tempfile.mkdtemp(prefix=f"tether-e2e-{harness.token}-", dir="/var/tmp"))
        directory.chmod(0o755)
        cluster: Cluster | None = None
        try:
            cluster = cls(harness, directory)
            yield cluster
        finally:
            if cluster is not None:
                cluster.close()
            else:  # the node itself failed to come up: what it made carries the token
                harness.cleanup()
                for entry in NETNS_ETC.glob(f"*{harness.token}*"):
                    shutil.rmtree(entry, ignore_errors=True)
            if os.environ.get("TETHER_KEEP_E2E_DIR"):
                sys.stderr.write(f"e2e cluster directory kept: {directory}\n")
            else:
                shutil.rmtree(directory, ignore_errors=True)

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        # Workloads first, then the control plane (so that proxies do not log a control plane going away).
        for group in (
            [p for p in self.pods.values() if not p.watch],
            [p for p in self.pods.values() if p.watch],
        ):
            for pod in group:
                self._signal_pod(pod, signal.SIGTERM)
            deadline = time.monotonic() + 5
            for pod in group:
                for container in pod.containers.values():
                    if container.process is not None:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            container.process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        self.harness.cleanup()
        self.node.forget_all_hosts()
        self.pods.clear()

    def add_workload(self, doc: Doc, *, watch: bool = False, **translator_options: Any) -> Workload:
        meta = doc["metadata"]
        workload = Workload(
            doc["kind"],
            meta["name"],
            meta.get("namespace", "default"),
            doc["spec"]["template"],
            translator_options,
            watch,
        )
        self.workloads[(workload.namespace, workload.name)] = workload
        return workload

    def token(self, namespace: str, serviceaccount: str, audience: str = "", seconds: int = 3600) -> bytes:
        """A ServiceAccount token: one ``tether-identity mint-token`` per ServiceAccount (cached)."""
        assert self.token_key is not None, "the token key comes with the control plane"
        key = (namespace, serviceaccount)
        with self._lock:
            if key not in self._tokens:
                done = subprocess.run(
                    [
                        str(BIN / "tether-identity"),
                        "mint-token",
                        "--namespace",
                        namespace,
                        "--serviceaccount",
                        serviceaccount,
                        "--key",
                        str(self.token_key),
                        "--ttl",
                        str(max(seconds, 3600)),
                    ],
                    capture_output=True,
                    check=True,
                    timeout=60,
                )
                self._tokens[key] = done.stdout.strip()
            return self._tokens[key]

    def update_secret(self, namespace: str, name: str, data: Mapping[str, bytes]) -> None:
        """Change a Secret: every pod's volume of it is rewritten atomically (as the kubelet syncs it)."""
        with self._lock:
            self.store.secrets[(namespace, name)] = dict(data)
            for pod in self.pods.values():
                for directory, source in pod.run.volume_sources.get(("secret", namespace, name), []):
                    files = (
                        dict(data)
                        if not source.get("items")
                        else {item["path"]: data[item["key"]] for item in source["items"]}
                    )
                    owner = (directory.stat().st_uid, directory.stat().st_gid)
                    first = next(iter(directory.glob("..2*")), None)
                    if first is not None:
                        sample_file = next(iter(first.rglob("*")), None)
                        if sample_file is not None:
                            owner = (sample_file.stat().st_uid, sample_file.stat().st_gid)
                    atomic_write(directory, files, source.get("defaultMode", 0o644), owner)

    def pods_of(self, workload: str, namespace: str | None = None) -> list[Pod]:
        return [p for p in self.pods.values() if p.workload == workload and namespace in (None, p.namespace)]

    def pod(self, name: str) -> Pod:
        return self.pods[name]

    def scale(self, name: str, replicas: int, namespace: str = "shop") -> list[Pod]:
        """Start pods of the workload until it has ``replicas`` (in parallel); returns the new ones."""
        workload = self.workloads[(namespace, name)]
        missing = replicas - len(self.pods_of(name, namespace))
        return self.start_pods([workload] * missing)

    def start_pods(self, workloads: Sequence[Workload]) -> list[Pod]:
        """Start one pod of each (in parallel); returns them once each is Ready."""
        prepared = [self._prepare_pod(workload) for workload in workloads]
        errors: list[BaseException] = []

        def start(pod: Pod) -> None:
            try:
                self._start_containers(pod)
            except BaseException as error:  # reported below, for the pod that failed
                errors.append(error)

        threads = [threading.Thread(target=start, args=(pod,)) for pod in prepared]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return prepared

    def _pod_name(self, workload: Workload) -> str:
        if workload.kind == "StatefulSet":
            name = f"{workload.name}-{workload.ordinal}"
            workload.ordinal += 1
            return name
        suffix = "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        return f"{workload.name}-{workload.template_hash}-{suffix}"

    def _prepare_pod(self, workload: Workload) -> Pod:
        with self._lock:
            name = self._pod_name(workload)
        netns, ip, ipv6 = self.node.attach(workload.name.removeprefix("tether-")[:4])
        self.node.write_hosts(netns, name, ip)
        template = workload.template
        labels = dict(template.get("metadata", {}).get("labels") or {})
        labels["pod-template-hash"] = workload.template_hash
        spec = template.get("spec", {})
        meta = PodMeta(
            name=name,
            namespace=workload.namespace,
            ip=ip,
            service_account=spec.get("serviceAccountName", "default"),
            labels=labels,
            annotations={
                k: str(v) for k, v in (template.get("metadata", {}).get("annotations") or {}).items()
            },
            uid=secrets.token_hex(8),
        )
        directory = self.directory / "pods" / name
        (directory / "logs").mkdir(parents=True)
        translator = Translator(self.store, directory, self.token, **workload.translator_options)
        run = translator.pod(template, meta)
        pod = Pod(
            name,
            workload.namespace,
            workload.name,
            labels,
            netns,
            ip,
            ipv6,
            run,
            directory,
            watch=workload.watch,
        )
        with self._lock:
            self.pods[name] = pod
        return pod

    def _start_containers(self, pod: Pod) -> None:
        for spec in pod.run.init_containers:
            container = self._spawn(pod, spec)
            if spec.sidecar:
                self._await_probe(pod, container, spec.startup or spec.readiness)
            else:
                assert container.process is not None
                code = container.process.popen.wait(timeout=120)
                assert code == 0, (
                    f"init container {pod.name}/{spec.name} exited {code}\n{container.process.describe()}"
                )
        started = [self._spawn(pod, spec) for spec in pod.run.containers]
        for container in started:
            self._await_probe(pod, container, container.run.startup)
        self.await_ready(pod)

    def _spawn(self, pod: Pod, spec: ContainerRun) -> Container:
        log = pod.directory / "logs" / f"{spec.name}.log"
        existing = pod.containers.get(spec.name)
        with log.open("a") as handle:
            popen = subprocess.Popen(
                container_argv(pod.netns, pod.name, spec),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
                env=env_for(spec),
                start_new_session=True,
            )
        self.harness.processes.append(popen)
        container = existing or Container(spec)
        if existing is not None:
            container.restarts += 1
        container.process = Process(f"{pod.name}/{spec.name}", popen, log)
        pod.containers[spec.name] = container
        return container

    def probe(self, pod: Pod, probe: Probe, container: Container) -> bool:
        """One probe, from the node as the kubelet probes (exec: inside the pod)."""
        if probe.kind == "http":
            status, _ = http_status(self.node.namespace, f"http://{pod.ip}:{probe.port}{probe.path}", 1.0)
            return 200 <= status < 400
        if probe.kind == "tcp":

            def connect() -> bool:
                try:
                    socket.create_connection((pod.ip, probe.port), timeout=1.0).close()
                except OSError:
                    return False
                return True

            return inside(self.node.namespace, connect)
        done = subprocess.run(
            container_argv(
                pod.netns, pod.name, ContainerRun("probe", list(probe.command), {}, [], None, None)
            ),
            env=env_for(container.run),
            capture_output=True,
            timeout=10,
            check=False,
        )
        return done.returncode == 0

    def _await_probe(
        self, pod: Pod, container: Container, probe: Probe | None, timeout: float = 90.0
    ) -> None:
        process = container.process
        assert process is not None

        def passed() -> bool:
            if process.popen.poll() is not None:
                raise AssertionError(
                    f"{process.name} exited {process.popen.returncode}\n{process.describe()}"
                )
            return probe is None or self.probe(pod, probe, container)

        try:
            eventually(passed, timeout, f"{process.name}'s probe", interval=0.1)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{process.describe()}") from None

    def await_ready(self, pod: Pod, timeout: float = 90.0) -> None:
        """Wait for every container's readiness probe, then make the pod an endpoint of its Services."""
        for container in pod.containers.values():
            if not container.long_running:
                continue
            self._await_probe(pod, container, container.run.readiness, timeout)
        with self._lock:
            pod.ready = True
            self.sync_endpoints()
            pod.ready_at = time.time()

    def start_watching(self, interval: float = 1.0) -> None:
        """Probe the pods started with ``watch`` every ``interval``; endpoints follow their readiness."""

        def watch() -> None:
            while not self._stop.wait(interval):
                for pod in [p for p in list(self.pods.values()) if p.watch and not p.terminating]:
                    ready = all(
                        c.running and (c.run.readiness is None or self.probe(pod, c.run.readiness, c))
                        for c in pod.containers.values()
                        if c.long_running
                    )
                    if ready != pod.ready:
                        with self._lock:
                            pod.ready = ready
                            self.sync_endpoints()

        self._watcher = threading.Thread(target=watch, name="e2e-kubelet", daemon=True)
        self._watcher.start()
