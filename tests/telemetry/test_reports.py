"""Telemetry replicas end to end: real nats-server (with the generated users), real identity, real mTLS.

Test clients stand in for proxies (tether.telemetry.testing.ReportClient, grpcio). Rollups are read both
live (the read-only user's subscription) and from the JetStream stream by a consumer that starts late.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from harness import TELEMETRY, Identity, Replica, Rollups, client_for, stored_rollups

from tether.shared.bus import Bus
from tether.shared.events import TelemetryRollup
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.natsserver import EmbeddedNats
from tether.shared.permissions import DEFAULT_USERS
from tether.shared.proto.telemetry.v1 import telemetry_pb2 as pb
from tether.shared.telemetry_scopes import HISTOGRAM_LENGTH, MAX_SCOPES
from tether.shared.testing import eventually
from tether.telemetry.rollups import merge_rollups
from tether.telemetry.testing import ReportClient, bucket_index, scope

SERVER = WorkloadIdentity("server", "shop", "cluster.local")
CLIENT = WorkloadIdentity("client", "shop", "cluster.local")
EDGE = {"authority": "server.shop.svc.cluster.local:8080", "tls": "true"}


@pytest.fixture
async def nats(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(tmp_path / "nats", users=DEFAULT_USERS) as server:
        yield server


@pytest.fixture
async def reader(nats: EmbeddedNats) -> AsyncIterator[tuple[Bus, Rollups]]:
    bus = await Bus.connect(nats.settings("reader"), name="reader")
    rollups = Rollups()
    await rollups.subscribe(bus)
    try:
        yield bus, rollups
    finally:
        await bus.close()


def calls(start: int, count: int) -> tuple[list[pb.ScopeStats], list[pb.ScopeStats]]:
    """``count`` gRPC calls numbered from ``start``: every 10th UNAVAILABLE (14) after 250 ms, others OK in
    3 ms (server inbound) or 4 ms (client outbound); as (server's scopes, client's scopes)."""
    failed = sum(1 for n in range(start, start + count) if n % 10 == 0)
    ok = count - failed
    inbound = scope(
        pb.DIRECTION_INBOUND,
        {**EDGE, "client_id": CLIENT.dns_name},
        [(200, 0, True, [3.0] * ok), (200, 14, False, [250.0] * failed)],
    )
    outbound = scope(
        pb.DIRECTION_OUTBOUND,
        {
            **EDGE,
            "dst_namespace": "shop",
            "dst_kind": "deployment",
            "dst_name": "server",
            "server_id": SERVER.dns_name,
        },
        [(200, 0, True, [4.0] * ok), (200, 14, False, [250.0] * failed)],
    )
    return [inbound], [outbound]


def tally(rollups: list[TelemetryRollup], name: str, direction: str) -> tuple[int, int, int, list[int]]:
    """(requests, successes, responses, buckets) of one workload and direction, each range counted once."""
    kept, conflicts = merge_rollups(rollups)
    assert conflicts == [], conflicts
    requests = successes = responses = 0
    buckets = [0] * HISTOGRAM_LENGTH
    for rollup in kept:
        if rollup.name != name:
            continue
        for item in rollup.scopes:
            if item.direction != direction:
                continue
            requests += item.requests
            for response in item.responses:
                responses += response.count
                successes += response.count if response.success else 0
                buckets = [a + b for a, b in zip(buckets, response.latency_buckets, strict=True)]
    return requests, successes, responses, buckets


def expected_buckets(ok_ms: float, ok: int, failed: int) -> list[int]:
    buckets = [0] * HISTOGRAM_LENGTH
    buckets[bucket_index(ok_ms)] += ok
    buckets[bucket_index(250.0)] += failed
    return buckets


def assert_exact(rollups: list[TelemetryRollup], total: int = 200) -> None:
    failed = total // 10
    inbound = tally(rollups, "server", "inbound")
    assert inbound == (total, total - failed, total, expected_buckets(3.0, total - failed, failed))
    assert round(100.0 * inbound[1] / inbound[2], 1) == 90.0
    outbound = tally(rollups, "client", "outbound")
    assert outbound == (total, total - failed, total, expected_buckets(4.0, total - failed, failed))


async def send_calls(server: ReportClient, client: ReportClient, start: int, count: int) -> None:
    inbound, outbound = calls(start, count)
    await server.send(inbound)
    await client.send(outbound)


async def test_scripted_calls_give_exact_rollups(
    nats: EmbeddedNats, identity: Identity, reader: tuple[Bus, Rollups]
) -> None:
    bus, live = reader
    replica = Replica("telemetry-a", nats, identity)
    await replica.start()
    server, _ = await client_for(identity, replica, SERVER, "server-1", "server")
    client, _ = await client_for(identity, replica, CLIENT, "client-1", "client")
    try:
        for batch in range(4):  # 4 reports of 50 calls each, some of them resent
            await send_calls(server, client, 1 + 50 * batch, 50)
            if batch == 2:
                await server.resend_unacknowledged()
        await server.wait_acked(4)
        await client.wait_acked(4)
        await eventually(lambda: len(merge_rollups(live.received)[0]) >= 2, 5.0, "the rollups")
        assert_exact(live.received)
        assert_exact(await stored_rollups(bus))  # a consumer that starts late sees the whole window
        assert {r.replica for r in live.received} == {"telemetry-a"}
        assert {(r.namespace, r.kind, r.name) for r in live.received} == {
            ("shop", "deployment", "server"),
            ("shop", "deployment", "client"),
        }
        metrics = replica.service.render_metrics().decode()
        labels = 'namespace="shop",kind="deployment",name="server",direction="inbound",window="1h"'
        assert f"tether_telemetry_requests{{{labels}}} 200" in metrics
        assert f'tether_telemetry_responses{{{labels},classification="success"}} 180' in metrics
        assert "tether_telemetry_reports_accepted_total 8.0" in metrics
    finally:
        await server.close()
        await client.close()
        await replica.stop()


async def test_two_replicas_and_a_crash_count_every_call_once(
    nats: EmbeddedNats, identity: Identity, reader: tuple[Bus, Rollups]
) -> None:
    bus, live = reader
    a, b = Replica("telemetry-a", nats, identity), Replica("telemetry-b", nats, identity)
    await a.start()
    await b.start()
    server, server_pair = await client_for(identity, a, SERVER, "server-1", "server")
    client, _ = await client_for(identity, b, CLIENT, "client-1", "client")  # split across replicas
    try:
        await send_calls(server, client, 1, 50)
        await server.wait_acked(1)
        await client.wait_acked(1)
        # Reports a folds but never publishes: it dies.
        await send_calls(server, client, 51, 50)
        await a.crash()
        await server.wait_ended()
        assert server.unacked, "the crash came after the ack"
        await server.connect(
            b.target, anchors=identity.anchors, pair=server_pair, server_name=TELEMETRY.dns_name
        )
        await server.resend_unacknowledged()
        await send_calls(server, client, 101, 100)
        await server.wait_acked(3)
        await client.wait_acked(3)
        await eventually(lambda: len(live.received) >= 4, 5.0, "the rollups")
        assert {r.replica for r in live.received} == {"telemetry-a", "telemetry-b"}
        assert_exact(live.received)
        assert_exact(await stored_rollups(bus))
    finally:
        await server.close()
        await client.close()
        await b.stop()


async def test_streams_not_matching_their_certificate_are_refused(
    nats: EmbeddedNats, identity: Identity
) -> None:
    replica = Replica("telemetry-a", nats, identity)
    await replica.start()
    pair = await identity.certificate(CLIENT)
    impostor = ReportClient(
        namespace="shop", pod="server-1", identity=SERVER.dns_name, labels={"deployment": "server"}
    )
    wrong_sa = ReportClient(
        namespace="shop", pod="client-1", identity=CLIENT.dns_name, labels={"serviceaccount": "server"}
    )
    anonymous = ReportClient(namespace="shop", pod="client-1", identity=CLIENT.dns_name)
    try:
        for client in (impostor, wrong_sa):
            await client.connect(
                replica.target, anchors=identity.anchors, pair=pair, server_name=TELEMETRY.dns_name
            )
            assert await client.wait_ended() == grpc.StatusCode.PERMISSION_DENIED
        try:  # no client certificate: refused at the handshake
            await anonymous.connect(replica.target, anchors=identity.anchors, server_name=TELEMETRY.dns_name)
            status = await anonymous.wait_ended()
        except grpc.aio.AioRpcError as exc:
            status = exc.code()
        assert status == grpc.StatusCode.UNAVAILABLE
        metrics = replica.service.render_metrics().decode()
        assert 'tether_telemetry_streams_refused_total{reason="identity_mismatch"} 1.0' in metrics
        assert 'tether_telemetry_streams_refused_total{reason="serviceaccount_mismatch"} 1.0' in metrics
    finally:
        for client in (impostor, wrong_sa, anonymous):
            await client.close()
        await replica.stop()


async def test_malformed_reports_are_refused_and_rollups_stay_exact(
    nats: EmbeddedNats, identity: Identity, reader: tuple[Bus, Rollups]
) -> None:
    _bus, live = reader
    replica = Replica("telemetry-a", nats, identity)
    await replica.start()
    server, _ = await client_for(identity, replica, SERVER, "server-1", "server")
    client, _ = await client_for(identity, replica, CLIENT, "client-1", "client")
    try:
        inbound, outbound = calls(1, 200)
        bad_label = scope(pb.DIRECTION_INBOUND, {"password": "x"}, [(200, 0, True, [1.0] * 7)])
        short = scope(pb.DIRECTION_INBOUND, {"authority": "x"}, [(200, 0, True, [1.0])])
        del short.responses[0].latency_buckets[-1]
        overflow = scope(pb.DIRECTION_INBOUND, {"authority": "y"}, [], requests=(1 << 53) + 1)
        await server.send([*inbound, bad_label, short, overflow])  # bad scopes dropped, the good one kept
        await client.send(outbound)
        await server.wait_acked(1)
        await client.wait_acked(1)
        # An oversized report ends the stream with INVALID_ARGUMENT and nothing of it is folded.
        await server.send(inbound * (MAX_SCOPES + 1))
        assert await server.wait_ended() == grpc.StatusCode.INVALID_ARGUMENT
        await eventually(lambda: len(live.received) >= 2, 5.0, "the rollups")
        assert_exact(live.received)
        metrics = replica.service.render_metrics().decode()
        for reason in ("unknown_label", "histogram_length", "count_overflow"):
            assert f'tether_telemetry_scopes_dropped_total{{reason="{reason}"}} 1.0' in metrics
        assert 'tether_telemetry_reports_refused_total{reason="too_many_scopes"} 1.0' in metrics
    finally:
        await server.close()
        await client.close()
        await replica.stop()


async def test_a_second_stream_of_the_same_proxy_replaces_the_first(
    nats: EmbeddedNats, identity: Identity
) -> None:
    replica = Replica("telemetry-a", nats, identity)
    await replica.start()
    first, pair = await client_for(identity, replica, SERVER, "server-1", "server")
    # The same proxy process (same instance) on a new stream.
    second = ReportClient(
        namespace="shop",
        pod="server-1",
        identity=SERVER.dns_name,
        labels={"deployment": "server"},
        instance=first.instance,
    )
    try:
        await first.send(calls(1, 10)[0])
        await first.wait_acked(1)
        await second.connect(
            replica.target, anchors=identity.anchors, pair=pair, server_name=TELEMETRY.dns_name
        )
        assert await first.wait_ended() == grpc.StatusCode.ABORTED
        # The newer stream goes on where the proxy left off, with report 2.
        second.sequence = 1
        await second.send(calls(11, 10)[0])
        await second.wait_acked(2)
        metrics = replica.service.render_metrics().decode()
        assert "tether_telemetry_streams_replaced_total 1.0" in metrics
        labels = 'namespace="shop",kind="deployment",name="server",direction="inbound",window="1h"'
        assert f"tether_telemetry_requests{{{labels}}} 20" in metrics
    finally:
        await first.close()
        await second.close()
        await replica.stop()
