"""Exact sliding windows (10 s, 1 m, 10 m, 1 h) over the published partial rollups, for ``/metrics``.

Each published interval is summarised per workload and direction; a window's totals are the exact sum of
the intervals that ended within it (kept as running totals: an interval is added once and subtracted once
per window as it ages out). Pure: time passed in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tether.shared.telemetry_scopes import HISTOGRAM_LENGTH
from tether.telemetry.aggregate import PartialRollup
from tether.telemetry.model import DIRECTIONS

WINDOWS: dict[str, float] = {"10s": 10.0, "1m": 60.0, "10m": 600.0, "1h": 3600.0}

#: (namespace, kind, name, direction)
SeriesKey = tuple[str, str, str, str]


@dataclass(slots=True)
class Series:
    requests: int = 0
    success: int = 0
    failure: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_LENGTH)
    latency_sum_ms: float = 0.0

    def add(self, other: Series, sign: int = 1) -> None:
        self.requests += sign * other.requests
        self.success += sign * other.success
        self.failure += sign * other.failure
        for index, value in enumerate(other.buckets):
            self.buckets[index] += sign * value
        self.latency_sum_ms += sign * other.latency_sum_ms

    @property
    def empty(self) -> bool:
        return self.requests == 0 and self.success == 0 and self.failure == 0


def summarise(rollup: PartialRollup) -> dict[SeriesKey, Series]:
    workload = rollup.workload
    result: dict[SeriesKey, Series] = {}
    for (direction, _labels), scope in rollup.contribution.items():
        key = (workload.namespace, workload.kind, workload.name, DIRECTIONS[direction])
        series = result.get(key)
        if series is None:
            series = result[key] = Series()
        series.requests += scope.requests
        for (_status, _grpc, success), response in scope.responses.items():
            if success:
                series.success += response.count
            else:
                series.failure += response.count
            for index, value in enumerate(response.buckets):
                series.buckets[index] += value
            series.latency_sum_ms += response.latency_sum_ms
    return result


class Windows:
    def __init__(self, windows: dict[str, float] | None = None) -> None:
        self.windows = dict(windows or WINDOWS)
        self._intervals: deque[tuple[float, dict[SeriesKey, Series]]] = deque()
        self._dropped = 0  # intervals popped off the deque's left end
        self._oldest: dict[str, int] = {name: 0 for name in self.windows}  # absolute index still counted
        self.totals: dict[str, dict[SeriesKey, Series]] = {name: {} for name in self.windows}

    def add(self, end: float, summary: dict[SeriesKey, Series]) -> None:
        self._intervals.append((end, summary))
        for totals in self.totals.values():
            _add(totals, summary, 1)

    def advance(self, now: float) -> None:
        """Age out the intervals that ended ``window`` seconds or more before ``now``."""
        for name, length in self.windows.items():
            index = self._oldest[name]
            totals = self.totals[name]
            while index - self._dropped < len(self._intervals):
                end, summary = self._intervals[index - self._dropped]
                if end > now - length:
                    break
                _add(totals, summary, -1)
                index += 1
            self._oldest[name] = index
            for key in [key for key, series in totals.items() if series.empty]:
                del totals[key]
        floor = min(self._oldest.values())
        while self._dropped < floor:
            self._intervals.popleft()
            self._dropped += 1


def _add(totals: dict[SeriesKey, Series], summary: dict[SeriesKey, Series], sign: int) -> None:
    for key, series in summary.items():
        mine = totals.get(key)
        if mine is None:
            mine = totals[key] = Series()
        mine.add(series, sign)
