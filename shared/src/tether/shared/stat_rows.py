"""A public API stat row as JSON: the shape of ``tether stat -o json``, which the dashboard's pages read too.

One place so that the page shows what the CLI prints: the same names, and ``None`` (``null``) exactly where
the CLI's table prints ``-`` (no responses, no latency histogram, no requests to judge mTLS by).
"""

from __future__ import annotations

from typing import Any

from tether.shared.proto.public.v1 import public_pb2


def stat_row(row: public_pb2.StatRow) -> dict[str, Any]:
    """One row as ``tether stat -o json`` prints it."""
    responses = row.success_count + row.failure_count
    return {
        "namespace": row.resource.namespace,
        "kind": row.resource.kind,
        "name": row.resource.name,
        "meshed": row.meshed_pods,
        "total": row.total_pods,
        "window_seconds": row.time_window.seconds,
        "requests": row.request_count,
        "success": row.success_count,
        "failure": row.failure_count,
        "success_rate": row.success_rate if responses else None,
        "rps": row.request_rate,
        "latency_ms_p50": row.latency_ms_p50 if row.has_latency else None,
        "latency_ms_p95": row.latency_ms_p95 if row.has_latency else None,
        "latency_ms_p99": row.latency_ms_p99 if row.has_latency else None,
        "tcp_open_connections": row.tcp_open_connections,
        "tls_share": row.tls_share if row.request_count else None,
    }
