"""Tether proxy benchmark: h2load against nghttpd directly, through a Tether proxy pair, and through nghttpx.

Every scenario runs in fresh network namespaces: a ``client`` namespace (h2load, the outbound proxy) and a
``server`` namespace (nghttpd, the inbound proxy) joined by a veth pair, so all three cross the same link.

- direct:   h2load -> nghttpd
- tether:   h2load dials the server's address with no knowledge of the proxy; ``tether-proxy init`` rules
            redirect it to the outbound proxy, which forwards to the original destination, where the
            server's rules redirect it to the inbound proxy, which forwards to the original destination
            (the server's own address, where nghttpd listens). Plaintext, no discovery.
- mtls:     the same hops with identity on: each namespace runs NATS and the identity service (the same CA
            files), the client's also the destination service, which announces the server's address with
            the server proxy's identity. h2load names the service in :authority, so the outbound proxy
            resolves it through destination and dials the endpoint over mTLS.
- nghttpx:  the same pair of hops with two nghttpx instances (static backends, no interception).
- attack:   the tether pair under each class of HTTP/2 abuse while h2load runs through it
            (bench/proxy/attack.py).

Measured: requests/s at saturation (h2load ``-c 10 -m 10``), open-loop latency at a fixed rate
(bench/proxy/openloop.py: evenly spaced requests at absolute times, each timed from its scheduled time;
p50/p99/max), and each proxy's CPU seconds and peak RSS from /proc.
Needs root (namespaces, iptables) and h2load, nghttpd, nghttpx. Not a test: run it with ``make bench-proxy``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "netns"))
sys.path.insert(0, str(REPO))  # bench.proxy.attack, the attack phase

from netns_harness import (  # noqa: E402
    ADMIN_PORT,
    INBOUND_PORT,
    OUTBOUND_PORT,
    PROXY_UID,
    Namespace,
    NetnsHarness,
    proxy_init,
    proxy_metrics,
    unavailable_reason,
    wait_port,
)

APP_PORT = 8080
TOOLS = {"h2load": "nghttp2-client", "nghttpd": "nghttp2-server", "nghttpx": "nghttp2-proxy"}
TARGETS = {
    "pair_rps": 4000.0,
    "added_p50_ms": 1.0,
    "added_p99_ms": 2.0,
    "rss_mb": 50.0,
    "mtls_rps_ratio": 0.85,  # the mTLS pair's req/s over the plaintext pair's, in the same run
    "mtls_added_p99_ms": 1.0,
    "mtls_rss_mb": 50.0,
}
PROFILED = ("tether", "mtls")
#: Cores busy with other people's work during an open-loop run above which the table warns.
OTHER_LOAD_WARNING = 0.25

# The mtls scenario's control plane: the same ports in both namespaces, each on its own loopback.
NATS_PORT = 4222
IDENTITY_PORT = 8083
IDENTITY_ADMIN_PORT = 9990
DESTINATION_PORT = 8086
DESTINATION_ADMIN_PORT = 9996
TRUST_DOMAIN = "cluster.local"
BENCH_NAMESPACE = "bench"
SERVICE_AUTHORITY = f"bench.{BENCH_NAMESPACE}.svc.{TRUST_DOMAIN}:{APP_PORT}"


def identity_name(serviceaccount: str, namespace: str) -> str:
    return f"{serviceaccount}.{namespace}.serviceaccount.identity.{TRUST_DOMAIN}"


CLIENT_ID = identity_name("client", BENCH_NAMESPACE)
SERVER_ID = identity_name("server", BENCH_NAMESPACE)
IDENTITY_ID = identity_name("identity", "tether")
DESTINATION_ID = identity_name("destination", "tether")


@dataclass
class ProxyUsage:
    name: str
    cpu_seconds: float
    peak_rss_mb: float


@dataclass
class Result:
    scenario: str
    rps: float = 0.0
    failed: int = 0
    #: Every saturation run's req/s (``--saturation-runs``); ``rps`` is the best of them.
    rps_runs: list[float] = field(default_factory=list)
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    latency_samples: int = 0
    latency_failed: int = 0
    #: The rate the open-loop generator really offered (from its send times; --rate unless it fell behind).
    latency_offered_rps: float = 0.0
    latency_p999_ms: float = 0.0
    #: How late the generator sent (send time - scheduled time): its own stalls, included in the latency.
    latency_send_delay_p99_ms: float = 0.0
    latency_send_delay_max_ms: float = 0.0
    proxies: list[ProxyUsage] = field(default_factory=list)
    #: Requests each Tether proxy counted, in all and over mTLS with the expected peer identity.
    requests_seen: dict[str, int] = field(default_factory=dict)
    #: CPU seconds of the other Tether processes (mtls: NATS, identity, destination) in the measured runs.
    control_plane_cpu_seconds: dict[str, float] = field(default_factory=dict)
    #: CPU seconds of every process of the scenario (proxies, control plane, the generator) during the
    #: open-loop run alone.
    open_loop_cpu_seconds: dict[str, float] = field(default_factory=dict)
    #: Cores busy on the whole machine meanwhile (/proc/stat), and the part not ours: other people's load.
    open_loop_host_busy_cores: float = 0.0
    open_loop_other_busy_cores: float = 0.0
    #: Warnings, errors and unparsable lines in the logs of the scenario's Tether processes.
    log_notes: list[str] = field(default_factory=list)
    #: With --profile: each proxy's functions with the most self time, as [percent, function].
    profile: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    error: str | None = None


def check_tools() -> list[str]:
    return [
        f"{tool} (apt-get install -y {package})" for tool, package in TOOLS.items() if not shutil.which(tool)
    ]


class ProcStat:
    """CPU seconds and peak RSS of a process and its descendants (nghttpx forks workers), from /proc."""

    ticks = os.sysconf("SC_CLK_TCK")

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        family = [self.pid]
        for candidate in sorted(parents):
            if parents[candidate] in family:
                family.append(candidate)
        return family

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / self.ticks

    def peak_rss_mb(self) -> float:
        """Sum of each process's RSS high-water mark (VmHWM)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        return total / 1024


