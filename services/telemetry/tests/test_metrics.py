"""The replica's /metrics carries the bus' own counters, as every component's does."""

from __future__ import annotations

from tether.shared.bus import DECODE_ERRORS
from tether.telemetry.metrics import TelemetryMetrics
from tether.telemetry.windows import Windows


def test_metrics_include_the_bus_decode_errors() -> None:
    # Regression (issue 15, garbage on the bus): a tap request that did not decode was counted in the
    # process-wide registry, which telemetry's /metrics did not render, so its rejects were invisible.
    DECODE_ERRORS.labels("tether.v1.tap.requests", "not_json").inc()
    text = TelemetryMetrics().render(Windows()).decode()
    assert 'tether_bus_decode_errors_total{reason="not_json",subject="tether.v1.tap.requests"}' in text
    assert "tether_telemetry_reports_accepted_total" in text
