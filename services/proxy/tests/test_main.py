"""``tether-proxy run`` as a real process: flags and TETHER_PROXY_* variables, a clean drain on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tether.proxy.__main__ import main
from tether.proxy.config import ProxyConfig
from tether.shared.config import load_config
from tether.shared.natsserver import free_port
from tether.shared.testing import eventually


async def http_status(port: int, path: str) -> int | None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


async def test_run_serves_and_exits_cleanly_on_sigterm() -> None:
    outbound, inbound, admin = free_port(), free_port(), free_port()
    env = dict(
        os.environ,
        TETHER_LOG_FORMAT="json",
        TETHER_PROXY_INBOUND_ADDR=f"127.0.0.1:{inbound}",
        TETHER_PROXY_DESTINATION_ADDR="127.0.0.1:1",
        TETHER_PROXY_IDENTITY_DISABLED="true",
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether.proxy",
            "run",
            "--outbound-addr",
            f"127.0.0.1:{outbound}",
            "--admin-addr",
            f"127.0.0.1:{admin}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    async def ready() -> bool:
        if await http_status(admin, "/ready") == 200:
            return True
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        return False

    try:
        await eventually(ready, 10, "the proxy to become ready (/ready 200)", interval=0.05)
        for port in (outbound, inbound):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(process.wait, 5)
        assert code == 0
        assert time.monotonic() - started < 3
        assert process.stderr is not None
        events = [json.loads(line)["event"] for line in process.stderr.read().decode().splitlines() if line]
        assert "proxy_started" in events and "proxy_stopped" in events
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_unknown_command_and_bad_config_are_rejected(capsys: object) -> None:
    assert main(["frobnicate"]) == 2
    try:
        main(["run", "--outbound-addr", "nonsense"], environ={})
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("bad config accepted")


def test_init_is_dispatched_to_the_interception_tool() -> None:
    assert main(["init", "--dry-run"], environ={}) == 0


def test_telemetry_options_are_flags_and_are_validated(capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(
        ProxyConfig,
        "proxy",
        [
            *("--identity-disabled", "true", "--report-interval", "1"),
            *("--workload-labels", "deployment=web,app=web"),
        ],
        environ={"TETHER_PROXY_TELEMETRY_ADDR": "10.0.0.9:8087"},
    )
    assert (config.telemetry_addr, config.report_interval) == ("10.0.0.9:8087", 1.0)
    assert config.workload_labels == ("deployment=web", "app=web")
    assert config.telemetry_server_name == "telemetry.tether.serviceaccount.identity.cluster.local"
    for bad in (["--report-interval", "0.5"], ["--telemetry-addr", "nowhere"], ["--workload-labels", "=x"]):
        with pytest.raises(SystemExit) as raised:
            load_config(ProxyConfig, "proxy", ["--identity-disabled", "true", *bad], environ={})
        assert raised.value.code == 2
        assert bad[0].lstrip("-").split("-")[0] in capsys.readouterr().err  # the error names the option