@dataclass
class HostCpu:
    """The machine's busy CPU time (/proc/stat: all but idle and iowait), to tell other people's load."""

    busy_seconds: float
    when: float

    @classmethod
    def sample(cls) -> HostCpu:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
        return cls((sum(fields) - fields[3] - fields[4]) / ProcStat.ticks, time.monotonic())

    def busy_cores_since(self, before: HostCpu) -> float:
        return (self.busy_seconds - before.busy_seconds) / max(self.when - before.when, 1e-9)


def unnamed_processes(harness: NetnsHarness, named: dict[str, ProcStat]) -> dict[str, ProcStat]:
    """The scenario's other processes (nghttpd, nghttpx), by command name."""
    known = {stat.pid for stat in named.values()}
    found: dict[str, ProcStat] = {}
    for process in harness.processes:
        if process.pid in known or process.poll() is not None:
            continue
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{process.pid}/comm").read_text().strip()
            found[name if name not in found else f"{name}-{process.pid}"] = ProcStat(process.pid)
    return found


def children_cpu_seconds() -> float:
    """User + system seconds of this process's waited-for children (the open-loop generator)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Logs:
    """Copies the output of background processes to files (an unread pipe would block a chatty process)
    and finds the lines worth a look afterwards."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, Path] = {}
        self.pids: dict[str, int] = {}
        self._threads: list[threading.Thread] = []

    def keep(self, name: str, process: subprocess.Popen[str]) -> subprocess.Popen[str]:
        path = self.directory / f"{name}.log"
        self.files[name] = path
        self.pids[name] = process.pid
        lock = threading.Lock()
        with path.open("w"):
            pass
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                thread = threading.Thread(target=self._copy, args=(stream, path, lock), daemon=True)
                thread.start()
                self._threads.append(thread)
        return process

    @staticmethod
    def _copy(stream: IO[str], path: Path, lock: threading.Lock) -> None:
        with contextlib.suppress(OSError, ValueError), path.open("a") as out:
            for line in stream:
                with lock:
                    out.write(line)
                    out.flush()

    def tail(self, name: str, lines: int = 5) -> str:
        path = self.files.get(name)
        if path is None or not path.exists():
            return ""
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])

    def finish(self) -> None:
        for thread in self._threads:
            thread.join(timeout=2)

    def notes(self, limit: int = 12, expected: Collection[str] = ()) -> list[str]:
        """One line per (process, level, event) but the ``expected`` events: how often, and the first."""
        seen: dict[tuple[str, str, str], list[Any]] = {}
        for name, path in self.files.items():
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                key, first = _log_problem(name, line)
                if key is None or key[2] in expected:
                    continue
                entry = seen.setdefault(key, [0, first])
                entry[0] += 1
        return [
            f"{name}: {count}x {level} {event}: {first[:240]}"
            for (name, level, event), (count, first) in list(seen.items())[:limit]
        ]

    def save(self, destination: Path) -> None:
        destination.mkdir(parents=True, exist_ok=True)
        for path in self.files.values():
            if path.exists():
                shutil.copy(path, destination / path.name)


def _log_problem(name: str, line: str) -> tuple[tuple[str, str, str] | None, str]:
    line = line.strip()
    if not line:
        return None, ""
    if name.startswith("nats"):  # nats-server's own format: [pid] date [LVL] message
        match = re.search(r"\[(WRN|ERR|FTL)\] (.*)", line)
        return ((name, match.group(1), match.group(2)[:60]), line) if match else (None, "")
    try:
        record = json.loads(line)
    except ValueError:
        return (name, "unparsed", line[:60]), line
    if not isinstance(record, dict):
        return (name, "unparsed", line[:60]), line
    level = str(record.get("level", ""))
    if level in ("debug", "info"):
        return None, ""
    return (name, level or "?", str(record.get("event", ""))[:80]), line


_REEXEC = "import os, sys; os.execv(sys.executable, [sys.executable, '-c', ''])"

#: The interpreter the Tether proxies run with (see ``--proxy-env``): set once, in main.
_proxy_python = [sys.executable]


def image_environment(directory: Path) -> str:
    """A virtual environment holding exactly what the proxy's image holds (tools/images/install-venv.sh:
    uv.lock's pins for tether-proxy, no dev group; tether-shared and tether-proxy built from this checkout);
    its interpreter. The dev environment has more (rich, pygments, greenlet), which structlog imports when it
    finds them: about 11 MB per process that no deployed proxy carries."""
    uv_dir = REPO / ".tools" / "bin"
    env = {**os.environ, "PATH": f"{uv_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(
        ["sh", str(REPO / "tools" / "images" / "install-venv.sh"), "proxy", str(directory), sys.executable],
        cwd=REPO,
        env=env,
        check=True,
    )
    return str(directory / "bin" / "python")


