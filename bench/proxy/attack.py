"""The proxy benchmark's attack phase: each class of HTTP/2 abuse against each listener of a Tether pair while
h2load runs through it, compared with h2load through the same pair, in the same run, with no attack.

Topology (fresh namespaces): ``client`` (h2load and the outbound proxy, behind ``tether-proxy init`` rules,
and the attacker "in the pod", whose connections to the server are intercepted into the outbound listener),
``server`` (nghttpd on 0.0.0.0 and the inbound proxy), ``outside`` (linked to the server, no proxy: the
attacker on the inbound listener). The attacks are tests/netns/h2attacks.py's, each reconnecting after every
close (``reconnecting``), run by this process on its own event loop thread while h2load runs.

Per row: h2load's requests/s and failures, each proxy's peak VmRSS while it ran (sampled every 0.1 s), the
attacker's connections, how many were cut off (GOAWAY ENHANCE_YOUR_CALM; for the classes that are not abuse,
how many ended as documented) and how many ended otherwise (``problems``: e.g. cut off late, or not at all),
and what ``proxy_h2_abuse_total`` counted. The last row runs every attack on both listeners at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.proxy import run as bench  # first: it puts tests/netns (h2attacks, netns_harness) on sys.path

# isort: split
from h2attacks import ATTACKS, BY_NAME, Attack, Outcome, Target, namespace_target, reconnecting
from netns_harness import Namespace, NetnsHarness, proxy_init, proxy_metrics

from tether.proxy.core.abuse import REASONS

LISTENERS = ("outbound", "inbound")
#: Targets of the attack phase (see bench/proxy/README.md).
TARGETS = {"attack_rss_mb": 50.0, "attack_failed": 0, "attack_problems": 0}
#: Log events the attacks are expected to cause (one line per cut-off or malformed request, throttled).
EXPECTED_LOG_EVENTS = ("identity_disabled", "client_cut_off", "peer_protocol_error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--attack-seconds", type=float, default=5.0, help="h2load's run under each attack (attack scenario)"
    )
    parser.add_argument(
        "--attacks",
        default=",".join(attack.name for attack in ATTACKS),
        help="comma-separated attack classes for the attack scenario (tests/netns/h2attacks.py)",
    )


@dataclass
class Row:
    attack: str
    listener: str
    rps: float = 0.0
    failed: int = 0
    #: Each proxy's peak VmRSS (MB) while h2load ran.
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    connections: int = 0
    #: Connections cut off with GOAWAY ENHANCE_YOUR_CALM.
    cut_off: int = 0
    #: Connections that ended otherwise than documented, and the first such.
    problems: int = 0
    first_problem: str | None = None
    #: proxy_h2_abuse_total increase, "proxy:direction:reason" -> count.
    abuse: dict[str, int] = field(default_factory=dict)
    #: PING/SETTINGS ACKs the proxy sent per flood connection before its GOAWAY (the largest).
    max_replies: int = 0
    error: str | None = None


@dataclass
class Phase:
    rows: list[Row] = field(default_factory=list)
    #: Each proxy's VmRSS (MB) before the first attack, and VmHWM at the end (whole run).
    rss_before_mb: dict[str, float] = field(default_factory=dict)
    hwm_mb: dict[str, float] = field(default_factory=dict)
    log_notes: list[str] = field(default_factory=list)
    error: str | None = None


class Attacker(threading.Thread):
    """Attacks on their own event loop, each reconnecting after every close, until ``halt``."""

    def __init__(self, plan: list[tuple[Attack, Target]]) -> None:
        super().__init__(daemon=True, name="attacker")
        self.plan = plan
        self.outcomes: list[Outcome] = []
        self.failure: BaseException | None = None
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halt: asyncio.Event | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.failure = exc
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._halt = asyncio.Event()
        self._started.set()
        results = await asyncio.gather(
            *(reconnecting(attack, target, 3600.0, stop=self._halt) for attack, target in self.plan)
        )
        self.outcomes = [outcome for found in results for outcome in found]

    def begin(self) -> None:
        self.start()
        self._started.wait(10)

    def halt(self) -> list[Outcome]:
        """Stop once each attack's connection under way ended; all their outcomes."""
        if self._loop is not None and self._halt is not None:
            self._loop.call_soon_threadsafe(self._halt.set)
        self.join(60)
        if self.failure is not None:
            raise RuntimeError(f"the attacker failed: {self.failure!r}") from self.failure
        return self.outcomes


