"""``tether up``, ``status`` and ``down`` as a user runs them: real processes, real ports, no mocks.

One mesh runs for the module (on a free range of ports, in a tmp state directory); the tests run in order:
up → ready and ``tether check`` green; status as text and JSON; a second up refused; each component
SIGKILLed in turn and restarted; down → no process of the mesh, no port listening. A mesh refused for a
taken port starts nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import LocalMesh, alive, free_base, listening, mesh_pids, tether

from tether.shared.testing import eventually_sync

COMPONENTS = ["nats", "identity", "destination", "telemetry", "public-api"]
OFFSETS = {"nats": (0,), "identity": (10, 11), "destination": (20, 21), "telemetry": (30, 31)}
OFFSETS["public-api"] = (40, 41)
DEADLINE = 20.0


class Mesh(LocalMesh):
    def ports(self) -> list[int]:
        return [self.base + o for offsets in OFFSETS.values() for o in offsets]

    def status(self) -> dict[str, Any]:
        result = tether("status", *self.flags, "-o", "json")
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def rows(self) -> dict[str, dict[str, Any]]:
        return {row["component"]: row for row in self.status()["components"]}

    def check_ok(self) -> bool:
        return tether("--api-addr", f"127.0.0.1:{self.base + 40}", "check").returncode == 0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    running = Mesh(tmp_path_factory.mktemp("mesh") / "state", free_base())
    try:
        yield running
    finally:
        running.down()


def test_up_starts_every_component_ready(mesh: Mesh) -> None:
    result = tether("up", *mesh.flags)
    assert result.returncode == 0, result.stderr
    for port in mesh.ports():
        assert f"127.0.0.1:{port}" in result.stdout
    rows = mesh.rows()
    assert sorted(rows) == sorted(COMPONENTS)
    assert all(row["ready"] and row["pid"] > 0 for row in rows.values()), rows
    eventually_sync(mesh.check_ok, DEADLINE, "`tether check` to pass")
    files = {p.name for p in (mesh.state_dir / "logs").iterdir()}
    assert files >= {f"{name}.log" for name in [*COMPONENTS, "supervisor"]}
    assert (mesh.state_dir / "ca" / "ca.crt").exists() and (mesh.state_dir / "registry.yaml").exists()
    state = json.loads((mesh.state_dir / "mesh.json").read_text())
    assert alive(state["supervisor_pid"])
    assert {c["name"]: c["port"] for c in state["components"]}["public-api"] == mesh.base + 40


def test_status_text_and_json(mesh: Mesh) -> None:
    result = tether("status", *mesh.flags)
    assert result.returncode == 0
    header, *lines = result.stdout.splitlines()[1:]
    assert header.split() == ["COMPONENT", "PID", "PORT", "ADMIN", "READY", "RESTARTS"]
    rows = mesh.rows()
    for line, name in zip(lines, COMPONENTS, strict=True):
        admin = str(rows[name]["admin_port"] or "-")
        expected = [
            name,
            str(rows[name]["pid"]),
            str(rows[name]["port"]),
            admin,
            "yes",
            str(rows[name]["restarts"]),
        ]
        assert line.split() == expected
    data = mesh.status()
    assert data["running"] is True and data["state_dir"] == str(mesh.state_dir)
    assert rows["nats"]["admin_port"] == 0 and rows["identity"]["admin_port"] == mesh.base + 11


def test_second_up_is_refused(mesh: Mesh) -> None:
    before = mesh.rows()
    result = tether("up", *mesh.flags)
    assert result.returncode == 1
    assert result.stdout == ""
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith(f"tether: error: a local mesh already runs in {mesh.state_dir}")
    assert "tether down" in line
    assert {n: r["pid"] for n, r in mesh.rows().items()} == {n: r["pid"] for n, r in before.items()}


def test_each_component_killed_is_restarted(mesh: Mesh) -> None:
    for name in COMPONENTS:
        old = mesh.rows()[name]
        os.kill(old["pid"], signal.SIGKILL)

        def restarted(name: str = name, old: dict[str, Any] = old) -> bool:
            row = mesh.rows()[name]
            return bool(row["ready"] and row["pid"] not in (0, old["pid"]))

        eventually_sync(restarted, DEADLINE, f"{name} restarted and ready")
        assert mesh.rows()[name]["restarts"] == old["restarts"] + 1
    eventually_sync(mesh.check_ok, DEADLINE, "`tether check` to pass")


def test_down_leaves_nothing(mesh: Mesh) -> None:
    assert mesh_pids(mesh.state_dir)
    result = tether("down", *mesh.flags)
    assert result.returncode == 0, result.stderr
    assert mesh_pids(mesh.state_dir) == []
    assert [port for port in mesh.ports() if listening(port)] == []
    status = tether("status", *mesh.flags)
    assert status.returncode == 3 and "no local mesh runs" in status.stderr
    assert mesh.status()["running"] is False
    assert tether("down", *mesh.flags).returncode == 0  # idempotent


def test_taken_port_starts_nothing(tmp_path: Path) -> None:
    base = free_base()
    state_dir = tmp_path / "state"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 30))  # telemetry's gRPC port
        taken.listen()
        result = tether("up", "--state-dir", str(state_dir), "--port-base", str(base))
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"tether: error: port {base + 30} (telemetry gRPC) is already in use on 127.0.0.1; nothing "
            "started; stop what listens there, or move the mesh's range with --port-base / "
            "TETHER_MESH_PORT_BASE"
        )
        assert mesh_pids(state_dir) == []
        assert [p for p in range(base, base + 100) if p != base + 30 and listening(p)] == []
        assert not (state_dir / "mesh.json").exists()


def test_bad_configuration_is_one_line_exit_2(tmp_path: Path) -> None:
    result = tether("up", "--state-dir", str(tmp_path), "--port-base", "80")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("tether: error: --port-base / TETHER_MESH_PORT_BASE:")
    assert "tether up --help" in line
    assert not (tmp_path / "mesh.json").exists()


def test_a_mesh_not_ready_in_time_is_stopped_whole(tmp_path: Path) -> None:
    """A ``--ready-timeout`` shorter than a start: the message says the mesh is stopped, and it is — no
    supervisor, no component, no port — even though the supervisor had not written its state yet."""
    base = free_base()
    state_dir = tmp_path / "state"
    flags = ("--state-dir", str(state_dir), "--port-base", str(base))
    result = tether("up", *flags, "--ready-timeout", "0.01")
    assert result.returncode == 1, result.stderr
    assert "not ready within 0.01s; the mesh is stopped" in result.stderr, result.stderr
    assert mesh_pids(state_dir) == []
    assert [port for port in range(base, base + 100) if listening(port)] == []
    assert tether("status", *flags).returncode == 3
