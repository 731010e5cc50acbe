"""``tether run`` as a user runs it: a real local mesh (``tether up`` in a tmp state directory), an
unmodified HTTP server (Python's http.server) meshed as service ``web`` and an unmodified curl meshed as
``client``; curl's request goes through both sidecars over mTLS. Real processes and ports, no mocks."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import TETHER, LocalMesh, clean_env, free_base, listening, proxy_metric, stat_rows, tether

from tether.shared.testing import eventually_sync

PROXY_LINE = re.compile(r"inbound 127\.0\.0\.1:(\d+) admin 127\.0\.0\.1:(\d+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    running = LocalMesh(tmp_path_factory.mktemp("mesh") / "state", free_base())
    up = tether("up", *running.flags)
    assert up.returncode == 0, up.stderr
    try:
        yield running
    finally:
        running.down()


def test_without_a_mesh_run_says_to_start_one(tmp_path: Path) -> None:
    result = tether("run", "--state-dir", str(tmp_path), "--name", "web", "--port", "8000", "--", "true")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "tether up" in lines[0], result.stderr


def test_a_bad_argument_is_one_line_exit_2(tmp_path: Path) -> None:
    result = tether("run", "--state-dir", str(tmp_path), "--name", "Web_1", "--port", "8000", "--", "true")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def _await_stat(mesh: LocalMesh, name: str, requests: int, *selector: str) -> dict[str, Any]:
    """``tether stat -o json`` once its row for ``name`` counts ``requests``: reports every 2 s, rollups
    every 10 s, so up to ~15 s."""
    rows: dict[str, dict[str, Any]] = {}

    def counted() -> dict[str, Any] | None:
        nonlocal rows
        rows = stat_rows(mesh.state_dir, *selector)
        return rows[name] if name in rows and rows[name]["requests"] >= requests else None

    return eventually_sync(
        counted, 40, lambda: f"tether stat to show {requests} requests of {name}: {rows}", interval=1
    )


def _run_until_success(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (a meshed client) until it exits 0, for up to 30 s while the mesh learns the service;
    the last failure's stderr in the timeout's message."""
    failed = ""

    def succeeded() -> subprocess.CompletedProcess[str] | None:
        nonlocal failed
        client = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=clean_env())
        failed = client.stderr
        return client if client.returncode == 0 else None

    return eventually_sync(succeeded, 30, lambda: f"{what} to succeed; last stderr: {failed}", 0.5)


def _meshed_server(run_flags: tuple[str, ...], command: tuple[str, ...]) -> subprocess.Popen[str]:
    """``tether run <run_flags> -- <command>``; its stderr (the proxy's line first) is for the caller."""
    return subprocess.Popen(
        [TETHER, "run", *run_flags, "--", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )


def test_curl_reaches_a_meshed_http_server_through_both_proxies_over_mtls(mesh: LocalMesh) -> None:
    app_port = _free_port()
    server = _meshed_server(
        ("--state-dir", str(mesh.state_dir), "--name", "web", "--port", str(app_port)),
        (sys.executable, "-m", "http.server", str(app_port), "--bind", "127.0.0.1"),
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
        client = _run_until_success(
            [
                *(TETHER, "run", "--state-dir", str(mesh.state_dir), "--name", "client", "--port", "1"),
                *("--", "curl", "-sS", "--fail", url),
            ],
            "curl through the mesh",
        )
        assert "Directory listing" in client.stdout, client.stdout
        assert proxy_metric(admin, "request_total", direction="inbound", tls="true") >= 1
        assert (
            proxy_metric(
                admin,
                "request_total",
                direction="inbound",
                client_id="client.default.serviceaccount.identity.cluster.local",
            )
            >= 1
        )
        # And the user sees it: curl's request in `tether stat`, served over mTLS.
        web = _await_stat(mesh, "web", 1, "deploy", "-n", "default")
        assert web["success"] >= 1 and web["tls_share"] == 1.0, web
    finally:
        server.send_signal(signal.SIGTERM)  # forwarded to the server; run exits with its code
        code = server.wait(30)
    assert code == 128 + signal.SIGTERM or code == 0, code
    assert not listening(inbound) and not listening(admin)  # the proxy stopped with it
    # A command that fails: run exits with its code.
    failed = tether(
        "run", "--state-dir", str(mesh.state_dir), "--name", "job", "--port", "1", "--", "sh", "-c", "exit 7"
    )
    assert failed.returncode == 7, failed.stderr


GRPC_SERVER = """
import sys
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(4))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""

# A plain grpcio client: it knows nothing of the mesh; grpc_proxy (set by tether run) takes it there.
GRPC_CLIENT = """
import sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(int(sys.argv[2])):
        answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=10, wait_for_ready=True)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
print("all served")
"""


def test_an_unmodified_grpcio_client_and_server_are_meshed_and_seen_in_stat(mesh: LocalMesh) -> None:
    app_port = _free_port()
    flags = ("--state-dir", str(mesh.state_dir), "--namespace", "grpcdemo")
    server = _meshed_server(
        (*flags, "--name", "health", "--port", str(app_port)),
        (sys.executable, "-c", GRPC_SERVER, str(app_port)),
    )
    try:
        assert server.stderr is not None
        assert PROXY_LINE.search(server.stderr.readline())
        target = f"health.grpcdemo.svc.cluster.local:{app_port}"
        client = _run_until_success(
            [
                *(TETHER, "run", *flags, "--name", "prober", "--port", "1"),
                *("--", sys.executable, "-c", GRPC_CLIENT, target, "5"),
            ],
            "the grpcio client through the mesh",
        )
        assert "all served" in client.stdout, client.stderr[-2000:]
        health = _await_stat(mesh, "health", 5, "deploy", "-n", "grpcdemo")
        assert health["success_rate"] == 1.0 and health["tls_share"] == 1.0, health
        assert health["latency_ms_p50"] is not None
        # The client's side: its outbound traffic to the server, with `--to`.
        prober = _await_stat(mesh, "prober", 5, "deploy", "-n", "grpcdemo", "--to", "deploy/health")
        assert prober["success"] >= 5, prober
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
