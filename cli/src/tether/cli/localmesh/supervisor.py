"""The local mesh's supervisor: ``python -m tether.cli.localmesh.supervisor``, started by ``tether up``.

It runs every component as its own OS process (stdout and stderr to ``logs/<component>.log``), in order:
nats-server, identity once NATS is ready, then destination, telemetry and public-api once identity is.
A component that exits is restarted after a backoff (:class:`tether.shared.backoff.Backoff`: a ceiling of
0.2 s doubling to 10 s, each wait jittered between half the ceiling and all of it; back to 0.2 s after 30 s
up). ``mesh.json`` always holds the current pids. On SIGTERM or SIGINT it stops the components (SIGTERM,
SIGKILL after the grace; NATS last) and exits. Its own log is ``logs/supervisor.log``: JSON lines through
:mod:`tether.shared.logging` (service ``localmesh-supervisor``).

Its long-lived tasks (a keeper per component, the token refresher) start through
:class:`tether.shared.supervisor.Supervisor`, critical: one that dies of a bug is logged once
(``task_failed``) and stops the mesh, and the process exits 1 with one plain-text line, as a component
does. Keepers never return; stopping cancels them before the components are terminated, so no deliberate
stop counts as a crash.

It is not a :class:`tether.shared.runtime.Service`: the runtime's admin listener has no port in the mesh's
layout, and its stop budget (``--shutdown-grace``, at most 300 s, for the whole component) is shorter than
the mesh's (``--stop-grace`` for the components, then again for NATS).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import structlog

from tether.cli.localmesh.config import (
    COMPONENTS,
    DESTINATION,
    HOST,
    IDENTITY,
    NATS,
    PUBLIC_API,
    TELEMETRY,
    MeshConfig,
    Paths,
    decode,
)
from tether.cli.localmesh.state import ComponentState, MeshState, component_ready, write_state
from tether.shared.backoff import Backoff
from tether.shared.errors import FatalError
from tether.shared.failure import report
from tether.shared.logging import configure, tracebacks_wanted
from tether.shared.natsserver import (
    NkeyUser,
    nats_server_binary,
    new_nkey_seed,
    nkey_public_key,
    server_config,
)
from tether.shared.permissions import DEFAULT_USERS
from tether.shared.runtime import instance_id, package_version
from tether.shared.supervisor import Supervisor as TaskSupervisor

INITIAL_BACKOFF = 0.2
MAX_BACKOFF = 10.0
STABLE_AFTER = 30.0
TOKEN_TTL = 86_400
TOKEN_REFRESH = 6 * 3600.0  # re-mint a component's token when it is older than this
WORKLOAD_TOKENS = (DESTINATION, TELEMETRY)
SERVICE = "localmesh-supervisor"
COMMAND = "tether-localmesh-supervisor"

log = structlog.get_logger(__name__)


def _set_parent_death_signal() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, so no component outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def ensure_nats_users(paths: Paths) -> dict[str, NkeyUser]:
    """One nkey per user, generated on first run and kept, so restarted components keep their credentials."""
    paths.users.mkdir(parents=True, exist_ok=True, mode=0o700)
    users = {}
    for name, role in DEFAULT_USERS.items():
        seed_file = paths.seed(name)
        if not seed_file.exists():
            descriptor = os.open(seed_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(new_nkey_seed() + b"\n")
        seed = seed_file.read_bytes().strip()
        users[name] = NkeyUser(name, role, nkey_public_key(seed), str(seed_file))
    return users


def write_nats_config(config: MeshConfig, paths: Paths) -> Path:
    users = ensure_nats_users(paths)
    port, _ = config.ports()[NATS]
    conf = server_config(host=HOST, port=port, store_dir=str(paths.nats / "jetstream"), users=users)
    path = paths.nats / "nats-server.conf"
    path.write_text(json.dumps(conf, indent=2))
    return path


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


ROLLUP_INTERVAL = 2.0


def component_argv(name: str, config: MeshConfig, paths: Paths) -> list[str]:
    ports = config.ports()
    port, admin = ports[name]
    if name == NATS:
        return [nats_server_binary(), "--config", str(paths.nats / "nats-server.conf")]
    nats_port, _ = ports[NATS]
    identity_port, _ = ports[IDENTITY]
    common = [
        *("--nats-url", f"nats://{HOST}:{nats_port}", "--nats-nkey", str(paths.seed(name))),
        *("--admin-addr", f"{HOST}:{admin}", "--grpc-addr", f"{HOST}:{port}"),
        *("--log-format", "json", "--log-level", config.log_level),
    ]
    ca = paths.ca
    workload = [
        *("--identity-addr", f"{HOST}:{identity_port}", "--identity-trust-anchors", str(ca / "ca.crt")),
        *("--identity-token-file", str(paths.token(name))),
    ]
    if name == IDENTITY:
        return _python(
            "tether.identity",
            "serve",
            *common,
            *("--trust-anchors", str(ca / "ca.crt"), "--issuer-certificate", str(ca / "issuer.crt")),
            *("--issuer-key", str(ca / "issuer.key"), "--token-verifier", "local"),
            *("--token-key", str(ca / "token-signing.key")),
        )
    if name == DESTINATION:
        return _python(
            "tether.destination",
            *common,
            *("--source", "local", "--registry-file", str(paths.registry)),
            *workload,
        )
    if name == TELEMETRY:
        # An interactive mesh: rollups every 2 s, so `tether stat` shows traffic seconds after it starts.
        return _python("tether.telemetry", *common, *workload, "--rollup-interval", str(ROLLUP_INTERVAL))
    if name == PUBLIC_API:
        destination_port, _ = ports[DESTINATION]
        return _python(
            "tether.public_api",
            *common,
            *("--dashboard-addr", f"{HOST}:{config.dashboard_port}"),
            # `tether endpoints` asks destination, over TLS verified like the proxies do.
            *("--destination-addr", f"{HOST}:{destination_port}"),
            *("--destination-trust-anchors", str(ca / "ca.crt")),
        )
    raise ValueError(f"unknown component {name!r}")


def mint_token_argv(paths: Paths, namespace: str, serviceaccount: str, ttl: int = TOKEN_TTL) -> list[str]:
    """The command that prints a workload's identity token, signed with the mesh's token-signing key
    (the control plane's components get theirs so, and ``tether run`` its application's)."""
    return _python(
        "tether.identity",
        *("mint-token", "--namespace", namespace, "--serviceaccount", serviceaccount),
        *("--key", str(paths.ca / "token-signing.key"), "--ttl", str(ttl)),
    )


def component_env() -> dict[str, str]:
    """The caller's environment without TETHER_* (the flags above are the whole configuration)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}


