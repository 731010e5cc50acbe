"""Network namespaces for tests: create them, wire them with veth pairs, run processes inside, clean up.

Every namespace and interface name carries a random suffix, so parallel runs never collide, and veth pairs
are created directly inside their namespaces, so nothing is ever added to the host's namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
IDENTIFY = HERE / "tcp_identify.py"
TOOLS = ("ip", "iptables", "iptables-save", "iptables-restore", "setpriv")
_CLONE_NEWNET = 0x40000000


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root to create network namespaces and install iptables rules"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found: apt-get install -y iptables iproute2 util-linux"
    probe = f"ttprobe{secrets.token_hex(4)}"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if created.returncode != 0:
        return f"cannot create network namespaces: {created.stderr.strip()}"
    try:
        nat = subprocess.run(
            ["ip", "netns", "exec", probe, "iptables-save", "-t", "nat"],
            capture_output=True,
            text=True,
            check=False,
        )
        if nat.returncode != 0:
            return f"iptables does not work in a network namespace here: {nat.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _as_user(argv: Sequence[str], uid: int | None) -> list[str]:
    if uid is None:
        return list(argv)
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


@dataclass
class Namespace:
    name: str
    harness: NetnsHarness

    def argv(self, argv: Sequence[str], uid: int | None = None) -> list[str]:
        return ["ip", "netns", "exec", self.name, *_as_user(argv, uid)]

    def run(
        self,
        argv: Sequence[str],
        *,
        uid: int | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion inside the namespace (as ``uid`` if given); raise with its output on failure."""
        done = subprocess.run(
            self.argv(argv, uid), capture_output=True, text=True, check=False, env=env, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} in {self.name} exited {done.returncode}\n"
                f"stdout: {done.stdout}\nstderr: {done.stderr}"
            )
        return done

    def spawn(
        self,
        argv: Sequence[str],
        *,
        uid: int | None = None,
        env: dict[str, str] | None = None,
        ready_line: str | None = None,
        timeout: float = 15.0,
    ) -> subprocess.Popen[str]:
        """Start a background process (stopped at cleanup); optionally await ``ready_line`` on stdout."""
        process = subprocess.Popen(
            self.argv(argv, uid),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.harness.processes.append(process)
        if ready_line is not None:
            wait_for_line(process, ready_line, timeout)
        return process

    def iptables_save(self, table: str = "nat", binary: str = "iptables-save") -> str:
        """The table as iptables-save prints it, without the timestamp comments and packet counters."""
        saved = self.run([binary, "-t", table]).stdout
        lines = []
        for line in saved.splitlines():
            if line.startswith("#"):
                continue
            # Chain policy lines carry packet counters, which change with any traffic.
            lines.append(line.split(" [", 1)[0] if line.startswith(":") else line)
        return "\n".join(lines) + "\n"

    def identify_server(self, ports: Sequence[int], uid: int | None = None) -> subprocess.Popen[str]:
        """Listen on ``ports`` (all addresses); each accepted connection is told which port took it."""
        return self.spawn(
            [sys.executable, str(IDENTIFY), "serve", *map(str, ports)], uid=uid, ready_line="ready"
        )

    def open_socket(self, host: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A TCP socket connected from inside the namespace, usable by this process (e.g. by asyncio).

        A socket belongs to the network namespace of the thread that created it, so a short-lived thread
        joins the namespace (setns), connects and hands the socket back; the rest of the process is
        untouched. The connection is subject to the namespace's iptables rules like any other from there.
        """
        result: list[socket.socket | BaseException] = []

        def connect_inside() -> None:
            try:
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if _libc().setns(fd, _CLONE_NEWNET) != 0:
                        errno = ctypes.get_errno()
                        raise OSError(errno, f"setns into {self.name}: {os.strerror(errno)}")
                finally:
                    os.close(fd)
                result.append(socket.create_connection((host, port), timeout=timeout))
            except BaseException as exc:  # handed to the caller's thread
                result.append(exc)

        thread = threading.Thread(target=connect_inside, name=f"setns-{self.name}")
        thread.start()
        thread.join()
        outcome = result[0]
        if isinstance(outcome, BaseException):
            raise outcome
        outcome.settimeout(None)
        return outcome

    def connect(self, targets: Sequence[str], uid: int | None = None) -> list[dict[str, Any]]:
        """Dial each ``host:port`` from inside; what the accepting server reported, or an error."""
        done = self.run([sys.executable, str(IDENTIFY), "connect", *targets], uid=uid)
        return [json.loads(line) for line in done.stdout.splitlines()]


class NetnsHarness:
    """Owns namespaces and processes made for one test; ``cleanup`` removes them all, whatever happened."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(3)
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen[str]] = []
        self._links = 0

    def namespace(self, label: str = "ns") -> Namespace:
        name = f"tt{label[:4]}{self.token}{len(self.namespaces)}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        namespace = Namespace(name, self)
        self.namespaces.append(namespace)
        namespace.run(["ip", "link", "set", "lo", "up"])
        return namespace

    def link(self, left: Namespace, right: Namespace) -> tuple[str, str]:
        """Join two namespaces with a veth pair on a fresh /24; returns (left address, right address)."""
        self._links += 1
        subnet = f"10.231.{self._links}"
        left_if, right_if = f"tv{self.token}{self._links}a", f"tv{self.token}{self._links}b"
        left.run(
            ["ip", "link", "add", left_if, "type", "veth", "peer", "name", right_if, "netns", right.name]
        )
        for namespace, interface, host in ((left, left_if, 1), (right, right_if, 2)):
            namespace.run(["ip", "addr", "add", f"{subnet}.{host}/24", "dev", interface])
            namespace.run(["ip", "link", "set", interface, "up"])
        return f"{subnet}.1", f"{subnet}.2"

    def cleanup(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 15)
        deadline = time.monotonic() + 5
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 9)
                process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        for namespace in self.namespaces:
            subprocess.run(["ip", "netns", "del", namespace.name], capture_output=True, check=False)
        self.namespaces.clear()
        self.processes.clear()


