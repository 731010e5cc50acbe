"""Acceptance: a replica whose NATS user loses its permissions exits 1; the other replica carries on.

Two destination replicas (real processes) each connect as their own nkey user with the destination role on
an authenticated nats-server. Revoking one user's permissions and reloading the server is what an operator
(or a broken permission rollout) does: that replica's next publish is refused, the critical task making it
fails with PermissionDenied, and the process turns not-ready and exits 1 with the documented last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tether.shared.natsserver import EmbeddedNats
from tether.shared.testing import eventually

from .conftest import DEADLINE, Mesh, Replica, env_for, write_registry

USERS = {"dest-a": "destination", "dest-b": "destination"}
GRACE = 0.5  # TETHER_SHUTDOWN_GRACE of every Replica
# The documented bound on exiting after a critical failure, plus the exit detection's polling.
EXIT_BUDGET = GRACE + 1.0 + 0.3
FAILURE_LINE = re.compile(
    r"^tether-destination: error: critical task (?P<task>[\w:.-]+) failed: PermissionDenied: "
    r"NATS refused \w+ on \S+: permission denied for this user; .+$"
)


class SplitReplica(Replica):
    """A replica whose stderr (the JSON log and the last failure line) is kept apart from its stdout."""

    def start(self) -> None:
        out = self.log_path.with_suffix(".stdout").open("ab")
        err = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tether.destination"], env=self.env, stdout=out, stderr=err
        )
        out.close()
        err.close()


@pytest.fixture
async def secured_nats(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats", users=USERS)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def secured_mesh(tmp_path: Path, secured_nats: EmbeddedNats) -> AsyncIterator[Mesh]:
    mesh = Mesh(tmp_path, secured_nats.url)
    try:
        yield mesh
    finally:
        await mesh.close()


async def start_replicas(mesh: Mesh, nats: EmbeddedNats, registry: Path) -> dict[str, Replica]:
    """One replica per user, each authenticating with its own seed and inbox prefix; all ready."""
    replicas: dict[str, Replica] = {}
    for user in USERS:
        replica = SplitReplica(
            user,
            mesh.workdir,
            {
                "TETHER_NATS_URL": nats.url,
                "TETHER_NATS_NKEY": nats.users[user].seed_file,
                "TETHER_NATS_INBOX_PREFIX": f"_INBOX.{user}",
                **env_for(registry),
            },
        )
        replica.start()
        mesh.replicas.append(replica)
        replicas[user] = replica
    for started in replicas.values():
        await started.wait_ready()
    return replicas


class ReadyWatch:
    """Polls a replica's /ready as fast as it answers until its process exits: each status change seen.

    A replica that fails shuts down within milliseconds when it has nothing to drain, so requests go back
    to back on one keep-alive connection rather than one connection per poll.
    """

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.statuses: list[int] = []
        self.exited_at: float | None = None
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        process = self.replica.process
        assert process is not None
        while process.poll() is None:
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError, EOFError):
                await self._poll_connection()
            await asyncio.sleep(0.005)
        self.exited_at = time.time()

    async def _poll_connection(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.replica.admin_port), 1.0
        )
        try:
            while True:
                writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ", 2)[1])
                length = next(
                    int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
                )
                await reader.readexactly(length)
                if not self.statuses or self.statuses[-1] != status:
                    self.statuses.append(status)
        except asyncio.IncompleteReadError as exc:
            raise EOFError from exc
        finally:
            writer.close()

    async def exited(self, timeout: float = DEADLINE) -> int:
        await asyncio.wait_for(asyncio.shield(self._task), timeout)
        process = self.replica.process
        assert process is not None
        code = process.poll()
        assert code is not None
        return code

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def log_lines(replica: Replica) -> list[dict[str, Any]]:
    lines = []
    for line in replica.logs().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                lines.append(record)
    return lines


async def revoke_and_see_exit(nats: EmbeddedNats, user: str, replica: Replica) -> str:
    """Revoke ``user``, reload the server; the replica turns not-ready and exits 1. The failed task's name."""
    watch = ReadyWatch(replica)
    try:
        await eventually(lambda: watch.statuses == [200], what=f"{replica.name} seen ready")
        nats.revoke(user)
        await nats.reload()
        code = await watch.exited()
    finally:
        await watch.close()
    logs = replica.logs()
    assert code == 1, logs[-3000:]
    assert watch.statuses[:2] == [200, 503], (watch.statuses, logs[-3000:])

    failed = [r for r in log_lines(replica) if r.get("event") == "task_failed"]
    assert len(failed) == 1, logs[-3000:]
    record = failed[0]
    assert record["level"] == "error" and record["task"], record
    assert record["error"].startswith("PermissionDenied: NATS refused"), record
    failed_at = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
    assert watch.exited_at is not None
    assert watch.exited_at - failed_at < EXIT_BUDGET, (watch.exited_at - failed_at, logs[-3000:])

    assert "Traceback" not in logs and "Exception in callback" not in logs, logs[-3000:]

    last = logs.rstrip("\n").splitlines()[-1]
    match = FAILURE_LINE.match(last)
    assert match is not None, last
    assert match["task"] == record["task"], (last, record)
    return str(record["task"])


async def test_revoked_leader_exits_and_the_other_replica_takes_over(
    secured_mesh: Mesh, secured_nats: EmbeddedNats, tmp_path: Path
) -> None:
    registry = tmp_path / "registry.yaml"
    write_registry(registry, ["10.0.0.1", "10.0.0.2"])
    replicas = await start_replicas(secured_mesh, secured_nats, registry)
    leader = await secured_mesh.leader()
    user = next(name for name, replica in replicas.items() if replica is leader)
    survivor = next(replica for replica in replicas.values() if replica is not leader)
    client = secured_mesh.client(survivor, "web.shop:80")
    await eventually(lambda: client.addresses == {"10.0.0.1", "10.0.0.2"}, what="initial set")

    # The lease keeper polls every ttl/6; the writer, if the registry changed meanwhile, may be refused first.
    assert await revoke_and_see_exit(secured_nats, user, leader) in {"lease", "writer"}

    assert await secured_mesh.leader(timeout=15.0) is survivor
    write_registry(registry, ["10.0.0.2", "10.0.0.3"])
    await eventually(lambda: client.addresses == {"10.0.0.2", "10.0.0.3"}, what="the survivor writes")
    assert client.error is None and client.first_messages == 1
    await survivor.wait_ready(timeout=1.0)


async def test_revoked_follower_exits_and_the_leader_keeps_writing(
    secured_mesh: Mesh, secured_nats: EmbeddedNats, tmp_path: Path
) -> None:
    registry = tmp_path / "registry.yaml"
    write_registry(registry, ["10.0.0.1"])
    replicas = await start_replicas(secured_mesh, secured_nats, registry)
    leader = await secured_mesh.leader()
    user, follower = next((name, r) for name, r in replicas.items() if r is not leader)
    client = secured_mesh.client(leader, "web.shop:80")
    await eventually(lambda: client.addresses == {"10.0.0.1"}, what="initial set")

    assert await revoke_and_see_exit(secured_nats, user, follower) == "lease"  # a follower never writes

    write_registry(registry, ["10.0.0.1", "10.0.0.4"])
    await eventually(lambda: client.addresses == {"10.0.0.1", "10.0.0.4"}, what="the leader writes on")
    assert await leader.is_leader()
    assert client.error is None and client.first_messages == 1
