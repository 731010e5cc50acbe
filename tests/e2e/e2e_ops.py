"""What a test does to a running cluster (part of :class:`e2e_cluster.Cluster`): signal, kill and restart
containers, drain and delete pods, roll workloads, cut a pod off the control plane; and how it looks:
metrics, the ``tether`` CLI, ``kubectl exec``."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from e2e_kube import ContainerRun, Probe
from e2e_node import Node, container_argv, env_for
from e2e_objects import BIN, Container, Pod, Service, Workload, http_status
from mesh_pods import Process, eventually, sample
from netns_harness import NetnsHarness


class Operations:
    """Part of :class:`e2e_cluster.Cluster`: what its tests do to it and how they look at it."""

    node: Node
    harness: NetnsHarness
    directory: Path
    pods: dict[str, Pod]
    services: dict[tuple[str, str], Service]
    workloads: dict[tuple[str, str], Workload]
    _lock: threading.RLock

    if TYPE_CHECKING:

        def start_pods(self, workloads: Sequence[Workload]) -> list[Pod]: ...
        def pods_of(self, workload: str, namespace: str | None = None) -> list[Pod]: ...
        def service(self, name: str, namespace: str = "shop") -> Service: ...
        def sync_endpoints(self) -> None: ...
        def _spawn(self, pod: Pod, spec: ContainerRun) -> Container: ...
        def _await_probe(
            self, pod: Pod, container: Container, probe: Probe | None, timeout: float = 90.0
        ) -> None: ...
        def await_ready(self, pod: Pod, timeout: float = 90.0) -> None: ...

    def set_env(self, name: str, namespace: str, container: str, env: Mapping[str, str]) -> None:
        """``kubectl set env``: variables on top of the template's for a workload's container, in pods
        started from now on (:meth:`rollout_restart` replaces the running ones)."""
        workload = self.workloads[(namespace, name)]
        overrides = {k: dict(v) for k, v in (workload.translator_options.get("overrides") or {}).items()}
        overrides.setdefault(container, {}).update(env)
        workload.translator_options["overrides"] = overrides

    def rollout_restart(self, name: str, namespace: str) -> list[Pod]:
        """``kubectl rollout restart`` of a Deployment (maxSurge 1, maxUnavailable 0): for each pod, a new one
        is started and Ready before the old one is deleted. Returns the new pods."""
        workload = self.workloads[(namespace, name)]
        fresh = []
        for old in self.pods_of(name, namespace):
            fresh += self.start_pods([workload])
            self.delete_pod(old)
        return fresh

    def _signal_pod(self, pod: Pod, sig: int, containers: Sequence[str] = ()) -> None:
        for name, container in pod.containers.items():
            if containers and name not in containers:
                continue
            if container.running and container.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(container.process.popen.pid, sig)

    def send_signal(self, pod: Pod, sig: int, container: str = "") -> None:
        """Send ``sig`` to one container's process (e.g. SIGSTOP, SIGCONT) without waiting for anything."""
        target = pod.container(container)
        assert target.process is not None and target.running, f"{pod.name}/{target.run.name} is not running"
        os.killpg(target.process.popen.pid, sig)

    def control_plane_addresses(self) -> list[str]:
        """Every address a proxy may reach the control plane at: each Service address of namespace tether
        and each of its pods' addresses."""
        addresses = [s.vip for s in self.services.values() if s.namespace == "tether"]
        return addresses + [p.ip for p in self.pods.values() if p.namespace == "tether"]

    def admin_get(self, pod: Pod, path: str, container: str = "", port: int = 0) -> tuple[int, bytes]:
        """GET ``path`` on a container's admin port (the proxy's 4191 by default), from the node."""
        return http_status(
            self.node.namespace, f"http://{pod.ip}:{port or pod.admin_port(container)}{path}", 5.0
        )

    def kill(self, pod: Pod, container: str = "", sig: int = signal.SIGKILL) -> None:
        """Signal one container (the first app container by default) and wait until it has exited; with a
        watched pod, its endpoints follow at the next probe (immediately here: it is not running)."""
        target = pod.container(container)
        assert target.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(target.process.popen.pid, sig)
        target.process.popen.wait(timeout=30)
        if pod.watch:
            with self._lock:
                pod.ready = False
                self.sync_endpoints()

    def restart(self, pod: Pod, container: str = "", timeout: float = 90.0) -> None:
        """Start a container that exited again (as the kubelet restarts it) and wait until it is ready."""
        target = pod.container(container)
        assert not target.running, f"{pod.name}/{target.run.name} is still running"
        self._spawn(pod, target.run)
        self._await_probe(pod, pod.containers[target.run.name], target.run.startup, timeout)
        self.await_ready(pod, timeout)

    def drain(
        self, pod: Pod, *, routed: Callable[[], bool] | None = None, quiet: float = 1.0, timeout: float = 30.0
    ) -> float:
        """Take ``pod`` out as Kubernetes does on termination, then delete it.

        1. The pod is terminating: its endpoint turns ``ready: false`` in the registry (destination tells
           the proxies) and leaves kube-proxy's rules.
        2. Wait until nothing routes to it any more: ``routed()`` false (default: its inbound proxy counted no
           new request for ``quiet`` seconds) — a preStop hook's sleep, measured rather than guessed.
        3. SIGTERM to every container (the app first, the proxy sidecar after it, as native sidecars stop),
           wait for them to exit; the pod's namespace goes.
        Returns the seconds step 2 took.
        """
        with self._lock:
            pod.terminating = True
            self.sync_endpoints()
        started = time.monotonic()
        if routed is None:
            routed = self._inbound_requests_changing(pod, quiet)
        eventually(lambda: not routed(), timeout, f"{pod.name} to be routed no more", interval=0.1)
        waited = time.monotonic() - started
        self.delete_pod(pod)
        return waited

    def _inbound_requests_changing(self, pod: Pod, quiet: float) -> Callable[[], bool]:
        state = {"count": -1.0, "since": time.monotonic()}

        def routed() -> bool:
            text = self.metrics(pod)
            count = sample(text, "request_total", direction="inbound")
            count += sample(text, "tcp_open_total", direction="inbound", peer="src")
            if count != state["count"]:
                state["count"], state["since"] = count, time.monotonic()
                return True
            return time.monotonic() - state["since"] < quiet

        return routed

    def delete_pod(self, pod: Pod, grace: float = 30.0) -> None:
        """SIGTERM the app containers, then the sidecars; SIGKILL after ``grace``; remove the pod."""
        with self._lock:
            pod.terminating = True
            self.sync_endpoints()
        sidecars = [n for n, c in pod.containers.items() if c.run.sidecar]
        apps = [n for n, c in pod.containers.items() if not c.run.init]
        for group in (apps, sidecars):
            self._signal_pod(pod, signal.SIGTERM, group)
            for name in group:
                process = pod.containers[name].process
                if process is None:
                    continue
                try:
                    process.popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    os.killpg(process.popen.pid, signal.SIGKILL)
                    process.popen.wait()
        with self._lock:
            del self.pods[pod.name]
            self.sync_endpoints()
        subprocess.run(["ip", "netns", "del", pod.netns.name], capture_output=True, check=False)
        self.node.forget_hosts(pod.netns)

    def metrics(self, pod: Pod, container: str = "") -> str:
        """/metrics of the pod's proxy (default) or of a container's admin port, scraped from the node."""
        port = pod.admin_port(container)
        status, body = http_status(self.node.namespace, f"http://{pod.ip}:{port}/metrics", 5.0)
        assert status == 200, f"{pod.name} {container or 'proxy'} /metrics answered {status}"
        return body.decode()

    def tether(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """The ``tether`` CLI on the node, against the public API's Service address."""
        api = self.service("tether-public-api", "tether").authority(8085)
        return self.node.namespace.run(
            [str(BIN / "tether"), "--api-addr", api, *args],
            check=False,
            timeout=timeout,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(self.directory)},
        )

    def exec(self, pod: Pod, argv: Sequence[str], *, container: str = "", log_name: str = "") -> Process:
        """``kubectl exec``: a process in the container's namespaces, user and environment (not awaited)."""
        spec = pod.container(container).run
        exec_spec = ContainerRun(
            f"exec-{log_name}", list(argv), spec.env, spec.mounts, spec.uid, spec.gid, spec.groups
        )
        log = pod.directory / "logs" / f"exec-{log_name or secrets.token_hex(3)}.log"
        with log.open("a") as handle:
            popen = subprocess.Popen(
                container_argv(pod.netns, pod.name, exec_spec),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
                env=env_for(exec_spec),
                start_new_session=True,
            )
        self.harness.processes.append(popen)
        return Process(f"{pod.name}/exec-{log_name}", popen, log)

    def exec_run(
        self,
        pod: Pod,
        argv: Sequence[str],
        *,
        container: str = "",
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl exec`` to completion: its exit code and output."""
        spec = pod.container(container).run
        exec_spec = ContainerRun("exec", list(argv), spec.env, spec.mounts, spec.uid, spec.gid, spec.groups)
        return subprocess.run(
            container_argv(pod.netns, pod.name, exec_spec),
            env=env_for(exec_spec),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input,
        )

    @contextlib.contextmanager
    def partition(self, pod: Pod) -> Iterator[None]:
        """Drop (iptables DROP, both ways) everything between ``pod`` and the control plane: every
        control-plane pod address and Service address, until the block ends."""
        control = self.control_plane_addresses()
        chain = "TETHER_E2E_PARTITION"
        rules = [f"-A {chain} -d {address}/32 -j DROP" for address in control]
        rules += [f"-A {chain} -s {address}/32 -j DROP" for address in control]
        restore = "\n".join(
            [
                "*filter",
                f":{chain} - [0:0]",
                f"-I OUTPUT 1 -j {chain}",
                f"-I INPUT 1 -j {chain}",
                *rules,
                "COMMIT",
                "",
            ]
        )
        done = subprocess.run(
            pod.netns.argv(["iptables-restore", "--noflush"]),
            input=restore,
            text=True,
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        try:
            yield
        finally:
            for command in (
                ["-D", "OUTPUT", "-j", chain],
                ["-D", "INPUT", "-j", chain],
                ["-F", chain],
                ["-X", chain],
            ):
                pod.netns.run(["iptables", *command], check=False)
