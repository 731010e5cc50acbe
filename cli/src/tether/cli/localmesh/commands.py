"""``tether up``, ``tether down`` and ``tether status``: the local mesh, run by a background supervisor."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import msgspec

from tether.cli.localmesh.config import COMPONENTS, HOST, MeshConfig, Paths, encode
from tether.cli.localmesh.state import (
    MeshState,
    alive,
    belongs_to,
    component_ready,
    listening,
    mesh_running,
    port_free,
    read_state,
    try_lock,
    wait_until,
)
from tether.shared.errors import FatalError, SetupError

CA_FILES = ("ca.crt", "ca.key", "issuer.crt", "issuer.key", "token-signing.key")
EMPTY_REGISTRY = "# The local mesh's registry of services (see docs/ARCHITECTURE.md).\nservices: []\n"


def _state_dir_flag(paths: Paths) -> str:
    return f"--state-dir {paths.root}"


def _bootstrap(paths: Paths) -> None:
    """The trust anchor, issuer and token-signing key, on the first run only."""
    if all((paths.ca / name).exists() for name in CA_FILES):
        return
    paths.ca.mkdir(parents=True, exist_ok=True, mode=0o700)
    result = subprocess.run(
        [sys.executable, "-m", "tether.identity", "bootstrap", "--out", str(paths.ca)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise FatalError(
            f"bootstrapping the mesh's CA into {paths.ca} failed: {lines[-1]}",
            f"fix the cause or remove {paths.ca} and run tether up again",
        )


def _last_lines(path: str, count: int = 3) -> str:
    try:
        with open(path, errors="replace") as handle:
            lines = handle.read().strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-count:])


def up(config: MeshConfig) -> int:
    paths = Paths(config.state_dir)
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.logs.mkdir(exist_ok=True)
        lock_fd = try_lock(paths.lock)
    except OSError as exc:
        raise SetupError(
            f"cannot use the state directory {paths.root}: {exc.strerror}",
            "choose another one with --state-dir / TETHER_MESH_STATE_DIR",
        ) from None
    if lock_fd is None:
        state = read_state(paths)
        pid = f" (supervisor pid {state.supervisor_pid})" if state else ""
        raise FatalError(
            f"a local mesh already runs in {paths.root}{pid}; nothing started",
            f"see `tether status {_state_dir_flag(paths)}`, "
            f"or stop it with `tether down {_state_dir_flag(paths)}`",
        )
    try:
        for component, what, port in config.listeners():
            if not port_free(port):
                raise FatalError(
                    f"port {port} ({component} {what}) is already in use on {HOST}; nothing started",
                    "stop what listens there, "
                    "or move the mesh's range with --port-base / TETHER_MESH_PORT_BASE",
                )
        _bootstrap(paths)
        if not paths.registry.exists():
            paths.registry.write_text(EMPTY_REGISTRY)
        with open(paths.log("supervisor"), "ab") as logfile:
            supervisor = subprocess.Popen(
                [
                    *(sys.executable, "-m", "tether.cli.localmesh.supervisor"),
                    *("--config", encode(msgspec.structs.replace(config, state_dir=str(paths.root)))),
                    *("--lock-fd", str(lock_fd)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                pass_fds=(lock_fd,),
                start_new_session=True,
            )
    finally:
        os.close(lock_fd)  # the supervisor holds the lock from here on
    return _await_ready(config, paths, supervisor)


def _await_ready(config: MeshConfig, paths: Paths, supervisor: subprocess.Popen[bytes]) -> int:
    ports = config.ports()
    pending = list(COMPONENTS)
    deadline = time.monotonic() + config.ready_timeout
    while pending:
        if supervisor.poll() is not None:
            raise FatalError(
                f"the mesh's supervisor exited with {supervisor.returncode}: "
                f"{_last_lines(str(paths.log('supervisor')))}",
                f"see {paths.logs}",
            )
        pending = [name for name in pending if not component_ready(name, *ports[name])]
        if not pending:
            break
        if time.monotonic() > deadline:
            _stop_started(supervisor, paths)
            name = pending[0]
            raise FatalError(
                f"{', '.join(pending)} not ready within {config.ready_timeout:g}s; the mesh is stopped "
                f"({name}'s log: {_last_lines(str(paths.log(name)), 1)})",
                f"see {paths.log(name)}",
            )
        time.sleep(0.05)
    print(f"local mesh running (state {paths.root}, supervisor pid {supervisor.pid}, logs {paths.logs}):")
    for component, what, port in config.listeners():
        print(f"  {component:<12} {what:<7} {HOST}:{port}")
    print(f"try: tether --api-addr {HOST}:{ports['public-api'][0]} check    stop: tether down")
    return 0


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _stop_started(supervisor: subprocess.Popen[bytes], paths: Paths, grace: float = 5.0) -> None:
    """Stop the supervisor this command started, whether or not it has written its state yet (the state
    names it only once written), then whatever of the mesh still runs."""
    supervisor.terminate()
    try:
        supervisor.wait(2 * grace + 5)
    except subprocess.TimeoutExpired:
        supervisor.kill()
        supervisor.wait(5)
    _stop(paths, grace)


def _stop(paths: Paths, grace: float = 5.0) -> list[str]:
    """Stop the supervisor (which stops its components), then whatever of the mesh still runs."""
    state = read_state(paths)
    stopped = []
    if state is not None and mesh_running(paths) and alive(state.supervisor_pid):
        _signal(state.supervisor_pid, signal.SIGTERM)
        # The supervisor gives each component the grace, NATS after the others.
        if not wait_until(lambda: not mesh_running(paths), 2 * grace + 5):
            _signal(state.supervisor_pid, signal.SIGKILL)
            wait_until(lambda: not alive(state.supervisor_pid), 5)
        stopped.append(f"supervisor {state.supervisor_pid}")
    if state is not None:
        # Whatever survived (a supervisor killed before it could stop them): SIGTERM, then SIGKILL.
        left = [c.pid for c in state.components if alive(c.pid) and belongs_to(c.pid, paths)]
        for pid in left:
            _signal(pid, signal.SIGTERM)
        if not wait_until(lambda: not any(alive(pid) for pid in left), grace):
            for pid in left:
                if alive(pid):
                    _signal(pid, signal.SIGKILL)
            wait_until(lambda: not any(alive(pid) for pid in left), 5)
        stopped.extend(f"pid {pid}" for pid in left)
        ports = [p for c in state.components for p in (c.port, c.admin_port) if p]
        wait_until(lambda: not any(listening(port) for port in ports), 5)
        paths.state.unlink(missing_ok=True)
    return stopped


def down(config: MeshConfig) -> int:
    paths = Paths(config.state_dir)
    if not mesh_running(paths) and read_state(paths) is None:
        print(f"no local mesh runs in {paths.root}")
        return 0
    _stop(paths, config.stop_grace)
    print(f"local mesh in {paths.root} stopped")
    return 0


class StatusRow(msgspec.Struct, frozen=True, kw_only=True):
    component: str
    pid: int
    port: int
    admin_port: int
    ready: bool
    restarts: int
    log: str


class Status(msgspec.Struct, frozen=True, kw_only=True):
    running: bool
    state_dir: str
    supervisor_pid: int
    components: list[StatusRow]


def status(config: MeshConfig) -> int:
    paths = Paths(config.state_dir)
    state = read_state(paths)
    running = mesh_running(paths) and state is not None
    report = Status(
        running=running,
        state_dir=str(paths.root),
        supervisor_pid=state.supervisor_pid if running and state else 0,
        components=_rows(state) if running and state else [],
    )
    if config.output == "json":
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(report)).decode() + "\n")
    elif not running:
        print(f"no local mesh runs in {paths.root}; start one with `tether up`", file=sys.stderr)
    else:
        print(f"local mesh in {report.state_dir}, supervisor pid {report.supervisor_pid}")
        print(f"{'COMPONENT':<12} {'PID':>8} {'PORT':>6} {'ADMIN':>6} {'READY':<6} {'RESTARTS':>8}")
        for row in report.components:
            print(
                f"{row.component:<12} {row.pid or '-':>8} {row.port:>6} {row.admin_port or '-':>6} "
                f"{'yes' if row.ready else 'no':<6} {row.restarts:>8}"
            )
    return 0 if running else 3


def _rows(state: MeshState) -> list[StatusRow]:
    return [
        StatusRow(
            component=c.name,
            pid=c.pid,
            port=c.port,
            admin_port=c.admin_port,
            ready=c.pid > 0 and component_ready(c.name, c.port, c.admin_port),
            restarts=c.restarts,
            log=c.log,
        )
        for c in state.components
    ]
