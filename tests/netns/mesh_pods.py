"""A meshed-pod topology in network namespaces: the real control plane as processes, real proxies in pods.

One namespace per participant, all on one bridge (``10.240.0.0/24``, the bridge itself in ``control``):

* ``control`` (10.240.0.1): nats-server with one nkey user per component (``python -m
  tether.shared.natsserver``), ``tether-identity serve`` (a CA bootstrapped by the test, tokens verified
  locally) and ``tether-destination --source local`` reading a registry file the test writes, serving the
  proxies over TLS with its own certificate from identity.
* a pod per ``MeshPods.pod``: its applications (root), ``tether-proxy init`` rules and ``tether-proxy run``
  as UID 2102 with identity on (a minted token file, the trust anchors), pointed at identity and destination
  by address. Both listeners run, as in a real pod: the outbound one intercepts the pod's applications, the
  inbound one every connection to the pod. A route for the service subnet (10.96.0.0/16) lets applications
  dial a service's virtual address, as kube-proxy's would; their connections are intercepted before any
  packet leaves.
* ``MeshPods.outside``: a namespace with no proxy and no rules (a kubelet, an unmeshed client, an external
  server).

Services are declared with a virtual address and ports (``opaque`` marks a port destination announces as
opaque) and an endpoint per serving pod, with the pod's address and identity. Every process logs to a file
under the topology's directory; a failed wait names the process and shows the end of its log.

Features the proxy or destination may not have yet (a flag, a registry field) are probed first: without
them the topology still starts (the flag or field left out) and ``require`` fails the test that needs them
with the reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from netns_harness import (
    ADMIN_PORT,
    PROXY_UID,
    Namespace,
    NetnsHarness,
    proxy_init,
)

from tether.shared.testing import eventually_sync

T = TypeVar("T")

# The netns and e2e tests wait with ``from mesh_pods import eventually``: the shared synchronous wait-until.
eventually = eventually_sync

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
H1_APP = HERE / "h1_app.py"
H2_APP = HERE / "h2_app.py"
TCP_APPS = HERE / "tcp_apps.py"

TRUST_DOMAIN = "cluster.local"
NAMESPACE = "test"
CONTROL_NAMESPACE = "tether"
SUBNET = "10.240.0"
SERVICE_SUBNET = "10.96.0.0/16"
IDENTITY_PORT, DESTINATION_PORT = 8080, 8086
IDENTITY_ADMIN, DESTINATION_ADMIN = 9990, 9996
NATS_PORT = 4222
#: Linkerd's default opaque ports (the proxy's planned ``--opaque-ports`` default).
DEFAULT_OPAQUE_PORTS = (25, 587, 3306, 4444, 5432, 6379, 9300, 11211)
#: Hop-by-hop fields (RFC 9110 §7.6.1) and Date: what "equal" responses may differ in.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
)
NOT_COMPARED = HOP_BY_HOP | {"date"}
_CLONE_NEWNET = 0x40000000


def identity_name(serviceaccount: str, namespace: str = NAMESPACE) -> str:
    return f"{serviceaccount}.{namespace}.serviceaccount.identity.{TRUST_DOMAIN}"


def authority(service: str, port: int) -> str:
    return f"{service}.{NAMESPACE}.svc.{TRUST_DOMAIN}:{port}"


# --- running code inside a namespace -------------------------------------------------------------------


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def inside(namespace: Namespace, function: Callable[[], T]) -> T:
    """Run ``function`` in a thread that joined ``namespace`` (setns): every socket it opens belongs there
    and is subject to that namespace's iptables rules, like an application's. The rest of this process is
    untouched. Returns what ``function`` returned; raises what it raised."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            descriptor = os.open(f"/run/netns/{namespace.name}", os.O_RDONLY)
            try:
                if _libc().setns(descriptor, _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into {namespace.name}: {os.strerror(errno)}")
            finally:
                os.close(descriptor)
            outcome.append((True, function()))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name=f"in-{namespace.name}")
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def http_get(namespace: Namespace, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """A plain GET from inside ``namespace`` (for admin endpoints); (status, body), status 0 when nothing
    answered."""

    def get() -> tuple[int, bytes]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), bytes(error.read())
        except (OSError, ValueError):
            return 0, b""

    return inside(namespace, get)


