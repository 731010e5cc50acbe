"""``tether run --name NAME [--namespace NS] --port APP_PORT -- COMMAND…``: an application in the local mesh.

Against a running local mesh (``tether up``): picks three free ports in the mesh's reserved range
(``--port-base``+50…+99) for the application's sidecar, mints the workload's identity token with the mesh's
token-signing key (as the supervisor does for its components), starts ``tether-proxy run`` with identity
on, the mesh's destination, identity and telemetry addresses, ``--inbound-app-port APP_PORT`` (no iptables:
the inbound side forwards to the application's port) and its outbound listener on 127.0.0.1; registers the
workload in the local registry (address 127.0.0.1, the proxy's inbound port, its identity; the service's
port is APP_PORT, so clients call ``NAME.NS.svc.cluster.local:APP_PORT``) as the ``registrar`` NATS user,
re-sent as a heartbeat while it lives and deregistered at exit; then runs COMMAND
with ``http_proxy``/``HTTP_PROXY``/``https_proxy``/``grpc_proxy`` pointing at the outbound listener (which
takes absolute-form requests and ``CONNECT``) and ``no_proxy`` for loopback (the mesh's own ports).
Signals are forwarded to COMMAND; ``tether run`` exits with its code (128+N for a signal N) and stops the
proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tether.cli.localmesh.config import DESTINATION, HOST, IDENTITY, NATS, TELEMETRY, Paths
from tether.cli.localmesh.state import (
    MeshState,
    http_ready,
    mesh_running,
    port_free,
    read_state,
    try_lock,
)
from tether.cli.localmesh.supervisor import _set_parent_death_signal, component_env, mint_token_argv
from tether.shared.bus import Bus
from tether.shared.cloudevents import source_for
from tether.shared.errors import FatalError
from tether.shared.events import WorkloadRegistration
from tether.shared.nats_settings import NatsSettings, inbox_prefix
from tether.shared.subjects import REGISTRY_REGISTER

TRUST_DOMAIN = "cluster.local"
PROXY_PORTS_OFFSET = 50  # the mesh's range from +50 on is for application proxies
REGISTRATION_TTL = 10.0
HEARTBEAT = 3.0
PROXY_READY_TIMEOUT = 30.0
PROXY_STOP_GRACE = 5.0
TOKEN_TTL = 86_400
REPORT_INTERVAL = 2.0  # an interactive mesh: `tether stat` follows traffic within seconds
NO_PROXY = "localhost,127.0.0.1,::1"


@dataclass(frozen=True, slots=True)
class RunOptions:
    name: str
    namespace: str
    app_port: int
    command: list[str]


@dataclass(frozen=True, slots=True)
class ProxyPorts:
    outbound: int
    inbound: int
    admin: int


def identity_name(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.serviceaccount.identity.{TRUST_DOMAIN}"


def _mesh(paths: Paths) -> MeshState:
    state = read_state(paths)
    if not mesh_running(paths) or state is None:
        raise FatalError(
            f"no local mesh runs in {paths.root}", f"start one with `tether up --state-dir {paths.root}`"
        )
    return state


def _port(state: MeshState, component: str) -> int:
    for entry in state.components:
        if entry.name == component:
            return entry.port
    raise FatalError(f"the local mesh in {state.state_dir} has no {component}", "run `tether up` again")


def pick_ports(state: MeshState, count: int = 3) -> list[int]:
    """``count`` free ports of the mesh's application range (lowest first)."""
    first = state.port_base + PROXY_PORTS_OFFSET
    free = [port for port in range(first, state.port_base + 100) if port_free(port)]
    if len(free) < count:
        raise FatalError(
            f"fewer than {count} free ports left in the mesh's range {first}-{state.port_base + 99}",
            "stop another `tether run`, or move the mesh with tether up --port-base",
        )
    return free[:count]


def _mint(paths: Paths, options: RunOptions, token: Path) -> None:
    result = subprocess.run(
        mint_token_argv(paths, options.namespace, options.name, TOKEN_TTL),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        env=component_env(),
    )
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines() or ["no output"]
        raise FatalError(f"minting the identity token of {options.name} failed: {lines[-1]}", "see tether up")
    paths.tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(result.stdout)


def proxy_argv(
    paths: Paths, state: MeshState, options: RunOptions, ports: ProxyPorts, token: Path, pod: str = ""
) -> list[str]:
    pod = pod or options.name
    return [
        *(sys.executable, "-m", "tether.proxy", "run"),
        *("--outbound-addr", f"{HOST}:{ports.outbound}", "--inbound-addr", f"{HOST}:{ports.inbound}"),
        *("--admin-addr", f"{HOST}:{ports.admin}", "--inbound-app-port", str(options.app_port)),
        *("--destination-addr", f"{HOST}:{_port(state, DESTINATION)}"),
        *("--telemetry-addr", f"{HOST}:{_port(state, TELEMETRY)}"),
        *("--identity-name", identity_name(options.name, options.namespace)),
        *("--identity-addr", f"{HOST}:{_port(state, IDENTITY)}"),
        *("--identity-trust-anchors", str(paths.ca / "ca.crt"), "--identity-token-file", str(token)),
        *("--log-format", "json", "--report-interval", str(REPORT_INTERVAL)),
        # The workload as telemetry sees it: its pod (this instance) and deployment (its name).
        *("--pod-namespace", options.namespace, "--pod-name", pod),
        *("--workload-labels", f"deployment={options.name}"),
    ]


def app_env(ports: ProxyPorts) -> dict[str, str]:
    """The application's environment: its HTTP and gRPC clients go through the proxy's outbound side."""
    proxy = f"http://{HOST}:{ports.outbound}"
    env = dict(os.environ)
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "grpc_proxy"):
        env[variable] = proxy
    env["no_proxy"] = env["NO_PROXY"] = NO_PROXY
    return env


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