@functools.cache
def proxy_user() -> tuple[str, ...]:
    """``setpriv`` to the proxy UID, as the harness does; plus CAP_DAC_READ_SEARCH (ambient) when that UID
    cannot exec this interpreter a second time, which is where the venv's interpreter lives under a
    directory only root may search (a pyenv or uv Python under /root): the proxy would then run on the
    system's standard library rather than the venv's. Both Tether scenarios run the same way, so they
    compare."""
    user = ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups"]
    if subprocess.run([*user, _proxy_python[0], "-c", _REEXEC], capture_output=True, check=False).returncode:
        user += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return tuple(user)


def start_proxy(namespace: Namespace, logs: Logs, name: str, log_level: str, *extra: str) -> ProcStat:
    """``python -m tether.proxy run`` as netns_harness.start_tether_proxy starts it (discovery and identity
    off unless ``extra`` turns them on), but as ``proxy_user()``; its output goes to ``logs``."""
    process = namespace.spawn(
        [
            *proxy_user(), _proxy_python[0], "-m", "tether.proxy", "run",
            "--outbound-addr", f"127.0.0.1:{OUTBOUND_PORT}",
            "--inbound-addr", f"0.0.0.0:{INBOUND_PORT}",
            "--admin-addr", f"0.0.0.0:{ADMIN_PORT}",
            "--destination-addr", "",
            # No telemetry service runs here: without this the proxies would retry its cluster name.
            "--telemetry-addr", "",
            "--identity-disabled", "true",
            "--log-format", "json",
            "--log-level", log_level,
            *extra,
        ]
    )  # fmt: skip
    logs.keep(name, process)
    try:
        # The admin listener opens after the data listeners; probing those would add connections to metrics.
        wait_port(namespace, "127.0.0.1", ADMIN_PORT)
    except AssertionError:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=2)
        raise RuntimeError(f"the {name} proxy did not start: {logs.tail(name) or 'no output'}") from None
    return ProcStat(process.pid)


def stop_in_reverse(harness: NetnsHarness) -> None:
    """SIGTERM the processes last-started first (proxies before destination, identity before NATS), so
    their logs hold no warnings about the shutdown of what they depend on."""
    for process in reversed(harness.processes):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


_WAIT_READY = """
import sys, urllib.error, urllib.request
from tether.shared.testing import eventually_sync
url, timeout = sys.argv[1], float(sys.argv[2])
last = "nothing listening"
def ready():
    global last
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        last = f"HTTP {error.code}"
    except OSError as error:
        last = str(error)
    return False
try:
    eventually_sync(ready, timeout, lambda: f"{url} to answer 200 (last: {last})", 0.05)
except AssertionError as failed:
    sys.exit(str(failed))
"""


def wait_ready(namespace: Namespace, port: int, what: str, logs: Logs, timeout: float = 30.0) -> None:
    """Poll ``/ready`` on 127.0.0.1:``port`` inside ``namespace``; fail with the tail of ``what``'s log."""
    done = namespace.run(
        [sys.executable, "-c", _WAIT_READY, f"http://127.0.0.1:{port}/ready", str(timeout)],
        check=False,
        timeout=timeout + 15,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what}: {done.stderr.strip()}; its log: {logs.tail(what) or '(empty)'}")