# --- metrics -------------------------------------------------------------------------------------------

_SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def sample(metrics: str, name: str, **labels: str) -> float:
    """Sum of ``name`` over the series whose labels include all of ``labels``."""
    total = 0.0
    for match in _SERIES.finditer(metrics):
        if match.group(1) != name:
            continue
        series = dict(_LABEL.findall(match.group(2) or ""))
        if all(series.get(key) == value for key, value in labels.items()):
            total += float(match.group(3))
    return total


# --- processes -----------------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[str]
    log: Path

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def describe(self) -> str:
        state = "running" if self.popen.poll() is None else f"exited {self.popen.returncode}"
        return f"{self.name} ({state}), end of {self.log}:\n{self.tail()}"


@dataclass
class App:
    """An application process in a pod; ``records`` are what h1_app.py wrote to its record file."""

    process: Process
    record: Path | None = None

    def records(self) -> list[dict[str, Any]]:
        if self.record is None or not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def requests(self) -> list[dict[str, Any]]:
        return [entry for entry in self.records() if entry.get("kind") == "request"]


@dataclass
class Pod:
    name: str
    namespace: Namespace
    ip: str
    #: The pod's mesh identity (None: no proxy).
    identity: str | None
    proxy_args: tuple[str, ...] = ()
    proxy: Process | None = None
    apps: list[App] = field(default_factory=list)

    def metrics(self) -> str:
        status, body = http_get(self.namespace, f"http://127.0.0.1:{ADMIN_PORT}/metrics")
        assert status == 200, f"{self.name}'s proxy /metrics answered {status}"
        return body.decode()


@dataclass
class ServicePort:
    name: str
    port: int
    opaque: bool = False


@dataclass
class Service:
    name: str
    address: str
    ports: list[ServicePort]
    endpoints: list[Pod]

    def authority(self, port: int | None = None) -> str:
        return authority(self.name, port if port is not None else self.ports[0].port)


@functools.cache
def proxy_flags() -> frozenset[str]:
    """Every flag ``tether-proxy run`` knows (its --help)."""
    done = subprocess.run(
        [str(BIN / "tether-proxy"), "run", "--help"], capture_output=True, text=True, check=True
    )
    return frozenset(re.findall(r"(--[a-z0-9][a-z0-9-]*)", done.stdout))


def _registry_refusal(text: str) -> str | None:
    """Why destination's registry parser refuses ``text`` (None: it accepts it)."""
    from tether.destination.errors import RegistryFileError
    from tether.destination.sources.registry_file import parse_registry

    try:
        parse_registry(text, "registry.yaml", TRUST_DOMAIN)
    except RegistryFileError as exc:
        return str(exc)
    return None


