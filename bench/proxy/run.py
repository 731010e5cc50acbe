"""Tether proxy benchmark: h2load against nghttpd directly, through a Tether proxy pair, and through nghttpx.

Every scenario runs in fresh network namespaces: a ``client`` namespace (h2load, the outbound proxy) and a
``server`` namespace (nghttpd, the inbound proxy) joined by a veth pair, so all three cross the same link.

- direct:   h2load -> nghttpd
- tether:   h2load dials the server's address with no knowledge of the proxy; ``tether-proxy init`` rules
            redirect it to the outbound proxy, which forwards to the original destination, where the
            server's rules redirect it to the inbound proxy, which forwards to nghttpd over loopback.
- nghttpx:  the same pair of hops with two nghttpx instances (static backends, no interception).

Measured: requests/s at saturation (``-c 10 -m 10``), open-loop latency at a fixed rate from h2load's
--timing-script-file and --log-file (p50/p99/max), and each proxy's CPU seconds and peak RSS from /proc.
Needs root (namespaces, iptables) and h2load, nghttpd, nghttpx. Not a test: run it with ``make bench-proxy``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "netns"))

from netns_harness import (  # noqa: E402
    INBOUND_PORT,
    OUTBOUND_PORT,
    Namespace,
    NetnsHarness,
    proxy_init,
    proxy_metrics,
    start_tether_proxy,
    unavailable_reason,
    wait_port,
)

APP_PORT = 8080
TOOLS = {"h2load": "nghttp2-client", "nghttpd": "nghttp2-server", "nghttpx": "nghttp2-proxy"}
TARGETS = {"pair_rps": 4000.0, "added_p50_ms": 1.0, "added_p99_ms": 2.0, "rss_mb": 50.0}


@dataclass
class ProxyUsage:
    name: str
    cpu_seconds: float
    peak_rss_mb: float


@dataclass
class Result:
    scenario: str
    rps: float = 0.0
    failed: int = 0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    latency_samples: int = 0
    latency_failed: int = 0
    proxies: list[ProxyUsage] = field(default_factory=list)
    error: str | None = None


def check_tools() -> list[str]:
    return [
        f"{tool} (apt-get install -y {package})" for tool, package in TOOLS.items() if not shutil.which(tool)
    ]


class ProcStat:
    """CPU seconds and peak RSS of a process and its descendants (nghttpx forks workers), from /proc."""

    ticks = os.sysconf("SC_CLK_TCK")

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        family = [self.pid]
        for candidate in sorted(parents):
            if parents[candidate] in family:
                family.append(candidate)
        return family

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / self.ticks

    def peak_rss_mb(self) -> float:
        """Sum of each process's RSS high-water mark (VmHWM)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        return total / 1024


def saturate(client: Namespace, url: str, seconds: float, warmup: float) -> tuple[float, int]:
    done = client.run(
        [
            "h2load",
            "-c",
            "10",
            "-m",
            "10",
            "-t",
            "1",
            "-D",
            f"{seconds:g}",
            "--warm-up-time",
            f"{warmup:g}",
            url,
        ],
        timeout=seconds + warmup + 60,
        check=False,  # h2load exits 1 when the duration ends with streams still in flight
    )
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", done.stdout)
    counts = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", done.stdout
    )
    if rps is None or counts is None:
        raise RuntimeError(f"could not parse h2load output:\n{done.stdout}\n{done.stderr}")
    return float(rps.group(1)), int(counts.group(2))