def tether_cli(*argv: str) -> str:
    """``python -m tether.identity ...`` on the host (bootstrap, mint-token); its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "tether.identity", *argv], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"tether-identity {argv[0]} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class ControlPlaneFiles:
    """One CA for both namespaces (identity is stateless: two servers on the same files are one CA)."""

    ca: Path

    @property
    def trust_anchors(self) -> Path:
        return self.ca / "ca.crt"

    @classmethod
    def make(cls, workdir: Path) -> ControlPlaneFiles:
        ca = workdir / "ca"
        tether_cli("bootstrap", "--out", str(ca))
        ca.chmod(0o755)
        (ca / "ca.crt").chmod(0o644)  # the proxies (UID 2102) read the trust anchors
        return cls(ca)

    def token(self, serviceaccount: str, namespace: str, owner: int | None) -> Path:
        """A minted token in a file only ``owner`` (or root) can read, as a projected token would be."""
        token = tether_cli(
            "mint-token", "--namespace", namespace, "--serviceaccount", serviceaccount,
            "--key", str(self.ca / "token-signing.key"),
        ).strip()  # fmt: skip
        path = self.ca / f"{namespace}-{serviceaccount}.token"
        path.write_text(token)
        path.chmod(0o600)
        if owner is not None:
            os.chown(path, owner, owner)
        return path

    def identity_options(self, name: str, token: Path) -> list[str]:
        """The ``--identity-*`` options of a workload (proxy or destination) in either namespace."""
        return [
            "--identity-disabled", "false",
            "--identity-name", name,
            "--identity-addr", f"127.0.0.1:{IDENTITY_PORT}",
            "--identity-server-name", IDENTITY_ID,
            "--identity-trust-anchors", str(self.trust_anchors),
            "--identity-token-file", str(token),
        ]  # fmt: skip


def start_identity(namespace: Namespace, files: ControlPlaneFiles, logs: Logs, label: str) -> None:
    """nats-server and the identity service on the namespace's loopback (waited for by ``wait_ready``)."""
    nats_server = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    store = files.ca.parent / f"nats-{label}"
    logs.keep(
        f"nats-{label}",
        namespace.spawn([nats_server, "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(NATS_PORT)]),
    )
    wait_port(namespace, "127.0.0.1", NATS_PORT)
    logs.keep(
        f"identity-{label}",
        namespace.spawn(
            [
                sys.executable, "-m", "tether.identity", "serve",
                "--grpc-addr", f"127.0.0.1:{IDENTITY_PORT}",
                "--admin-addr", f"127.0.0.1:{IDENTITY_ADMIN_PORT}",
                "--nats-url", f"nats://127.0.0.1:{NATS_PORT}",
                "--trust-anchors", str(files.trust_anchors),
                "--issuer-certificate", str(files.ca / "issuer.crt"),
                "--issuer-key", str(files.ca / "issuer.key"),
                "--token-verifier", "local",
                "--token-key", str(files.ca / "token-signing.key"),
                "--log-format", "json", "--log-level", "warning",
            ]
        ),
    )  # fmt: skip


def start_destination(
    namespace: Namespace,
    files: ControlPlaneFiles,
    logs: Logs,
    server_ip: str,
    opaque_ports: Sequence[int] = (),
) -> None:
    """The destination service: the local registry announces ``bench`` at the server, meshed (port
    ``APP_PORT``, and ``opaque_ports`` as opaque TCP: bench/proxy/protocols.py)."""
    registry = files.ca.parent / "registry.yaml"
    ports = "".join(f", {{name: tcp{port}, port: {port}, opaque: true}}" for port in opaque_ports)
    registry.write_text(
        "services:\n"
        f"  - namespace: {BENCH_NAMESPACE}\n"
        "    name: bench\n"
        f"    ports: [{{name: http, port: {APP_PORT}}}{ports}]\n"
        "    endpoints:\n"
        f"      - address: {server_ip}\n"
        f"        identity: {SERVER_ID}\n"
        "        labels: {pod: server-0}\n"
    )
    token = files.token("destination", "tether", owner=None)
    logs.keep(
        "destination",
        namespace.spawn(
            [
                sys.executable, "-m", "tether.destination",
                "--source", "local", "--registry-file", str(registry),
                "--grpc-addr", f"127.0.0.1:{DESTINATION_PORT}",
                "--admin-addr", f"127.0.0.1:{DESTINATION_ADMIN_PORT}",
                "--nats-url", f"nats://127.0.0.1:{NATS_PORT}",
                *files.identity_options(DESTINATION_ID, token),
                "--log-format", "json", "--log-level", "warning",
            ]
        ),
    )  # fmt: skip


def start_mtls_pair(
    client: Namespace,
    server: Namespace,
    server_ip: str,
    workdir: Path,
    logs: Logs,
    log_level: str,
    opaque_ports: Sequence[int] = (),
) -> dict[str, ProcStat]:
    """The meshed pair and its control plane; returns once both proxies hold a certificate (/ready)."""
    files = ControlPlaneFiles.make(workdir)
    start_identity(client, files, logs, "client")
    start_identity(server, files, logs, "server")
    wait_ready(client, IDENTITY_ADMIN_PORT, "identity-client", logs)
    start_destination(client, files, logs, server_ip, opaque_ports)
    wait_ready(server, IDENTITY_ADMIN_PORT, "identity-server", logs)
    wait_ready(client, DESTINATION_ADMIN_PORT, "destination", logs)
    proxy_init(client)
    proxy_init(server)
    proxies = {
        "outbound": start_proxy(
            client, logs, "outbound", log_level,
            "--destination-addr", f"127.0.0.1:{DESTINATION_PORT}",
            "--destination-server-name", DESTINATION_ID,
            "--pod-namespace", BENCH_NAMESPACE,
            *files.identity_options(CLIENT_ID, files.token("client", BENCH_NAMESPACE, owner=PROXY_UID)),
        ),
        "inbound": start_proxy(
            server, logs, "inbound", log_level,
            *files.identity_options(SERVER_ID, files.token("server", BENCH_NAMESPACE, owner=PROXY_UID)),
        ),
    }  # fmt: skip
    wait_ready(client, ADMIN_PORT, "outbound", logs)
    wait_ready(server, ADMIN_PORT, "inbound", logs)
    return proxies


def h2load_counts(output: str) -> tuple[int, int]:
    """(succeeded, failed) from h2load's summary."""
    counts = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", output)
    if counts is None:
        raise RuntimeError(f"could not parse h2load output:\n{output}")
    return int(counts.group(1)), int(counts.group(2))


def saturate(
    client: Namespace,
    url: str,
    seconds: float,
    warmup: float,
    headers: Sequence[str] = (),
    connections: int = 10,
    streams: int = 10,
) -> tuple[float, int]:
    """h2load's req/s and failed requests; ``headers`` may carry other options (``--h1``)."""
    done = client.run(
        [
            "h2load",
            "-c",
            str(connections),
            "-m",
            str(streams),
            "-t",
            "1",
            "-D",
            f"{seconds:g}",
            "--warm-up-time",
            f"{warmup:g}",
            *headers,
            url,
        ],
        timeout=seconds + warmup + 60,
        check=False,  # h2load exits 1 when the duration ends with streams still in flight
    )
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", done.stdout)
    if rps is None:
        raise RuntimeError(f"could not parse h2load output:\n{done.stdout}\n{done.stderr}")
    return float(rps.group(1)), h2load_counts(done.stdout)[1]


OPENLOOP = Path(__file__).resolve().with_name("openloop.py")


def open_loop(
    client: Namespace,
    url: str,
    rate: float,
    seconds: float,
    workdir: Path,
    headers: Sequence[str] = (),
    connections: int = 1,
) -> dict[str, float]:
    """openloop.py in the client namespace: ``rate`` requests/s evenly spaced at absolute times (the
    schedule cannot slip), each request's latency from its scheduled time to the end of its response, the
    first tenth left out. ``headers`` are h2load's ``-H`` options (the mtls scenario's ``:authority``)."""
    done = client.run(
        [
            sys.executable,
            str(OPENLOOP),
            url,
            "--rate",
            f"{rate:g}",
            "--seconds",
            f"{seconds:g}",
            "--connections",
            str(connections),
            "--warmup-fraction",
            "0.1",
            "--requests",
            str(workdir / "openloop.tsv"),
            *headers,
        ],
        timeout=seconds + 60,
        check=False,
    )
    try:
        summary = json.loads(done.stdout)
    except ValueError:
        output = f"{done.stdout.strip()} {done.stderr.strip()[-400:]}"
        raise RuntimeError(f"open-loop run failed: {output}") from None
    if not summary.get("samples"):
        raise RuntimeError(f"no successful requests in the open-loop run: {summary}")
    return {key: float(value) for key, value in summary.items() if isinstance(value, int | float)}


def start_nghttpd(server: Namespace, docroot: Path, host: str) -> None:
    server.spawn(["nghttpd", "--no-tls", "-a", host, "-d", str(docroot), str(APP_PORT)])
    wait_port(server, "127.0.0.1" if host == "0.0.0.0" else host, APP_PORT)


def sample(metrics: str, name: str, **labels: str) -> int:
    """The sum of the ``name`` series whose labels include ``labels`` (in any order)."""
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{key}="{wanted}"' in series for key, wanted in labels.items()):
            total += float(value)
    return int(total)


def check_traffic(scenario: str, client: Namespace, server: Namespace, result: Result) -> None:
    """Both proxies must have carried the traffic; for mtls, all of it over mTLS with the expected peers."""
    outbound, inbound = proxy_metrics(client), proxy_metrics(server)
    seen = {
        "outbound": sample(outbound, "request_total", direction="outbound"),
        "inbound": sample(inbound, "request_total", direction="inbound"),
    }
    if scenario == "mtls":
        seen["outbound_mtls"] = sample(
            outbound, "request_total", direction="outbound", tls="true", server_id=SERVER_ID
        )
        seen["inbound_mtls"] = sample(
            inbound, "request_total", direction="inbound", tls="true", client_id=CLIENT_ID
        )
    result.requests_seen = seen
    if min(seen["outbound"], seen["inbound"]) == 0:
        result.error = f"traffic bypassed a proxy: outbound saw {seen['outbound']}, inbound {seen['inbound']}"
    elif scenario == "mtls" and (
        seen["outbound_mtls"] != seen["outbound"] or seen["inbound_mtls"] != seen["inbound"]
    ):
        result.error = (
            f"not all over mTLS: outbound {seen['outbound_mtls']} of {seen['outbound']} "
            f"(server_id {SERVER_ID}), inbound {seen['inbound_mtls']} of {seen['inbound']} "
            f"(client_id {CLIENT_ID})"
        )


def run_scenario(scenario: str, args: argparse.Namespace, workdir: Path) -> Result:
    harness = NetnsHarness()
    result = Result(scenario)
    logs = Logs(workdir / "logs")
    try:
        client, server = harness.namespace("cli"), harness.namespace("srv")
        _, server_ip = harness.link(client, server)
        docroot = workdir / "htdocs"
        docroot.mkdir(exist_ok=True)
        (docroot / "index.html").write_bytes(b"x" * args.body_bytes)
        proxies: dict[str, ProcStat] = {}
        url = f"http://{server_ip}:{APP_PORT}/index.html"
        headers: list[str] = []
        if scenario == "direct":
            start_nghttpd(server, docroot, "0.0.0.0")
        elif scenario == "tether":
            # The inbound proxy forwards to the original destination, the server's own address.
            start_nghttpd(server, docroot, "0.0.0.0")
            proxy_init(client)
            proxy_init(server)
            proxies["outbound"] = start_proxy(client, logs, "outbound", args.proxy_log_level)
            proxies["inbound"] = start_proxy(server, logs, "inbound", args.proxy_log_level)
        elif scenario == "mtls":
            start_nghttpd(server, docroot, "0.0.0.0")
            proxies = start_mtls_pair(client, server, server_ip, workdir, logs, args.proxy_log_level)
            # h2load still dials the server's address (redirected to the outbound proxy), but names the
            # service, which the outbound proxy resolves through destination.
            headers = ["-H", f":authority: {SERVICE_AUTHORITY}"]
        elif scenario == "nghttpx":
            start_nghttpd(server, docroot, "127.0.0.1")
            inbound = server.spawn(
                ["nghttpx", "--workers=1", f"--frontend=0.0.0.0,{INBOUND_PORT};no-tls",
                 f"--backend=127.0.0.1,{APP_PORT};;proto=h2", "--no-via", "--no-ocsp",
                 "--accesslog-file=/dev/null", "--errorlog-file=/dev/null", "--conf=/dev/null"],
            )  # fmt: skip
            outbound = client.spawn(
                ["nghttpx", "--workers=1", f"--frontend=127.0.0.1,{OUTBOUND_PORT};no-tls",
                 f"--backend={server_ip},{INBOUND_PORT};;proto=h2", "--no-via", "--no-ocsp",
                 "--accesslog-file=/dev/null", "--errorlog-file=/dev/null", "--conf=/dev/null"],
            )  # fmt: skip
            wait_port(server, "127.0.0.1", INBOUND_PORT)
            wait_port(client, "127.0.0.1", OUTBOUND_PORT)
            proxies = {"outbound": ProcStat(outbound.pid), "inbound": ProcStat(inbound.pid)}
            url = f"http://127.0.0.1:{OUTBOUND_PORT}/index.html"
        else:
            raise RuntimeError(f"unknown scenario {scenario!r}")
        # Warm-up (connections, caches, the destination lookup); a path that fails fails here, quickly.
        warm = client.run(["h2load", "-n", "200", "-c", "2", *headers, url], check=False, timeout=60)
        succeeded, _ = h2load_counts(warm.stdout)
        if succeeded != 200:
            notes = "".join(f"; {note}" for note in logs.notes(3))
            raise RuntimeError(f"warm-up: {succeeded} of 200 requests succeeded{notes}")
        cpu_before = {name: stat.cpu_seconds() for name, stat in proxies.items()}
        # The control plane (mtls) shares the cores: what it used in the measured window.
        others = {name: ProcStat(pid) for name, pid in logs.pids.items() if name not in proxies}
        others_before = {name: stat.cpu_seconds() for name, stat in others.items()}
        profiling = args.profile is not None and scenario in PROFILED
        profilers = (
            start_profilers(proxies, args, scenario)
            if profiling and args.profile_phase == "saturation"
            else {}
        )
        # Best of a few: on shared cores other work only ever takes throughput away, by a different amount
        # each time, so the best run is the closest to what the path can do (all are kept in the JSON).
        for _ in range(args.saturation_runs):
            rps, failed = saturate(client, url, args.seconds, args.warmup, headers)
            result.rps_runs.append(rps)
            result.failed += failed
        result.rps = max(result.rps_runs)
        collect_profiles(profilers, args, scenario, result)
        everyone = {**proxies, **others, **unnamed_processes(harness, {**proxies, **others})}
        open_loop_before = {name: stat.cpu_seconds() for name, stat in everyone.items()}
        host_before, children_before = HostCpu.sample(), children_cpu_seconds()
        profilers = (
            start_profilers(proxies, args, scenario)
            if profiling and args.profile_phase == "open-loop"
            else {}
        )
        latency = open_loop(
            client, url, args.rate, args.seconds, workdir, headers, args.open_loop_connections
        )
        collect_profiles(profilers, args, scenario, result)
        used = {name: stat.cpu_seconds() - open_loop_before[name] for name, stat in everyone.items()}
        used["generator"] = children_cpu_seconds() - children_before  # openloop.py, a waited-for child
        result.open_loop_cpu_seconds = {name: round(seconds, 2) for name, seconds in used.items()}
        host_after = HostCpu.sample()
        busy = host_after.busy_cores_since(host_before)
        result.open_loop_host_busy_cores = round(busy, 2)
        elapsed = host_after.when - host_before.when
        result.open_loop_other_busy_cores = round(max(0.0, busy - sum(used.values()) / elapsed), 2)
        result.latency_p50_ms, result.latency_p99_ms = latency["p50"], latency["p99"]
        result.latency_max_ms, result.latency_samples = latency["max"], int(latency["samples"])
        result.latency_p999_ms = latency["p999"]
        result.latency_failed = int(latency["failed"])
        result.latency_offered_rps = round(latency["offered_rps"], 1)
        result.latency_send_delay_p99_ms = latency["send_delay_p99"]
        result.latency_send_delay_max_ms = latency["send_delay_max"]
        result.proxies = [
            ProxyUsage(name, round(stat.cpu_seconds() - cpu_before[name], 2), round(stat.peak_rss_mb(), 1))
            for name, stat in proxies.items()
        ]
        result.control_plane_cpu_seconds = {
            name: round(stat.cpu_seconds() - others_before[name], 2) for name, stat in others.items()
        }
        if scenario in ("tether", "mtls"):
            check_traffic(scenario, client, server, result)
    except (AssertionError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        result.error = " ".join(str(exc).split())[:600] or type(exc).__name__
    finally:
        stop_in_reverse(harness)
        harness.cleanup()
        logs.finish()
        # Identity is off on purpose in the plaintext pair, and the proxies say so.
        result.log_notes = logs.notes(expected={"identity_disabled"} if scenario == "tether" else ())
        if args.logs:
            logs.save(args.logs / scenario)
            with contextlib.suppress(OSError):  # the open-loop run's requests (openloop.py --requests)
                shutil.copy(workdir / "openloop.tsv", args.logs / scenario / "openloop.tsv")
    return result


def collect_profiles(
    profilers: dict[str, subprocess.Popen[bytes]], args: argparse.Namespace, scenario: str, result: Result
) -> None:
    for name, profiler in profilers.items():
        profiler.wait(timeout=args.seconds + 30)
        collapsed = args.profile / f"{scenario}-{name}.txt"
        result.profile[name] = summarise_profile(collapsed, f"{scenario} {name} ({args.profile_phase})")


def start_profilers(
    proxies: dict[str, ProcStat], args: argparse.Namespace, scenario: str
) -> dict[str, subprocess.Popen[bytes]]:
    """py-spy record (collapsed stacks) of each proxy for ``--profile-phase``'s measured window."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.profile.mkdir(parents=True, exist_ok=True)
    return {
        name: subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(stat.pid),
                "--duration",
                f"{int(args.seconds + (args.warmup if args.profile_phase == 'saturation' else 0))}",
                "--rate",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(args.profile / f"{scenario}-{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, stat in proxies.items()
    }


def summarise_profile(collapsed: Path, name: str, top: int = 15) -> list[tuple[float, str]]:
    """Print (and return) the functions with the most self time (all their lines) from py-spy's stacks."""
    if not collapsed.exists():
        print(f"profile of {name}: py-spy wrote nothing (is py-spy installed?)", file=sys.stderr)
        return []
    self_time: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue  # --nonblocking sampling occasionally reads a half-updated frame
        # One entry per function: py-spy names a frame "function (file:line)".
        leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1].strip()) or "(unreadable frame)"
        self_time[leaf] = self_time.get(leaf, 0) + int(count)
        total += int(count)
    print(f"profile of the {name} proxy ({total} samples, self time):", file=sys.stderr)
    entries = [
        (round(100 * samples / max(total, 1), 1), leaf)
        for leaf, samples in sorted(self_time.items(), key=lambda item: -item[1])[:top]
    ]
    for percent, leaf in entries:
        print(f"  {percent:5.1f}%  {leaf}", file=sys.stderr)
    return entries


def render_table(results: list[Result]) -> str:
    direct = next((r for r in results if r.scenario == "direct" and r.error is None), None)
    header = (
        f"{'scenario':<9} {'req/s':>9} {'x direct':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'+p50':>6} {'+p99':>6} {'@req/s':>6} {'late99':>6} {'other':>5}  proxies (CPU s / peak RSS MB)"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        if r.error is not None:
            lines.append(f"{r.scenario:<9} ERROR: {r.error}")
            continue
        ratio = r.rps / direct.rps if direct else float("nan")
        added_p50 = r.latency_p50_ms - direct.latency_p50_ms if direct else float("nan")
        added_p99 = r.latency_p99_ms - direct.latency_p99_ms if direct else float("nan")
        usage = ", ".join(f"{p.name} {p.cpu_seconds:.1f}s/{p.peak_rss_mb:.0f}MB" for p in r.proxies) or "-"
        lines.append(
            f"{r.scenario:<9} {r.rps:>9.0f} {ratio:>8.2f} {r.latency_p50_ms:>7.2f} {r.latency_p99_ms:>7.2f} "
            f"{r.latency_max_ms:>7.2f} {added_p50:>6.2f} {added_p99:>6.2f} "
            f"{r.latency_offered_rps:>6.0f} {r.latency_send_delay_p99_ms:>6.2f} "
            f"{r.open_loop_other_busy_cores:>5.2f}  {usage}"
        )
    loaded = [r for r in results if r.error is None and r.open_loop_other_busy_cores > OTHER_LOAD_WARNING]
    if loaded:
        lines.append(
            "warning: other load on the machine during the open-loop run ("
            + ", ".join(f"{r.scenario} {r.open_loop_other_busy_cores:.2f}" for r in loaded)
            + f" of {os.cpu_count()} cores): the latency tail measures that contention, not the path"
        )
    return "\n".join(lines)


Measure = Callable[[dict[str, Result]], float]


def _peak_rss(result: Result) -> float:
    return max((p.peak_rss_mb for p in result.proxies), default=float("inf"))


def _added_p50(scenario: str) -> Measure:
    return lambda r: r[scenario].latency_p50_ms - r["direct"].latency_p50_ms


def _added_p99(scenario: str) -> Measure:
    return lambda r: r[scenario].latency_p99_ms - r["direct"].latency_p99_ms


#: target -> (the scenarios it needs, what is measured, whether the target is a floor or a ceiling)
CHECKS: dict[str, tuple[tuple[str, ...], Measure, str]] = {
    "pair_rps": (("tether",), lambda r: r["tether"].rps, ">="),
    "added_p50_ms": (("tether", "direct"), _added_p50("tether"), "<"),
    "added_p99_ms": (("tether", "direct"), _added_p99("tether"), "<"),
    "rss_mb": (("tether",), lambda r: _peak_rss(r["tether"]), "<"),
    "mtls_rps_ratio": (("mtls", "tether"), lambda r: r["mtls"].rps / max(r["tether"].rps, 1e-9), ">="),
    "mtls_added_p99_ms": (("mtls", "direct"), _added_p99("mtls"), "<"),
    "mtls_rss_mb": (("mtls",), lambda r: _peak_rss(r["mtls"]), "<"),
}


def verdict(results: list[Result]) -> dict[str, Any]:
    """Each target whose scenarios were run: met or not (not met when one of them failed)."""
    ran = {r.scenario for r in results}
    ok = {r.scenario: r for r in results if r.error is None}
    checks: dict[str, bool] = {}
    values: dict[str, float] = {}
    failed: set[str] = set()
    for name, (needs, measure, sense) in CHECKS.items():
        if not set(needs) <= ran:
            continue
        if not set(needs) <= ok.keys():
            checks[name] = False
            failed.update(set(needs) - ok.keys())
            continue
        value = measure(ok)
        values[name] = round(value, 3)
        checks[name] = value >= TARGETS[name] if sense == ">=" else value < TARGETS[name]
    report: dict[str, Any] = {
        "met": bool(checks) and all(checks.values()),
        "checks": checks,
        "values": values,
        "targets": TARGETS,
    }
    if failed:
        report["reason"] = f"scenario failed: {', '.join(sorted(failed))}"
    return report


def render_verdict(report: dict[str, Any]) -> str:
    lines = ["targets:"]
    for name, met in report["checks"].items():
        sense = CHECKS[name][2]
        value = report["values"].get(name)
        shown = f"{value:g}" if value is not None else "-"
        lines.append(f"  {name:<18} {shown:>9} {sense} {TARGETS[name]:g}  {'met' if met else 'NOT MET'}")
    if "reason" in report:
        lines.append(f"  ({report['reason']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.proxy import attack, protocols  # import this module in turn: only once it is loaded

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(("direct", "tether", "mtls", "nghttpx", *protocols.SCENARIOS, "attack")),
        help="comma-separated subset to run (h1-*, tcp-*: bench/proxy/protocols.py; attack: the attack "
        "phase, bench/proxy/attack.py)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured run")
    parser.add_argument(
        "--saturation-runs",
        type=int,
        default=3,
        help="saturation runs per scenario; the best counts (default 3)",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="h2load warm-up before the saturation run")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s of the open-loop latency run")
    parser.add_argument(
        "--open-loop-connections", type=int, default=1, help="connections of the open-loop run (default 1)"
    )
    parser.add_argument("--body-bytes", type=int, default=128, help="size of the response body")
    parser.add_argument("--json", type=Path, help="also write the JSON report to this file")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the Tether proxies during the saturation run; stacks go here"
    )
    parser.add_argument(
        "--profile-phase",
        choices=("saturation", "open-loop"),
        default="saturation",
        help="which run --profile samples: the saturation run (default) or the open-loop latency run",
    )
    parser.add_argument(
        "--proxy-log-level", default="warning", help="the Tether proxies' --log-level (default: warning)"
    )
    parser.add_argument(
        "--logs", type=Path, help="keep the Tether processes' logs here, one folder per scenario"
    )
    parser.add_argument(
        "--proxy-env",
        choices=("image", "dev"),
        default="image",
        help="run the proxies from an environment holding what the image holds (default), or from this "
        "development environment",
    )
    attack.add_arguments(parser)
    protocols.add_arguments(parser)
    args = parser.parse_args(argv)
    missing = check_tools()
    if missing:
        print("missing: " + "; ".join(missing), file=sys.stderr)
        print(
            "install: apt-get update && apt-get install -y nghttp2-client nghttp2-server nghttp2-proxy",
            file=sys.stderr,
        )
        return 2
    reason = unavailable_reason()
    if reason is not None:
        print(f"cannot run the proxy benchmark: {reason}", file=sys.stderr)
        return 2
    results = []
    protocol_results = []
    scenarios = args.scenarios.split(",")
    attack_phase = None
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        if args.proxy_env == "image":
            os.chmod(tmp, 0o755)
            print("building the proxy's image environment ...", file=sys.stderr, flush=True)
            _proxy_python[0] = image_environment(Path(tmp) / "proxy-venv")
        for scenario in [name for name in scenarios if name != "attack"]:
            workdir = Path(tmp) / scenario
            workdir.mkdir()
            os.chmod(tmp, 0o755)
            started = time.monotonic()
            print(f"running {scenario} ...", file=sys.stderr, flush=True)
            done: Result | protocols.ProtocolResult
            if scenario in protocols.SCENARIOS:
                done = protocols.run_scenario(scenario, args, workdir)
                protocol_results.append(done)
            else:
                done = run_scenario(scenario, args, workdir)
                results.append(done)
            print(f"  {scenario} took {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
            for note in done.log_notes:
                print(f"  log: {note}", file=sys.stderr, flush=True)
        if "attack" in scenarios:
            started = time.monotonic()
            print("running attack ...", file=sys.stderr, flush=True)
            attack_phase = attack.run_phase(args, Path(tmp) / "attack")
            print(f"  attack took {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
            for note in attack_phase.log_notes:
                print(f"  log: {note}", file=sys.stderr, flush=True)
    targets = verdict(results)
    protocol_targets = protocols.verdict(protocol_results, results)  # in the JSON's "protocols"
    met = [targets["met"]] if results or not (protocol_results or attack_phase) else []
    if protocol_results:
        met.append(protocol_targets["met"])
    if attack_phase is not None:
        met.append(all(attack.verdict(attack_phase)["checks"].values()))  # in the JSON's "attack"
    targets["met"] = all(met)
    report = {
        "cores": os.cpu_count(),
        "h2load": subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip(),
        "settings": {
            "saturation": "-c 10 -m 10",
            "seconds": args.seconds,
            "open_loop_rate": args.rate,
            "open_loop_connections": args.open_loop_connections,
            "proxy_env": args.proxy_env,
        },
        "proxy_user": " ".join(proxy_user()),
        "results": [asdict(r) for r in results],
        "protocols": protocols.as_json(protocol_results, protocol_targets, args)
        if protocol_results
        else None,
        "attack": attack.as_json(attack_phase) if attack_phase is not None else None,
        "targets": targets,
    }
    if results:
        print(render_table(results))
    if protocol_results:
        print(protocols.render(protocol_results, results, args))
    if attack_phase is not None:
        print(attack.render(attack_phase))
    print(render_verdict(targets))
    if protocol_results:
        print(protocols.render_verdict(protocol_targets))
    print(f"cores: {os.cpu_count()}")
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    attack_failed = attack_phase is not None and attack_phase.error is not None
    errors = [r.error for r in results] + [r.error for r in protocol_results]
    scenario_failed = any(error is not None for error in errors)
    return 0 if not scenario_failed and not attack_failed else 1


if __name__ == "__main__":
    sys.exit(main())
