"""``tether run`` as a user runs it: a real local mesh (``tether up`` in a tmp state directory), an
unmodified HTTP server (Python's http.server) meshed as service ``web`` and an unmodified curl meshed as
``client``; curl's request goes through both sidecars over mTLS. Real processes and ports, no mocks."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

TETHER = f"{sys.prefix}/bin/tether"
PROXY_LINE = re.compile(r"inbound 127\.0\.0\.1:(\d+) admin 127\.0\.0\.1:(\d+)")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}


def tether(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TETHER, *args], capture_output=True, text=True, timeout=timeout, env=_env())


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def free_base() -> int:
    """A base of 100 ports below the ephemeral range, every one of them free."""
    while True:
        base = random.randrange(20000, 30000, 100)
        if all(_bindable(base + offset) for offset in range(100)):
            return base


def _mesh_pids(state_dir: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(state_dir).encode() in (entry / "cmdline").read_bytes():
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if stat not in ("Z", "X"):
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


class Mesh:
    def __init__(self, state_dir: Path, base: int) -> None:
        self.state_dir = state_dir
        self.base = base
        self.flags = ("--state-dir", str(state_dir), "--port-base", str(base))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    running = Mesh(tmp_path_factory.mktemp("mesh") / "state", free_base())
    up = tether("up", *running.flags)
    assert up.returncode == 0, up.stderr
    try:
        yield running
    finally:
        tether("down", *running.flags)
        for pid in _mesh_pids(running.state_dir):
            os.kill(pid, signal.SIGKILL)


def _metrics(admin: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_without_a_mesh_run_says_to_start_one(tmp_path: Path) -> None:
    result = tether("run", "--state-dir", str(tmp_path), "--name", "web", "--port", "8000", "--", "true")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "tether up" in lines[0], result.stderr


def test_a_bad_argument_is_one_line_exit_2(tmp_path: Path) -> None:
    result = tether("run", "--state-dir", str(tmp_path), "--name", "Web_1", "--port", "8000", "--", "true")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_curl_reaches_a_meshed_http_server_through_both_proxies_over_mtls(mesh: Mesh) -> None:
    app_port = _free_port()
    server = subprocess.Popen(
        [
            *(TETHER, "run", "--state-dir", str(mesh.state_dir), "--name", "web", "--port", str(app_port)),
            *("--", sys.executable, "-m", "http.server", str(app_port), "--bind", "127.0.0.1"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        found = PROXY_LINE.search(line)
        assert found, line
        inbound, admin = int(found.group(1)), int(found.group(2))
        assert mesh.base + 50 <= inbound < mesh.base + 100 and mesh.base + 50 <= admin < mesh.base + 100
        # The service keeps the application's port; its endpoint is the proxy's inbound port.
        url = f"http://web.default.svc.cluster.local:{app_port}/"
        deadline = time.monotonic() + 30
        while True:
            client = subprocess.run(
                [
                    *(TETHER, "run", "--state-dir", str(mesh.state_dir), "--name", "client", "--port", "1"),
                    *("--", "curl", "-sS", "--fail", url),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=_env(),
            )
            if client.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert client.returncode == 0, client.stderr
        assert "Directory listing" in client.stdout, client.stdout
        metrics = _metrics(admin)
        assert _sample(metrics, "request_total", direction="inbound", tls="true") >= 1, metrics
        assert (
            _sample(
                metrics,
                "request_total",
                direction="inbound",
                client_id="client.default.serviceaccount.identity.cluster.local",
            )
            >= 1
        )
    finally:
        server.send_signal(signal.SIGTERM)  # forwarded to the server; run exits with its code
        code = server.wait(30)
    assert code == 128 + signal.SIGTERM or code == 0, code
    assert not _listening(inbound) and not _listening(admin)  # the proxy stopped with it
    # A command that fails: run exits with its code.
    failed = tether(
        "run", "--state-dir", str(mesh.state_dir), "--name", "job", "--port", "1", "--", "sh", "-c", "exit 7"
    )
    assert failed.returncode == 7, failed.stderr
