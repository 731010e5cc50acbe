"""A user and password, or a token, from the environment: a real component authenticates with them to a real
nats-server, and neither ever appears in its output or its command line; a wrong one fails in one line that
does not echo it either.

(nkey seeds, the default, are covered in test_nats_permissions.py; these two are the other documented ways
in, each with the secret only in ``TETHER_NATS_PASSWORD`` / ``TETHER_NATS_TOKEN``.)
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tether.shared.natsserver import free_port, nats_server_binary
from tether.shared.testing import eventually_sync


@contextmanager
def nats_server(directory: Path, authorization: dict[str, object]) -> Iterator[str]:
    """A real nats-server with JetStream and ``authorization`` (nats-server's own block); its URL."""
    directory.mkdir()
    port = free_port()
    config = {
        "host": "127.0.0.1",
        "port": port,
        "jetstream": {"store_dir": str(directory / "js")},
        "authorization": authorization,
    }
    (directory / "nats.conf").write_text(json.dumps(config))
    server = subprocess.Popen(
        [nats_server_binary(), "-c", str(directory / "nats.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def accepting() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        eventually_sync(accepting, 10, "nats-server to listen")
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def _ready(admin: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def destination(url: str, env: dict[str, str], *flags: str) -> tuple[subprocess.Popen[str], int]:
    admin = free_port()
    argv = [
        sys.executable,
        "-m",
        "tether.destination",
        *("--nats-url", url, "--nats-connect-timeout", "5", "--admin-addr", f"127.0.0.1:{admin}"),
        *("--grpc-addr", "127.0.0.1:0", "--source", "local", "--registry-file", ""),
        *("--identity-disabled", "true", "--log-format", "json", "--shutdown-grace", "0.5"),
        *flags,
    ]
    process = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return process, admin


@pytest.mark.parametrize("method", ["password", "token"])
async def test_a_secret_from_the_environment_authenticates_and_is_never_shown(
    method: str, tmp_path: Path
) -> None:
    secret = secrets.token_urlsafe(24)
    flags: tuple[str, ...]
    if method == "password":
        authorization: dict[str, object] = {"users": [{"user": "destination", "password": secret}]}
        env, flags = {"TETHER_NATS_PASSWORD": secret}, ("--nats-user", "destination")
        wrong_env = {"TETHER_NATS_PASSWORD": secret + "-wrong"}
    else:
        authorization = {"token": secret}
        env, flags = {"TETHER_NATS_TOKEN": secret}, ()
        wrong_env = {"TETHER_NATS_TOKEN": secret + "-wrong"}
    with nats_server(tmp_path / "nats", authorization) as url:
        process, admin = destination(url, env, *flags)
        try:
            await asyncio.to_thread(eventually_sync, lambda: process.poll() is None and _ready(admin), 30,
                                    "destination ready with credentials from the environment")  # fmt: skip
            command_line = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        finally:
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=15)
        assert process.returncode == 0, err[-2000:]
        wrong, _ = destination(url, wrong_env, *flags)
        wrong_out, wrong_err = wrong.communicate(timeout=30)
    assert secret.encode() not in command_line
    assert secret not in out + err, "the secret is in the log"
    assert wrong.returncode == 2, wrong_err[-2000:]
    last = wrong_err.strip().splitlines()[-1]
    assert last.startswith("tether-destination: error: ") and "authorization violation" in last, last
    assert secret not in wrong_out + wrong_err, "the refusal echoed the secret"
