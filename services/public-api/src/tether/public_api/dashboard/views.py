"""The public API's answers as the JSON the dashboard's pages read, and the API calls behind each page.

A stat row has exactly the fields and values of ``tether stat -o json`` (both are
:func:`tether.shared.stat_rows.stat_row`): the page must show what the CLI shows. A call that fails is not an
error page: its part of the answer stays empty and ``problems`` says what failed, so the page keeps its last
numbers under a banner.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from tether.shared.proto.net.v1 import net_pb2
from tether.shared.proto.public.v1 import public_pb2, public_pb2_grpc
from tether.shared.stat_rows import stat_row

WINDOWS = {"10s": 10, "1m": 60, "10m": 600, "1h": 3600}
DEFAULT_WINDOW = "1m"
WORKLOAD_KINDS = ("deployment", "statefulset", "daemonset", "job", "pod")
CALL_TIMEOUT = 5.0
_STATUS = {
    public_pb2.CHECK_STATUS_OK: "ok",
    public_pb2.CHECK_STATUS_WARNING: "warning",
    public_pb2.CHECK_STATUS_ERROR: "error",
}
T = TypeVar("T")
Json = dict[str, Any]


def health(row: Json | None) -> str:
    """``failing`` below 100% success, ``healthy`` at 100%, ``no-traffic`` without responses."""
    rate = None if row is None else row["success_rate"]
    if rate is None:
        return "no-traffic"
    return "healthy" if rate >= 1.0 else "failing"


def seconds(stamp: Timestamp, present: bool = True) -> float | None:
    return stamp.ToNanoseconds() / 1e9 if present and (stamp.seconds or stamp.nanos) else None


def address(addr: net_pb2.TcpAddress) -> str:
    which = addr.ip.WhichOneof("ip")
    if which == "ipv4":
        return f"{ipaddress.IPv4Address(addr.ip.ipv4)}:{addr.port}"
    if which == "ipv6":
        return f"[{ipaddress.IPv6Address(addr.ip.ipv6)}]:{addr.port}"
    return ""


def pod_json(pod: public_pb2.Pod) -> Json:
    return {
        "name": pod.name,
        "identity": pod.identity,
        "proxy_version": pod.proxy_version,
        "certificate_expiry": seconds(pod.certificate_expiry, pod.HasField("certificate_expiry")),
        "last_report": seconds(pod.last_report, pod.HasField("last_report")),
        "reporting": pod.reporting,
    }


def workload_json(workload: public_pb2.Workload) -> Json:
    r = workload.resource
    return {
        "namespace": r.namespace,
        "kind": r.kind,
        "name": r.name,
        "meshed": workload.meshed_pods,
        "total": workload.total_pods,
        "identity": workload.identity,
        "proxy_version": workload.proxy_version,
        "certificate_expiry": seconds(workload.certificate_expiry, workload.HasField("certificate_expiry")),
        "last_report": seconds(workload.last_report, workload.HasField("last_report")),
        "pods": [pod_json(p) for p in workload.pods],
    }


def edge_json(edge: public_pb2.Edge) -> Json:
    return {
        "src": {"namespace": edge.src.namespace, "kind": edge.src.kind, "name": edge.src.name},
        "dst": {"namespace": edge.dst.namespace, "kind": edge.dst.kind, "name": edge.dst.name},
        "client_id": edge.client_id,
        "server_id": edge.server_id,
        "secured": edge.secured,
        "no_tls_reason": edge.no_tls_reason,
        "requests": edge.request_count,
    }


def check_json(response: public_pb2.CheckResponse) -> Json:
    def status(result: public_pb2.CheckResult) -> str:
        if result.status != public_pb2.CHECK_STATUS_UNSPECIFIED:
            return _STATUS.get(result.status, "error")
        return "ok" if result.ok else "error"

    return {
        "ok": response.ok,
        "status": _STATUS.get(response.status, "ok" if response.ok else "error"),
        "results": [
            {
                "category": r.category,
                "description": r.description,
                "status": status(r),
                "hint": r.hint if status(r) != "ok" else "",
            }
            for r in response.results
        ],
    }


def problem(kind: str, message: str) -> Json:
    return {"kind": kind, "message": message}


def rpc_problem(method: str, exc: grpc.aio.AioRpcError) -> Json:
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return problem("api", f"the public API did not answer {method} ({code.name}: {exc.details()})")
    return problem("api", f"the public API answered {method} with {code.name}: {exc.details()}")


class Calls:
    """One page's API calls: each failure recorded once as a problem, the answer None."""

    def __init__(self) -> None:
        self.problems: list[Json] = []

    async def __call__(self, method: str, call: Callable[[], Awaitable[T]]) -> T | None:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            self.problems.append(rpc_problem(method, exc))
            return None