class Runner:
    def __init__(self, paths: Paths, state: MeshState, options: RunOptions) -> None:
        self.paths = paths
        self.state = state
        self.options = options
        host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())
        self.instance = f"{options.name}-{host}-{os.getpid()}"
        self.identity = identity_name(options.name, options.namespace)
        self.token = paths.tokens / f"run-{options.namespace}-{options.name}-{os.getpid()}.token"
        self.log = paths.logs / f"run-{options.namespace}-{options.name}-{os.getpid()}.log"
        self.proxy: asyncio.subprocess.Process | None = None
        self.app: asyncio.subprocess.Process | None = None
        self.bus: Bus | None = None
        self.ports: ProxyPorts | None = None

    def registration(self, *, deregister: bool = False) -> WorkloadRegistration:
        assert self.ports is not None
        return WorkloadRegistration(
            namespace=self.options.namespace,
            service=self.options.name,
            instance=self.instance,
            address=HOST,
            port=self.ports.inbound,
            identity=self.identity,
            labels={"pod": self.instance, "deployment": self.options.name},
            ttl_seconds=REGISTRATION_TTL,
            deregister=deregister,
            service_port=self.options.app_port,  # the service keeps the application's port
        )

    async def _start_proxy(self) -> None:
        # One `tether run` at a time picks ports and binds them (the lock), so two never take the same.
        lock = try_lock(self.paths.root / "run.lock")
        deadline = time.monotonic() + 10
        while lock is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            lock = try_lock(self.paths.root / "run.lock")
        try:
            outbound, inbound, admin = pick_ports(self.state)
            self.ports = ProxyPorts(outbound, inbound, admin)
            argv = proxy_argv(self.paths, self.state, self.options, self.ports, self.token, self.instance)
            with open(self.log, "ab") as logfile:  # noqa: ASYNC230 (a local file)
                self.proxy = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=asyncio.subprocess.STDOUT,
                    env=component_env(),
                    start_new_session=True,  # the terminal's Ctrl-C is for the application, not the proxy
                    preexec_fn=_set_parent_death_signal,
                )
            deadline = time.monotonic() + PROXY_READY_TIMEOUT
            while not await asyncio.to_thread(http_ready, admin):
                if self.proxy.returncode is not None:
                    raise FatalError(
                        f"the proxy of {self.options.name} exited with {self.proxy.returncode}: "
                        f"{_last_line(self.log)}",
                        f"see {self.log}",
                    )
                if time.monotonic() > deadline:
                    raise FatalError(
                        f"the proxy of {self.options.name} not ready within {PROXY_READY_TIMEOUT:g}s: "
                        f"{_last_line(self.log)}",
                        f"see {self.log}",
                    )
                await asyncio.sleep(0.1)
        finally:
            if lock is not None:
                os.close(lock)

    async def _register(self) -> None:
        settings = NatsSettings(
            servers=(f"nats://{HOST}:{_port(self.state, NATS)}",),
            nkey_seed_file=str(self.paths.seed("registrar")),
            inbox_prefix=inbox_prefix("registrar"),
        )
        self.bus = await Bus.connect(
            settings, name="registrar", source=source_for("registrar", self.instance)
        )
        await self.bus.publish(REGISTRY_REGISTER, self.registration())
        await self.bus.flush()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            assert self.bus is not None
            try:
                await self.bus.publish(REGISTRY_REGISTER, self.registration())
            except Exception as exc:  # NATS away for a moment: said, and the next beat retries
                print(f"tether run: registration heartbeat failed: {exc}", file=sys.stderr, flush=True)

    async def run(self) -> int:
        _mint(self.paths, self.options, self.token)
        heartbeat: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        forwarded = (
            signal.SIGINT,
            signal.SIGTERM,
            signal.SIGHUP,
            signal.SIGQUIT,
            signal.SIGUSR1,
            signal.SIGUSR2,
        )
        try:
            await self._start_proxy()
            await self._register()
            heartbeat = asyncio.create_task(self._heartbeat(), name="registration-heartbeat")
            assert self.ports is not None
            print(
                f"tether run: {self.options.name}.{self.options.namespace} ({self.identity}) "
                f"proxy outbound {HOST}:{self.ports.outbound} inbound {HOST}:{self.ports.inbound} "
                f"admin {HOST}:{self.ports.admin} -> app port {self.options.app_port}; log {self.log}",
                file=sys.stderr,
                flush=True,
            )
            try:
                self.app = await asyncio.create_subprocess_exec(
                    *self.options.command, env=app_env(self.ports), process_group=0
                )
            except OSError as exc:
                raise FatalError(
                    f"cannot run {self.options.command[0]}: {exc.strerror}", "check the command after --"
                ) from None
            app = self.app
            for sig in forwarded:
                loop.add_signal_handler(sig, _forward, app, sig)
            code = await app.wait()
            return 128 - code if code < 0 else code
        finally:
            for sig in forwarded:
                loop.remove_signal_handler(sig)
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
            await self._cleanup()

    async def _cleanup(self) -> None:
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.publish(REGISTRY_REGISTER, self.registration(deregister=True))
                await self.bus.flush()
            with contextlib.suppress(Exception):
                await self.bus.close()
        proxy = self.proxy
        if proxy is not None and proxy.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proxy.terminate()
            try:
                await asyncio.wait_for(proxy.wait(), PROXY_STOP_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proxy.kill()
                await proxy.wait()
        self.token.unlink(missing_ok=True)


def _forward(app: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    if app.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            app.send_signal(sig)


def run(state_dir: str, options: RunOptions) -> int:
    paths = Paths(state_dir)
    state = _mesh(paths)
    return asyncio.run(Runner(paths, state, options).run())