def open_loop(client: Namespace, url: str, rate: float, seconds: float, workdir: Path) -> dict[str, float]:
    """Requests scheduled at a fixed rate regardless of responses; latency per request from the log."""
    count = int(rate * seconds)
    script = workdir / "timing.tsv"
    script.write_text("".join(f"{i * 1000.0 / rate:.3f}\t{url}\n" for i in range(count)))
    log = workdir / "latency.log"
    log.unlink(missing_ok=True)
    client.run(
        ["h2load", "-c", "1", "-m", "100", "--timing-script-file", str(script), "--log-file", str(log)],
        timeout=seconds + 60,
        check=False,
    )
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda row: int(row[0]))
    steady = rows[len(rows) // 10 :]  # the first tenth warms connections and the proxies' caches
    latencies = sorted(int(row[2]) / 1000.0 for row in steady if row[1] == "200")
    if not latencies:
        raise RuntimeError("no successful requests in the open-loop run")
    return {
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max": latencies[-1],
        "samples": len(latencies),
        "failed": sum(1 for row in steady if row[1] != "200"),
    }


def start_nghttpd(server: Namespace, docroot: Path, host: str) -> None:
    server.spawn(["nghttpd", "--no-tls", "-a", host, "-d", str(docroot), str(APP_PORT)])
    wait_port(server, host, APP_PORT)


def request_count(metrics: str, direction: str) -> int:
    pattern = re.compile(rf'^request_total\{{direction="{direction}"[^}}]*\}} (\d+)$', re.MULTILINE)
    return sum(int(n) for n in pattern.findall(metrics))


def run_scenario(scenario: str, args: argparse.Namespace, workdir: Path) -> Result:
    harness = NetnsHarness()
    result = Result(scenario)
    try:
        client, server = harness.namespace("cli"), harness.namespace("srv")
        _, server_ip = harness.link(client, server)
        docroot = workdir / "htdocs"
        docroot.mkdir(exist_ok=True)
        (docroot / "index.html").write_bytes(b"x" * args.body_bytes)
        proxies: dict[str, ProcStat] = {}
        url = f"http://{server_ip}:{APP_PORT}/index.html"
        if scenario == "direct":
            start_nghttpd(server, docroot, "0.0.0.0")
        elif scenario == "tether":
            start_nghttpd(server, docroot, "127.0.0.1")
            proxy_init(client)
            proxy_init(server)
            proxies["outbound"] = ProcStat(start_tether_proxy(client, "--log-level", "warning").pid)
            proxies["inbound"] = ProcStat(start_tether_proxy(server, "--log-level", "warning").pid)
        else:
            start_nghttpd(server, docroot, "127.0.0.1")
            inbound = server.spawn(
                ["nghttpx", "--workers=1", f"--frontend=0.0.0.0,{INBOUND_PORT};no-tls",
                 f"--backend=127.0.0.1,{APP_PORT};;proto=h2", "--no-via", "--no-ocsp",
                 "--accesslog-file=/dev/null", "--errorlog-file=/dev/null", "--conf=/dev/null"],
            )  # fmt: skip
            outbound = client.spawn(
                ["nghttpx", "--workers=1", f"--frontend=127.0.0.1,{OUTBOUND_PORT};no-tls",
                 f"--backend={server_ip},{INBOUND_PORT};;proto=h2", "--no-via", "--no-ocsp",
                 "--accesslog-file=/dev/null", "--errorlog-file=/dev/null", "--conf=/dev/null"],
            )  # fmt: skip
            wait_port(server, "127.0.0.1", INBOUND_PORT)
            wait_port(client, "127.0.0.1", OUTBOUND_PORT)
            proxies = {"outbound": ProcStat(outbound.pid), "inbound": ProcStat(inbound.pid)}
            url = f"http://127.0.0.1:{OUTBOUND_PORT}/index.html"
        client.run(["h2load", "-n", "200", "-c", "2", url])  # warm-up: connections, caches
        cpu_before = {name: stat.cpu_seconds() for name, stat in proxies.items()}
        profilers = start_profilers(proxies, args, scenario) if args.profile and scenario == "tether" else {}
        result.rps, result.failed = saturate(client, url, args.seconds, args.warmup)
        for name, profiler in profilers.items():
            profiler.wait(timeout=args.seconds + 30)
            summarise_profile(args.profile / f"{scenario}-{name}.txt", name)
        latency = open_loop(client, url, args.rate, args.seconds, workdir)
        result.latency_p50_ms, result.latency_p99_ms = latency["p50"], latency["p99"]
        result.latency_max_ms, result.latency_samples = latency["max"], int(latency["samples"])
        result.latency_failed = int(latency["failed"])
        result.proxies = [
            ProxyUsage(name, round(stat.cpu_seconds() - cpu_before[name], 2), round(stat.peak_rss_mb(), 1))
            for name, stat in proxies.items()
        ]
        if scenario == "tether":
            outbound_seen = request_count(proxy_metrics(client), "outbound")
            inbound_seen = request_count(proxy_metrics(server), "inbound")
            if min(outbound_seen, inbound_seen) == 0:
                result.error = (
                    f"traffic bypassed a proxy: outbound saw {outbound_seen}, inbound {inbound_seen}"
                )
    except (AssertionError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        result.error = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    finally:
        harness.cleanup()
    return result


def start_profilers(
    proxies: dict[str, ProcStat], args: argparse.Namespace, scenario: str
) -> dict[str, subprocess.Popen[bytes]]:
    """py-spy record (collapsed stacks) of each proxy for the saturation run's measured window."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.profile.mkdir(parents=True, exist_ok=True)
    return {
        name: subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(stat.pid),
                "--duration",
                f"{int(args.seconds + args.warmup)}",
                "--rate",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(args.profile / f"{scenario}-{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, stat in proxies.items()
    }


def summarise_profile(collapsed: Path, name: str, top: int = 15) -> None:
    """Print the functions with the most self time from py-spy's collapsed stacks."""
    if not collapsed.exists():
        print(f"profile of {name}: py-spy wrote nothing (is py-spy installed?)", file=sys.stderr)
        return
    self_time: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue  # --nonblocking sampling occasionally reads a half-updated frame
        leaf = stack.rsplit(";", 1)[-1]
        self_time[leaf] = self_time.get(leaf, 0) + int(count)
        total += int(count)
    print(f"profile of the {name} proxy ({total} samples, self time):", file=sys.stderr)
    for leaf, samples in sorted(self_time.items(), key=lambda item: -item[1])[:top]:
        print(f"  {100 * samples / max(total, 1):5.1f}%  {leaf}", file=sys.stderr)


def render_table(results: list[Result]) -> str:
    direct = next((r for r in results if r.scenario == "direct" and r.error is None), None)
    header = (
        f"{'scenario':<9} {'req/s':>9} {'x direct':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'+p50':>6} {'+p99':>6}  proxies (CPU s / peak RSS MB)"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        if r.error is not None:
            lines.append(f"{r.scenario:<9} ERROR: {r.error}")
            continue
        ratio = r.rps / direct.rps if direct else float("nan")
        added_p50 = r.latency_p50_ms - direct.latency_p50_ms if direct else float("nan")
        added_p99 = r.latency_p99_ms - direct.latency_p99_ms if direct else float("nan")
        usage = ", ".join(f"{p.name} {p.cpu_seconds:.1f}s/{p.peak_rss_mb:.0f}MB" for p in r.proxies) or "-"
        lines.append(
            f"{r.scenario:<9} {r.rps:>9.0f} {ratio:>8.2f} {r.latency_p50_ms:>7.2f} {r.latency_p99_ms:>7.2f} "
            f"{r.latency_max_ms:>7.2f} {added_p50:>6.2f} {added_p99:>6.2f}  {usage}"
        )
    return "\n".join(lines)


def verdict(results: list[Result]) -> dict[str, Any]:
    by_name = {r.scenario: r for r in results if r.error is None}
    tether, direct = by_name.get("tether"), by_name.get("direct")
    if tether is None or direct is None:
        return {"met": False, "reason": "tether or direct scenario failed"}
    checks = {
        "pair_rps": tether.rps >= TARGETS["pair_rps"],
        "added_p50_ms": tether.latency_p50_ms - direct.latency_p50_ms < TARGETS["added_p50_ms"],
        "added_p99_ms": tether.latency_p99_ms - direct.latency_p99_ms < TARGETS["added_p99_ms"],
        "rss_mb": all(p.peak_rss_mb < TARGETS["rss_mb"] for p in tether.proxies),
    }
    return {"met": all(checks.values()), "checks": checks, "targets": TARGETS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", default="direct,tether,nghttpx", help="comma-separated subset to run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured run")
    parser.add_argument("--warmup", type=float, default=1.0, help="h2load warm-up before the saturation run")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s of the open-loop latency run")
    parser.add_argument("--body-bytes", type=int, default=128, help="size of the response body")
    parser.add_argument("--json", type=Path, help="also write the JSON report to this file")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the Tether proxies during the saturation run; stacks go here"
    )
    args = parser.parse_args(argv)
    missing = check_tools()
    if missing:
        print("missing: " + "; ".join(missing), file=sys.stderr)
        print(
            "install: apt-get update && apt-get install -y nghttp2-client nghttp2-server nghttp2-proxy",
            file=sys.stderr,
        )
        return 2
    reason = unavailable_reason()
    if reason is not None:
        print(f"cannot run the proxy benchmark: {reason}", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        for scenario in args.scenarios.split(","):
            workdir = Path(tmp) / scenario
            workdir.mkdir()
            os.chmod(tmp, 0o755)
            started = time.monotonic()
            print(f"running {scenario} ...", file=sys.stderr, flush=True)
            results.append(run_scenario(scenario, args, workdir))
            print(f"  {scenario} took {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    report = {
        "cores": os.cpu_count(),
        "h2load": subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip(),
        "settings": {"saturation": "-c 10 -m 10", "seconds": args.seconds, "open_loop_rate": args.rate},
        "results": [asdict(r) for r in results],
        "targets": verdict(results),
    }
    print(render_table(results))
    print(f"cores: {os.cpu_count()}")
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
