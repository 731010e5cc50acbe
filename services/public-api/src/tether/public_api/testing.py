"""Rollups for tests of what reads them (the public API, the CLI): two workloads of namespace ``shop``,
``web`` answering (90% success in the scripted pattern) and ``api`` calling it, as telemetry would publish."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec

from tether.shared.events import RollupResponse, RollupScope, SequenceRange, TelemetryRollup
from tether.shared.telemetry_scopes import HISTOGRAM_LENGTH

WEB_ID = "web.shop.serviceaccount.identity.cluster.local"
API_ID = "api.shop.serviceaccount.identity.cluster.local"


def buckets(**counts: int) -> tuple[int, ...]:
    """A latency histogram from ``b<index>=count`` (e.g. ``b2=5``: five in the 3 ms bucket)."""
    out = [0] * HISTOGRAM_LENGTH
    for index, count in counts.items():
        out[int(index[1:])] = count
    return tuple(out)


PROXY_VERSION = "0.1.0"
#: Seconds left on the certificates of the proxies in :func:`rollup`.
CERTIFICATE_LEFT = 24 * 3600


def rollup(replica: str, name: str, pod: str, identity: str, scopes: list[RollupScope]) -> TelemetryRollup:
    now = time.time()
    return TelemetryRollup(
        replica=replica,
        namespace="shop",
        kind="deployment",
        name=name,
        interval_start=datetime.fromtimestamp(now - 10, UTC),
        interval_end=datetime.fromtimestamp(now, UTC),
        # Labelled with the reporting pod, as telemetry labels every scope.
        scopes=tuple(msgspec.structs.replace(s, labels={**s.labels, "pod": pod}) for s in scopes),
        ranges=(
            SequenceRange(
                identity=identity,
                pod=pod,
                first=1,
                last=1,
                instance="i1",
                proxy_version=PROXY_VERSION,
                certificate_expiry=datetime.fromtimestamp(now + CERTIFICATE_LEFT, UTC),
            ),
        ),
    )


def inbound(ok: int, failed: int, *, tls: bool = True) -> RollupScope:
    return RollupScope(
        direction="inbound",
        labels={"authority": "web.shop:80", "tls": "true" if tls else "false", "client_id": API_ID},
        requests=ok + failed,
        responses=(
            RollupResponse(
                status_code=200,
                grpc_status=0,
                success=True,
                count=ok,
                latency_buckets=buckets(b2=ok),
                latency_sum_ms=3.0 * ok,
            ),
            RollupResponse(
                status_code=200,
                grpc_status=14,
                success=False,
                count=failed,
                latency_buckets=buckets(b11=failed),
                latency_sum_ms=150.0 * failed,
            ),
        ),
        tcp_opened=3,
        tcp_closed=1,
    )


def outbound_to_web(requests: int) -> RollupScope:
    return RollupScope(
        direction="outbound",
        labels={
            "authority": "web.shop:80",
            "tls": "true",
            "dst_namespace": "shop",
            "dst_service": "web",
            "dst_kind": "deployment",
            "dst_name": "web",
            "server_id": WEB_ID,
        },
        requests=requests,
        responses=(
            RollupResponse(
                status_code=200,
                grpc_status=0,
                success=True,
                count=requests,
                latency_buckets=buckets(b3=requests),
                latency_sum_ms=4.0 * requests,
            ),
        ),
    )