class Child:
    def __init__(self, name: str, config: MeshConfig, paths: Paths) -> None:
        self.name = name
        self.port, self.admin_port = config.ports()[name]
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.started = 0.0
        self.log = log.bind(component=name)

    @property
    def pid(self) -> int:
        if self.process is None or self.process.returncode is not None:
            return 0
        return self.process.pid


class Supervisor:
    def __init__(self, config: MeshConfig, paths: Paths) -> None:
        self.config = config
        self.paths = paths
        self.children = {name: Child(name, config, paths) for name in COMPONENTS}
        #: Set by SIGTERM/SIGINT and by a task that died of a bug (the mesh stops, loudly, not limping on).
        self.stop_requested = asyncio.Event()
        self.failure: FatalError | None = None
        self.tasks = TaskSupervisor(self._task_failed)

    def request_stop(self) -> None:
        self.stop_requested.set()

    def _task_failed(self, name: str, exc: BaseException) -> None:
        # The shared supervisor has logged task_failed; what is left is to stop, and to exit 1.
        if self.failure is None:
            self.failure = FatalError(
                f"critical task {name} of the local mesh failed: {type(exc).__name__}: {exc}",
                f"the mesh is stopped; see the task_failed line in {self.paths.log('supervisor')}",
            )
        self.stop_requested.set()

    def save(self) -> None:
        write_state(
            self.paths,
            MeshState(
                supervisor_pid=os.getpid(),
                state_dir=str(self.paths.root),
                port_base=self.config.port_base,
                components=[
                    ComponentState(
                        name=child.name,
                        pid=child.pid,
                        port=child.port,
                        admin_port=child.admin_port,
                        restarts=child.restarts,
                        log=str(self.paths.log(child.name)),
                    )
                    for child in self.children.values()
                ],
            ),
        )

    async def _mint(self, name: str, *, force: bool = False) -> None:
        token = self.paths.token(name)
        with contextlib.suppress(OSError):
            if not force and time.time() - token.stat().st_mtime < TOKEN_REFRESH:
                return
        self.paths.tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
        process = await asyncio.create_subprocess_exec(
            *mint_token_argv(self.paths, "tether", name),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=component_env(),
        )
        try:
            out, err = await process.communicate()
        except asyncio.CancelledError:
            # The mesh is stopping: no mint outlives it.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        if process.returncode != 0:
            raise RuntimeError(f"mint-token for {name} failed: {err.decode(errors='replace').strip()}")
        tmp = token.with_suffix(".tmp")
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(out)
        tmp.replace(token)

    async def _spawn(self, child: Child) -> None:
        if child.name in WORKLOAD_TOKENS:
            await self._mint(child.name)
        argv = component_argv(child.name, self.config, self.paths)
        # Opening a local log file for append does not block the loop in any way that matters.
        with open(self.paths.log(child.name), "ab") as logfile:  # noqa: ASYNC230
            child.process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
                env=component_env(),
                preexec_fn=_set_parent_death_signal,
            )
        child.started = time.monotonic()
        child.log.info("component_started", pid=child.process.pid, restarts=child.restarts)
        self.save()

    async def _keep_running(self, child: Child) -> None:
        """Run ``child`` for as long as the mesh runs; never returns (:meth:`stop` cancels it)."""
        backoff = Backoff(INITIAL_BACKOFF, MAX_BACKOFF)
        while True:
            try:
                await self._spawn(child)
            except (OSError, RuntimeError) as exc:
                delay = backoff.next()
                child.log.warning("component_start_failed", error=str(exc), retry_in=round(delay, 3))
            else:
                assert child.process is not None
                code = await child.process.wait()
                if time.monotonic() - child.started > STABLE_AFTER:
                    backoff.reset()
                delay = backoff.next()
                child.log.warning("component_exited", code=code, restart_in=round(delay, 3))
                self.save()
            await asyncio.sleep(delay)
            child.restarts += 1

    async def _ready(self, name: str) -> bool:
        """Wait until component ``name`` is ready; False when a stop is requested first."""
        child = self.children[name]
        while not self.stop_requested.is_set():
            if await asyncio.to_thread(component_ready, name, child.port, child.admin_port):
                child.log.info("component_ready")
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), 0.05)
        return False

    async def _refresh_tokens(self) -> None:
        while True:
            await asyncio.sleep(600)
            for name in WORKLOAD_TOKENS:
                try:
                    await self._mint(name)
                except (OSError, RuntimeError) as exc:
                    self.children[name].log.warning("token_refresh_failed", error=str(exc))

    def _start(self, *names: str) -> None:
        for name in names:
            child = self.children[name]
            self.tasks.spawn(f"keep-{name}", functools.partial(self._keep_running, child), critical=True)

    async def start(self) -> None:
        """Start the components in order; returns early when a stop is requested meanwhile."""
        self._start(NATS)
        if not await self._ready(NATS):
            return
        # The public API first: it hears every other component's first heartbeat and identity's first
        # issuer status, so `tether check` right after `tether up` sees the whole mesh.
        self._start(PUBLIC_API)
        if not await self._ready(PUBLIC_API):
            return
        self._start(IDENTITY)
        if not await self._ready(IDENTITY):
            return
        self._start(DESTINATION, TELEMETRY)
        self.tasks.spawn("refresh-tokens", self._refresh_tokens, critical=True)

    async def _stop_child(self, child: Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), self.config.stop_grace)
        except TimeoutError:
            child.log.warning("component_killed", pid=process.pid, grace=self.config.stop_grace)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        child.log.info("component_stopped", code=process.returncode)

    async def stop(self) -> None:
        # The keepers first: stopped through the shared supervisor, none restarts a component or takes the
        # exits below for crashes (a keeper that ended on its own would be a failure).
        await self.tasks.stop()
        others = [child for name, child in self.children.items() if name != NATS]
        await asyncio.gather(*(self._stop_child(child) for child in others))
        await self._stop_child(self.children[NATS])


