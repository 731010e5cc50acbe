"""The ``tether`` client commands as a user runs them (subprocesses) against a real public API, fed over a
real nats-server with real rollups and tap events published with the real bus (as tests/public_api does).

Outputs are compared with the golden files in golden/, variable parts (instance ids, timestamps) masked;
``TETHER_UPDATE_GOLDEN=1`` rewrites them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tether.cli.localmesh.config import Paths
from tether.cli.localmesh.state import ComponentState, MeshState, try_lock, write_state
from tether.cli.output import ERROR, OK
from tether.destination.config import DestinationConfig
from tether.destination.service import DestinationService
from tether.public_api.config import PublicApiConfig
from tether.public_api.service import PublicApiService
from tether.public_api.testing import API_ID, WEB_ID, inbound, outbound_to_web, rollup
from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.config import config_from
from tether.shared.events import (
    TapAddress,
    TapEvent,
    TapRequest,
    TapRequestInit,
    TapResponseEnd,
    TapResponseInit,
)
from tether.shared.natsserver import EmbeddedNats
from tether.shared.runtime import Runtime
from tether.shared.testing import eventually
from tether.telemetry.config import TelemetryConfig
from tether.telemetry.service import TelemetryService

TETHER = f"{sys.prefix}/bin/tether"
GOLDEN = Path(__file__).parent / "golden"


@dataclass
class Result:
    code: int
    out: str
    err: str


async def tether(*args: str, env: dict[str, str] | None = None, stdin_timeout: float = 30) -> Result:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")} | (env or {})
    process = await asyncio.create_subprocess_exec(
        TETHER,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    out, err = await asyncio.wait_for(process.communicate(), stdin_timeout)
    return Result(process.returncode or 0, out.decode(), err.decode())


async def poll(attempt: Callable[[], Awaitable[Result | None]], what: str, timeout: float = 20) -> Result:
    """The first non-None answer of ``attempt``, retried until ``timeout``."""
    answers: list[Result] = []

    async def answered() -> bool:
        result = await attempt()
        if result is not None:
            answers.append(result)
        return result is not None

    await eventually(answered, timeout, what, interval=0.1)
    return answers[0]


def mask(text: str, instances: tuple[str, ...] = ()) -> str:
    for instance in instances:
        text = text.replace(instance, "<instance>")
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<time>", text)


def golden(name: str, text: str, instances: tuple[str, ...] = (), *, collapse: bool = False) -> None:
    """``text`` masked equals golden/<name>; ``collapse`` evens out the columns the masked values widened."""
    if name.endswith(".json"):  # key order (of proto maps above all) is not part of the output's meaning
        text = json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    masked = mask(text, instances)
    if collapse:
        masked = re.sub(r" {2,}", "  ", masked)
    path = GOLDEN / name
    if os.environ.get("TETHER_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(masked)
    assert masked == path.read_text(), f"{name} differs from its golden file:\n{masked}"


@dataclass
class Api:
    addr: str
    bus: Bus
    telemetry: Runtime
    instances: tuple[str, ...]


@pytest.fixture
async def api(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Api]:
    bus = await Bus.connect(nats_server.url, name="test")
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        json.dumps(
            {
                "services": [
                    {
                        "namespace": "shop",
                        "name": "web",
                        "ports": [{"name": "http", "port": 80, "target_port": 8080}],
                        "endpoints": [
                            {"address": "10.0.0.1", "identity": WEB_ID, "labels": {"pod": "web-1"}}
                        ],
                    }
                ]
            }
        )
    )
    common = {"nats_url": nats_server.url, "admin_addr": "127.0.0.1:0", "grpc_addr": "127.0.0.1:0"}
    destination_config = config_from(
        DestinationConfig,
        "destination",
        common,
        {
            "TETHER_DESTINATION_IDENTITY_DISABLED": "true",
            "TETHER_DESTINATION_SOURCE": "local",
            "TETHER_DESTINATION_REGISTRY_FILE": str(registry),
        },
    )
    destination_service = DestinationService(destination_config)
    destination = Runtime("destination", destination_config, destination_service, version="9.9.9")
    await destination.start()
    await bus.ensure_stream(subjects.ROLLUPS_STREAM, [subjects.ROLLUP_ALL], max_age=3600)
    web = subjects.rollup("shop", "deployment", "web")
    await bus.publish_stored(web, rollup("t1", "web", "web-1", WEB_ID, [inbound(90, 10)]))
    await bus.publish_stored(web, rollup("t2", "web", "web-1", WEB_ID, [inbound(90, 10)]))  # counted once
    await bus.publish_stored(web, rollup("t2", "web", "web-2", WEB_ID, [inbound(10, 0, tls=False)]))
    await bus.publish_stored(
        subjects.rollup("shop", "deployment", "api"),
        rollup("t1", "api", "api-1", API_ID, [outbound_to_web(50)]),
    )
    service = PublicApiService(
        config_from(
            PublicApiConfig,
            "public-api",
            {
                **common,
                # Heartbeats come every 2 s: 5 s is never borderline, and a stopped component goes soon.
                "heartbeat_timeout": "5",
                "destination_addr": f"127.0.0.1:{destination_service.grpc_port}",
                "destination_trust_anchors": "",
            },
            {},
        )
    )
    runtime = Runtime("public-api", service.config, service, version="9.9.9")
    await runtime.start()
    telemetry_config = config_from(
        TelemetryConfig, "telemetry", common, {"TETHER_TELEMETRY_IDENTITY_DISABLED": "true"}
    )
    telemetry = Runtime("telemetry", telemetry_config, TelemetryService(telemetry_config), version="9.9.9")
    await telemetry.start()
    addr = f"127.0.0.1:{service.port}"

    async def merged() -> bool:
        result = await tether("--api-addr", addr, "stat", "deploy/web", "-n", "shop", "-o", "json")
        return result.code == 0 and json.loads(result.out)[0]["requests"] == 110

    async def heard() -> bool:
        result = await tether("--api-addr", addr, "version")
        seen = all(name in result.out for name in ("destination", "public-api", "telemetry"))
        return seen and "not ready" not in result.out

    try:
        await eventually(merged, what="web's merged row in tether stat")
        await eventually(heard, what="the heartbeats in tether version")
        yield Api(addr, bus, telemetry, (runtime.instance, telemetry.instance, destination.instance))
    finally:
        await telemetry.stop()
        await runtime.stop()
        await destination.stop()
        await bus.close()


async def test_stat_table_and_json(api: Api) -> None:
    result = await tether("--api-addr", api.addr, "stat", "deploy", "-n", "shop")
    assert (result.code, result.err) == (0, "")
    golden("stat.txt", result.out)
    result = await tether("stat", "deployment", "-A", "-o", "wide", "--api-addr", api.addr)
    assert result.out.splitlines()[0].split()[0] == "NAMESPACE"
    golden("stat-all-wide.txt", result.out)
    result = await tether("--api-addr", api.addr, "stat", "deploy", "-n", "shop", "-o", "json")
    assert result.code == 0
    rows = {row["name"]: row for row in json.loads(result.out)}
    assert rows["web"]["success_rate"] == pytest.approx(100 / 110)
    assert rows["api"]["latency_ms_p50"] is None
    golden("stat.json", result.out)
    # --to and --from.
    result = await tether("--api-addr", api.addr, "stat", "deploy/api", "-n", "shop", "--to", "deploy/web")
    golden("stat-to.txt", result.out)
    result = await tether("--api-addr", api.addr, "stat", "deploy", "-n", "shop", "--from", "deploy/api")
    golden("stat-from.txt", result.out)
    # No traffic: the message on stderr, nothing on stdout.
    result = await tether("--api-addr", api.addr, "stat", "deploy", "-n", "elsewhere")
    assert (result.code, result.out, result.err) == (0, "", "No traffic found.\n")


async def test_edges_table_and_json(api: Api) -> None:
    result = await tether("--api-addr", api.addr, "edges", "deployment", "-n", "shop")
    assert result.code == 0, result.err
    golden("edges.txt", result.out)
    result = await tether("--api-addr", api.addr, "edges", "deploy", "-A", "-o", "wide")
    golden("edges-wide.txt", result.out)
    result = await tether("--api-addr", api.addr, "edges", "deploy", "-n", "shop", "-o", "json")
    [edge] = json.loads(result.out)
    assert (edge["client_id"], edge["server_id"], edge["secured"]) == (API_ID, WEB_ID, True)
    golden("edges.json", result.out)


async def test_endpoints_table_and_json(api: Api) -> None:
    async def resolved() -> Result | None:
        result = await tether("--api-addr", api.addr, "endpoints", "web.shop.svc.cluster.local:80")
        return result if result.code == 0 else None

    result = await poll(resolved, "destination resolving web")
    golden("endpoints.txt", result.out)
    result = await tether("--api-addr", api.addr, "endpoints", "web:80", "-n", "shop", "-o", "wide")
    golden("endpoints-wide.txt", result.out)
    result = await tether("--api-addr", api.addr, "endpoints", "web:80", "-n", "shop", "-o", "json")
    golden("endpoints.json", result.out)
    result = await tether("--api-addr", api.addr, "endpoints", "nothing.shop.svc.cluster.local:80")
    assert result.code == 1 and result.out == ""
    (line,) = result.err.splitlines()
    assert line.startswith("tether: error: the public API answered NOT_FOUND: authority: ")


async def test_version_table_and_json(api: Api) -> None:
    result = await tether("--api-addr", api.addr, "version")
    assert result.code == 0, result.err
    golden("version.txt", result.out, api.instances, collapse=True)
    result = await tether("--api-addr", api.addr, "version", "-o", "json")
    body = json.loads(result.out)
    body["components"].sort(key=lambda c: c["service"])
    body["components"] = [
        c for c in body["components"] if c["service"] in ("destination", "public-api", "telemetry")
    ]
    golden("version.json", json.dumps(body, indent=2), api.instances)
    assert body["client_version"] == "0.1.0" and body["server_version"] == "9.9.9"
    assert {c["service"] for c in body["components"]} >= {"public-api", "telemetry"}


async def test_check_reports_a_stopped_component_and_exits_non_zero(api: Api) -> None:
    result = await tether("--api-addr", api.addr, "check")
    assert result.code == 1, "identity sends no heartbeat here: the check fails"
    assert f"{OK} telemetry is running and ready (1/1 instances ready)" in result.out.splitlines()
    golden("check.txt", result.out)
    result = await tether("--api-addr", api.addr, "check", "-o", "json")
    assert result.code == 1 and json.loads(result.out)["status"] == "CHECK_STATUS_ERROR"
    golden("check.json", result.out)

    await api.telemetry.stop()

    async def telemetry_gone() -> Result | None:
        result = await tether("--api-addr", api.addr, "check")
        return (
            result if f"{ERROR} telemetry is running and ready (0/0 instances ready)" in result.out else None
        )

    result = await poll(telemetry_gone, "check seeing telemetry stopped")
    assert result.code == 1
    lines = result.out.splitlines()
    index = lines.index(f"{ERROR} telemetry is running and ready (0/0 instances ready)")
    assert lines[index + 1].startswith("    no telemetry instance sent a heartbeat")
    assert lines[-1] == f"Status check results are {ERROR}"


@pytest.mark.parametrize("output", ["text", "json"])
async def test_tap_prints_events_in_the_documented_format(api: Api, output: str) -> None:
    requests: list[TapRequest] = []

    async def on_request(request: TapRequest, _subject: str) -> None:
        requests.append(request)

    await api.bus.subscribe(subjects.TAP_REQUESTS, TapRequest, on_request)
    process = await asyncio.create_subprocess_exec(
        TETHER,
        "--api-addr",
        api.addr,
        "tap",
        "deploy/web",
        "-n",
        "shop",
        "--method",
        "post",
        "--max-requests",
        "2",
        "-o",
        output,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: any(r.action == "start" for r in requests), what="the tap's start")
        start = next(r for r in requests if r.action == "start")
        assert start.match is not None and start.match.method == "POST"

        def event(stream_id: int, phase: str) -> TapEvent:
            return TapEvent(
                tap_id=start.tap_id,
                replica="t1",
                namespace="shop",
                pod="web-1",
                direction="inbound",
                stream_id=stream_id,
                at=datetime.now(UTC),
                source=TapAddress(ip="10.0.0.9", port=4000 + stream_id),
                destination=TapAddress(ip="10.0.0.1", port=8080),
                source_labels={},
                destination_labels={"deployment": "web"},
                source_identity=API_ID,
                destination_identity=WEB_ID,
                tls="true",
                request_init=TapRequestInit(
                    method="POST", scheme="http", authority="web.shop:80", path=f"/shop.Web/Get{stream_id}"
                )
                if phase == "req"
                else None,
                response_init=TapResponseInit(status_code=200, since_request_init_us=1500)
                if phase == "rsp"
                else None,
                response_end=TapResponseEnd(
                    grpc_status=0 if stream_id == 1 else 14,
                    since_request_init_us=2100,
                    response_bytes=17,
                    reset_error_code=0,
                )
                if phase == "end"
                else None,
            )

        for stream_id in (1, 2):
            for phase in ("req", "rsp", "end"):
                await api.bus.publish(subjects.tap_events(start.tap_id), event(stream_id, phase))
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    if output == "json":  # one JSON object per event, the proto's JSON form
        events = [json.loads(text) for text in out.decode().splitlines()]
        assert [(e["stream_id"], next(k for k in e if k.startswith("re"))) for e in events] == [
            ("1", "request_init"),
            ("1", "response_init"),
            ("1", "response_end"),
            ("2", "request_init"),
            ("2", "response_init"),
            ("2", "response_end"),
        ]
        assert events[0]["request_init"]["path"] == "/shop.Web/Get1" and events[0]["source"]["port"] == 4001
        return
    golden("tap.txt", out.decode())
    line = re.compile(
        r"^(req id=\d+ proxy=(in|out) src=[\d.]+:\d+ dst=[\d.]+:\d+ tls=true"
        r" :method=\S+ :authority=\S+ :path=\S+"
        r"|rsp id=\d+ :status=\d+ latency=\d+µs"
        r"|end id=\d+ grpc-status=[A-Z_]+ duration=\d+µs response-length=\d+B)$"
    )
    assert all(line.match(text) for text in out.decode().splitlines()), out.decode()


@pytest.mark.parametrize(
    "argv",
    [
        ["stat"],
        ["stat", "bogus"],
        ["stat", "deploy", "-n", "Bad_NS"],
        ["stat", "deploy", "-n", "shop", "-A"],
        ["stat", "deploy", "-t", "7s"],
        ["stat", "deploy", "--to", "deploy/a", "--from", "deploy/b"],
        ["stat", "svc", "--from", "deploy/b"],
        ["stat", "deploy", "--to-namespace", "x"],
        ["stat", "deploy", "-o", "yaml"],
        ["edges", "service"],
        ["edges", "deploy/web"],
        ["tap", "deploy"],
        ["tap", "deploy/web", "--max-rps", "0"],
        ["tap", "deploy/web", "--max-rps", "lots"],
        ["tap", "deploy/web", "--method", "GET POST"],
        ["endpoints"],
        ["endpoints", "web:80", "-n", "-bad"],
        ["check", "--timeout", "soon"],
        ["--api-addr", "nope", "version"],
        ["version", "-o", "wide"],
        ["nonsense"],
    ],
)
async def test_argument_errors_are_one_line_and_exit_2(argv: list[str]) -> None:
    result = await tether(*argv, env={"TETHER_API_ADDR": "127.0.0.1:1"})
    assert result.code == 2, result
    assert result.out == ""
    (line,) = result.err.splitlines()
    assert line.startswith("tether: error: ")


async def test_without_an_address_it_uses_the_running_local_mesh(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "mesh")
    paths.root.mkdir()
    component = ComponentState(name="public-api", pid=1, port=1, admin_port=2, restarts=0, log="")
    write_state(
        paths, MeshState(supervisor_pid=1, state_dir=str(paths.root), port_base=0, components=[component])
    )
    fd = try_lock(paths.lock)  # what a running supervisor holds
    assert fd is not None
    try:
        result = await tether("check", "--timeout", "0.5", env={"TETHER_MESH_STATE_DIR": str(paths.root)})
    finally:
        os.close(fd)
    assert result.code == 1
    (line,) = result.err.splitlines()
    assert line.startswith(
        f"tether: error: cannot reach the public API at 127.0.0.1:1 (from the local mesh in {paths.root}; "
    )
    assert line.endswith("start the local mesh with `tether up`, or give --api-addr / TETHER_API_ADDR")
    # No mesh there any more (the lock is free): the default address.
    result = await tether("stat", "deploy", "--timeout", "0.5", "--state-dir", str(paths.root))
    assert result.code == 1
    assert "cannot reach the public API at 127.0.0.1:8085 (from the default; " in result.err


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("tether st", ["stat", "status"]),
        ("tether --api-addr 127.0.0.1:1 e", ["edges", "endpoints"]),
        ("tether stat dep", ["deployment"]),
        ("tether stat deploy -t 10", ["10s", "10m"]),
        (
            "tether tap -n shop --",
            [
                "--help",
                "--api-addr",
                "--timeout",
                "--output",
                "--state-dir",
                "--namespace",
                "--method",
                "--path",
                "--authority",
                "--max-rps",
                "--max-requests",
                "--kube",
                "--kubeconfig",
                "--context",
            ],
        ),
        ("tether completion z", ["zsh"]),
    ],
)
def test_bash_completion(line: str, expected: list[str]) -> None:
    words = line.split(" ")
    program = (
        f'source <("{TETHER}" completion bash)\n'
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        '_tether; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected


def test_zsh_completion_loads_bashcompinit() -> None:
    result = subprocess.run([TETHER, "completion", "zsh"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    assert "complete -F _tether tether" in result.stdout
