"""How every long-running process fails, as real processes: one last line, the right exit code, no noise.

A start-up failure ends with exactly one plain-text line, the last on stderr, in every log format:
``tether-<component>: error: <cause>; <what to do>``, naming the option, file or address at fault. No earlier
line is at error level and no traceback is printed (tracebacks come only with ``--log-level debug``). Exit 2
for what the user must fix (a flag, an environment variable, a file, missing Kubernetes configuration), 1 for
the rest (a port in use, NATS unreachable within ``--nats-connect-timeout``).

Then the other side: the control plane on its default ports on one host, and a NATS outage, which must cost
one log line per backoff window (not one per poll) and must not keep a process from stopping cleanly.

The processes of one test run concurrently: most of their time is interpreter start-up or waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tether.shared.natsserver import EmbeddedNats, free_port
from tether.shared.testing import eventually

FORMATS = ["json", "console"]
GRACE = 0.5
# What a process may take from SIGTERM to exit: the grace, plus one second to disconnect and tear down.
STOP_BUDGET = GRACE + 1.0
FAILURE_LINE = re.compile(r"^tether-[a-z-]+: error: .+; .+$")
# structlog's console renderer pads the level inside brackets: "[error    ]".
CONSOLE_ERROR_TAG = re.compile(r"\[(error|critical|exception|fatal) *\]")
# A C library's own error line (gRPC core logs through absl: "E1201 09:34:55.701598 24993 file.cc:83] ...").
NATIVE_ERROR_LINE = re.compile(r"^[EF]\d{4} \d\d:\d\d:\d\d")
ERROR_LEVELS = {"error", "critical", "exception", "fatal"}
SHUTDOWN_NOISE = ("Traceback", "Event loop is closed", "handler is closed")


@dataclass(frozen=True)
class Component:
    command: str  # what the failure line starts with
    argv: tuple[str, ...]  # after sys.executable
    uses_nats: bool = True


COMPONENTS = {
    "identity": Component("tether-identity", ("-m", "tether.identity", "serve")),
    "destination": Component("tether-destination", ("-m", "tether.destination")),
    "telemetry": Component("tether-telemetry", ("-m", "tether.telemetry")),
    "public-api": Component("tether-public-api", ("-m", "tether.public_api")),
    "proxy": Component("tether-proxy", ("-m", "tether.proxy", "run"), uses_nats=False),
}
NATS_COMPONENTS = [name for name, component in COMPONENTS.items() if component.uses_nats]


def closed_port_url() -> str:
    """A NATS URL nothing listens on (the port was free a moment ago, and nothing here binds it)."""
    return f"nats://127.0.0.1:{free_port()}"


def base_env() -> dict[str, str]:
    """The test's environment without any TETHER_* variable a developer may have set."""
    return {key: value for key, value in os.environ.items() if not key.startswith("TETHER_")}


def good_options(component: str, ca: Path, nats_url: str) -> dict[str, str]:
    """Options with which ``component`` would start (given NATS at ``nats_url``); each case breaks one."""
    options = {"--admin-addr": "127.0.0.1:0", "--shutdown-grace": str(GRACE)}
    if COMPONENTS[component].uses_nats:
        options |= {"--nats-url": nats_url, "--nats-connect-timeout": "1"}
    if component == "identity":
        options |= {
            "--grpc-addr": "127.0.0.1:0",
            "--token-verifier": "local",
            "--token-key": str(ca / "token-signing.key"),
            "--trust-anchors": str(ca / "ca.crt"),
            "--issuer-certificate": str(ca / "issuer.crt"),
            "--issuer-key": str(ca / "issuer.key"),
        }
    elif component == "destination":
        options |= {
            "--grpc-addr": "127.0.0.1:0",
            "--source": "local",
            "--registry-file": "",
            # Plaintext gRPC, without a certificate from identity (a case below covers its trust anchors).
            "--identity-disabled": "true",
        }
    elif component == "telemetry":
        # Plaintext gRPC, without a certificate from identity (tests/telemetry cover its mTLS).
        options |= {"--grpc-addr": "127.0.0.1:0", "--identity-disabled": "true"}
    elif component == "public-api":
        options |= {"--grpc-addr": "127.0.0.1:0", "--destination-trust-anchors": str(ca / "ca.crt")}
    elif component == "proxy":
        options |= {
            "--outbound-addr": "127.0.0.1:0",
            "--inbound-addr": "127.0.0.1:0",
            "--destination-addr": "",
            # Plaintext, without a certificate from identity (a case below covers its trust anchors).
            "--identity-disabled": "true",
        }
    return options


