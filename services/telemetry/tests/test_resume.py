"""Resume points: the highest sequence of each proxy process in the rollups any replica published (what a
new stream's first ``ReportAck`` carries; tests/proxy/test_telemetry_resume.py runs it end to end)."""

from __future__ import annotations

from datetime import UTC, datetime

from tether.shared.events import SequenceRange, TelemetryRollup
from tether.telemetry.model import ProxyKey
from tether.telemetry.resume import PublishedRanges

WEB = ProxyKey("web.shop.serviceaccount.identity.cluster.local", "web-0")
API = ProxyKey("api.shop.serviceaccount.identity.cluster.local", "api-0")


def _rollup(replica: str, *ranges: tuple[ProxyKey, str, int, int]) -> TelemetryRollup:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return TelemetryRollup(
        replica=replica, namespace="shop", kind="deployment", name="web", interval_start=at, interval_end=at,
        ranges=tuple(SequenceRange(identity=p.identity, pod=p.pod, instance=i, first=f, last=last)
                     for p, i, f, last in ranges),
    )  # fmt: skip


def test_the_highest_published_sequence_per_proxy_process_whichever_replica_published_it() -> None:
    now = [1000.0]
    ranges = PublishedRanges(lookback=600.0, clock=lambda: now[0])
    assert ranges.high(WEB, "a1") == 0
    ranges.add(_rollup("telemetry-a", (WEB, "a1", 1, 4), (API, "b1", 1, 2)))
    ranges.add(_rollup("telemetry-b", (WEB, "a1", 5, 9)))
    ranges.add(_rollup("telemetry-a", (WEB, "a1", 1, 4)))  # read again after a consumer was made anew
    assert ranges.high(WEB, "a1") == 9
    assert ranges.high(API, "b1") == 2
    assert ranges.high(WEB, "restarted") == 0, "a restarted proxy counts from 1 again"
    now[0] += 601.0
    ranges.add(_rollup("telemetry-b", (API, "b1", 3, 3)))
    ranges.prune()
    assert ranges.high(WEB, "a1") == 0 and ranges.high(API, "b1") == 3