class RssSampler(threading.Thread):
    """Each proxy's VmRSS every 0.1 s until stopped; the peaks (MB)."""

    def __init__(self, proxies: dict[str, bench.ProcStat]) -> None:
        super().__init__(daemon=True, name="rss")
        self.proxies = proxies
        self.peaks: dict[str, float] = dict.fromkeys(proxies, 0.0)
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            for name, stat in self.proxies.items():
                self.peaks[name] = max(self.peaks[name], rss_mb(stat.pid))
            if self._halt.wait(0.1):
                return

    def finish(self) -> dict[str, float]:
        self._halt.set()
        self.join(5)
        return {name: round(peak, 1) for name, peak in self.peaks.items()}


def status_mb(pid: int, field_name: str) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    return status_mb(pid, "VmRSS")


def abuse_counts(namespaces: dict[str, Namespace]) -> dict[str, int]:
    counts = {}
    for name, namespace in namespaces.items():
        text = proxy_metrics(namespace)
        for direction in LISTENERS:
            for reason in REASONS:
                key = f"{name}:{direction}:{reason}"
                counts[key] = bench.sample(text, "proxy_h2_abuse_total", direction=direction, reason=reason)
    return counts


def measure(
    label: tuple[str, str],
    plan: list[tuple[Attack, Target]],
    args: argparse.Namespace,
    client: Namespace,
    url: str,
    proxies: dict[str, bench.ProcStat],
    namespaces: dict[str, Namespace],
) -> Row:
    row = Row(*label)
    before = abuse_counts(namespaces)
    attacker = Attacker(plan) if plan else None
    sampler = RssSampler(proxies)
    sampler.start()
    try:
        if attacker is not None:
            attacker.begin()
        row.rps, row.failed = bench.saturate(client, url, args.attack_seconds, args.warmup)
    except (AssertionError, RuntimeError, OSError) as exc:
        row.error = " ".join(str(exc).split())[:300]
    finally:
        outcomes = attacker.halt() if attacker is not None else []
        row.peak_rss_mb = sampler.finish()
    after = abuse_counts(namespaces)
    row.abuse = {key: after[key] - before[key] for key in after if after[key] != before[key]}
    row.connections = len(outcomes)
    row.cut_off = sum(outcome.cut_off for outcome in outcomes)
    wrong = [outcome for outcome in outcomes if outcome.problem is not None]
    row.problems = len(wrong)
    row.first_problem = f"{wrong[0].attack}: {wrong[0].problem}"[:300] if wrong else None
    row.max_replies = max((outcome.replies for outcome in outcomes), default=0)
    return row