@dataclass(frozen=True)
class Case:
    """One way of starting ``component`` that must fail, and what its failure line must say."""

    name: str
    component: str
    exit_code: int
    expect: tuple[str, ...]  # substrings of the failure line
    options: Mapping[str, str] = field(default_factory=dict)  # set or override
    drop: tuple[str, ...] = ()  # leave out (the default applies)
    extra: tuple[str, ...] = ()  # appended to the command line as they are
    env: Mapping[str, str] = field(default_factory=dict)
    unset_env: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()  # must appear nowhere in stdout or stderr
    nats_url: str = ""  # empty: a closed port (a setup error must not wait for NATS)

    def argv(self, fmt: str, ca: Path) -> list[str]:
        options = good_options(self.component, ca, self.nats_url or closed_port_url())
        for name in self.drop:
            del options[name]
        options |= self.options
        args = [sys.executable, *COMPONENTS[self.component].argv, "--log-format", fmt]
        for name, value in options.items():
            args += [f"{name}={value}"]
        return args + list(self.extra)

    def environ(self) -> dict[str, str]:
        env = base_env() | dict(self.env)
        for name in self.unset_env:
            env.pop(name, None)
        return env


@dataclass(frozen=True)
class Exited:
    returncode: int
    stdout: str
    stderr: str


