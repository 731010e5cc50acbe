"""The proxy benchmark's HTTP/1.1 and opaque TCP scenarios, in the same namespaces as run.py's HTTP/2 ones.

HTTP/1.1 (``h2load --h1 -c <--h1-connections> -m 1``: keep-alive, no pipelining) against an HTTP/1.1 server:
nghttpx with a plaintext HTTP/1.1 frontend on the application port in front of nghttpd (HTTP/2 only) on the
server's loopback, both C, one worker each.

- h1-direct:  h2load -> the HTTP/1.1 server
- h1-tether:  through the plaintext Tether pair (``tether-proxy init`` rules, original destinations): the
              proxies detect HTTP/1.1 and forward it as HTTP/1.1 over pooled keep-alive connections.
- h1-mtls:    through the meshed pair (run.py's mtls control plane): h2load names the service in ``Host``;
              between the proxies the requests ride their multiplexed mTLS HTTP/2 connection.
- h1-nghttpx: through two nghttpx instances with HTTP/1.1 frontends and backends (the reference).

TCP: a 64 MiB transfer each way (bench/proxy/tcpperf.py: ``PUT`` uploads, ``GET`` downloads; the median of
``--tcp-repeats`` fresh connections) to port 6379, opaque by default, so neither proxy waits for detection.

- tcp-direct: client -> sink/source
- tcp-tether: through the plaintext pair (a byte relay on each side)
- tcp-mtls:   through the meshed pair: destination announces the server's address with the server proxy's
              identity (port 6379 opaque), so the outbound proxy dials the inbound one over mTLS (ALPN
              ``tether.tcp``).

Targets (see bench/proxy/README.md): the HTTP/1.1 pair's req/s >= 0.7x the HTTP/2 pair's (run.py's
``tether``, in the same run); TCP through the plaintext pair >= 0.3x direct, through the mTLS pair >= 0.5x the
plaintext pair (each the worse of the two directions).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.proxy import run as bench  # first: it puts tests/netns (netns_harness) on sys.path

# isort: split
from netns_harness import (
    INBOUND_PORT,
    OUTBOUND_PORT,
    Namespace,
    NetnsHarness,
    proxy_init,
    proxy_metrics,
    wait_port,
)

H1_SCENARIOS = ("h1-direct", "h1-tether", "h1-mtls", "h1-nghttpx")
TCP_SCENARIOS = ("tcp-direct", "tcp-tether", "tcp-mtls")
SCENARIOS = H1_SCENARIOS + TCP_SCENARIOS
PAIRS = ("h1-tether", "h1-mtls", "tcp-tether", "tcp-mtls")
#: Where nghttpd listens behind the HTTP/1.1 server's nghttpx frontend (the server's loopback).
H2_BACKEND_PORT = 8081
#: Redis's port: in the proxies' default --opaque-ports, so relayed as TCP at once.
TCP_PORT = 6379
TCPPERF = Path(__file__).resolve().parent / "tcpperf.py"
TARGETS = {"h1_rps_ratio": 0.7, "tcp_pair_ratio": 0.3, "tcp_mtls_ratio": 0.5}
DIRECTIONS = ("up", "down")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--h1-connections",
        type=int,
        default=100,
        help="h2load --h1 -c: keep-alive connections (h1-*); 100: as many requests in flight as the HTTP/2 "
        "runs' -c 10 -m 10",
    )
    parser.add_argument("--tcp-mib", type=int, default=64, help="MiB per TCP transfer (tcp-*)")
    parser.add_argument(
        "--tcp-repeats", type=int, default=5, help="transfers per direction; the median counts (tcp-*)"
    )


@dataclass
class ProtocolResult:
    scenario: str
    #: h1-*: h2load's req/s and failed requests at saturation.
    rps: float = 0.0
    failed: int = 0
    #: tcp-*: MB/s (10^6 bytes) of the median transfer, client -> server (up) and server -> client (down),
    #: and every transfer's.
    up_mbps: float = 0.0
    down_mbps: float = 0.0
    transfers_mbps: dict[str, list[float]] = field(default_factory=dict)
    proxies: list[bench.ProxyUsage] = field(default_factory=list)
    #: What each Tether proxy counted: HTTP/1.1 requests, or TCP bytes; with tls="true" and the peer's id.
    seen: dict[str, int] = field(default_factory=dict)
    control_plane_cpu_seconds: dict[str, float] = field(default_factory=dict)
    log_notes: list[str] = field(default_factory=list)
    profile: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    error: str | None = None


def start_h1_server(server: Namespace, docroot: Path, host: str) -> None:
    """nghttpd (HTTP/2 only) on the loopback behind an nghttpx HTTP/1.1 frontend at ``host``:APP_PORT."""
    server.spawn(["nghttpd", "--no-tls", "-a", "127.0.0.1", "-d", str(docroot), str(H2_BACKEND_PORT)])
    wait_port(server, "127.0.0.1", H2_BACKEND_PORT)
    server.spawn(nghttpx(f"{host},{bench.APP_PORT}", f"127.0.0.1,{H2_BACKEND_PORT};;proto=h2"))
    wait_port(server, "127.0.0.1" if host == "0.0.0.0" else host, bench.APP_PORT)


def nghttpx(frontend: str, backend: str) -> list[str]:
    return [
        "nghttpx", "--workers=1", f"--frontend={frontend};no-tls", f"--backend={backend}", "--no-via",
        "--no-ocsp", "--accesslog-file=/dev/null", "--errorlog-file=/dev/null", "--conf=/dev/null",
    ]  # fmt: skip


def start_profilers(
    proxies: dict[str, bench.ProcStat], directory: Path, scenario: str
) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """py-spy record of each proxy until ``stop_profilers`` (SIGINT makes it write its collapsed stacks)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    profilers = []
    for name, stat in proxies.items():
        output = directory / f"{scenario}-{name}.txt"
        argv = [py_spy, "record", "--pid", str(stat.pid), "--duration", "600", "--rate", "250"]
        argv += ["--format", "raw", "--nonblocking", "--output", str(output)]
        profilers.append((name, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    return profilers


def stop_profilers(
    profilers: list[tuple[str, subprocess.Popen[bytes]]],
    directory: Path,
    scenario: str,
    result: ProtocolResult,
) -> None:
    for name, process in profilers:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        result.profile[name] = bench.summarise_profile(
            directory / f"{scenario}-{name}.txt", f"{scenario} {name}"
        )


def transfer(client: Namespace, host: str, direction: str, count: int) -> float:
    """One transfer through whatever the client's connection to ``host``:TCP_PORT crosses; MB/s."""
    done = client.run(
        [sys.executable, str(TCPPERF), "transfer", host, str(TCP_PORT), direction, str(count)],
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tcp {direction} transfer failed: {done.stderr.strip()[-300:]}")
    measured = json.loads(done.stdout)
    return float(measured["bytes"]) / float(measured["seconds"]) / 1e6


def check_h1(scenario: str, client: Namespace, server: Namespace, result: ProtocolResult) -> None:
    """Both proxies counted the requests as HTTP/1.1 (the client's protocol); h1-mtls: all over mTLS."""
    outbound, inbound = proxy_metrics(client), proxy_metrics(server)
    seen = result.seen = {
        "outbound": bench.sample(outbound, "request_total", direction="outbound"),
        "outbound_h1": bench.sample(outbound, "request_total", direction="outbound", protocol="http/1.1"),
        "inbound": bench.sample(inbound, "request_total", direction="inbound"),
        "inbound_h1": bench.sample(inbound, "request_total", direction="inbound", protocol="http/1.1"),
    }
    if scenario == "h1-mtls":
        # The outbound proxy's HTTP/2 connection carries the requests between the proxies; the inbound one
        # labels them with the client's protocol, which tether-orig-proto restores (HTTP/1.1).
        seen["outbound_mtls"] = bench.sample(
            outbound, "request_total", direction="outbound", tls="true", server_id=bench.SERVER_ID
        )
        seen["inbound_mtls"] = bench.sample(
            inbound, "request_total", direction="inbound", tls="true", client_id=bench.CLIENT_ID
        )
    if min(seen["outbound"], seen["inbound"]) == 0:
        result.error = f"traffic bypassed a proxy: {seen}"
    elif seen["outbound_h1"] != seen["outbound"] or seen["inbound_h1"] != seen["inbound"]:
        result.error = f'not all counted with protocol="http/1.1": {seen}'
    elif scenario == "h1-mtls" and (
        seen["outbound_mtls"] != seen["outbound"] or seen["inbound_mtls"] != seen["inbound"]
    ):
        result.error = f"not all over mTLS (server_id {bench.SERVER_ID}, client_id {bench.CLIENT_ID}): {seen}"


def check_tcp(
    scenario: str, client: Namespace, server: Namespace, moved: int, result: ProtocolResult
) -> None:
    """Both proxies relayed at least the bytes moved (read + written on the accepted side); tcp-mtls: the
    connection between them (the outbound's dialled side, the inbound's accepted side) over mTLS."""
    outbound, inbound = proxy_metrics(client), proxy_metrics(server)

    def moved_bytes(text: str, **labels: str) -> int:
        return bench.sample(text, "tcp_read_bytes_total", **labels) + bench.sample(
            text, "tcp_write_bytes_total", **labels
        )

    seen = result.seen = {
        "outbound": moved_bytes(outbound, direction="outbound", peer="src"),
        "inbound": moved_bytes(inbound, direction="inbound", peer="src"),
        "outbound_opens": bench.sample(outbound, "tcp_open_total", direction="outbound", peer="src"),
    }
    if scenario == "tcp-mtls":
        seen["outbound_mtls"] = moved_bytes(
            outbound, direction="outbound", peer="dst", tls="true", server_id=bench.SERVER_ID
        )
        seen["inbound_mtls"] = moved_bytes(
            inbound, direction="inbound", peer="src", tls="true", client_id=bench.CLIENT_ID
        )
    short = {name: count for name, count in seen.items() if name != "outbound_opens" and count < moved}
    if short:
        result.error = f"the proxies counted fewer than the {moved} bytes moved: {seen}"


def run_scenario(scenario: str, args: argparse.Namespace, workdir: Path) -> ProtocolResult:
    harness = NetnsHarness()
    result = ProtocolResult(scenario)
    logs = bench.Logs(workdir / "logs")
    try:
        client, server = harness.namespace("cli"), harness.namespace("srv")
        _, server_ip = harness.link(client, server)
        proxies: dict[str, bench.ProcStat] = {}
        kind, _, path = scenario.partition("-")
        if kind == "h1":
            docroot = workdir / "htdocs"
            docroot.mkdir(exist_ok=True)
            (docroot / "index.html").write_bytes(b"x" * args.body_bytes)
            start_h1_server(server, docroot, "127.0.0.1" if path == "nghttpx" else "0.0.0.0")
        else:
            server.spawn([sys.executable, str(TCPPERF), "serve", str(TCP_PORT)], ready_line="ready")
        if path == "tether":
            proxy_init(client)
            proxy_init(server)
            proxies["outbound"] = bench.start_proxy(client, logs, "outbound", args.proxy_log_level)
            proxies["inbound"] = bench.start_proxy(server, logs, "inbound", args.proxy_log_level)
        elif path == "mtls":
            proxies = bench.start_mtls_pair(
                client, server, server_ip, workdir, logs, args.proxy_log_level, opaque_ports=(TCP_PORT,)
            )
        elif path == "nghttpx":
            inbound = server.spawn(
                nghttpx(f"0.0.0.0,{INBOUND_PORT}", f"127.0.0.1,{bench.APP_PORT};;proto=http/1.1")
            )
            outbound = client.spawn(
                nghttpx(f"127.0.0.1,{OUTBOUND_PORT}", f"{server_ip},{INBOUND_PORT};;proto=http/1.1")
            )
            wait_port(server, "127.0.0.1", INBOUND_PORT)
            wait_port(client, "127.0.0.1", OUTBOUND_PORT)
            proxies = {"outbound": bench.ProcStat(outbound.pid), "inbound": bench.ProcStat(inbound.pid)}
        elif path != "direct":
            raise RuntimeError(f"unknown scenario {scenario!r}")
        profiling = bool(args.profile) and scenario in PAIRS
        if kind == "h1":
            measure_h1(scenario, args, client, server, server_ip, proxies, logs, result, profiling)
        else:
            measure_tcp(scenario, args, client, server, server_ip, proxies, logs, result, profiling)
    except (AssertionError, RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        result.error = " ".join(str(exc).split())[:600] or type(exc).__name__
    finally:
        bench.stop_in_reverse(harness)
        harness.cleanup()
        logs.finish()
        result.log_notes = logs.notes(expected={"identity_disabled"} if scenario.endswith("-tether") else ())
        if args.logs:
            logs.save(args.logs / scenario)
    return result


def measure_h1(
    scenario: str,
    args: argparse.Namespace,
    client: Namespace,
    server: Namespace,
    server_ip: str,
    proxies: dict[str, bench.ProcStat],
    logs: bench.Logs,
    result: ProtocolResult,
    profiling: bool,
) -> None:
    url = f"http://{server_ip}:{bench.APP_PORT}/index.html"
    if scenario == "h1-nghttpx":
        url = f"http://127.0.0.1:{OUTBOUND_PORT}/index.html"
    # h2load sends :authority as Host in HTTP/1.1; the outbound proxy resolves the name through destination.
    options = ["--h1", *(["-H", f":authority: {bench.SERVICE_AUTHORITY}"] if scenario == "h1-mtls" else [])]
    warm = client.run(["h2load", "-n", "200", "-c", "2", *options, url], check=False, timeout=60)
    succeeded, _ = bench.h2load_counts(warm.stdout)
    if succeeded != 200:
        notes = "".join(f"; {note}" for note in logs.notes(3))
        raise RuntimeError(f"warm-up: {succeeded} of 200 requests succeeded{notes}")
    usage = Usage(proxies, logs)
    profilers = start_profilers(proxies, args.profile, scenario) if profiling else []
    result.rps, result.failed = bench.saturate(
        client, url, args.seconds, args.warmup, options, connections=args.h1_connections, streams=1
    )
    stop_profilers(profilers, args.profile, scenario, result)
    usage.finish(result)
    if scenario in ("h1-tether", "h1-mtls"):
        check_h1(scenario, client, server, result)


def measure_tcp(
    scenario: str,
    args: argparse.Namespace,
    client: Namespace,
    server: Namespace,
    server_ip: str,
    proxies: dict[str, bench.ProcStat],
    logs: bench.Logs,
    result: ProtocolResult,
    profiling: bool,
) -> None:
    count = args.tcp_mib << 20
    for direction in DIRECTIONS:  # a small warm-up each way: connections, the destination lookup
        transfer(client, server_ip, direction, 1 << 20)
    usage = Usage(proxies, logs)
    profilers = start_profilers(proxies, args.profile, scenario) if profiling else []
    for direction in DIRECTIONS:
        result.transfers_mbps[direction] = [
            round(transfer(client, server_ip, direction, count), 1) for _ in range(args.tcp_repeats)
        ]
    stop_profilers(profilers, args.profile, scenario, result)
    usage.finish(result)
    result.up_mbps = statistics.median(result.transfers_mbps["up"])
    result.down_mbps = statistics.median(result.transfers_mbps["down"])
    if scenario in ("tcp-tether", "tcp-mtls"):
        check_tcp(scenario, client, server, 2 * count * args.tcp_repeats, result)


class Usage:
    """The proxies' CPU seconds over the measured runs, their peak RSS, and the control plane's CPU."""

    def __init__(self, proxies: dict[str, bench.ProcStat], logs: bench.Logs) -> None:
        self.proxies = proxies
        self.before = {name: stat.cpu_seconds() for name, stat in proxies.items()}
        self.others = {name: bench.ProcStat(pid) for name, pid in logs.pids.items() if name not in proxies}
        self.others_before = {name: stat.cpu_seconds() for name, stat in self.others.items()}

    def finish(self, result: ProtocolResult) -> None:
        result.proxies = [
            bench.ProxyUsage(
                name, round(stat.cpu_seconds() - self.before[name], 2), round(stat.peak_rss_mb(), 1)
            )
            for name, stat in self.proxies.items()
        ]
        result.control_plane_cpu_seconds = {
            name: round(stat.cpu_seconds() - self.others_before[name], 2)
            for name, stat in self.others.items()
        }


def _ok(results: list[ProtocolResult]) -> dict[str, ProtocolResult]:
    return {r.scenario: r for r in results if r.error is None}


def _tcp_ratio(over: ProtocolResult, under: ProtocolResult) -> float:
    """The worse direction's ratio."""
    return min(over.up_mbps / max(under.up_mbps, 1e-9), over.down_mbps / max(under.down_mbps, 1e-9))


def verdict(results: list[ProtocolResult], h2_results: list[bench.Result]) -> dict[str, Any]:
    """Each target whose scenarios were run: met or not (not met when one of them failed)."""
    ran = {r.scenario for r in results} | {r.scenario for r in h2_results}
    ok = _ok(results)
    h2_pair = next((r for r in h2_results if r.scenario == "tether" and r.error is None), None)
    needs = {
        "h1_rps_ratio": ("h1-tether", "tether"),
        "tcp_pair_ratio": ("tcp-tether", "tcp-direct"),
        "tcp_mtls_ratio": ("tcp-mtls", "tcp-tether"),
    }
    checks: dict[str, bool] = {}
    values: dict[str, float] = {}
    failed: set[str] = set()
    for name, wanted in needs.items():
        if not set(wanted) <= ran:
            continue
        missing = {s for s in wanted if s not in ok and not (s == "tether" and h2_pair is not None)}
        if missing:
            checks[name] = False
            failed |= missing
            continue
        if name == "h1_rps_ratio":
            assert h2_pair is not None
            value = ok["h1-tether"].rps / max(h2_pair.rps, 1e-9)
        else:
            value = _tcp_ratio(ok[wanted[0]], ok[wanted[1]])
        values[name] = round(value, 3)
        checks[name] = value >= TARGETS[name]
    report: dict[str, Any] = {
        "met": bool(checks) and all(checks.values()),
        "checks": checks,
        "values": values,
        "targets": TARGETS,
    }
    if failed:
        report["reason"] = f"scenario failed: {', '.join(sorted(failed))}"
    return report


def _usage(result: ProtocolResult) -> str:
    return ", ".join(f"{p.name} {p.cpu_seconds:.1f}s/{p.peak_rss_mb:.0f}MB" for p in result.proxies) or "-"


def render(results: list[ProtocolResult], h2_results: list[bench.Result], args: argparse.Namespace) -> str:
    ok = _ok(results)
    h2_pair = next((r for r in h2_results if r.scenario == "tether" and r.error is None), None)
    lines: list[str] = []
    h1 = [r for r in results if r.scenario in H1_SCENARIOS]
    if h1:
        header = (
            f"{'scenario':<11} {'req/s':>9} {'x direct':>8} {'x nghttpx':>9} {'x h2 pair':>9} {'failed':>6}"
            "  proxies (CPU s / peak RSS MB)"
        )
        lines += [
            f"HTTP/1.1 (h2load --h1 -c {args.h1_connections} -m 1, keep-alive):",
            header,
            "-" * len(header),
        ]
        for r in h1:
            if r.error is not None:
                lines.append(f"{r.scenario:<11} ERROR: {r.error}")
                continue
            direct, reference = ok.get("h1-direct"), ok.get("h1-nghttpx")
            ratios = [
                r.rps / under.rps if under is not None and under.rps else float("nan")
                for under in (direct, reference, h2_pair)
            ]
            lines.append(
                f"{r.scenario:<11} {r.rps:>9.0f} {ratios[0]:>8.2f} {ratios[1]:>9.2f} {ratios[2]:>9.2f} "
                f"{r.failed:>6}  {_usage(r)}"
            )
    tcp = [r for r in results if r.scenario in TCP_SCENARIOS]
    if tcp:
        header = (
            f"{'scenario':<11} {'up MB/s':>9} {'down MB/s':>9} {'x direct':>8} {'x plain':>8}"
            "  proxies (CPU s / peak RSS MB)"
        )
        lines += [
            f"TCP ({args.tcp_mib} MiB each way, median of {args.tcp_repeats}; x = the worse direction):",
            header,
            "-" * len(header),
        ]
        for r in tcp:
            if r.error is not None:
                lines.append(f"{r.scenario:<11} ERROR: {r.error}")
                continue
            direct, plain = ok.get("tcp-direct"), ok.get("tcp-tether")
            ratios = [
                _tcp_ratio(r, under) if under is not None else float("nan") for under in (direct, plain)
            ]
            lines.append(
                f"{r.scenario:<11} {r.up_mbps:>9.0f} {r.down_mbps:>9.0f} {ratios[0]:>8.2f} {ratios[1]:>8.2f}"
                f"  {_usage(r)}"
            )
    return "\n".join(lines)


def render_verdict(report: dict[str, Any]) -> str:
    lines = []
    for name, met in report["checks"].items():
        value = report["values"].get(name)
        shown = f"{value:g}" if value is not None else "-"
        lines.append(f"  {name:<18} {shown:>9} >= {TARGETS[name]:g}  {'met' if met else 'NOT MET'}")
    if "reason" in report:
        lines.append(f"  ({report['reason']})")
    return "\n".join(lines)


def as_json(
    results: list[ProtocolResult], report: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    return {
        "settings": {
            "h1": f"h2load --h1 -c {args.h1_connections} -m 1",
            "h1_server": "nghttpx (HTTP/1.1 frontend) -> nghttpd",
            "tcp_bytes": args.tcp_mib << 20,
            "tcp_repeats": args.tcp_repeats,
            "tcp_port": TCP_PORT,
        },
        "results": [asdict(r) for r in results],
        "targets": report,
    }
