"""What a running local mesh leaves in its state directory, and how the commands probe it.

The supervisor holds an exclusive ``flock`` on ``supervisor.lock`` for as long as it lives (``tether up``
takes it first and hands it over), so "a mesh runs here" is exactly "that lock is held", whatever pids a
stale ``mesh.json`` names. ``mesh.json`` holds the supervisor's pid and, per component, its pid and ports.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from tether.cli.localmesh.config import HOST, NATS, Paths


class ComponentState(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    pid: int  # 0 while it is not running (between a crash and its restart)
    port: int
    admin_port: int  # 0: none (NATS)
    restarts: int
    log: str


class MeshState(msgspec.Struct, frozen=True, kw_only=True):
    supervisor_pid: int
    state_dir: str
    port_base: int
    components: list[ComponentState]


def write_state(paths: Paths, state: MeshState) -> None:
    tmp = paths.state.with_suffix(".json.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state)) + b"\n")
    tmp.replace(paths.state)


def read_state(paths: Paths) -> MeshState | None:
    try:
        return msgspec.json.decode(paths.state.read_bytes(), type=MeshState)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def try_lock(path: Path) -> int | None:
    """An fd holding the exclusive lock on ``path``, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def mesh_running(paths: Paths) -> bool:
    if not paths.lock.exists():
        return False
    fd = try_lock(paths.lock)
    if fd is None:
        return True
    os.close(fd)
    return False


def port_free(port: int) -> bool:
    """True when a listener could bind ``port`` on 127.0.0.1 (as the servers do, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_ready(port: int, path: str = "/ready", timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64)
    except OSError:
        return False
    return head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))


def nats_ready(port: int, timeout: float = 1.0) -> bool:
    """A nats-server ready for clients greets with INFO (JetStream is up by then)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            return sock.recv(4).startswith(b"INFO")
    except OSError:
        return False


def component_ready(name: str, port: int, admin_port: int) -> bool:
    return nats_ready(port) if name == NATS else http_ready(admin_port)


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not running.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields and fields[0] in ("Z", "X"):
            return False
    return True


def belongs_to(pid: int, paths: Paths) -> bool:
    """True when process ``pid`` is one of this mesh's (its command line names the state directory)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(paths.root).encode() in cmdline


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
