"""Each control-plane service as a real process against a real nats-server.

It must connect, publish heartbeats, answer /ready on its admin port, and exit 0 within 2 s of SIGTERM.
Telemetry serves nothing yet, so it is live but never ready, and its heartbeats say so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.events import Heartbeat
from tether.shared.natsserver import EmbeddedNats, free_port
from tether.shared.testing import eventually

SERVICES = {
    "telemetry": ("tether.telemetry", ["--grpc-addr", "127.0.0.1:0", "--identity-disabled", "true"]),
    "public-api": ("tether.public_api", ["--grpc-addr", "127.0.0.1:0", "--destination-trust-anchors", ""]),
    "destination": (
        "tether.destination",
        [
            *("--grpc-addr", "127.0.0.1:0", "--source", "local"),
            *("--registry-file", "", "--identity-disabled", "true"),
        ],
    ),
}


async def _http_status(port: int, path: str) -> int | None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_service_process_lifecycle(service: str, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    module, extra = SERVICES[service]
    admin_port = free_port()
    bus = await Bus.connect(nats_server.url, name="observer")
    beats: asyncio.Queue[Heartbeat] = asyncio.Queue()

    async def on_beat(beat: Heartbeat, subject: str) -> None:
        assert subject == subjects.health(beat.service, beat.instance)
        await beats.put(beat)

    await bus.subscribe(f"tether.v1.health.{service}.>", Heartbeat, on_beat)
    env = dict(os.environ, TETHER_LOG_FORMAT="json")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            "--nats-url",
            nats_server.url,
            "--admin-addr",
            f"127.0.0.1:{admin_port}",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        beat = await asyncio.wait_for(beats.get(), 15)
        assert beat.service == service and beat.version
        expect_ready = True

        async def ready() -> bool:
            return await _http_status(admin_port, "/ready") == 200

        await eventually(ready, 10, f"{service} to become ready (/ready 200)", interval=0.05)
        assert await _http_status(admin_port, "/live") == 200
        # The first heartbeat goes out before the component starts (not ready yet); those sent before /ready
        # answered 200 may say either. The next one says what /ready says.
        while not beats.empty():
            beats.get_nowait()
        next_beat = await asyncio.wait_for(beats.get(), 5)
        assert next_beat.ready is expect_ready and next_beat.uptime_seconds >= beat.uptime_seconds

        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        returncode = await asyncio.to_thread(process.wait, 5)
        assert returncode == 0
        assert time.monotonic() - started < 2.0
        _out, err = process.communicate()
        lines = err.decode().splitlines()
        assert any('"event": "service_stopped"' in line for line in lines), lines[-5:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await bus.close()
