"""ListWorkloads, StatSummary and Edges from the merged rollups, and their input validation."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import NoReturn

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from tether.public_api.rollups import (
    WINDOWS_SECONDS,
    WORKLOAD_KINDS,
    Kept,
    Key,
    PodInfo,
    RollupStore,
    Totals,
    dst_matches,
    matches_resource,
    outbound_service_key,
    row_key,
    selected,
)
from tether.shared.proto.public.v1 import public_pb2

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
STAT_KINDS = (*WORKLOAD_KINDS, "namespace", "service", "authority")
DEFAULT_WINDOW = 60.0
#: Pods count as meshed in a row when they reported within max(window, this).
MESHED_HORIZON = 30.0


async def invalid(context: grpc.aio.ServicerContext, message: str) -> NoReturn:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
    raise AssertionError("unreachable")


async def check_label(context: grpc.aio.ServicerContext, field: str, value: str) -> None:
    if len(value) > 63 or not _LABEL.match(value):
        await invalid(context, f"{field}: {value[:80]!r} is not a DNS-1123 label")


async def check_resource(
    context: grpc.aio.ServicerContext, field: str, resource: public_pb2.Resource, kinds: tuple[str, ...]
) -> None:
    if not resource.kind:
        await invalid(context, f"{field}.kind: required, one of {', '.join(kinds)}")
    if resource.kind not in kinds:
        await invalid(context, f"{field}.kind: {resource.kind[:64]!r} is not one of {', '.join(kinds)}")
    if resource.namespace:
        await check_label(context, f"{field}.namespace", resource.namespace)
    if len(resource.name) > 253:
        await invalid(context, f"{field}.name: longer than 253 characters")


async def window_of(context: grpc.aio.ServicerContext, field: str, value: Duration, present: bool) -> float:
    if not present:
        return DEFAULT_WINDOW
    seconds = value.ToNanoseconds() / 1e9
    if seconds not in WINDOWS_SECONDS:
        await invalid(context, f"{field}: {seconds:g}s is not one of 10s, 1m, 10m, 1h")
    return seconds


def _duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def _timestamp(seconds: float) -> Timestamp:
    value = Timestamp()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def silent_pods(store: RollupStore, now: float, timeout: float) -> list[PodInfo]:
    return [p for p in store.pods(now) if now - p.last_report > timeout]


def _pod(pod: PodInfo, now: float, report_timeout: float) -> public_pb2.Pod:
    answer = public_pb2.Pod(
        name=pod.pod,
        identity=pod.identity,
        proxy_version=pod.proxy_version,
        last_report=_timestamp(pod.last_report),
        reporting=now - pod.last_report <= report_timeout,
    )
    if pod.certificate_expiry:
        answer.certificate_expiry.CopyFrom(_timestamp(pod.certificate_expiry))
    return answer


def list_workloads(
    store: RollupStore, now: float, namespace: str, report_timeout: float
) -> public_pb2.ListWorkloadsResponse:
    grouped: dict[Key, list[PodInfo]] = defaultdict(list)
    for pod in store.pods(now):
        if not namespace or pod.namespace == namespace:
            grouped[(pod.namespace, pod.kind, pod.name)].append(pod)
    workloads = []
    for (ns, kind, name), pods in sorted(grouped.items()):
        identities = sorted({p.identity for p in pods})
        expiries = [p.certificate_expiry for p in pods if p.certificate_expiry]
        workload = public_pb2.Workload(
            resource=public_pb2.Resource(namespace=ns, kind=kind, name=name),
            meshed_pods=len(pods),
            total_pods=len(pods),
            identity=", ".join(identities),
            # Several during a rollout: all of them, as `kubectl get` shows several images.
            proxy_version=", ".join(sorted({p.proxy_version for p in pods if p.proxy_version})),
            last_report=_timestamp(max(p.last_report for p in pods)),
            pods=[_pod(p, now, report_timeout) for p in pods],
        )
        if expiries:
            workload.certificate_expiry.CopyFrom(_timestamp(min(expiries)))
        workloads.append(workload)
    return public_pb2.ListWorkloadsResponse(workloads=workloads)


def _meshed_pods(store: RollupStore, now: float, window: float) -> dict[Key, set[str]]:
    pods: dict[Key, set[str]] = defaultdict(set)
    for kept in store.within(now, max(window, MESHED_HORIZON)):
        r = kept.rollup
        names = {span.pod for span in r.ranges}
        pods[(r.namespace, r.kind, r.name)] |= names
        for name in names:
            pods[(r.namespace, "pod", name)] |= {name}
        pods[(r.namespace, "namespace", r.namespace)] |= {f"{r.kind}/{r.name}/{n}" for n in names}
    return pods


async def stat_summary(
    store: RollupStore,
    now: float,
    request: public_pb2.StatSummaryRequest,
    context: grpc.aio.ServicerContext,
) -> public_pb2.StatSummaryResponse:
    if not request.HasField("selector"):
        await invalid(context, "selector: required (a kind, and optionally a namespace and a name)")
    selector = request.selector
    await check_resource(context, "selector", selector, STAT_KINDS)
    window = await window_of(context, "time_window", request.time_window, request.HasField("time_window"))
    to = request.to if request.HasField("to") else None
    source = getattr(request, "from") if request.HasField("from") else None
    if to is not None and source is not None:
        await invalid(context, "from: not together with to")
    if to is not None:
        await check_resource(context, "to", to, STAT_KINDS[:-1])
    if source is not None:
        await check_resource(context, "from", source, (*WORKLOAD_KINDS, "namespace"))
        if selector.kind in ("service", "authority"):
            await invalid(context, f"from: not with a {selector.kind} selector")
    kept = store.within(now, window)
    totals: dict[Key, Totals] = defaultdict(Totals)
    tcp: dict[Key, Totals] = defaultdict(Totals)

    def count(into: dict[Key, Totals], key: Key | None, scope: object) -> None:
        if key is not None and selected(key, selector.namespace, selector.name):
            into[key].add(scope)  # type: ignore[arg-type]

    def visit(rollups: list[Kept], into: dict[Key, Totals]) -> None:
        for k in rollups:
            r = k.rollup
            for scope in r.scopes:
                if selector.kind == "service":
                    if scope.direction == "outbound":
                        count(into, outbound_service_key(scope), scope)
                    continue
                if source is not None:
                    # The selector's inbound traffic from `from`: the outbound scopes of `from` towards it.
                    if scope.direction != "outbound" or not matches_resource(
                        r, source.namespace, source.kind, source.name
                    ):
                        continue
                    for key in _dst_keys(scope, selector.kind):
                        count(into, key, scope)
                    continue
                if to is not None:
                    if scope.direction == "outbound" and dst_matches(scope, to.namespace, to.kind, to.name):
                        count(into, row_key(r, scope, selector.kind), scope)
                    continue
                if scope.direction == "inbound":
                    count(into, row_key(r, scope, selector.kind), scope)

    visit(kept, totals)
    visit(store.within(now, store.retention), tcp)
    meshed = _meshed_pods(store, now, window)
    if (
        selector.name
        and not totals
        and not any(
            selected(key, selector.namespace, selector.name) and key[1] == selector.kind for key in meshed
        )
    ):
        await context.abort(
            grpc.StatusCode.NOT_FOUND,
            f"selector: no {selector.kind} {selector.name!r}"
            + (f" in namespace {selector.namespace}" if selector.namespace else "")
            + " in the last hour's telemetry",
        )
    keys = set(totals)
    if to is None and source is None and selector.kind in (*WORKLOAD_KINDS, "namespace"):
        keys |= {
            k for k in meshed if k[1] == selector.kind and selected(k, selector.namespace, selector.name)
        }
    rows = []
    for key in sorted(keys):
        t = totals.get(key, Totals())
        responses = t.success + t.failure
        open_tcp = tcp[key].tcp_opened - tcp[key].tcp_closed if key in tcp else 0
        pods = len(meshed.get(key, ()))
        rows.append(
            public_pb2.StatRow(
                resource=public_pb2.Resource(namespace=key[0], kind=key[1], name=key[2]),
                meshed_pods=pods,
                total_pods=pods,
                success_count=t.success,
                failure_count=t.failure,
                request_count=t.requests,
                request_rate=t.requests / window,
                success_rate=t.success / responses if responses else 0.0,
                tls_share=t.tls_requests / t.requests if t.requests else 0.0,
                time_window=_duration(window),
                latency_ms_p50=t.quantile_ms(0.5),
                latency_ms_p95=t.quantile_ms(0.95),
                latency_ms_p99=t.quantile_ms(0.99),
                has_latency=sum(t.buckets) > 0,
                tcp_open_connections=max(0, open_tcp),
            )
        )
    return public_pb2.StatSummaryResponse(rows=rows)


def _dst_keys(scope: object, kind: str) -> list[Key]:
    from tether.shared.events import RollupScope

    assert isinstance(scope, RollupScope)
    labels = scope.labels
    namespace = labels.get("dst_namespace", "")
    if not namespace:
        return []
    if kind == "namespace":
        return [(namespace, "namespace", namespace)]
    if kind == "pod" and labels.get("dst_pod"):
        return [(namespace, "pod", labels["dst_pod"])]
    if labels.get("dst_kind") == kind and labels.get("dst_name"):
        return [(namespace, kind, labels["dst_name"])]
    return []


async def edges(
    store: RollupStore, now: float, request: public_pb2.EdgesRequest, context: grpc.aio.ServicerContext
) -> public_pb2.EdgesResponse:
    if not request.HasField("selector"):
        await invalid(context, "selector: required (a workload kind, and optionally a namespace and a name)")
    selector = request.selector
    await check_resource(context, "selector", selector, WORKLOAD_KINDS)
    window = await window_of(context, "time_window", request.time_window, request.HasField("time_window"))
    found: dict[tuple[Key, Key], public_pb2.Edge] = {}
    for kept in store.within(now, window):
        r = kept.rollup
        if r.kind != selector.kind and not any(
            s.labels.get("dst_kind") == selector.kind for s in r.scopes if s.direction == "outbound"
        ):
            continue
        client_id = ", ".join(sorted({span.identity for span in r.ranges}))
        src: Key = (r.namespace, r.kind, r.name)
        for scope in r.scopes:
            labels = scope.labels
            if scope.direction != "outbound" or not labels.get("dst_kind") or not labels.get("dst_name"):
                continue
            dst: Key = (labels.get("dst_namespace", ""), labels["dst_kind"], labels["dst_name"])
            if src[1] != selector.kind or dst[1] != selector.kind:
                continue
            if not (
                selected(src, selector.namespace, selector.name)
                or selected(dst, selector.namespace, selector.name)
            ):
                continue
            edge = found.get((src, dst))
            if edge is None:
                edge = public_pb2.Edge(
                    src=public_pb2.Resource(namespace=src[0], kind=src[1], name=src[2]),
                    dst=public_pb2.Resource(namespace=dst[0], kind=dst[1], name=dst[2]),
                    client_id=client_id,
                    server_id=labels.get("server_id", ""),
                    secured=labels.get("tls") == "true",
                    no_tls_reason=labels.get("no_tls_reason", ""),
                )
                found[(src, dst)] = edge
            elif labels.get("tls") != "true" and scope.requests:
                edge.secured = False
                edge.no_tls_reason = labels.get("no_tls_reason", "") or edge.no_tls_reason
            edge.request_count += scope.requests
    return public_pb2.EdgesResponse(edges=[found[key] for key in sorted(found)])
