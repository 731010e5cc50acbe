"""The incremental merge agrees with tether.telemetry.rollups.merge_rollups, and the histogram quantiles."""

from __future__ import annotations

from datetime import UTC, datetime

from tether.public_api.rollups import RollupStore, Totals
from tether.shared.events import RollupResponse, RollupScope, SequenceRange, TelemetryRollup
from tether.telemetry.rollups import merge_rollups

NOW = 1_800_000_000.0
ID = "web.shop.serviceaccount.identity.cluster.local"


def rollup(replica: str, spans: list[tuple[str, int, int]], end: float = NOW) -> TelemetryRollup:
    return TelemetryRollup(
        replica=replica,
        namespace="shop",
        kind="deployment",
        name="web",
        interval_start=datetime.fromtimestamp(end - 10, UTC),
        interval_end=datetime.fromtimestamp(end, UTC),
        scopes=(RollupScope(direction="inbound", labels={}, requests=1),),
        ranges=tuple(SequenceRange(identity=ID, pod=pod, first=a, last=b) for pod, a, b in spans),
    )


def test_each_range_counts_once_as_merge_rollups_does() -> None:
    rollups = [
        rollup("a", [("web-1", 1, 2)]),
        rollup("b", [("web-1", 1, 2)]),  # the same range from another replica: skipped
        rollup("b", [("web-1", 2, 3)]),  # a partial overlap: a conflict, not counted
        rollup("b", [("web-1", 3, 3), ("web-2", 1, 1)]),
        rollup("a", [("web-2", 1, 1)]),
    ]
    kept, conflicts = merge_rollups(rollups)
    store = RollupStore()
    accepted = [r for r in rollups if store.add(r, NOW)]
    assert accepted == kept
    assert store.conflicts == len(conflicts) == 1 and store.duplicates == 2


def test_old_rollups_are_pruned() -> None:
    store = RollupStore()
    assert store.add(rollup("a", [("web-1", 1, 1)], end=NOW - 3000), NOW)
    assert not store.add(rollup("a", [("web-1", 2, 2)], end=NOW - 4000), NOW)
    store.prune(NOW + 700)
    assert store.within(NOW + 700, 3600) == []


def test_quantiles_interpolate_within_the_bucket() -> None:
    totals = Totals()
    buckets = [0] * 26
    buckets[5] = 10  # (5, 10] ms
    buckets[25] = 1  # slower than 50 s
    totals.add(
        RollupScope(
            direction="inbound",
            labels={"tls": "true"},
            requests=11,
            responses=(
                RollupResponse(
                    status_code=200,
                    grpc_status=-1,
                    success=True,
                    count=11,
                    latency_buckets=tuple(buckets),
                    latency_sum_ms=1.0,
                ),
            ),
        )
    )
    assert totals.quantile_ms(0.5) == 5 + 5 * 5.5 / 10
    assert totals.quantile_ms(1.0) == 50000.0
    assert Totals().quantile_ms(0.5) == 0.0
    assert totals.tls_requests == 11 and totals.success == 11
