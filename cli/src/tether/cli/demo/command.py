"""``tether demo [--duration S]``: the local mesh, the demo application meshed with ``tether run``, and a
live ``tether stat`` table of namespace ``demo`` until the duration elapses or Ctrl-C; then everything it
started is stopped (the mesh too, when the demo started it)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration
from rich.table import Table

from tether.cli import output
from tether.cli.localmesh import commands
from tether.cli.localmesh.config import HOST, PUBLIC_API, MeshConfig, Paths
from tether.cli.localmesh.state import mesh_running, read_state
from tether.cli.localmesh.supervisor import _set_parent_death_signal
from tether.shared.errors import FatalError
from tether.shared.proto.public.v1 import public_pb2, public_pb2_grpc

NAMESPACE = "demo"
REFRESH = 2.0
STOP_GRACE = 10.0
_RUN_LINE = re.compile(r"admin 127\.0\.0\.1:(\d+) -> app port (\d+)")


def _free_port(mesh_ports: range) -> int:
    """A free port for a demo application, outside the mesh's own range: ``tether run`` takes its
    sidecars' ports from there, and an application that has not bound its port yet would look free to it
    (a new user's first ``make demo`` saw the web service lose its port to a sidecar's admin listener)."""
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in mesh_ports:
            return port


def authority(name: str, port: int) -> str:
    return f"{name}.{NAMESPACE}.svc.cluster.local:{port}"


@dataclass
class Service:
    name: str
    port: int
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    admin_port: int = 0
    extra: list[str] = field(default_factory=list)


def services(paths: Paths, mesh_ports: range) -> list[Service]:
    ports = {name: _free_port(mesh_ports) for name in ("emoji", "voting", "web")}
    app = [sys.executable, "-m", "tether.cli.demo.app"]
    specs = [
        ("emoji", ports["emoji"], [*app, "emoji", "--port", str(ports["emoji"])]),
        ("voting", ports["voting"], [*app, "voting", "--port", str(ports["voting"])]),
        (
            "web",
            ports["web"],
            [
                *app,
                *("web", "--port", str(ports["web"])),
                *("--emoji", authority("emoji", ports["emoji"])),
                *("--voting", authority("voting", ports["voting"])),
            ],
        ),
        ("vote-bot", 1, [*app, "generator", "--web", authority("web", ports["web"])]),
    ]
    return [Service(name, port, argv, paths.logs / f"demo-{name}.log") for name, port, argv in specs]


def _start(paths: Paths, service: Service) -> None:
    argv = [
        *(sys.executable, "-m", "tether.cli", "run", "--state-dir", str(paths.root)),
        *("--name", service.name, "--namespace", NAMESPACE, "--port", str(service.port), "--"),
        *service.argv,
    ]
    with open(service.log, "ab") as log:
        service.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C is the demo's to handle
            preexec_fn=_set_parent_death_signal,  # noqa: PLW1509 (before any thread)
        )


def _await_proxy(service: Service, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    assert service.process is not None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            match = _RUN_LINE.search(service.log.read_text(errors="replace"))
            if match:
                service.admin_port = int(match.group(1))
                return
        if service.process.poll() is not None:
            raise FatalError(
                f"tether run of the demo's {service.name} exited with {service.process.returncode}",
                f"see {service.log}",
            )
        time.sleep(0.05)
    raise FatalError(f"the demo's {service.name} not meshed within {timeout:g}s", f"see {service.log}")


def _stop(started: list[Service]) -> None:
    running = [s.process for s in started if s.process is not None and s.process.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for process in running:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _stat(stub: public_pb2_grpc.ApiStub) -> list[public_pb2.StatRow]:
    request = public_pb2.StatSummaryRequest(
        selector=public_pb2.Resource(namespace=NAMESPACE, kind="deployment"),
        time_window=Duration(seconds=60),
    )
    try:
        return list(stub.StatSummary(request, timeout=5).rows)
    except grpc.RpcError:
        return []


def _rich_table(rows: list[public_pb2.StatRow], title: str) -> Table:
    columns = [*output.STAT_COLUMNS, "MTLS"]
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column == "NAME" else "right")
    for row in rows:
        cells = output.stat_cells(row)
        style = "red" if row.failure_count else None
        table.add_row(*(cells[c] for c in columns), style=style)
    return table


def _title(remaining: float | None) -> str:
    left = "Ctrl-C to stop" if remaining is None else f"{max(0, round(remaining))}s left, Ctrl-C to stop"
    return f"tether stat deployment -n {NAMESPACE} (1m window; {left})"


def _show(stub: public_pb2_grpc.ApiStub, deadline: float | None) -> None:
    def remaining() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    def done() -> bool:
        left = remaining()
        return left is not None and left <= 0

    if sys.stdout.isatty():
        from rich.console import Console
        from rich.live import Live

        with Live(_rich_table([], _title(remaining())), console=Console(), auto_refresh=False) as live:
            while not done():
                live.update(_rich_table(_stat(stub), _title(remaining())), refresh=True)
                _sleep(REFRESH, deadline)
        return
    while not done():
        rows = _stat(stub)
        print(f"--- {time.strftime('%H:%M:%S')} {_title(remaining())}")
        print(output.stat_table(rows, all_namespaces=False, wide=True) if rows else "No traffic found (yet).")
        sys.stdout.flush()
        _sleep(REFRESH, deadline)


def _sleep(seconds: float, deadline: float | None) -> None:
    if deadline is not None:
        seconds = max(0.0, min(seconds, deadline - time.monotonic()))
    time.sleep(seconds)


def demo(config: MeshConfig, duration: float | None) -> int:
    paths = Paths(config.state_dir)
    started_mesh = False
    started: list[Service] = []
    # SIGTERM as Ctrl-C: the same teardown.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if mesh_running(paths):
            print(f"using the local mesh already running in {paths.root}", flush=True)
        else:
            commands.up(config)
            started_mesh = True
        state = read_state(paths)
        if state is None:
            raise FatalError(f"the local mesh in {paths.root} has no state file", "run `tether up` again")
        api = next(c.port for c in state.components if c.name == PUBLIC_API)
        print(
            f"starting the demo application in namespace {NAMESPACE} (logs {paths.logs}/demo-*.log):",
            flush=True,
        )
        for service in services(paths, range(state.port_base, state.port_base + 100)):
            _start(paths, service)
            started.append(service)
        for service in started:
            _await_proxy(service)
            where = f"app port {service.port}" if service.port > 1 else "client"
            print(
                f"  {service.name:<9} {where:<15} proxy admin {HOST}:{service.admin_port}  log {service.log}",
                flush=True,
            )
        print(
            "traffic: vote-bot -> web -> emoji (slow) and voting (VoteDoughnut always fails), all mTLS",
            flush=True,
        )
        deadline = None if duration is None else time.monotonic() + duration
        with grpc.insecure_channel(f"{HOST}:{api}") as channel:
            _show(public_pb2_grpc.ApiStub(channel), deadline)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            print("stopping the demo application", flush=True)
            _stop(started)
            if started_mesh:
                commands.down(config)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
    return 0
