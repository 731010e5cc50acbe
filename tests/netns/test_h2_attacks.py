"""HTTP/2 attacks over the wire against real proxy processes, on both listeners (tests/netns/h2attacks.py).

``client`` (meshed: proxy-init rules, the outbound proxy) holds the attacker "in the pod": its connections to
the server's address are intercepted into the outbound listener. ``server`` (meshed: the inbound proxy and
the application h2_app.py) is reached through that pair by a legitimate client in ``client``, and directly
by ``outside``, a namespace with no proxy whose connections land on the server's inbound listener.

Each class of abuse is cut off (or answered, for those that are not abuse) as documented, at the limit read
from the proxy's defaults, and counted on the attacked proxy under its own direction and nowhere else. Then
what the classes leave open: a flood in one write, frames on a stream the client reset, more empty-DATA
attackers than an upstream connection has streams. Last, every attacker at once on both listeners,
reconnecting after every close for 20 s while a legitimate client sends requests through the pair: all of
those succeed, the proxies' memory stays put and their logs within the throttle. Core-level counterparts:
services/proxy/tests/test_abuse.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import h2attacks
import pytest
from h2attacks import (
    ATTACKS,
    Attack,
    ControlFloodInOneWrite,
    Outcome,
    ResetStreamFlood,
    Target,
    namespace_target,
    reconnecting,
)
from h2raw import RawH2Client, get
from netns_harness import ADMIN_PORT, Namespace, NetnsHarness, proxy_init, start_tether_proxy
from test_interception import sample

from tether.proxy.core.abuse import REASONS, ClientLimits

pytestmark = pytest.mark.netns

APP = Path(__file__).resolve().parent / "h2_app.py"
APP_PORT = 8080
LIMITS = ClientLimits()
ATTACK_SECONDS = 20.0
#: What each proxy's resident memory may grow by during the reconnecting attack (after a warm-up).
RSS_GROWTH_KB = 5 * 1024
#: client_cut_off lines a proxy may log per second and reason (tether.shared.logthrottle's default).
LOG_LINES_PER_SECOND = 10


class Drained:
    """A process's stdout and stderr read by threads as they come (the harness leaves them as pipes, and a
    proxy logging a line per cut-off would block on a full one), kept as lines with their arrival time."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                threading.Thread(target=self._drain, args=(stream,), daemon=True).start()

    def _drain(self, stream: IO[str]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                self.lines.append((time.monotonic(), line))

    def events(self, event: str, since: float = 0.0) -> list[dict[str, object]]:
        found = []
        for at, line in list(self.lines):
            if at < since or event not in line:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == event:
                    found.append(record)
        return found


@dataclass
class Proxy:
    namespace: Namespace
    direction: str
    process: subprocess.Popen[str]
    pid: int
    logs: Drained

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for pid {self.pid}")


def proxy_pid(process: subprocess.Popen[str]) -> int:
    """The pid of the proxy's Python process: ``ip netns exec`` and ``setpriv`` exec rather than fork, so it
    is the Popen's own pid; checked, and otherwise looked for among its descendants."""
    candidates = [process.pid]
    for _ in range(3):
        for pid in candidates:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            if b"tether.proxy" in argv and "python" in Path(exe).name:
                return pid
        candidates = [
            int(child)
            for pid in candidates
            for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    raise AssertionError(f"no tether.proxy python process under pid {process.pid}")


@dataclass
class Mesh:
    client: Namespace
    server: Namespace
    outside: Namespace
    outbound: Proxy
    inbound: Proxy
    #: The outbound listener, as the attacker in the client pod reaches it (intercepted).
    outbound_target: Target
    #: The inbound listener, reached directly from outside.
    inbound_target: Target
    #: The legitimate client: the client pod, through both proxies, to the application.
    legit_target: Target
    #: The server's address on the client's link and on the outside one.
    server_ip: str
    server_outside_ip: str
    proxies: dict[str, Proxy] = field(default_factory=dict)

    def target(self, listener: str) -> Target:
        return self.outbound_target if listener == "outbound" else self.inbound_target


@pytest.fixture(scope="module")
def mesh(netns_supported: None) -> Iterator[Mesh]:
    harness = NetnsHarness()
    try:
        client, server, outside = harness.namespace("cli"), harness.namespace("srv"), harness.namespace("out")
        _, server_ip = harness.link(client, server)
        _, server_outside_ip = harness.link(outside, server)
        server.spawn([sys.executable, str(APP), "serve", str(APP_PORT)], ready_line="ready")
        proxy_init(client)
        proxy_init(server)
        proxies = {}
        for namespace, direction in ((client, "outbound"), (server, "inbound")):
            process = start_tether_proxy(namespace)
            proxies[direction] = Proxy(namespace, direction, process, proxy_pid(process), Drained(process))
        yield Mesh(
            client,
            server,
            outside,
            proxies["outbound"],
            proxies["inbound"],
            namespace_target("outbound", client, server_ip, APP_PORT),
            namespace_target("inbound", outside, server_outside_ip, APP_PORT),
            namespace_target("legit", client, server_ip, APP_PORT),
            server_ip,
            server_outside_ip,
            proxies,
        )
    finally:
        harness.cleanup()


def metrics(proxy: Proxy) -> str:
    """GET /metrics on the proxy's admin port, from inside its namespace (a socket, not a subprocess)."""
    sock = proxy.namespace.open_socket("127.0.0.1", ADMIN_PORT)
    with sock:
        sock.settimeout(5)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


def abuse_counts(proxy: Proxy) -> dict[tuple[str, str], int]:
    """proxy_h2_abuse_total by (direction, reason)."""
    text = metrics(proxy)
    return {
        (direction, reason): sample(text, "proxy_h2_abuse_total", direction=direction, reason=reason)
        for direction in ("outbound", "inbound")
        for reason in REASONS
    }


def increase(
    after: dict[tuple[str, str], int], before: dict[tuple[str, str], int]
) -> dict[tuple[str, str], int]:
    return {key: after[key] - before[key] for key in after if after[key] != before[key]}


def problems(outcomes: Sequence[Outcome]) -> list[str]:
    return [f"{outcome.attack}: {outcome.problem} ({outcome})" for outcome in outcomes if outcome.problem]


async def legit_request(client: RawH2Client, authority: str, path: str) -> str | None:
    """One GET through the pair; what went wrong, or None."""
    try:
        response = await client.request(get(authority, path), timeout=15.0)
    except (ConnectionError, OSError, TimeoutError) as exc:
        return f"{path}: {type(exc).__name__}: {exc}"
    if response.status != 200 or response.reset is not None:
        return f"{path}: status {response.status}, reset {response.reset}"
    if json.loads(response.body).get("path") != path:
        return f"{path}: the application saw another path: {response.body[:200]!r}"
    return None


@dataclass
class LegitTally:
    succeeded: int = 0
    failures: list[str] = field(default_factory=list)


async def legit_client(
    target: Target, stop: asyncio.Event, tally: LegitTally, worker: int, *, fresh: bool, count: int = 0
) -> None:
    """Requests one after another until ``stop`` (or ``count`` of them): on one connection, or (``fresh``) a
    new one each time."""
    client: RawH2Client | None = None
    n = 0
    try:
        while not stop.is_set() and not (count and n >= count):
            n += 1
            path = f"/legit/{worker}/{n}"
            if client is None:
                try:
                    client = await target.connect()
                    await client.handshake()
                except (ConnectionError, OSError, TimeoutError) as exc:
                    tally.failures.append(f"{path}: connecting: {type(exc).__name__}: {exc}")
                    client = None
                    continue
            failure = await legit_request(client, target.authority, path)
            if failure is None:
                tally.succeeded += 1
            else:
                tally.failures.append(failure)
            if fresh or failure is not None:
                await client.close()
                client = None
    finally:
        if client is not None:
            await client.close()


# --- each class on its own ---------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
@pytest.mark.parametrize("attack", ATTACKS, ids=[attack.name for attack in ATTACKS])
async def test_each_attack_is_cut_off_at_its_documented_limit(
    mesh: Mesh, attack: Attack, listener: str
) -> None:
    attacked = mesh.proxies[listener]
    other = mesh.inbound if attacked is mesh.outbound else mesh.outbound
    before = abuse_counts(attacked), abuse_counts(other)
    outcomes = [
        await attack.run(mesh.target(listener), LIMITS, variant) for variant in range(attack.variants)
    ]
    assert not problems(outcomes)
    if attack.reason is not None:
        assert all(outcome.cut_off for outcome in outcomes)
    # Counted once per connection cut off, on the attacked listener's direction only; the proxy behind the
    # outbound one saw nothing of it (what the outbound proxy forwarded was well-formed).
    wanted = {(listener, attack.reason): len(outcomes)} if attack.reason is not None else {}
    assert increase(abuse_counts(attacked), before[0]) == wanted
    assert increase(abuse_counts(other), before[1]) == {}
    # The pair still carries requests (pooled upstream connections included).
    legit = await mesh.legit_target.connect()
    try:
        await legit.handshake()
        assert await legit_request(legit, mesh.legit_target.authority, f"/after/{attack.name}") is None
    finally:
        await legit.close()


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
async def test_a_control_flood_in_one_write_gets_no_more_than_the_burst_answered(
    mesh: Mesh, listener: str
) -> None:
    """``max_queued_control_replies`` bounds the replies a flooding client gets, however it sends its PINGs;
    and the GOAWAY reaches it, although the proxy did not read everything it sent."""
    outcome = await ControlFloodInOneWrite(multiple=10).run(mesh.target(listener), LIMITS)
    assert outcome.problem is None, outcome


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
async def test_frames_on_a_stream_the_client_reset_count_like_any(mesh: Mesh, listener: str) -> None:
    """Empty DATA frames on a stream the client reset cost the proxy as much as on an open one (h2 answers
    each with RST_STREAM): the same limit applies."""
    outcome = await ResetStreamFlood().run(mesh.target(listener), LIMITS)
    assert outcome.problem is None, outcome


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
async def test_the_pair_still_serves_after_more_empty_data_attackers_than_a_connection_has_streams(
    mesh: Mesh, listener: str
) -> None:
    """Each empty-DATA attacker opens a request stream whose body never ends and is cut off, often before its
    response started; the application answers without reading the body. After more such connections than
    one upstream connection takes streams (the inbound proxy's MAX_CONCURRENT_STREAMS), the pair must still
    carry a legitimate request. (One attacker after the other: so each is cut off before its response
    started, which is what kept an upstream slot forever before 59113cb.)"""
    target = mesh.target(listener)
    count = LIMITS.max_concurrent_streams + 500
    attack = h2attacks.BY_NAME["empty_data_flood"]
    outcomes: list[Outcome] = []

    while len(outcomes) < count and not problems(outcomes):
        outcomes.append(await attack.run(target, LIMITS, len(outcomes)))
    wrong = problems(outcomes)
    legit = await mesh.legit_target.connect()
    try:
        await legit.handshake()
        failure = await legit_request(legit, mesh.legit_target.authority, f"/after-{len(outcomes)}-attackers")
    finally:
        await legit.close()
    assert (failure, wrong[:1]) == (None, []), f"after {len(outcomes)} attacker connections"


# --- all at once, reconnecting -----------------------------------------------------------------------------

WARM_UP_SECONDS = 4.0


@dataclass
class Onslaught:
    """Every attacker at once on both listeners, reconnecting, with the legitimate client running."""

    outcomes: dict[tuple[str, str], list[Outcome]]
    legit: LegitTally
    #: Each proxy's VmRSS (kB), sampled every quarter second: (seconds since the start, kB).
    rss: dict[str, list[tuple[float, int]]]
    started: float
    seconds: float


async def onslaught(mesh: Mesh, seconds: float) -> Onslaught:
    proxies = (mesh.outbound, mesh.inbound)
    started = time.monotonic()
    rss: dict[str, list[tuple[float, int]]] = {proxy.direction: [(0.0, proxy.rss_kb())] for proxy in proxies}
    stop = asyncio.Event()
    tally = LegitTally()
    # Four clients on one connection each, two on a new connection per request.
    legit = [
        asyncio.create_task(legit_client(mesh.legit_target, stop, tally, worker, fresh=worker >= 4))
        for worker in range(6)
    ]
    attackers = {
        (attack.name, listener): asyncio.create_task(
            reconnecting(attack, mesh.target(listener), seconds, LIMITS)
        )
        for attack in ATTACKS
        for listener in ("outbound", "inbound")
    }
    # Until every attacker finished its last connection (each one ends within a bounded time).
    while not all(task.done() for task in attackers.values()):
        await asyncio.wait(attackers.values(), timeout=0.25)
        for proxy in proxies:
            rss[proxy.direction].append((round(time.monotonic() - started, 2), proxy.rss_kb()))
    stop.set()
    await asyncio.gather(*legit)
    outcomes = {key: task.result() for key, task in attackers.items()}
    return Onslaught(outcomes, tally, rss, started, time.monotonic() - started)


async def test_reconnecting_attackers_on_both_listeners_cost_a_legitimate_client_nothing(mesh: Mesh) -> None:
    proxies = (mesh.outbound, mesh.inbound)
    pristine = {proxy.direction: proxy.rss_kb() for proxy in proxies}
    # A short round of the same first: the proxies' allocator arenas, h2's and hpack's caches and the
    # connection pools reach their working size for this much concurrency before memory is compared.
    warm = await onslaught(mesh, WARM_UP_SECONDS)
    assert not warm.legit.failures, warm.legit.failures[:5]
    counts_before = {proxy.direction: abuse_counts(proxy) for proxy in proxies}
    rss_before = {proxy.direction: proxy.rss_kb() for proxy in proxies}

    run = await onslaught(mesh, ATTACK_SECONDS)

    rss_after = {proxy.direction: proxy.rss_kb() for proxy in proxies}
    rss_peak = {direction: max(kb for _, kb in samples) for direction, samples in run.rss.items()}
    report = {
        "seconds": round(run.seconds, 1),
        "legit_succeeded": run.legit.succeeded,
        "legit_failed": len(run.legit.failures),
        "rss_kb_pristine_before_peak_after": {
            d: (pristine[d], rss_before[d], rss_peak[d], rss_after[d]) for d in rss_before
        },
        "rss_kb_every_5s": {d: samples[::20] for d, samples in run.rss.items()},
        "connections": {f"{name}@{listener}": len(found) for (name, listener), found in run.outcomes.items()},
        "cut_off": sum(outcome.cut_off for found in run.outcomes.values() for outcome in found),
    }
    print(json.dumps(report))

    # Every attacker connection, each class on each listener, ended as documented, at the limit.
    wrong = [problem for found in run.outcomes.values() for problem in problems(found)]
    assert not wrong, f"{len(wrong)} attacker connections ended otherwise than documented: {wrong[:5]}"
    assert all(len(found) >= 2 for found in run.outcomes.values()), report["connections"]

    # The legitimate client's requests all succeeded, and there were plenty of them.
    assert not run.legit.failures, (
        f"{len(run.legit.failures)} legitimate requests failed: {run.legit.failures[:5]}"
    )
    assert run.legit.succeeded >= 200, report

    # Memory: what a proxy holds for an attacker goes with its connection.
    for direction, before in rss_before.items():
        assert rss_peak[direction] - before < RSS_GROWTH_KB, report
        assert rss_after[direction] - before < RSS_GROWTH_KB, report

    # proxy_h2_abuse_total: exactly the connections cut off, by reason, on the attacked proxy's direction;
    # nothing on the proxy behind the outbound one (the pair's own connections were never cut off).
    for proxy in proxies:
        expected: dict[tuple[str, str], int] = {}
        for (name, listener), found in run.outcomes.items():
            reason = h2attacks.BY_NAME[name].reason
            if listener == proxy.direction and reason is not None:
                key = (listener, reason)
                expected[key] = expected.get(key, 0) + sum(outcome.cut_off for outcome in found)
        assert increase(abuse_counts(proxy), counts_before[proxy.direction]) == expected
        assert {reason for _, reason in expected} == set(REASONS)

    # The cut-off warnings stayed within the log throttle (at most 10 a second per reason), and what it
    # dropped is counted on the next line it let through: never more than were cut off, none forgotten.
    for proxy in proxies:
        assert proxy.process.poll() is None, f"the {proxy.direction} proxy exited"
        cut_off = increase(abuse_counts(proxy), counts_before[proxy.direction])
        lines = proxy.logs.events("client_cut_off", since=run.started)
        for (_, reason), count in cut_off.items():
            logged = [line for line in lines if line.get("reason") == reason]
            # (The first line's count may include lines dropped before the phase began.)
            dropped = sum(int(str(line.get("similar_lines_dropped", 0))) for line in logged[1:])
            assert 0 < len(logged) <= LOG_LINES_PER_SECOND * (run.seconds + 1), (reason, len(logged))
            assert len(logged) + dropped <= count, (reason, len(logged), dropped, count)
