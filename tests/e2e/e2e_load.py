"""Steady load from inside a pod (e2e_loadgen.py exec'd into it, like ``kubectl exec``), read as it runs.

with steady_load(cluster, client_pod, "http", WEB_CHAIN, rate=20) as load:
    ...                                  # faults, scaling, attacks
    load.wait_for(lambda o: o.by.get("books") == new_pod.name, 5, "the new pod's first answer")
summary = load.summary                   # sent, ok, failed, failures, by backend
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e_cluster import Cluster, Pod
from mesh_pods import Process, eventually

LOADGEN = Path(__file__).resolve().parent / "e2e_loadgen.py"
#: The shop's chain: client → web (HTTP/1.1) → books (gRPC) → redis (TCP).
WEB_CHAIN = "http://web.shop.svc.cluster.local:8080/chain"
BOOKS = "books.shop.svc.cluster.local:9090"


@dataclass(frozen=True)
class Outcome:
    """One request: its sequence number, wall-clock send time, latency, result and who served each hop."""

    seq: int
    t: float
    ms: float
    ok: bool
    error: str | None
    by: dict[str, str]
    ids: dict[str, str | None]


@dataclass
class LoadSummary:
    sent: int
    ok: int
    failed: int
    failures: list[Outcome]
    seconds: float
    #: Requests per hop and pod: ("books", pod name) -> count.
    by: Counter[tuple[str, str]] = field(default_factory=Counter)

    def describe(self) -> str:
        head = f"{self.sent} sent, {self.ok} ok, {self.failed} failed in {self.seconds:.1f} s"
        shown = "; ".join(f"#{o.seq} at {o.t:.3f}: {o.error}" for o in self.failures[:10])
        return f"{head}" + (f"; first failures: {shown}" if shown else "")


class SteadyLoad:
    def __init__(
        self, cluster: Cluster, pod: Pod, mode: str, target: str, rate: float, deadline: float, name: str
    ) -> None:
        self.cluster = cluster
        self.pod = pod
        self.rate = rate
        self.out = pod.directory / f"load-{name}.jsonl"
        self.out.touch()
        self.started = time.time()
        self.process: Process = cluster.exec(
            pod,
            [
                sys.executable,
                str(LOADGEN),
                "--out",
                str(self.out),
                "--rate",
                str(rate),
                "--deadline",
                str(deadline),
                mode,
                target,
            ],
            log_name=f"load-{name}",
        )

        def started() -> bool:
            if "ready" in self.process.log.read_text(errors="replace"):
                return True
            assert self.process.popen.poll() is None, f"the load generator exited\n{self.process.describe()}"
            return False

        eventually(started, 30, lambda: f"the load generator to start\n{self.process.describe()}", 0.05)
        self.summary: LoadSummary | None = None
        self._stopped_at: float | None = None

    def outcomes(self) -> list[Outcome]:
        """Every request answered (or failed) so far, in the order they finished."""
        found = []
        for line in self.out.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record: dict[str, Any] = json.loads(line)
            except ValueError:
                continue  # a line being written
            if "seq" not in record:
                continue
            found.append(
                Outcome(
                    record["seq"],
                    record["t"],
                    record["ms"],
                    record["ok"],
                    record["error"],
                    record.get("by") or {},
                    record.get("ids") or {},
                )
            )
        return found

    def since(self, wall_time: float) -> list[Outcome]:
        return [o for o in self.outcomes() if o.t >= wall_time]

    def wait_for(self, predicate: Callable[[Outcome], bool], timeout: float, what: str) -> Outcome:
        """The first outcome (in send order) matching ``predicate``, waiting up to ``timeout`` for one."""

        def found() -> Outcome | None:
            matching = sorted((o for o in self.outcomes() if predicate(o)), key=lambda o: o.seq)
            return matching[0] if matching else None

        return eventually(found, timeout, what, interval=0.05)

    def wait_requests(self, count: int, timeout: float = 60.0) -> None:
        eventually(lambda: len(self.outcomes()) >= count, timeout, f"{count} requests answered")

    def stop(self) -> LoadSummary:
        if self.summary is not None:
            return self.summary
        popen = self.process.popen
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
        popen.wait(timeout=30)
        outcomes = self.outcomes()
        failures = sorted((o for o in outcomes if not o.ok), key=lambda o: o.seq)
        by: Counter[tuple[str, str]] = Counter()
        for outcome in outcomes:
            for hop, pod in outcome.by.items():
                by[(hop, pod)] += 1
        self.summary = LoadSummary(
            len(outcomes),
            len(outcomes) - len(failures),
            len(failures),
            failures,
            time.time() - self.started,
            by,
        )
        return self.summary


_loads = 0


@contextlib.contextmanager
def steady_load(
    cluster: Cluster,
    pod: Pod,
    mode: str = "http",
    target: str = WEB_CHAIN,
    *,
    rate: float = 20.0,
    deadline: float = 2.0,
    name: str = "",
) -> Iterator[SteadyLoad]:
    """A load generator in ``pod`` for the block; stopped (requests in flight awaited) when it ends."""
    global _loads
    _loads += 1
    load = SteadyLoad(cluster, pod, mode, target, rate, deadline, name or f"{_loads}")
    try:
        yield load
    finally:
        load.stop()
