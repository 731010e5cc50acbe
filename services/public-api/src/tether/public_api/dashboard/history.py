"""The workload page's chart: each workload's golden metrics over its last 10-second windows.

The public API answers for a window ending now; a chart of the last ten minutes needs the answers of the
last sixty 10-second windows. A supervised task asks StatSummary for the 10-second window of every workload
kind every 10 seconds (the calls the page makes, through the same channel) and keeps the last
:data:`SAMPLES` answers per workload, in memory: the chart fills in from when the process started.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable

import grpc
import structlog
from google.protobuf.duration_pb2 import Duration

from tether.public_api.dashboard.views import WORKLOAD_KINDS, Json
from tether.shared.proto.public.v1 import public_pb2, public_pb2_grpc
from tether.shared.stat_rows import stat_row

INTERVAL = 10.0
SAMPLES = 60
#: Workloads not seen for this long are forgotten; at most MAX_WORKLOADS are kept.
FORGET_AFTER = 3600.0
MAX_WORKLOADS = 5000

log = structlog.get_logger(__name__)
Key = tuple[str, str, str]


class History:
    def __init__(self, samples: int = SAMPLES) -> None:
        self._samples = samples
        self._series: dict[Key, deque[Json]] = {}
        self._seen: dict[Key, float] = {}

    def add(self, at: float, rows: Iterable[Json]) -> None:
        for row in rows:
            key = (row["namespace"], row["kind"], row["name"])
            if key not in self._series and len(self._series) >= MAX_WORKLOADS:
                continue
            series = self._series.setdefault(key, deque(maxlen=self._samples))
            series.append(
                {
                    "at": at,
                    "rps": row["rps"],
                    "success_rate": row["success_rate"],
                    "latency_ms_p50": row["latency_ms_p50"],
                    "latency_ms_p95": row["latency_ms_p95"],
                    "latency_ms_p99": row["latency_ms_p99"],
                }
            )
            self._seen[key] = at
        for key, seen in list(self._seen.items()):
            if at - seen > FORGET_AFTER:
                del self._seen[key], self._series[key]

    def samples(self, key: Key) -> list[Json]:
        return list(self._series.get(key, ()))


async def sample(stub: public_pb2_grpc.ApiStub, history: History, timeout: float) -> None:
    """One round: the 10-second window of every kind ListWorkloads names (deployments at least)."""
    at = time.time()
    try:
        listed = await stub.ListWorkloads(public_pb2.ListWorkloadsRequest(), timeout=timeout)
        kinds = {w.resource.kind for w in listed.workloads if w.resource.kind in WORKLOAD_KINDS}
        known = {(w.resource.namespace, w.resource.kind, w.resource.name) for w in listed.workloads}
        answers = await asyncio.gather(
            *(
                stub.StatSummary(
                    public_pb2.StatSummaryRequest(
                        selector=public_pb2.Resource(kind=kind), time_window=Duration(seconds=10)
                    ),
                    timeout=timeout,
                )
                for kind in sorted(kinds | {"deployment"})
            )
        )
    except grpc.aio.AioRpcError as exc:
        # The API itself is down or refuses: a gap in the chart, and the pages say why.
        log.debug("dashboard_sample_failed", code=exc.code().name, details=exc.details())
        return
    rows = [stat_row(r) for answer in answers for r in answer.rows]
    history.add(
        at, [r for r in rows if (r["namespace"], r["kind"], r["name"]) in known or r["kind"] != "pod"]
    )


async def sample_forever(stub: public_pb2_grpc.ApiStub, history: History, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await sample(stub, history, timeout)
        await asyncio.sleep(max(0.0, INTERVAL - (loop.time() - started)))