class MeshPods:
    """Namespaces, the control plane, pods and services; ``start`` brings it all up, ``close`` tears it
    down. Use as a context manager (``MeshPods.open()``)."""

    def __init__(self, harness: NetnsHarness, directory: Path) -> None:
        self.harness = harness
        self.directory = directory
        self.logs = directory / "logs"
        self.logs.mkdir()
        self.ca = directory / "ca"
        self.processes: list[Process] = []
        self.pods: dict[str, Pod] = {}
        self.services: dict[str, Service] = {}
        #: Why a feature the tests use is missing (a proxy flag or a registry field), by feature.
        self.missing: dict[str, str] = {}
        #: Files a test module made for its tests (a CA, say), by name.
        self.files: dict[str, Path] = {}
        self._hosts = 1
        self._curl_files = 0
        self.control = harness.namespace("ctl")
        self.control_ip = f"{SUBNET}.1"
        self.control.run(["ip", "link", "add", "br0", "type", "bridge", "forward_delay", "0"])
        self.control.run(["ip", "addr", "add", f"{self.control_ip}/24", "dev", "br0"])
        self.control.run(["ip", "link", "set", "br0", "up"])

    @classmethod
    @contextlib.contextmanager
    def open(cls) -> Iterator[MeshPods]:
        harness = NetnsHarness()
        # Readable by the proxies (UID 2102), which read their token and the trust anchors from here.
        directory = Path(tempfile.mkdtemp(prefix="tether-mesh-"))
        directory.chmod(0o755)
        try:
            yield cls(harness, directory)
        finally:
            harness.cleanup()
            if os.environ.get("TETHER_KEEP_MESH_DIR"):  # for debugging: the logs and records stay
                sys.stderr.write(f"mesh directory kept: {directory}\n")
            else:
                shutil.rmtree(directory, ignore_errors=True)

    # --- namespaces and processes ---------------------------------------------------------------------

    def _attach(self, label: str) -> tuple[Namespace, str]:
        """A new namespace on the bridge; (namespace, its address)."""
        namespace = self.harness.namespace(label)
        self._hosts += 1
        ip = f"{SUBNET}.{self._hosts}"
        port = f"tb{self.harness.token}{self._hosts}"
        namespace.run(
            ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.control.name]
        )
        self.control.run(["ip", "link", "set", port, "master", "br0"])
        self.control.run(["ip", "link", "set", port, "up"])
        namespace.run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"])
        namespace.run(["ip", "link", "set", "eth0", "up"])
        return namespace, ip

    def spawn(
        self,
        namespace: Namespace,
        name: str,
        argv: Sequence[str],
        *,
        uid: int | None = None,
        env: dict[str, str] | None = None,
    ) -> Process:
        """Start ``argv`` in ``namespace`` (as ``uid``), its output to logs/<name>.log; stopped at close."""
        log = self.logs / f"{name}.log"
        with log.open("w") as handle:
            popen = subprocess.Popen(
                namespace.argv(argv, uid),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,
            )
        self.harness.processes.append(popen)
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def wait_log(self, process: Process, text: str, *, line: bool = False, timeout: float = 20.0) -> None:
        """Wait until ``text`` appears in the process' log (as a whole line, with ``line``)."""

        def seen() -> bool:
            if process.popen.poll() is not None:
                raise AssertionError(f"{process.name} exited before printing {text!r}\n{process.describe()}")
            with contextlib.suppress(OSError):
                logged = process.log.read_text(errors="replace")
                return text in logged.splitlines() if line else text in logged
            return False

        try:
            eventually(seen, timeout, f"{text!r} from {process.name}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{process.describe()}") from None

    def wait_ready(self, namespace: Namespace, port: int, process: Process, timeout: float = 30.0) -> None:
        """Wait until the admin listener on 127.0.0.1:``port`` in ``namespace`` answers /ready with 200."""

        def ready() -> bool:
            if process.popen.poll() is not None:
                raise AssertionError(f"{process.name} exited\n{process.describe()}")
            return http_get(namespace, f"http://127.0.0.1:{port}/ready", timeout=1.0)[0] == 200

        try:
            eventually(ready, timeout, f"{process.name} ready on /ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{process.describe()}") from None

    # --- pods ----------------------------------------------------------------------------------------

    def pod(self, name: str, *proxy_args: str) -> Pod:
        """A meshed pod: namespace, interception rules, a route to the service subnet; its proxy (with
        ``proxy_args``) starts with ``start``. Its identity is ``<name>.test``."""
        namespace, ip = self._attach(name)
        namespace.run(["ip", "route", "add", SERVICE_SUBNET, "dev", "eth0"])
        proxy_init(namespace)
        pod = Pod(name, namespace, ip, identity_name(name), tuple(proxy_args))
        self.pods[name] = pod
        return pod

    def outside(self, name: str = "outside") -> Pod:
        """A namespace with no proxy and no interception."""
        namespace, ip = self._attach(name)
        pod = Pod(name, namespace, ip, None)
        self.pods[name] = pod
        return pod

    def app(
        self, pod: Pod, name: str, argv: Sequence[str], *, ready_line: str = "ready", ready_text: str = ""
    ) -> App:
        """Start an application in ``pod``; waits until it prints ``ready_line`` (a whole line), or
        ``ready_text`` anywhere in its output when given."""
        process = self.spawn(pod.namespace, f"{pod.name}-{name}", argv)
        if ready_text:
            self.wait_log(process, ready_text)
        else:
            self.wait_log(process, ready_line, line=True)
        app = App(process)
        pod.apps.append(app)
        return app

    def h1_app(self, pod: Pod, name: str, *ports: int, tls: tuple[Path, Path] | None = None) -> App:
        """tests/netns/h1_app.py serving ``ports`` on all addresses, recording what it receives."""
        record = self.directory / f"{pod.name}-{name}.jsonl"
        argv = [sys.executable, str(H1_APP), "serve", "--record", str(record)]
        for port in ports:
            argv += ["--port", str(port)]
        if tls is not None:
            argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        app = self.app(pod, name, argv)
        app.record = record
        return app

    def service(
        self, name: str, address: str, *ports: ServicePort | int, endpoints: Sequence[Pod] = ()
    ) -> Service:
        """Declare a service (written to the registry at ``start``, or at once with ``write_registry``)."""
        declared = [
            port if isinstance(port, ServicePort) else ServicePort(f"p{port}", port) for port in ports
        ]
        service = Service(name, address, declared, list(endpoints))
        self.services[name] = service
        return service

    # --- the control plane -----------------------------------------------------------------------------

    def registry_text(self, *, addresses: bool = True, opaque: bool = True) -> str:
        lines = ["services:" if self.services else "services: []"]
        for service in self.services.values():
            lines += [f"  - namespace: {NAMESPACE}", f"    name: {service.name}"]
            if addresses:
                lines.append(f"    addresses: [{service.address}]")
            lines.append("    ports:")
            for port in service.ports:
                mark = ", opaque: true" if opaque and port.opaque else ""
                lines.append(f"      - {{name: {port.name}, port: {port.port}{mark}}}")
            if service.endpoints:
                lines.append("    endpoints:")
            for pod in service.endpoints:
                lines.append(f"      - address: {pod.ip}")
                if pod.identity is not None:
                    lines.append(f"        identity: {pod.identity}")
                lines.append(f"        labels: {{pod: {pod.name}}}")
        return "\n".join(lines) + "\n"

    def write_registry(self) -> None:
        """The registry file, with each new field destination's parser knows (the others left out, and
        noted in ``missing``)."""
        addresses = opaque = True
        refusal = _registry_refusal(self.registry_text())
        if refusal is not None and "addresses" in refusal:
            self.missing["registry addresses"] = refusal
            addresses = False
            refusal = _registry_refusal(self.registry_text(addresses=False))
        if refusal is not None and "opaque" in refusal:
            self.missing["registry opaque ports"] = refusal
            opaque = False
            refusal = _registry_refusal(self.registry_text(addresses=addresses, opaque=False))
        assert refusal is None, f"the registry the test writes is refused: {refusal}"
        path = self.directory / "registry.yaml"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(self.registry_text(addresses=addresses, opaque=opaque))
        temporary.replace(path)

    def token_file(self, serviceaccount: str, namespace: str, readable_by: int | None = None) -> Path:
        """A locally signed token for the ServiceAccount, in a file as the kubelet would mount it."""
        from tether.identity.tokens.local import load_token_key, mint_token
        from tether.shared.identity_names import WorkloadIdentity

        key = load_token_key((self.ca / "token-signing.key").read_bytes())
        token = mint_token(
            key,
            WorkloadIdentity(serviceaccount, namespace, TRUST_DOMAIN),
            datetime.now(UTC),
            timedelta(hours=2),
        )
        path = self.directory / f"{namespace}-{serviceaccount}.token"
        path.write_bytes(token)
        path.chmod(0o600)
        if readable_by is not None:
            os.chown(path, readable_by, readable_by)
        return path

    def _start_control_plane(self) -> tuple[Process, Process]:
        from tether.identity.bootstrap import bootstrap

        bootstrap(self.ca, datetime.now(UTC), TRUST_DOMAIN)
        self.ca.chmod(0o755)
        (self.ca / "ca.crt").chmod(0o644)
        nats_dir = self.directory / "nats"
        nats = self.spawn(
            self.control,
            "nats",
            [
                sys.executable,
                "-m",
                "tether.shared.natsserver",
                "--dir",
                str(nats_dir),
                "--port",
                str(NATS_PORT),
            ],
        )
        self.wait_log(nats, "nats-server with authentication on")
        users = nats_dir / "users"
        common = [
            "--nats-url",
            f"nats://127.0.0.1:{NATS_PORT}",
            "--log-format",
            "json",
            "--shutdown-grace",
            "0.2",
        ]
        identity = self.spawn(
            self.control,
            "identity",
            [
                str(BIN / "tether-identity"), "serve", *common,
                "--nats-nkey", str(users / "identity.nk"),
                "--grpc-addr", f"{self.control_ip}:{IDENTITY_PORT}",
                "--admin-addr", f"127.0.0.1:{IDENTITY_ADMIN}",
                "--trust-anchors", str(self.ca / "ca.crt"),
                "--issuer-certificate", str(self.ca / "issuer.crt"),
                "--issuer-key", str(self.ca / "issuer.key"),
                "--token-verifier", "local",
                "--token-key", str(self.ca / "token-signing.key"),
            ],
        )  # fmt: skip
        destination = self.spawn(
            self.control,
            "destination",
            [
                str(BIN / "tether-destination"), *common,
                "--nats-nkey", str(users / "destination.nk"),
                "--source", "local",
                "--registry-file", str(self.directory / "registry.yaml"),
                "--registry-poll-interval", "0.1",
                "--grpc-addr", f"{self.control_ip}:{DESTINATION_PORT}",
                "--admin-addr", f"127.0.0.1:{DESTINATION_ADMIN}",
                "--identity-addr", f"{self.control_ip}:{IDENTITY_PORT}",
                "--identity-trust-anchors", str(self.ca / "ca.crt"),
                "--identity-token-file", str(self.token_file("destination", CONTROL_NAMESPACE)),
            ],
        )  # fmt: skip
        return identity, destination

    def _proxy_argv(self, pod: Pod) -> list[str]:
        assert pod.identity is not None
        known = proxy_flags()
        extra: list[str] = []
        args = list(pod.proxy_args)
        while args:
            flag = args.pop(0)
            value = args.pop(0) if args and not args[0].startswith("--") else None
            if flag not in known:
                self.missing[f"tether-proxy {flag}"] = f"tether-proxy run has no {flag} flag (yet)"
                continue
            extra += [flag] if value is None else [flag, value]
        return [
            str(BIN / "tether-proxy"), "run",
            "--log-format", "json",
            "--outbound-addr", "127.0.0.1:4140",
            "--inbound-addr", "0.0.0.0:4143",
            "--admin-addr", f"0.0.0.0:{ADMIN_PORT}",
            "--destination-addr", f"{self.control_ip}:{DESTINATION_PORT}",
            "--pod-namespace", NAMESPACE,
            "--pod-name", pod.name,
            "--identity-name", pod.identity,
            "--identity-addr", f"{self.control_ip}:{IDENTITY_PORT}",
            "--identity-trust-anchors", str(self.ca / "ca.crt"),
            "--identity-token-file", str(self.token_file(pod.name, NAMESPACE, readable_by=PROXY_UID)),
            "--shutdown-grace", "0.2",
            *extra,
        ]  # fmt: skip

    def start(self) -> None:
        """Write the registry, start the control plane and every pod's proxy; return once all are ready."""
        self.write_registry()
        identity, destination = self._start_control_plane()
        for pod in self.pods.values():
            if pod.identity is not None:
                pod.proxy = self.spawn(
                    pod.namespace, f"{pod.name}-proxy", self._proxy_argv(pod), uid=PROXY_UID
                )
        self.wait_ready(self.control, IDENTITY_ADMIN, identity)
        self.wait_ready(self.control, DESTINATION_ADMIN, destination)
        for pod in self.pods.values():
            if pod.proxy is not None:
                self.wait_ready(pod.namespace, ADMIN_PORT, pod.proxy)

    def require(self, *features: str) -> None:
        """Fail (not skip) when a feature the test needs is missing from the proxy or destination."""
        absent = {feature: reason for feature, reason in self.missing.items() if feature in features}
        assert not absent, "; ".join(f"{feature}: {reason}" for feature, reason in absent.items())

    def describe(self, *names: str) -> str:
        """The state and log tails of the named processes (all when none are named), for failure messages."""
        chosen = [p for p in self.processes if not names or p.name in names]
        return "\n\n".join(process.describe() for process in chosen)

    # --- clients -------------------------------------------------------------------------------------

    def curl(self, pod: Pod, *args: str, urls: Sequence[str], timeout: float = 15.0) -> CurlResult:
        """Run curl (HTTP/1.1, verbose) in ``pod`` for ``urls`` (one connection when it can reuse it)."""
        argv = ["curl", "-sS", "-v", "--http1.1", "--noproxy", "*", "--max-time", str(int(timeout)), *args]
        self._curl_files += 1
        stem = self.directory / "curl" / f"{self._curl_files}"
        stem.parent.mkdir(exist_ok=True)
        headers = stem.with_suffix(".headers")
        argv += ["-D", str(headers)]
        bodies = []
        for index, url in enumerate(urls):
            body = stem.with_suffix(f".body{index}")
            bodies.append(body)
            argv += ["-o", str(body), url]
        done = pod.namespace.run(argv, check=False, timeout=timeout + 10)
        dumped = headers.read_text(errors="replace") if headers.exists() else ""
        exchanges = parse_header_dump(dumped)
        for exchange, body in zip(exchanges, bodies, strict=False):
            exchange.body = body.read_bytes() if body.exists() else b""
        return CurlResult(done.returncode, done.stderr, exchanges)


