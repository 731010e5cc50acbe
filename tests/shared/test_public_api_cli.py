"""`tether version` and `tether check` against a real public API fed by real heartbeats over NATS."""

from __future__ import annotations

import asyncio
import sys

from tether.cli.output import ERROR, OK
from tether.public_api.config import PublicApiConfig
from tether.public_api.service import PublicApiService
from tether.shared.config import config_from
from tether.shared.natsserver import EmbeddedNats
from tether.shared.runtime import Runtime
from tether.shared.testing import eventually
from tether.telemetry.config import TelemetryConfig
from tether.telemetry.service import TelemetryService


async def _run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        f"{sys.prefix}/bin/tether", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def test_version_and_check(nats_server: EmbeddedNats) -> None:
    common = {"nats_url": nats_server.url, "admin_addr": "127.0.0.1:0"}
    api_service = PublicApiService(
        config_from(
            PublicApiConfig,
            "public-api",
            {**common, "grpc_addr": "127.0.0.1:0", "destination_trust_anchors": ""},
            {},
        )
    )
    api = Runtime("public-api", api_service.config, api_service, version="9.9.9")
    telemetry_config = config_from(
        TelemetryConfig,
        "telemetry",
        {**common, "grpc_addr": "127.0.0.1:0"},
        {"TETHER_TELEMETRY_IDENTITY_DISABLED": "true"},
    )
    telemetry = Runtime("telemetry", telemetry_config, TelemetryService(telemetry_config), version="9.9.9")
    await api.start()
    await telemetry.start()
    try:
        addr = f"127.0.0.1:{api_service.port}"
        code, out = 0, ""

        async def both_ready() -> bool:
            nonlocal code, out
            code, out = await _run_cli("--api-addr", addr, "version")
            rows = [line.split() for line in out.splitlines()]
            return ["telemetry", "9.9.9", telemetry.instance, "ready"] in rows and [
                "public-api",
                "9.9.9",
                api.instance,
                "ready",
            ] in rows

        await eventually(
            both_ready, 10, lambda: f"telemetry and public-api ready in `tether version`: {out}", interval=0.1
        )
        assert code == 0
        assert out.startswith("Client version: 0.1.0\nServer version: 9.9.9\n")

        code, out = await _run_cli("--api-addr", addr, "check")
        assert code == 1, "destination and identity are not running, so the check must fail"
        lines = out.splitlines()
        assert lines[:2] == ["control-plane", "-------------"]
        assert f"{ERROR} destination is running and ready (0/0 instances ready)" in lines
        assert f"{OK} telemetry is running and ready (1/1 instances ready)" in lines
        assert f"{OK} public-api is running and ready (1/1 instances ready)" in lines
        assert f"{OK} public API is connected to NATS" in lines
        assert lines[-1] == f"Status check results are {ERROR}"
    finally:
        await telemetry.stop()
        await api.stop()


async def test_cli_reports_an_unreachable_api() -> None:
    code, out = await _run_cli("--api-addr", "127.0.0.1:1", "--timeout", "0.5", "version")
    assert code == 1
    *before, line = out.strip().splitlines()
    assert before == ["Client version: 0.1.0"]  # `version` still prints its own
    assert line.startswith("tether: error: cannot reach the public API at 127.0.0.1:1 (from --api-addr; ")
    assert line.endswith("; start the local mesh with `tether up`, or give --api-addr / TETHER_API_ADDR")