def wait_for_line(process: subprocess.Popen[str], expected: str, timeout: float) -> None:
    """Read ``process``'s stdout until a line equal to ``expected``; fail with its stderr if it never comes.

    A thread does the blocking reads so that lines after ``expected`` stay buffered for later readers.
    """
    stdout = process.stdout
    assert stdout is not None
    seen: list[str] = []

    def read_until_expected() -> None:
        for line in stdout:
            seen.append(line)
            if line.strip() == expected:
                return

    reader = threading.Thread(target=read_until_expected, daemon=True)
    reader.start()
    reader.join(timeout)
    if seen and seen[-1].strip() == expected:
        return
    if process.poll() is None:
        os.killpg(process.pid, 9)
    reader.join(5)
    _, stderr = process.communicate()
    raise AssertionError(
        f"{process.args!r} did not print {expected!r} within {timeout} s (exit {process.returncode})\n"
        f"stdout: {''.join(seen)}\nstderr: {stderr}"
    )


def proxy_init(namespace: Namespace, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``tether-proxy init`` (as ``python -m tether.proxy.init``) inside ``namespace``."""
    return namespace.run(
        [sys.executable, "-m", "tether.proxy.init", "--log-format", "json", *args], check=check
    )


PROXY_UID = 2102
OUTBOUND_PORT = 4140
INBOUND_PORT = 4143
ADMIN_PORT = 4191

_WAIT_PORT = """
import socket, sys
from tether.shared.testing import eventually_sync
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def accepting():
    try:
        socket.create_connection((host, port), 1).close()
    except OSError:
        return False
    return True
try:
    eventually_sync(accepting, timeout, f"something listening on {host}:{port}", 0.02)
except AssertionError as failed:
    sys.exit(str(failed))
"""

_FETCH = """
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
        sys.stdout.write(response.read().decode())
except urllib.error.HTTPError as error:
    sys.exit(f"HTTP {error.code}")
"""


def wait_port(namespace: Namespace, host: str, port: int, timeout: float = 15.0) -> None:
    """Poll from inside ``namespace`` until something accepts on ``host:port``."""
    namespace.run([sys.executable, "-c", _WAIT_PORT, host, str(port), str(timeout)], timeout=timeout + 10)


def fetch(namespace: Namespace, url: str) -> str:
    """GET ``url`` from inside ``namespace``; the body as text."""
    return namespace.run([sys.executable, "-c", _FETCH, url]).stdout


def start_tether_proxy(namespace: Namespace, *extra: str, uid: int = PROXY_UID) -> subprocess.Popen[str]:
    """``python -m tether.proxy run`` as the proxy UID with discovery and identity disabled (original
    destinations, plaintext)."""
    proxy = namespace.spawn(
        [
            sys.executable, "-m", "tether.proxy", "run",
            "--outbound-addr", f"127.0.0.1:{OUTBOUND_PORT}",
            "--inbound-addr", f"0.0.0.0:{INBOUND_PORT}",
            "--admin-addr", f"0.0.0.0:{ADMIN_PORT}",
            "--destination-addr", "",
            "--identity-disabled", "true",
            "--log-format", "json",
            *extra,
        ],
        uid=uid,
    )  # fmt: skip
    # The admin listener opens after the data listeners; probing those would add connections to metrics.
    wait_port(namespace, "127.0.0.1", ADMIN_PORT)
    return proxy


def proxy_metrics(namespace: Namespace) -> str:
    return fetch(namespace, f"http://127.0.0.1:{ADMIN_PORT}/metrics")


# IPv6: additions for dual-stack tests; everything above is unchanged and IPv4-only. -------------------------

IPV6_TOOLS = ("ip6tables", "ip6tables-save", "ip6tables-restore")


def ipv6_unavailable_reason() -> str | None:
    """Why IPv6 namespace tests cannot run here (beyond :func:`unavailable_reason`), or None when they can."""
    missing = [tool for tool in IPV6_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found: apt-get install -y iptables"
    if not Path("/proc/sys/net/ipv6").is_dir():
        return "the kernel has no IPv6 (/proc/sys/net/ipv6 is missing)"
    return None


@dataclass
class DualStackLink:
    """A veth pair with an IPv4 /24 and an IPv6 /64 on each end."""

    left_ipv4: str
    right_ipv4: str
    left_ipv6: str
    right_ipv6: str
    left_interface: str
    right_interface: str


def link_dual_stack(harness: NetnsHarness, left: Namespace, right: Namespace) -> DualStackLink:
    """``harness.link(left, right)``, plus ``fd00:231:<n>::1`` and ``::2`` (/64) on the same pair.

    The IPv6 addresses are added with ``nodad``, so they are usable at once rather than after duplicate
    address detection (about a second).
    """
    left_ipv4, right_ipv4 = harness.link(left, right)
    number = harness._links
    left_if, right_if = f"tv{harness.token}{number}a", f"tv{harness.token}{number}b"
    prefix = f"fd00:231:{number}::"
    for namespace, interface, host in ((left, left_if, 1), (right, right_if, 2)):
        namespace.run(["ip", "-6", "addr", "add", f"{prefix}{host}/64", "dev", interface, "nodad"])
    return DualStackLink(left_ipv4, right_ipv4, f"{prefix}1", f"{prefix}2", left_if, right_if)


# tcp_identify.py's protocol over IPv6: servers bound to [::] only (IPV6_V6ONLY, so they share ports with
# tcp_identify.py's 0.0.0.0 servers), the original destination from IP6T_SO_ORIGINAL_DST, and addresses
# written [addr]:port.
_IDENTIFY6 = r"""
import asyncio, json, socket, struct, sys
from functools import partial

IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h


def original_destination(sock):
    try:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
    except OSError:
        return None
    (port,) = struct.unpack_from("!H", raw, 2)
    return f"[{socket.inet_ntop(socket.AF_INET6, raw[8:24])}]:{port}"


async def serve(ports):
    async def answer(port, reader, writer):
        peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
        original = original_destination(writer.get_extra_info("socket"))
        redirected = original is not None and original != f"[{local[0]}]:{local[1]}"
        reply = {"port": port, "original_dst": original if redirected else None}
        reply["peer"] = f"[{peer[0]}]:{peer[1]}"
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
        writer.close()

    servers = []
    for port in ports:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", port))
        sock.listen(128)
        sock.setblocking(False)
        servers.append(await asyncio.start_server(partial(answer, port), sock=sock))
    print("ready", flush=True)
    await asyncio.Event().wait()


async def dial(target):
    host, _, port = target.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 5)
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        reply = json.loads(line) if line else {"error": "closed without an answer"}
    except (OSError, TimeoutError) as exc:
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    reply["target"] = target
    return reply


async def connect(targets):
    for target in targets:
        print(json.dumps(await dial(target)), flush=True)


command, *args = sys.argv[1:]
asyncio.run(serve([int(port) for port in args]) if command == "serve" else connect(args))
"""


def identify_server_ipv6(
    namespace: Namespace, ports: Sequence[int], uid: int | None = None
) -> subprocess.Popen[str]:
    """``Namespace.identify_server`` over IPv6: listens on ``[::]`` at ``ports``; addresses as [addr]:port."""
    return namespace.spawn(
        [sys.executable, "-c", _IDENTIFY6, "serve", *map(str, ports)], uid=uid, ready_line="ready"
    )


def connect_ipv6(
    namespace: Namespace, targets: Sequence[str], uid: int | None = None
) -> list[dict[str, Any]]:
    """``Namespace.connect`` over IPv6: dial each ``[addr]:port`` from inside; what the server reported."""
    done = namespace.run([sys.executable, "-c", _IDENTIFY6, "connect", *targets], uid=uid)
    return [json.loads(line) for line in done.stdout.splitlines()]