@dataclass
class Exchange:
    """One HTTP response: status, header fields as received (name case kept), body; and the 1xx
    responses that came before it."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    informational: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def comparable(self) -> tuple[int, list[tuple[str, str]], str, int]:
        """What "equal" compares: status, the fields in order with names folded (hop-by-hop fields and
        Date aside), the body (as its digest and length, to keep assertion messages short)."""
        fields = [(name.lower(), value) for name, value in self.headers if name.lower() not in NOT_COMPARED]
        return self.status, fields, hashlib.sha256(self.body).hexdigest(), len(self.body)


@dataclass
class CurlResult:
    returncode: int
    stderr: str
    exchanges: list[Exchange]

    def only(self) -> Exchange:
        assert self.returncode == 0 and len(self.exchanges) == 1, self.explain()
        return self.exchanges[0]

    def explain(self) -> str:
        verbose = "\n".join(self.stderr.splitlines()[-40:])
        return f"curl exited {self.returncode}, {len(self.exchanges)} responses; curl -v said:\n{verbose}"


def parse_header_dump(text: str) -> list[Exchange]:
    """curl's ``-D`` output for one or more transfers: final responses, each with its 1xx before it."""
    exchanges: list[Exchange] = []
    informational: list[int] = []
    for block in re.split(r"\r?\n\r?\n", text):
        lines = [line for line in block.splitlines() if line]
        if not lines or not lines[0].startswith("HTTP/"):
            continue
        status = int(lines[0].split()[1])
        if 100 <= status < 200:
            informational.append(status)
            continue
        fields = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields.append((name, value.strip()))
        exchanges.append(Exchange(status, fields, informational=informational))
        informational = []
    return exchanges


def open_socket(namespace: Namespace, host: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection from inside ``namespace`` (intercepted like an application's), TCP_NODELAY."""
    sock = inside(namespace, lambda: socket.create_connection((host, port), timeout=timeout))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 5.0, limit: int = 1 << 20) -> tuple[bytes, bool]:
    """Everything the peer sends until it closes (True) or ``timeout`` passes with the connection still
    open (False)."""
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data, False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def make_test_ca(directory: Path, *servers: tuple[str, str]) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """A CA of the test's own and a certificate per (DNS name, IP address) it signs: (CA file, name →
    (certificate file, key file)). Nothing of the mesh's trusts it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC) - timedelta(minutes=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tether protocol tests CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "test-ca.crt"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    issued: dict[str, tuple[Path, Path]] = {}
    for name, ip in servers:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(ip))]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        issued[name] = (cert_file, key_file)
    return ca_file, issued