async def run_to_exit(argv: Sequence[str], env: Mapping[str, str], timeout: float = 30.0) -> Exited:
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(
            f"{' '.join(argv)} did not exit within {timeout}s; stderr tail:\n{err.decode()[-2000:]}"
        ) from None
    assert process.returncode is not None
    return Exited(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def level_problems(lines: Sequence[str], fmt: str) -> list[str]:
    """Lines that are at error level, or (in json) that are not JSON log lines at all."""
    problems = []
    for line in lines:
        if fmt == "json":
            try:
                record = json.loads(line)
            except ValueError:
                problems.append(f"not a JSON log line: {line[:300]}")
                continue
            if not isinstance(record, dict) or "level" not in record:
                problems.append(f"a JSON line without a level: {line[:300]}")
            elif str(record["level"]).lower() in ERROR_LEVELS:
                problems.append(f"a line at error level: {line[:300]}")
        elif CONSOLE_ERROR_TAG.search(line) or NATIVE_ERROR_LINE.match(line):
            problems.append(f"a line at error level: {line[:300]}")
    return problems


def failure_problems(case: Case, fmt: str, result: Exited) -> list[str]:
    """Everything wrong with how ``case`` ended, each problem naming the case."""
    command = COMPONENTS[case.component].command
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    found = []
    if result.returncode != case.exit_code:
        found.append(f"exit code {result.returncode}, expected {case.exit_code}")
    last = lines[-1] if lines else ""
    if not FAILURE_LINE.match(last):
        found.append(f"the last stderr line is not a failure line: {last!r}")
    if not last.startswith(f"{command}: error: "):
        found.append(f"the failure line does not start with '{command}: error: ': {last!r}")
    found += [
        f"the failure line does not mention {text!r}: {last!r}" for text in case.expect if text not in last
    ]
    earlier = lines[:-1]
    found += level_problems(earlier, fmt)
    found += [
        f"a second failure line: {line!r}" for line in earlier if re.match(r"^tether-[a-z-]+: error: ", line)
    ]
    everything = result.stdout + result.stderr
    found += [f"{noise!r} in the output" for noise in SHUTDOWN_NOISE if noise in everything]
    found += [f"{secret!r} appears in the output" for secret in case.forbidden if secret in everything]
    if not found:
        return []
    tail = "\n      ".join(lines[-6:])
    return [
        f"{case.component} / {case.name} [{fmt}]: " + "; ".join(found) + f"\n      stderr tail:\n      {tail}"
    ]


async def check_cases(cases: Sequence[Case], fmt: str, ca: Path, concurrency: int = 6) -> None:
    """Run every case concurrently (bounded) and fail once, listing every case that went wrong."""
    assert cases
    slots = asyncio.Semaphore(concurrency)

    async def one(case: Case) -> list[str]:
        async with slots:
            result = await run_to_exit(case.argv(fmt, ca), case.environ())
        return failure_problems(case, fmt, result)

    problems = [
        problem for found in await asyncio.gather(*(one(case) for case in cases)) for problem in found
    ]
    assert not problems, f"{len(problems)} of {len(cases)} cases failed:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trust anchor, issuer and token-signing key from ``tether-identity bootstrap``."""
    out = tmp_path_factory.mktemp("ca") / "files"
    subprocess.run(
        [sys.executable, "-m", "tether.identity", "bootstrap", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


# 1. Flags and environment.

# An option of the component's own that no case's command line sets, and a value it refuses.
OWN_ENV_VALUE = {
    "identity": ("TETHER_IDENTITY_LEAF_LIFETIME", "10"),
    "destination": ("TETHER_DESTINATION_MAX_REGISTRATIONS", "0"),
    "telemetry": ("TETHER_TELEMETRY_GRPC_ADDR", "nowhere"),
    "public-api": ("TETHER_PUBLIC_API_HEARTBEAT_TIMEOUT", "0"),
    "proxy": ("TETHER_PROXY_MAX_AUTHORITIES", "0"),
}


def configuration_cases(component: str) -> list[Case]:
    own_env, own_value = OWN_ENV_VALUE[component]
    unknown_env = "TETHER_" + component.upper().replace("-", "_") + "_NO_SUCH_OPTION"
    return [
        Case(
            "invalid flag value",
            component,
            2,
            ("--admin-addr", "not-an-address"),
            options={"--admin-addr": "not-an-address"},
        ),
        Case("unknown flag", component, 2, ("--no-such-option",), extra=("--no-such-option", "1")),
        Case(
            "invalid common environment value",
            component,
            2,
            ("TETHER_SHUTDOWN_GRACE", "soon"),
            drop=("--shutdown-grace",),
            env={"TETHER_SHUTDOWN_GRACE": "soon"},
        ),
        Case(
            "invalid environment value of its own",
            component,
            2,
            (own_env, own_value),
            # Telemetry's only own option is --grpc-addr; the flag would win over the environment.
            drop=("--grpc-addr",) if component == "telemetry" else (),
            env={own_env: own_value},
        ),
        Case("unknown environment variable", component, 2, (unknown_env,), env={unknown_env: "1"}),
    ]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_invalid_flags_and_environment_exit_2(fmt: str, ca: Path) -> None:
    await check_cases([case for name in COMPONENTS for case in configuration_cases(name)], fmt, ca)


# 2. Files.


@pytest.mark.parametrize("fmt", FORMATS)
async def test_missing_and_invalid_files_exit_2_naming_the_file(fmt: str, ca: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"\x00\xffthis is not PEM\n-----BEGIN NOTHING-----\n")
    bad_yaml = tmp_path / "bad-syntax.yaml"
    bad_yaml.write_text("services: [ {namespace: shop, name: web\n  ports: ][\n\t- :\n")
    wrong_shape = tmp_path / "wrong-shape.yaml"
    wrong_shape.write_text("services:\n  - namespace: shop\n    name: web\n    colour: blue\n")
    cases = [
        Case(
            "missing trust anchors",
            "identity",
            2,
            ("--trust-anchors", f"{missing}/ca.crt"),
            options={"--trust-anchors": f"{missing}/ca.crt"},
        ),
        Case(
            "garbage trust anchors",
            "identity",
            2,
            ("--trust-anchors", str(garbage)),
            options={"--trust-anchors": str(garbage)},
        ),
        Case(
            "missing token key",
            "identity",
            2,
            ("--token-key", f"{missing}/token-signing.key"),
            options={"--token-key": f"{missing}/token-signing.key"},
        ),
        Case(
            "garbage token key",
            "identity",
            2,
            ("--token-key", str(garbage)),
            options={"--token-key": str(garbage)},
        ),
        Case(
            "missing registry file",
            "destination",
            2,
            ("--registry-file", f"{missing}/registry.yaml"),
            options={"--registry-file": f"{missing}/registry.yaml"},
        ),
        Case(
            "registry file that is not YAML",
            "destination",
            2,
            ("--registry-file", str(bad_yaml)),
            options={"--registry-file": str(bad_yaml)},
        ),
        Case(
            "registry file with an unknown field",
            "destination",
            2,
            ("--registry-file", str(wrong_shape), "colour"),
            options={"--registry-file": str(wrong_shape)},
        ),
    ]
    for source in (missing / "ca.crt", garbage):
        cases.append(
            Case(
                f"destination trust anchors {source.name}",
                "public-api",
                2,
                ("--destination-trust-anchors", str(source)),
                options={"--destination-trust-anchors": str(source)},
            )
        )
    # With a mesh identity of its own, a workload needs the mesh's trust anchors before anything else.
    for name, options in (
        ("destination", {}),
        ("proxy", {"--identity-name": "web.shop.serviceaccount.identity.cluster.local"}),
    ):
        cases.append(
            Case(
                "missing identity trust anchors",
                name,
                2,
                ("--identity-trust-anchors", f"{missing}/mesh-ca.crt"),
                options={**options, "--identity-trust-anchors": f"{missing}/mesh-ca.crt"},
                drop=("--identity-disabled",),
            )
        )
    await check_cases(cases, fmt, ca)


# 3. No Kubernetes configuration.


@pytest.mark.parametrize("fmt", FORMATS)
async def test_no_kubernetes_configuration_exits_2_naming_the_alternative(
    fmt: str, ca: Path, tmp_path: Path
) -> None:
    home = tmp_path / "empty-home"
    home.mkdir()
    # Outside a cluster, with no kubeconfig: an empty HOME (no ~/.kube/config) and no KUBECONFIG.
    env = {"HOME": str(home)}
    unset_env = ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
    cases = [
        Case(
            "default --source kubernetes",
            "destination",
            2,
            ("KUBECONFIG", "--source local"),
            drop=("--source", "--registry-file"),
            env=env,
            unset_env=unset_env,
        ),
        Case(
            "default --token-verifier kubernetes",
            "identity",
            2,
            ("KUBECONFIG", "--token-verifier local"),
            drop=("--token-verifier", "--token-key"),
            env=env,
            unset_env=unset_env,
        ),
        Case(
            "--authz kubernetes",
            "public-api",
            2,
            ("KUBECONFIG", "--authz none"),
            options={"--authz": "kubernetes"},
            env=env,
            unset_env=unset_env,
        ),
    ]
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: [not a cluster]\n")
    cases += [
        Case(
            "a --kubeconfig that is no kubeconfig",
            name,
            2,
            ("--kubeconfig", str(broken), "is not a usable kubeconfig"),
            options={"--kubeconfig": str(broken), **kubernetes},
            drop=drop,
            env=env,
            unset_env=unset_env,
        )
        for name, kubernetes, drop in KUBERNETES_OPTIONS
    ]
    await check_cases(cases, fmt, ca)


#: Per component that talks to Kubernetes: the options that make it do so, and the defaults they replace.
KUBERNETES_OPTIONS: list[tuple[str, dict[str, str], tuple[str, ...]]] = [
    ("destination", {}, ("--source", "--registry-file")),
    ("identity", {}, ("--token-verifier", "--token-key")),
    ("public-api", {"--authz": "kubernetes"}, ()),
]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_kubernetes_api_unreachable_within_its_timeout_exits_1_naming_the_server(
    fmt: str, ca: Path
) -> None:
    url = closed_port_url().replace("nats://", "http://")
    cases = [
        Case(
            "Kubernetes API unreachable",
            name,
            1,
            (url, "did not answer within 1s", "Connection refused", "--kube-api-url"),
            options={"--kube-api-url": url, "--kube-connect-timeout": "1", **kubernetes},
            drop=drop,
        )
        for name, kubernetes, drop in KUBERNETES_OPTIONS
    ]
    await check_cases(cases, fmt, ca)


# 4. Ports in use.


@contextlib.contextmanager
def held_ports(count: int) -> Iterator[list[int]]:
    """``count`` loopback ports, each with a socket listening on it for as long as the block runs."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        yield [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# Per component, the listeners besides --admin-addr that it binds at start.
LISTENERS = {
    "identity": ["--grpc-addr"],
    "destination": ["--grpc-addr"],
    "telemetry": ["--grpc-addr"],
    "public-api": ["--grpc-addr"],
    "proxy": ["--outbound-addr", "--inbound-addr"],
}


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_port_in_use_exits_1_naming_the_option_and_address(
    fmt: str, ca: Path, nats_server: EmbeddedNats
) -> None:
    targets = [(name, option) for name in COMPONENTS for option in ["--admin-addr", *LISTENERS[name]]]
    with held_ports(len(targets)) as ports:
        cases = [
            Case(
                f"{option} in use",
                name,
                1,
                (option, f"127.0.0.1:{port}", "in use"),
                options={option: f"127.0.0.1:{port}"},
                # NATS is up, so that listeners bound after connecting are reached too.
                nats_url=nats_server.url,
            )
            for (name, option), port in zip(targets, ports, strict=True)
        ]
        await check_cases(cases, fmt, ca)


# 5. NATS unreachable.


@pytest.mark.parametrize("fmt", FORMATS)
async def test_nats_unreachable_within_the_connect_timeout_exits_1_naming_the_url(fmt: str, ca: Path) -> None:
    urls = {name: closed_port_url() for name in NATS_COMPONENTS}
    cases = [
        Case("NATS unreachable", name, 1, (url, "--nats-url"), nats_url=url) for name, url in urls.items()
    ]
    await check_cases(cases, fmt, ca)


# 6. Credentials in the NATS URL.

SECRET = "s3cret-Passw0rd"


@pytest.mark.parametrize("fmt", FORMATS)
async def test_credentials_in_the_nats_url_exit_2_without_echoing_the_secret(fmt: str, ca: Path) -> None:
    in_flag = f"nats://user:{SECRET}@127.0.0.1:4222"
    in_env = f"nats://127.0.0.1:4222,nats://user:{SECRET}@127.0.0.1:4223"
    cases = []
    for name in NATS_COMPONENTS:
        cases += [
            Case(
                "credentials in --nats-url",
                name,
                2,
                ("--nats-url",),
                options={"--nats-url": in_flag},
                forbidden=(SECRET,),
            ),
            Case(
                "credentials in TETHER_NATS_URL",
                name,
                2,
                ("TETHER_NATS_URL",),
                drop=("--nats-url",),
                env={"TETHER_NATS_URL": in_env},
                forbidden=(SECRET,),
            ),
        ]
    await check_cases(cases, fmt, ca)


# Long-running processes.


class Running:
    """A process started by a test; its stderr lines are collected as it runs, its stdout at the end."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.lines: list[str] = []
        self.stdout = ""
        self._readers = [
            asyncio.create_task(self._read_stderr()),
            asyncio.create_task(self._read_stdout()),
        ]

    @classmethod
    async def start(cls, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Running:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env if env is not None else base_env()),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            limit=1 << 20,
        )
        return cls(name, process)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self.stdout = (await self.process.stdout.read()).decode(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (the process logs in json)."""
        out = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def logged(self, event: str) -> bool:
        return any(record.get("event") == event for record in self.records())

    async def wait_logged(self, event: str, timeout: float = 30.0) -> None:
        await eventually(lambda: self.logged(event), timeout, lambda: f"{event}; {self.tail()}")

    def tail(self, count: int = 8) -> str:
        return f"{self.name} stderr tail:\n" + "\n".join(self.lines[-count:])

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    async def terminate(self) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds it took to exit (fails after 10 s)."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            raise AssertionError(f"{self.name} did not exit within 10 s of SIGTERM\n{self.tail()}") from None
        took = time.monotonic() - began
        await asyncio.gather(*self._readers)
        return code, took

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


@contextlib.asynccontextmanager
async def running(processes: list[Running]) -> AsyncIterator[list[Running]]:
    """Kills whatever is still running when the block ends (a failing test must not leave processes)."""
    try:
        yield processes
    finally:
        await asyncio.gather(*(process.kill() for process in processes))


async def http_status(port: int, path: str) -> int | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 2)
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


async def accepts(port: int) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def admin_port(process: Running) -> int:
    """The admin port a process chose for ``--admin-addr 127.0.0.1:0`` (from its admin_listening line)."""
    for record in process.records():
        if record.get("event") == "admin_listening":
            return int(record["port"])
    raise AssertionError(f"{process.name} has not logged admin_listening\n{process.tail()}")


def clean_stop_problems(process: Running, code: int, took: float) -> list[str]:
    """What is wrong with how a process that was told to stop stopped."""
    found = []
    if code != 0:
        found.append(f"exit code {code}, expected 0")
    if took > STOP_BUDGET:
        found.append(f"took {took:.2f}s to exit after SIGTERM, more than {STOP_BUDGET}s")
    found += level_problems(process.lines, "json")
    everything = process.stdout + "\n".join(process.lines)
    found += [f"{noise!r} in the output" for noise in SHUTDOWN_NOISE if noise in everything]
    return [f"{process.name}: {problem}" for problem in found]


async def stop_all_cleanly(processes: Sequence[Running]) -> None:
    results = await asyncio.gather(*(process.terminate() for process in processes))
    problems = [
        problem
        for process, (code, took) in zip(processes, results, strict=True)
        for problem in clean_stop_problems(process, code, took)
    ]
    tails = "\n".join(
        process.tail() for process in processes if any(p.startswith(process.name) for p in problems)
    )
    assert not problems, "\n".join(problems) + "\n" + tails


def identity_args(ca: Path) -> list[str]:
    return [
        "--token-verifier",
        "local",
        "--token-key",
        str(ca / "token-signing.key"),
        "--trust-anchors",
        str(ca / "ca.crt"),
        "--issuer-certificate",
        str(ca / "issuer.crt"),
        "--issuer-key",
        str(ca / "issuer.key"),
    ]


def service_argv(name: str, ca: Path, nats_url: str, *extra: str) -> list[str]:
    """``name`` with only what it needs besides its defaults (local sources, bootstrap files), in json."""
    own = {
        "identity": identity_args(ca),
        # Plaintext gRPC: a certificate from identity is not what these tests are about.
        "destination": ["--source", "local", "--registry-file", "", "--identity-disabled", "true"],
        "telemetry": ["--identity-disabled", "true"],
        "public-api": ["--destination-trust-anchors", str(ca / "ca.crt")],
    }[name]
    return [
        sys.executable,
        *COMPONENTS[name].argv,
        "--log-format",
        "json",
        "--shutdown-grace",
        str(GRACE),
        "--nats-url",
        nats_url,
        *own,
        *extra,
    ]


# 6b. Another component's NATS user.


@pytest.mark.parametrize("fmt", FORMATS)
async def test_another_components_nats_user_exits_2_naming_what_was_refused(
    fmt: str, ca: Path, tmp_path: Path
) -> None:
    """Credentials mixed up between components fail at once, before any work, in one line: with the other
    user's inbox refused (it may only read replies on its own), or, told that inbox, with this component's
    own heartbeat refused (only the component itself may publish it)."""
    names = ["destination", "identity", "telemetry", "public-api"]
    async with EmbeddedNats(tmp_path / "nats", users={name: name for name in names}) as server:
        cases = []
        for name, other in zip(names, names[1:] + names[:1], strict=True):
            seed = server.users[other].seed_file
            cases += [
                Case(
                    f"{other}'s user",
                    name,
                    2,
                    (f"reply inbox _INBOX.{name}.>", "--nats-inbox-prefix"),
                    options={"--nats-nkey": seed},
                    nats_url=server.url,
                ),
                Case(
                    f"{other}'s user and inbox",
                    name,
                    2,
                    ("NATS refused publish on tether.v1.health.", "its own NATS user"),
                    options={"--nats-nkey": seed, "--nats-inbox-prefix": f"_INBOX.{other}"},
                    nats_url=server.url,
                ),
            ]
        await check_cases(cases, fmt, ca)


# 7. The control plane on its default ports.

# The documented defaults (docs/ARCHITECTURE.md): admin port, gRPC port (None: not listened on yet).
DEFAULT_PORTS: dict[str, tuple[int, int | None]] = {
    "identity": (9990, 8080),
    "public-api": (9995, 8085),
    "destination": (9996, 8086),
    "telemetry": (9997, 8087),
}


def port_taken(port: int) -> OSError | None:
    """Whether something listens on ``port`` (on any address), probing as the services bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As asyncio and gRPC do: a connection of an earlier run in TIME_WAIT is no reason to skip.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return exc
            raise
    return None


async def test_the_control_plane_runs_side_by_side_on_its_default_ports(
    ca: Path, nats_server: EmbeddedNats
) -> None:
    for name, ports in DEFAULT_PORTS.items():
        for port in ports:
            if port is not None and (taken := port_taken(port)) is not None:
                pytest.skip(f"default port {port} of {name} is taken on this host ({taken.strerror})")
    processes = [await Running.start(name, service_argv(name, ca, nats_server.url)) for name in DEFAULT_PORTS]
    async with running(processes):
        for process in processes:
            admin, grpc = DEFAULT_PORTS[process.name]

            async def ready(port: int = admin) -> bool:
                return await http_status(port, "/ready") == 200

            await eventually(ready, 30, process.tail)
            assert await http_status(admin, "/live") == 200, process.tail()
            if grpc is not None:
                assert await accepts(grpc), f"{process.name} does not accept on its gRPC port {grpc}"
            assert not process.exited, process.tail()
        await stop_all_cleanly(processes)


# 8. NATS outages: one line per backoff window, and a clean stop in the middle of one.

OUTAGE = 10.0
RETRY_EVENTS = ("nats_connect_failed", "nats_reconnecting")


def timestamp(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(record["timestamp"])).timestamp()


def retry_line_problems(process: Running, event: str, url: str, since: float) -> list[str]:
    """The NATS retry lines (``event``) logged since the outage began (``since``, epoch seconds) must each
    name the URL and come at most once per backoff window: each at least ~0.9 x the previous one's
    ``retry_in`` after it, and far fewer than the old 100 ms polling printed (10 a second)."""
    retries = [record for record in process.records() if record.get("event") in RETRY_EVENTS]
    found = [
        f"a {record['event']} line, expected only {event}: {record}"
        for record in retries
        if record["event"] != event
    ]
    retries = [record for record in retries if timestamp(record) >= since]
    in_outage = [record for record in retries if timestamp(record) <= since + OUTAGE]
    if len(in_outage) < 3:
        found.append(f"only {len(in_outage)} {event} lines in the first {OUTAGE:g}s of the outage")
    if len(in_outage) >= 25:
        found.append(
            f"{len(in_outage)} {event} lines in the first {OUTAGE:g}s: more than one per backoff window"
        )
    for record in retries:
        if record.get("url") != url or not isinstance(record.get("retry_in"), int | float):
            found.append(f"a {event} line without url={url} and a numeric retry_in: {record}")
    for previous, line in itertools.pairwise(retries):
        gap = timestamp(line) - timestamp(previous)
        if isinstance(previous.get("retry_in"), int | float) and gap < 0.9 * previous["retry_in"]:
            found.append(
                f"{line['event']} {gap:.3f}s after the previous line, "
                f"which said retry_in={previous['retry_in']}"
            )
    return [f"{process.name}: {problem}" for problem in found]


async def test_a_nats_outage_is_logged_once_per_backoff_window_and_stops_cleanly(
    ca: Path, nats_server: EmbeddedNats
) -> None:
    """Both outages at once, each with every NATS service: never reachable since start, and gone after
    the services were ready (their /ready turns 503). Ten seconds of outage each, then SIGTERM."""
    never_url = closed_port_url()
    never = [
        await Running.start(
            f"{name} (NATS never up)",
            service_argv(
                name,
                ca,
                never_url,
                "--nats-connect-timeout",
                "0",
                "--admin-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
            ),
        )
        for name in NATS_COMPONENTS
    ]
    never_since = time.time()
    gone = [
        await Running.start(
            f"{name} (NATS went away)",
            service_argv(
                name, ca, nats_server.url, "--admin-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"
            ),
        )
        for name in NATS_COMPONENTS
    ]
    async with running(never + gone):
        # The services that saw NATS up become ready, then NATS dies.
        for process in gone:
            await process.wait_logged("admin_listening")
            port = admin_port(process)

            async def ready(port: int = port) -> bool:
                return await http_status(port, "/ready") == 200

            await eventually(ready, 30, process.tail)
        await nats_server.stop(kill=True)
        gone_since = time.time()
        for process in gone:

            async def not_ready(port: int = admin_port(process)) -> bool:
                return await http_status(port, "/ready") == 503

            await eventually(not_ready, 5, process.tail)

        # Both outages last OUTAGE seconds; meanwhile every process stays live and not ready.
        await asyncio.sleep(max(0.0, gone_since + OUTAGE - time.time()))
        for process in never + gone:
            assert not process.exited, process.tail()
            port = admin_port(process)
            assert await http_status(port, "/live") == 200, process.tail()
            assert await http_status(port, "/ready") == 503, process.tail()

        problems = [
            problem
            for process in never
            for problem in retry_line_problems(process, "nats_connect_failed", never_url, never_since)
        ]
        problems += [
            problem
            for process in gone
            for problem in retry_line_problems(process, "nats_reconnecting", nats_server.url, gone_since)
        ]
        for process in gone:
            if not process.logged("nats_disconnected"):
                problems.append(f"{process.name}: no nats_disconnected line")
        assert not problems, (
            "\n".join(problems) + "\n" + "\n".join(process.tail(4) for process in never + gone)
        )
        await stop_all_cleanly(never + gone)
