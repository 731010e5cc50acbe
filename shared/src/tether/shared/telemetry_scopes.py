"""What the proxies' reports and the telemetry service agree on besides the protobuf: latency buckets, the
scope labels a report may carry, and the bounds a report must stay within.

A report's size depends on the number of traffic scopes, never on the number of requests: a scope is a
direction plus these labels, and its counters and histogram are deltas since the last acknowledged report.
"""

from __future__ import annotations

#: Upper bounds (ms, inclusive) of the latency histogram buckets, Linkerd's; a histogram has one more
#: bucket, for slower responses. Latency is the time to the response's first byte, as Linkerd measures it.
LATENCY_BUCKETS_MS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
    1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000,
)  # fmt: skip
HISTOGRAM_LENGTH = len(LATENCY_BUCKETS_MS) + 1

#: The labels a ``ScopeStats`` may carry (any other is refused). Outbound scopes name the destination
#: (``dst_*`` from discovery, ``server_id`` from mTLS); inbound scopes name the client by its verified
#: identity (``client_id``); both carry the authority and Linkerd's TLS labels.
SCOPE_LABELS = frozenset(
    {
        "authority",
        "dst_namespace",
        "dst_service",
        "dst_pod",
        "dst_kind",
        "dst_name",
        "server_id",
        "client_id",
        "tls",
        "no_tls_reason",
        "protocol",
    }
)

#: Bounds on one report (beyond them the report is refused with INVALID_ARGUMENT).
MAX_SCOPES = 10_000
MAX_RESPONSES_PER_SCOPE = 256
MAX_LABEL_LENGTH = 253
#: Any count above this is taken for garbage (an overflowing or corrupted counter), not traffic.
MAX_COUNT = 1 << 53