def telemetry_problems(version: public_pb2.VersionResponse | None, check: Json | None) -> list[Json]:
    """Telemetry down (no ready instance heartbeats) or its rollups not read: the numbers go stale."""
    found = []
    if version is not None and not any(c.service == "telemetry" and c.ready for c in version.components):
        found.append(
            problem(
                "telemetry",
                "no ready telemetry instance sends heartbeats: the numbers shown are from the rollups "
                "read so far and go stale until it is back",
            )
        )
    if check is not None:
        for result in check["results"]:
            if result["category"] == "telemetry" and result["status"] != "ok":
                found.append(problem("telemetry", f"{result['description']}: {result['hint']}"))
    return found


def components_json(version: public_pb2.VersionResponse | None) -> list[Json]:
    if version is None:
        return []
    return [
        {"service": c.service, "instance": c.instance, "version": c.version, "ready": c.ready}
        for c in version.components
    ]


class Views:
    """The pages' data, from the API behind ``stub`` (a channel to this process' own gRPC listener)."""

    def __init__(self, stub: public_pb2_grpc.ApiStub, timeout: float = CALL_TIMEOUT) -> None:
        self._stub = stub
        self._timeout = timeout

    async def _status(self, calls: Calls) -> tuple[public_pb2.VersionResponse | None, Json | None]:
        version, check = await asyncio.gather(
            calls("Version", lambda: self._stub.Version(public_pb2.VersionRequest(), timeout=self._timeout)),
            calls("Check", lambda: self._stub.Check(public_pb2.CheckRequest(), timeout=self._timeout)),
        )
        return version, None if check is None else check_json(check)

    async def status(self) -> Json:
        calls = Calls()
        version, check = await self._status(calls)
        return {
            "generated_at": time.time(),
            "problems": calls.problems + telemetry_problems(version, check),
            "components": components_json(version),
        }

    async def stat(
        self, calls: Calls, kind: str, window: str, namespace: str = "", name: str = ""
    ) -> list[Json]:
        request = public_pb2.StatSummaryRequest(
            selector=public_pb2.Resource(namespace=namespace, kind=kind, name=name),
            time_window=Duration(seconds=WINDOWS[window]),
        )
        answer = await calls("StatSummary", lambda: self._stub.StatSummary(request, timeout=self._timeout))
        return [] if answer is None else [stat_row(r) for r in answer.rows]

    async def workloads(self, calls: Calls, namespace: str = "") -> list[public_pb2.Workload] | None:
        request = public_pb2.ListWorkloadsRequest(namespace=namespace)
        answer = await calls(
            "ListWorkloads", lambda: self._stub.ListWorkloads(request, timeout=self._timeout)
        )
        return None if answer is None else list(answer.workloads)

    async def overview(self, window: str) -> Json:
        calls = Calls()
        generated = time.time()
        (version, check), workloads, namespaces = await asyncio.gather(
            self._status(calls), self.workloads(calls), self.stat(calls, "namespace", window)
        )
        known = workloads or []
        kinds = sorted({w.resource.kind for w in known if w.resource.kind in WORKLOAD_KINDS} | {"deployment"})
        by_kind = await asyncio.gather(*(self.stat(calls, kind, window) for kind in kinds))
        stats = {(r["namespace"], r["kind"], r["name"]): r for rows in by_kind for r in rows}
        rows: dict[tuple[str, str, str], Json] = {}
        for w in known:
            key = (w.resource.namespace, w.resource.kind, w.resource.name)
            rows[key] = {**_empty_row(key, window, w), **stats.get(key, {})}
        for key, stat in stats.items():
            # Pods of a deployment are rows of kind pod too: only pods that are workloads are shown.
            if key not in rows and key[1] != "pod":
                rows[key] = stat
        listed = [{**rows[key], "health": health(rows[key])} for key in sorted(rows)]
        return {
            "generated_at": generated,
            "window": window,
            "problems": calls.problems + telemetry_problems(version, check),
            "check": check,
            "components": components_json(version),
            "namespaces": namespaces,
            "workloads": listed,
        }

    async def workload(self, namespace: str, kind: str, name: str, window: str) -> Json | None:
        """The workload page's data; None when the API knows no such workload."""
        calls = Calls()
        generated = time.time()
        edges_request = public_pb2.EdgesRequest(
            selector=public_pb2.Resource(kind=kind, name=name), time_window=Duration(seconds=WINDOWS[window])
        )
        (version, check), workloads, edges, *by_window = await asyncio.gather(
            self._status(calls),
            self.workloads(calls, namespace),
            calls("Edges", lambda: self._stub.Edges(edges_request, timeout=self._timeout)),
            *(self._one(calls, namespace, kind, name, w) for w in WINDOWS),
        )
        found = next((w for w in workloads or [] if (w.resource.kind, w.resource.name) == (kind, name)), None)
        if found is None and workloads is not None and not any(by_window):
            return None
        key = (namespace, kind, name)
        edge_list = [edge_json(e) for e in edges.edges] if edges is not None else []
        current = next((row for w, row in zip(WINDOWS, by_window, strict=True) if w == window), None)
        return {
            "generated_at": generated,
            "window": window,
            "problems": calls.problems + telemetry_problems(version, check),
            "workload": workload_json(found) if found is not None else _unlisted(key),
            "stat": current,
            "health": health(current),
            "windows": [{"window": w, "stat": row} for w, row in zip(WINDOWS, by_window, strict=True)],
            "inbound": [e for e in edge_list if _is(e["dst"], key)],
            "outbound": [e for e in edge_list if _is(e["src"], key)],
        }

    async def _one(self, calls: Calls, namespace: str, kind: str, name: str, window: str) -> Json | None:
        request = public_pb2.StatSummaryRequest(
            selector=public_pb2.Resource(namespace=namespace, kind=kind, name=name),
            time_window=Duration(seconds=WINDOWS[window]),
        )
        try:
            answer = await self._stub.StatSummary(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: no traffic in that window
                calls.problems.append(rpc_problem("StatSummary", exc))
            return None
        rows = [stat_row(r) for r in answer.rows if (r.resource.kind, r.resource.name) == (kind, name)]
        return rows[0] if rows else None


def _is(resource: Json, key: tuple[str, str, str]) -> bool:
    return (resource["namespace"], resource["kind"], resource["name"]) == key


def _unlisted(key: tuple[str, str, str]) -> Json:
    """A workload with traffic in a window whose pods ListWorkloads no longer lists."""
    return {
        "namespace": key[0],
        "kind": key[1],
        "name": key[2],
        "meshed": 0,
        "total": 0,
        "identity": "",
        "proxy_version": "",
        "certificate_expiry": None,
        "last_report": None,
        "pods": [],
    }


def _empty_row(key: tuple[str, str, str], window: str, workload: public_pb2.Workload | None) -> Json:
    """A workload the API lists but StatSummary has no row for: its pods, and no traffic."""
    pods = workload.meshed_pods if workload is not None else 0
    return {
        "namespace": key[0],
        "kind": key[1],
        "name": key[2],
        "meshed": pods,
        "total": workload.total_pods if workload is not None else 0,
        "window_seconds": WINDOWS[window],
        "requests": 0,
        "success": 0,
        "failure": 0,
        "success_rate": None,
        "rps": 0.0,
        "latency_ms_p50": None,
        "latency_ms_p95": None,
        "latency_ms_p99": None,
        "tcp_open_connections": 0,
        "tls_share": None,
    }