async def supervise(config: MeshConfig, paths: Paths) -> FatalError | None:
    """Run the mesh until SIGTERM/SIGINT or a task's failure; returns the failure, if any."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    write_nats_config(config, paths)
    supervisor = Supervisor(config, paths)
    supervisor.save()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.request_stop)
    log.info("supervisor_started", pid=os.getpid(), state_dir=str(paths.root), port_base=config.port_base)
    failure: FatalError | None = None
    try:
        await supervisor.start()
        await supervisor.stop_requested.wait()
    except Exception as exc:
        # A bug in the start-up sequence: logged once, with its traceback, and the mesh stops.
        log.error("unexpected_error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        failure = FatalError(
            f"unexpected {type(exc).__name__}: {exc}", "this is a bug: please report it with the log above"
        )
    log.info("supervisor_stopping")
    await supervisor.stop()
    with contextlib.suppress(OSError):
        paths.state.unlink()
    log.info("supervisor_stopped")
    return failure or supervisor.failure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tether.cli.localmesh.supervisor")
    parser.add_argument("--config", required=True, help="the MeshConfig as JSON (tether up writes it)")
    parser.add_argument("--lock-fd", type=int, required=True, help="fd holding the state directory's lock")
    args = parser.parse_args(argv)
    config = decode(args.config)
    paths = Paths(config.state_dir)
    os.set_inheritable(args.lock_fd, False)  # held by this process only, never by a component
    # JSON whatever --log-format says: logs/supervisor.log is read by programs, like the components' logs.
    configure(
        service=SERVICE,
        instance=instance_id(),
        version=package_version("tether-cli"),
        fmt="json",
        level=config.log_level,
    )
    failure = asyncio.run(supervise(config, paths))
    if failure is None:
        return 0
    if tracebacks_wanted() and failure.__traceback__ is not None:
        log.debug("failure_traceback", traceback="".join(traceback.format_exception(failure)))
    return report(COMMAND, failure)


if __name__ == "__main__":
    sys.exit(main())