def run_phase(args: argparse.Namespace, workdir: Path) -> Phase:
    phase = Phase()
    harness = NetnsHarness()
    logs = bench.Logs(workdir / "logs")
    try:
        attacks = [BY_NAME[name] for name in args.attacks.split(",") if name]
        client, server, outside = harness.namespace("cli"), harness.namespace("srv"), harness.namespace("out")
        _, server_ip = harness.link(client, server)
        _, server_outside_ip = harness.link(outside, server)
        docroot = workdir / "htdocs"
        docroot.mkdir(parents=True, exist_ok=True)
        (docroot / "index.html").write_bytes(b"x" * args.body_bytes)
        bench.start_nghttpd(server, docroot, "0.0.0.0")
        proxy_init(client)
        proxy_init(server)
        proxies = {
            "outbound": bench.start_proxy(client, logs, "outbound", args.proxy_log_level),
            "inbound": bench.start_proxy(server, logs, "inbound", args.proxy_log_level),
        }
        namespaces = {"outbound": client, "inbound": server}
        targets = {
            "outbound": namespace_target("outbound", client, server_ip, bench.APP_PORT, "/index.html"),
            "inbound": namespace_target("inbound", outside, server_outside_ip, bench.APP_PORT, "/index.html"),
        }
        url = f"http://{server_ip}:{bench.APP_PORT}/index.html"
        warm = client.run(["h2load", "-n", "200", "-c", "2", url], check=False, timeout=60)
        if bench.h2load_counts(warm.stdout)[0] != 200:
            raise RuntimeError(f"warm-up through the pair failed: {warm.stdout[-300:]}")
        phase.rss_before_mb = {name: round(rss_mb(stat.pid), 1) for name, stat in proxies.items()}
        plans: list[tuple[tuple[str, str], list[tuple[Attack, Target]]]] = [(("none", "-"), [])]
        plans += [
            ((attack.name, listener), [(attack, targets[listener])])
            for attack in attacks
            for listener in LISTENERS
        ]
        plans.append(
            (("all", "both"), [(attack, targets[listener]) for attack in attacks for listener in LISTENERS])
        )
        for label, plan in plans:
            print(f"  attack {label[0]} on {label[1]} ...", file=sys.stderr, flush=True)
            phase.rows.append(measure(label, plan, args, client, url, proxies, namespaces))
        phase.hwm_mb = {name: round(status_mb(stat.pid, "VmHWM"), 1) for name, stat in proxies.items()}
    except (AssertionError, RuntimeError, OSError, KeyError) as exc:
        phase.error = " ".join(str(exc).split())[:600] or type(exc).__name__
    finally:
        bench.stop_in_reverse(harness)
        harness.cleanup()
        logs.finish()
        phase.log_notes = logs.notes(expected=EXPECTED_LOG_EVENTS)
        if args.logs:
            logs.save(args.logs / "attack")
    return phase


def verdict(phase: Phase) -> dict[str, Any]:
    """The attack phase's targets: met or not (not met when the phase or a row failed)."""
    rows = [row for row in phase.rows if row.error is None]
    failed = phase.error is not None or len(rows) != len(phase.rows) or not rows
    values = {
        "attack_rss_mb": max((mb for row in rows for mb in row.peak_rss_mb.values()), default=float("inf")),
        "attack_failed": sum(row.failed for row in rows),
        "attack_problems": sum(row.problems for row in rows),
    }
    checks = {
        "attack_rss_mb": not failed and values["attack_rss_mb"] < TARGETS["attack_rss_mb"],
        "attack_failed": not failed and values["attack_failed"] <= TARGETS["attack_failed"],
        "attack_problems": not failed and values["attack_problems"] <= TARGETS["attack_problems"],
    }
    return {"checks": checks, "values": values, "targets": TARGETS}


def render(phase: Phase) -> str:
    baseline = next((row for row in phase.rows if row.attack == "none" and row.error is None), None)
    header = (
        f"{'attack':<25} {'listener':<8} {'req/s':>7} {'x none':>6} {'failed':>6} {'out MB':>6} {'in MB':>6} "
        f"{'conns':>6} {'cut off':>7} {'problems':>8}"
    )
    lines = [
        "attack phase (h2load -c 10 -m 10 through the pair while the attack runs, reconnecting):",
        header,
        "-" * len(header),
    ]
    for row in phase.rows:
        if row.error is not None:
            lines.append(f"{row.attack:<25} {row.listener:<8} ERROR: {row.error}")
            continue
        ratio = row.rps / baseline.rps if baseline and baseline.rps else float("nan")
        lines.append(
            f"{row.attack:<25} {row.listener:<8} {row.rps:>7.0f} {ratio:>6.2f} {row.failed:>6} "
            f"{row.peak_rss_mb.get('outbound', 0):>6.1f} {row.peak_rss_mb.get('inbound', 0):>6.1f} "
            f"{row.connections:>6} {row.cut_off:>7} {row.problems:>8}"
        )
        if row.first_problem:
            lines.append(f"    first problem: {row.first_problem}")
    if phase.error:
        lines.append(f"ERROR: {phase.error}")
    lines.append(f"RSS before the attacks (MB): {phase.rss_before_mb}; VmHWM at the end: {phase.hwm_mb}")
    report = verdict(phase)
    for name, met in report["checks"].items():
        value = report["values"][name]
        lines.append(f"  {name:<18} {value:>9g} vs {TARGETS[name]:g}  {'met' if met else 'NOT MET'}")
    return "\n".join(lines)


def as_json(phase: Phase) -> dict[str, Any]:
    return {**asdict(phase), "targets": verdict(phase)}
