"""Partial rollups as mesh events (``TelemetryRollup``), and their merge by consumers.

:func:`merge_rollups` is what a consumer does with the rollups of every replica: it counts each proxy's
sequence range once (a rollup whose every range was counted already is skipped; one that overlaps counted
ranges only in part is reported, since its deltas cannot be split).
"""

from __future__ import annotations

from datetime import UTC, datetime

from tether.shared.events import RollupResponse, RollupScope, SequenceRange, TelemetryRollup
from tether.telemetry.aggregate import PartialRollup
from tether.telemetry.model import DIRECTIONS


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def to_event(rollup: PartialRollup, replica: str) -> TelemetryRollup:
    scopes = []
    for (direction, labels), counts in sorted(rollup.contribution.items()):
        responses = tuple(
            RollupResponse(
                status_code=status,
                grpc_status=grpc_status,
                success=success,
                count=response.count,
                latency_buckets=tuple(response.buckets),
                latency_sum_ms=round(response.latency_sum_ms, 6),
            )
            for (status, grpc_status, success), response in sorted(counts.responses.items())
        )
        scopes.append(
            RollupScope(
                direction="inbound" if DIRECTIONS[direction] == "inbound" else "outbound",
                labels=dict(labels),
                requests=counts.requests,
                responses=responses,
                tcp_opened=counts.tcp_opened,
                tcp_closed=counts.tcp_closed,
                bytes_read=counts.bytes_read,
                bytes_written=counts.bytes_written,
            )
        )
    current = [((proxy, rollup.instances.get(proxy, "")), spans) for proxy, spans in rollup.ranges.items()]
    abouts = rollup.abouts
    ranges = tuple(
        SequenceRange(
            identity=proxy.identity,
            pod=proxy.pod,
            instance=instance,
            first=first,
            last=last,
            proxy_version=abouts[proxy].proxy_version if proxy in abouts else "",
            certificate_expiry=(
                _time(abouts[proxy].certificate_expiry)
                if proxy in abouts and abouts[proxy].certificate_expiry
                else None
            ),
        )
        for (proxy, instance), spans in sorted(
            [*current, *rollup.retired.items()], key=lambda item: (item[0][0].identity, item[0][0].pod)
        )
        for first, last in spans
    )
    workload = rollup.workload
    return TelemetryRollup(
        replica=replica,
        namespace=workload.namespace,
        kind=workload.kind,
        name=workload.name,
        interval_start=_time(rollup.start),
        interval_end=_time(rollup.end),
        scopes=tuple(scopes),
        ranges=ranges,
        dropped_scopes=rollup.dropped_scopes,
    )


def message_id(event: TelemetryRollup) -> str:
    """``Nats-Msg-Id``: the stream drops a retried publish of the same rollup."""
    end = int(event.interval_end.timestamp() * 1e6)
    return f"{event.replica}:{event.namespace}.{event.kind}.{event.name}:{end}"


def _overlaps(spans: list[tuple[int, int]], first: int, last: int) -> bool:
    return any(first <= b and a <= last for a, b in spans)


def _within(spans: list[tuple[int, int]], first: int, last: int) -> bool:
    return any(a <= first and last <= b for a, b in spans)


def merge_rollups(rollups: list[TelemetryRollup]) -> tuple[list[TelemetryRollup], list[TelemetryRollup]]:
    """The rollups to count (each range once) and those overlapping counted ranges in part (not counted)."""
    counted: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
    kept: list[TelemetryRollup] = []
    conflicts: list[TelemetryRollup] = []
    for rollup in rollups:
        spans = [counted.get((r.identity, r.pod, r.instance), []) for r in rollup.ranges]
        pairs = list(zip(spans, rollup.ranges, strict=True))
        hits = [_overlaps(done, r.first, r.last) for done, r in pairs]
        if rollup.ranges and all(_within(done, r.first, r.last) for done, r in pairs):
            continue  # the same rollup again (a redelivery), or ranges counted elsewhere
        if any(hits):
            conflicts.append(rollup)
            continue
        for r in rollup.ranges:
            counted.setdefault((r.identity, r.pod, r.instance), []).append((r.first, r.last))
        kept.append(rollup)
    return kept, conflicts
