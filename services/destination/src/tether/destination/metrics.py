"""Prometheus metrics of one destination replica (registered on the registry the runtime serves)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class DestinationMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.registry = registry
        self.streams_open = Gauge(
            "tether_destination_streams_open", "Get streams currently open", registry=registry
        )
        self.streams_rejected = Counter(
            "tether_destination_streams_rejected_total",
            "Get streams refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.streams_expired = Counter(
            "tether_destination_streams_expired_total",
            "Get streams ended (status OK) at --max-stream-age, for the proxy to reconnect anew",
            registry=registry,
        )
        self.updates_sent = Counter(
            "tether_destination_updates_sent_total",
            "Update messages sent on Get streams, by kind (add, remove, no_endpoints, keepalive)",
            ["kind"],
            registry=registry,
        )
        self.watch_lag = Histogram(
            "tether_destination_watch_lag_seconds",
            "Time from a bucket write to this replica applying it",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=registry,
        )
        self.watch_rejected = Counter(
            "tether_destination_watch_rejected_total",
            "Bucket values skipped because they did not decode as an endpoint set",
            registry=registry,
        )
        self.source_events = Counter(
            "tether_destination_source_events_total",
            "Events received from the discovery source, by source and kind",
            ["source", "kind"],
            registry=registry,
        )
        self.source_rejected = Counter(
            "tether_destination_source_rejected_total",
            "Source objects or registrations rejected as malformed or not allowed, by source and kind",
            ["source", "kind"],
            registry=registry,
        )
        self.write_retries = Counter(
            "tether_destination_write_retries_total",
            "Keys whose write failed and was scheduled again after a per-key backoff",
            registry=registry,
        )
        self.writes = Counter(
            "tether_destination_writes_total",
            "Bucket writes by the leader, by outcome (written, conflict, error)",
            ["outcome"],
            registry=registry,
        )
        self.leader = Gauge(
            "tether_destination_leader", "1 while this replica holds the writer lease", registry=registry
        )
