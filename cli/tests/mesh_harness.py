"""What the local-mesh tests share: running ``tether`` as a user would, free port ranges, and what is
left running or listening of a mesh."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

TETHER = f"{sys.prefix}/bin/tether"


def clean_env() -> dict[str, str]:
    """This environment without ``TETHER_*``: the commands get only the flags a test gives them."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}


def tether(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TETHER, *args], capture_output=True, text=True, timeout=timeout, env=clean_env())


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def free_base() -> int:
    """A base of 100 ports below the ephemeral range, every one of them free."""
    while True:
        base = random.randrange(20000, 30000, 100)
        if all(bindable(base + offset) for offset in range(100)):
            return base


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def mesh_pids(state_dir: Path) -> list[int]:
    """Every live process whose command line names the state directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(state_dir).encode() in (entry / "cmdline").read_bytes() and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class LocalMesh:
    """A local mesh of a test: its state directory and port range, and the flags that name them."""

    def __init__(self, state_dir: Path, base: int) -> None:
        self.state_dir = state_dir
        self.base = base
        self.flags = ("--state-dir", str(state_dir), "--port-base", str(base))

    def down(self) -> None:
        """``tether down``, then SIGKILL whatever of it a failed test left running."""
        tether("down", *self.flags)
        for pid in mesh_pids(self.state_dir):
            os.kill(pid, signal.SIGKILL)


def proxy_metric(admin: int, name: str, **labels: str) -> float:
    """The sum of ``name``'s series with all of ``labels``, from a proxy's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def stat_rows(state_dir: Path, *selector: str) -> dict[str, dict[str, Any]]:
    """``tether stat SELECTOR -o json`` against the mesh in ``state_dir``, by name ({} when it fails)."""
    done = tether("stat", *selector, "-o", "json", "--state-dir", str(state_dir), timeout=30)
    return {row["name"]: row for row in json.loads(done.stdout)} if done.returncode == 0 else {}
