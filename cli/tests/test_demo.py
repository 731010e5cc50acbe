"""``tether demo`` as a user runs it (a subprocess): the local mesh, the demo application under ``tether
run`` (unmodified grpcio services reaching each other through their sidecars by grpc_proxy), live stats from
the real public API — then everything torn down. Real processes throughout.

While it runs, the test reads what a user would: ``tether stat -o json`` against the demo's mesh, and each
inbound proxy's ``/metrics`` (requests over mTLS from the expected client identity)."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path
from typing import Any

from mesh_harness import TETHER, free_base, listening, proxy_metric, stat_rows

from tether.shared.testing import eventually_sync

ROW = re.compile(r"^(\S+)\s+(\d+/\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")
ADMIN_LINE = re.compile(r"^\s+(\S+)\s+.*proxy admin 127\.0\.0\.1:(\d+)")
DURATION = 25


def identity(name: str) -> str:
    return f"{name}.demo.serviceaccount.identity.cluster.local"


# Who calls whom in the demo: each server's inbound proxy sees its caller's identity.
CALLERS = {"web": identity("vote-bot"), "emoji": identity("web"), "voting": identity("web")}


class Output:
    """The demo's stdout, read as it comes (a thread: the demo must never block on a full pipe)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def admin_ports(self) -> dict[str, int]:
        return {m.group(1): int(m.group(2)) for line in self.lines if (m := ADMIN_LINE.match(line))}

    def join(self) -> None:
        self._thread.join(10)


def stats_complete(rows: dict[str, dict[str, Any]]) -> bool:
    return all(
        name in rows and rows[name]["requests"] > 0 and rows[name]["latency_ms_p50"] is not None
        for name in CALLERS
    ) and (rows["voting"]["failure"] > 0)


def test_the_demo_shows_real_golden_metrics_and_leaves_nothing_running(tmp_path: Path) -> None:
    base = free_base()
    state = tmp_path / "state"
    errors = (tmp_path / "demo.stderr").open("w")
    demo = subprocess.Popen(
        [TETHER, "demo", "--duration", str(DURATION), "--state-dir", str(state), "--port-base", str(base)],
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    output = Output(demo)

    def traffic() -> bool:
        if "traffic:" in output.text():
            return True
        assert demo.poll() is None, output.text()[-2000:]
        return False

    try:
        eventually_sync(traffic, 90, lambda: f"the demo's traffic\n{output.text()[-2000:]}", interval=0.2)
        admins = output.admin_ports()
        assert set(CALLERS) <= set(admins), admins

        # From the mesh, while the demo runs: the public API's numbers and the inbound proxies' metrics.
        rows: dict[str, dict[str, Any]] = {}
        secured: dict[str, float] = {}

        def observed() -> dict[str, dict[str, Any]] | None:
            nonlocal rows, secured
            assert demo.poll() is None, f"the demo ended first: {rows} {secured}\n{output.text()[-2000:]}"
            rows = stat_rows(state, "deploy", "-n", "demo")
            secured = {
                n: proxy_metric(
                    admins[n], "request_total", direction="inbound", tls="true", client_id=CALLERS[n]
                )
                for n in CALLERS
            }
            return rows if stats_complete(rows) and all(secured.get(n, 0) > 0 for n in CALLERS) else None

        # The demo ending (after DURATION) is what bounds this; the timeout only guards a demo that hangs.
        eventually_sync(
            observed,
            DURATION + 60,
            lambda: f"complete stats and mTLS metrics: {rows} {secured}\n{output.text()[-2000:]}",
            interval=1,
        )
        for name in CALLERS:
            assert rows[name]["meshed"] == 1 and rows[name]["total"] == 1, rows[name]
            assert rows[name]["rps"] > 0 and rows[name]["latency_ms_p99"] >= rows[name]["latency_ms_p50"]
            assert rows[name]["tls_share"] == 1.0, rows[name]  # every request between them is mTLS
        assert rows["voting"]["success_rate"] < 1.0  # one of its methods always fails
        assert rows["emoji"]["success_rate"] == 1.0
        # emoji is the slow backend: slower than voting at the median.
        assert rows["emoji"]["latency_ms_p50"] > rows["voting"]["latency_ms_p50"], rows
        # Only the reader thread reads stdout (communicate() would race it for the last table).
        demo.wait(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        errors.close()
    output.join()
    stderr = (tmp_path / "demo.stderr").read_text()
    assert demo.returncode == 0, output.text()[-2000:] + stderr[-2000:]

    # What the user saw: the last table printed (not a terminal: one plain table per refresh).
    tables = output.text().split("NAME ")
    printed = {}
    for line in tables[-1].splitlines()[1:]:
        match = ROW.match(line)
        if match:
            printed[match.group(1)] = match.groups()
    for service in CALLERS:
        _name, meshed, _success, rps, p50, _p95, p99, _tcp, mtls = printed[service]
        assert meshed == "1/1" and rps.endswith("rps") and p50.endswith("ms") and p99.endswith("ms"), printed
        assert mtls == "100.00%", printed
    assert float(printed["voting"][2].rstrip("%")) < 100.0

    # Torn down: no mesh runs, none of its ports listens.
    status = subprocess.run([TETHER, "status", "--state-dir", str(state)], capture_output=True, text=True)
    assert status.returncode == 3, status.stdout + status.stderr
    assert not [port for port in range(base, base + 100) if listening(port)]
