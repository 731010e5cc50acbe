"""``tether demo`` as a user runs it (a subprocess): the local mesh, the demo application under ``tether
run`` (unmodified grpcio services reaching each other through their sidecars by grpc_proxy), live stats from
the real public API — then everything torn down. Real processes throughout."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from mesh_harness import TETHER, free_base, listening

ROW = re.compile(r"^(\S+)\s+(\d+/\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")


def test_the_demo_shows_real_golden_metrics_and_leaves_nothing_running(tmp_path: Path) -> None:
    base = free_base()
    state = tmp_path / "state"
    done = subprocess.run(
        [TETHER, "demo", "--duration", "20", "--state-dir", str(state), "--port-base", str(base)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # The last table printed (not a terminal: one plain table per refresh).
    tables = done.stdout.split("NAME ")
    rows = {}
    for line in tables[-1].splitlines()[1:]:
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = match.groups()
    for service in ("web", "emoji", "voting"):
        _name, meshed, _success, rps, p50, _p95, p99, _tcp, mtls = rows[service]
        assert meshed == "1/1" and rps.endswith("rps") and p50.endswith("ms") and p99.endswith("ms"), rows
        assert mtls == "100.00%", rows  # every request between the demo's services went over mTLS
    assert float(rows["voting"][2].rstrip("%")) < 100.0  # one of its methods always fails
    assert float(rows["emoji"][2].rstrip("%")) == 100.0
    # Torn down: no mesh runs, none of its ports listens.
    status = subprocess.run([TETHER, "status", "--state-dir", str(state)], capture_output=True, text=True)
    assert status.returncode == 3, status.stdout + status.stderr
    assert not [port for port in range(base, base + 100) if listening(port)]
