"""The replica's ``/metrics``: its own counters (prometheus_client) and the aggregated series per window.

The aggregated series are the exact totals of the rollups this replica published, per workload, direction
and window (``10s``, ``1m``, ``10m``, ``1h``): a window's counts are gauges (they fall as intervals age out);
latency buckets are cumulative (``le``) like a Prometheus histogram's, in milliseconds.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest

from tether.shared.telemetry_scopes import LATENCY_BUCKETS_MS
from tether.telemetry.windows import Windows


class TelemetryMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.registry = registry
        self.reports_accepted = Counter(
            "tether_telemetry_reports_accepted_total",
            "Reports folded into rollups (whole, or their difference to reports already folded)",
            registry=registry,
        )
        self.reports_ignored = Counter(
            "tether_telemetry_reports_ignored_total",
            "Reports not folded because their range was folded already (resends), acknowledged anyway",
            registry=registry,
        )
        self.reports_refused = Counter(
            "tether_telemetry_reports_refused_total",
            "Reports refused as a whole, by reason (nothing of them folded)",
            ["reason"],
            registry=registry,
        )
        self.scopes_dropped = Counter(
            "tether_telemetry_scopes_dropped_total",
            "Scopes dropped from otherwise accepted reports, by reason",
            ["reason"],
            registry=registry,
        )
        self.streams_refused = Counter(
            "tether_telemetry_streams_refused_total",
            "Report streams refused at their hello, by reason",
            ["reason"],
            registry=registry,
        )
        self.streams_replaced = Counter(
            "tether_telemetry_streams_replaced_total",
            "Report streams ended because the same proxy opened a newer one",
            registry=registry,
        )
        self.streams_expired = Counter(
            "tether_telemetry_streams_expired_total",
            "Report streams ended (status OK) at --max-stream-age, once what they folded was acknowledged",
            registry=registry,
        )
        self.reports_deferred = Counter(
            "tether_telemetry_reports_deferred_total",
            "Reports left unfolded and unacknowledged on a stream past its maximum age (the proxy resends "
            "them on its next stream)",
            registry=registry,
        )
        self.streams_open = Gauge(
            "tether_telemetry_streams_open", "Report streams currently open", registry=registry
        )
        self.rollups_published = Counter(
            "tether_telemetry_rollups_published_total", "Partial rollups published", registry=registry
        )
        self.publish_failures = Counter(
            "tether_telemetry_rollup_publish_failures_total",
            "Partial rollups whose publish failed (kept for the next interval, not acknowledged)",
            registry=registry,
        )
        self.acks_sent = Counter(
            "tether_telemetry_acks_sent_total", "ReportAck messages sent to proxies", registry=registry
        )

        self.taps_live = Gauge(
            "tether_telemetry_taps_live", "Taps live on this replica (started and renewed)", registry=registry
        )
        self.tap_subscriptions_sent = Counter(
            "tether_telemetry_tap_subscriptions_sent_total",
            "Tap subscriptions (starts, renewals, share changes, stops) sent down proxies' Report streams",
            registry=registry,
        )
        self.tap_events_published = Counter(
            "tether_telemetry_tap_events_published_total",
            "Tap events from proxies published on tether.v1.tap.events.<tap-id>",
            registry=registry,
        )
        self.tap_events_refused = Counter(
            "tether_telemetry_tap_events_refused_total",
            "Tap events from proxies not published, by reason (not_subscribed: no live tap sent to that "
            "proxy; invalid; publish_failed)",
            ["reason"],
            registry=registry,
        )
        self.taps_ended = Counter(
            "tether_telemetry_taps_ended_total",
            "Taps ended on this replica, by reason (cancelled, lapsed, expired)",
            ["reason"],
            registry=registry,
        )
        self.taps_refused = Counter(
            "tether_telemetry_taps_refused_total",
            "Tap requests refused, by reason",
            ["reason"],
            registry=registry,
        )

    def render(self, windows: Windows) -> bytes:
        # The process-wide registry too: the bus counts there what it refused or could not decode
        # (tether_bus_decode_errors_total ...), as it does in every component.
        shared = b"" if self.registry is REGISTRY else bytes(generate_latest(REGISTRY))
        return bytes(generate_latest(self.registry)) + shared + render_series(windows).encode()


def _labels(key: tuple[str, str, str, str], window: str) -> str:
    namespace, kind, name, direction = key
    return f'namespace="{namespace}",kind="{kind}",name="{name}",direction="{direction}",window="{window}"'


def render_series(windows: Windows) -> str:
    requests = [
        "# HELP tether_telemetry_requests Requests over the window, per workload and direction",
        "# TYPE tether_telemetry_requests gauge",
    ]
    responses = [
        "# HELP tether_telemetry_responses Responses over the window, by classification",
        "# TYPE tether_telemetry_responses gauge",
    ]
    latency = [
        "# HELP tether_telemetry_response_latency_ms Response latency over the window (cumulative buckets)",
        "# TYPE tether_telemetry_response_latency_ms gauge",
    ]
    bounds = [str(bound) for bound in LATENCY_BUCKETS_MS] + ["+Inf"]
    for window, totals in windows.totals.items():
        for key in sorted(totals):
            series = totals[key]
            labels = _labels(key, window)
            requests.append(f"tether_telemetry_requests{{{labels}}} {series.requests}")
            responses.append(
                f'tether_telemetry_responses{{{labels},classification="success"}} {series.success}'
            )
            responses.append(
                f'tether_telemetry_responses{{{labels},classification="failure"}} {series.failure}'
            )
            running = 0
            for bound, count in zip(bounds, series.buckets, strict=True):
                running += count
                latency.append(
                    f'tether_telemetry_response_latency_ms_bucket{{{labels},le="{bound}"}} {running}'
                )
            latency.append(f"tether_telemetry_response_latency_ms_count{{{labels}}} {running}")
            latency.append(
                f"tether_telemetry_response_latency_ms_sum{{{labels}}} {series.latency_sum_ms:.3f}"
            )
    return "\n".join([*requests, *responses, *latency]) + "\n"
