"""The proxies' metric reports, against a real grpc.aio Telemetry server: real proxies with certificates from
the real identity service, the real destination service, grpcio apps. The server here is a tiny recording
servicer; it serves mTLS with its own mesh certificate obtained from identity like telemetry's.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from identity_harness import CONTROL_PLANE_NAMESPACE, identity_of
from proxy_mesh import NAMESPACE, SERVICE, Mesh, Pod, authority, metric, ready_pod, unary

from tether.shared import __version__
from tether.shared.proto.telemetry.v1 import telemetry_pb2 as pb
from tether.shared.proto.telemetry.v1 import telemetry_pb2_grpc
from tether.shared.serving_identity import ServingIdentity
from tether.shared.telemetry_scopes import LATENCY_BUCKETS_MS
from tether.shared.testing import RecordingSupervisor, eventually

TELEMETRY = identity_of("telemetry", CONTROL_PLANE_NAMESPACE)
INBOUND, OUTBOUND = pb.DIRECTION_INBOUND, pb.DIRECTION_OUTBOUND


class Telemetry(telemetry_pb2_grpc.TelemetryServicer):
    """Records hellos (with the client certificate's names) and reports; acknowledges when ``ack``."""

    def __init__(self) -> None:
        self.hellos: list[tuple[pb.ProxyHello, list[str]]] = []
        self.acked: dict[str, list[pb.IntervalReport]] = defaultdict(list)
        self.unacked: dict[str, list[pb.IntervalReport]] = defaultdict(list)
        self.ack = True
        #: The pod whose stream is cut (UNAVAILABLE) at its next report, as a dying replica would.
        self.drop_pod: str | None = None
        #: Tap subscriptions to send each pod, with its next acknowledgement.
        self.taps: dict[str, list[pb.TapSubscription]] = defaultdict(list)
        #: Tap events received, by pod, with when they arrived (monotonic).
        self.tap_events: dict[str, list[tuple[float, pb.TapEvent]]] = defaultdict(list)

    async def Report(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        pod = ""
        async for request in request_iterator:
            kind = request.WhichOneof("message")
            if kind == "hello":
                pod = request.hello.pod
                names = context.auth_context().get("x509_subject_alternative_name", [])
                self.hellos.append((request.hello, [name.decode() for name in names]))
            elif kind == "report":
                if self.drop_pod == pod:
                    self.drop_pod = None
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "replica going away")
                if self.ack:
                    self.acked[pod].append(request.report)
                    yield pb.ReportResponse(ack=pb.ReportAck(sequence=request.report.sequence))
                else:
                    self.unacked[pod].append(request.report)
                while self.taps[pod]:
                    yield pb.ReportResponse(tap_subscription=self.taps[pod].pop(0))
            elif kind == "tap":
                self.tap_events[pod].append((time.monotonic(), request.tap))


@pytest.fixture
async def telemetry(meshed: Mesh) -> AsyncIterator[tuple[Telemetry, str]]:
    serving = ServingIdentity(meshed.identity_config(TELEMETRY), require_client_certificates=True)
    supervisor = RecordingSupervisor()
    server = grpc.aio.server()
    servicer = Telemetry()
    telemetry_pb2_grpc.add_TelemetryServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", serving.credentials())
    await server.start()
    serving.start(supervisor.spawn)
    try:
        await eventually(serving.ready, 15.0, "telemetry holds its certificate")
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
        await serving.stop()
        await supervisor.stop()


async def reporting_pod(mesh: Mesh, addr: str, app: str | None, serviceaccount: str, pod: str) -> Pod:
    return await ready_pod(
        mesh,
        app,
        meshed=True,
        serviceaccount=serviceaccount,
        pod_name=pod,
        telemetry_addr=addr,
        telemetry_server_name=TELEMETRY.dns_name,
        report_interval=1.0,
        workload_labels=(f"deployment={serviceaccount}",),
    )


def scopes(reports: Iterable[pb.IntervalReport], direction: int, **labels: str) -> list[pb.ScopeStats]:
    return [
        scope
        for report in reports
        for scope in report.scopes
        if scope.direction == direction and all(scope.labels.get(k) == v for k, v in labels.items())
    ]


def requests(reports: Iterable[pb.IntervalReport], direction: int, **labels: str) -> int:
    return sum(scope.requests for scope in scopes(reports, direction, **labels))


def responses(
    reports: Iterable[pb.IntervalReport], direction: int, **labels: str
) -> dict[tuple[int, int, bool], int]:
    counts: dict[tuple[int, int, bool], int] = defaultdict(int)
    for scope in scopes(reports, direction, **labels):
        for response in scope.responses:
            counts[(response.status_code, response.grpc_status, response.success)] += response.count
    return dict(counts)


async def traffic(client: Pod, calls: int, failures: int) -> None:
    async with client.channel(authority("echo")) as channel:
        call = unary(channel)
        for index in range(calls):
            if index < failures:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call(b"status:UNAVAILABLE", timeout=10)
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            else:
                assert await call(b"echo:hi", timeout=10) == b"echo:hi"


async def test_hello_then_exact_reports_with_latency_to_the_first_byte(
    meshed: Mesh, telemetry: tuple[Telemetry, str]
) -> None:
    servicer, addr = telemetry
    server = await reporting_pod(meshed, addr, "echo", "echo", "echo-0")
    client = await reporting_pod(meshed, addr, None, "web", "web-0")
    subscriptions: list[pb.TapSubscription] = []
    assert client.proxy.reporter is not None
    client.proxy.reporter.on_tap = subscriptions.append
    await meshed.register("echo", [server])
    await eventually(lambda: len(servicer.hellos) == 2, 15.0, "both proxies said hello")
    hellos = {hello.pod: (hello, names) for hello, names in servicer.hellos}
    hello, names = hellos["echo-0"]
    echo_id, web_id = identity_of("echo", NAMESPACE).dns_name, identity_of("web", NAMESPACE).dns_name
    assert (hello.namespace, hello.identity, hello.proxy_version) == (NAMESPACE, echo_id, __version__)
    assert dict(hello.labels) == {"serviceaccount": "echo", "deployment": "echo"}
    assert echo_id in names  # the stream is mTLS with the proxy's own certificate
    expiry = hello.certificate_expiry.ToNanoseconds() / 1e9
    assert expiry == pytest.approx(metric(server, "identity_cert_expiration_timestamp_seconds"), abs=0.01)
    assert expiry > datetime.now(UTC).timestamp()

    await traffic(client, calls=12, failures=2)
    async with client.channel(authority("echo")) as channel:
        # Headers at once, the message 1.2 s later: latency is the time to the headers.
        assert await unary(channel)(b"late:1.2", timeout=10) == b"late:1.2"
    inbound = {"client_id": web_id, "authority": authority("echo"), "tls": "true"}
    outbound = {"server_id": echo_id, "dst_service": "echo", "dst_kind": "deployment", "dst_name": "echo"}
    await eventually(
        lambda: (
            requests(servicer.acked["echo-0"], INBOUND, **inbound) == 13
            and requests(servicer.acked["web-0"], OUTBOUND, **outbound) == 13
        ),
        15.0,
        "every request reported",
    )
    await asyncio.sleep(2.5)  # two more intervals: nothing is counted twice
    for pod, direction, labels in (("echo-0", INBOUND, inbound), ("web-0", OUTBOUND, outbound)):
        reports = servicer.acked[pod]
        assert requests(reports, direction, **labels) == 13
        assert responses(reports, direction, **labels) == {(200, 0, True): 11, (200, 14, False): 2}
        assert [r.sequence for r in reports] == list(range(1, len(reports) + 1))
        assert all(r.first_sequence == r.sequence for r in reports)
        slow = [
            i
            for s in scopes(reports, direction, **labels)
            for r in s.responses
            for i, n in enumerate(r.latency_buckets)
            if n
        ]
        assert max(slow) < LATENCY_BUCKETS_MS.index(1000)  # nothing near 1.2 s
        assert sum(r.latency_sum_ms for s in scopes(reports, direction, **labels) for r in s.responses) < 1000
    # /metrics measures the same: every response within 1 s.
    assert metric(server, "response_latency_ms_bucket", direction="inbound", le="1000") == 13
    assert metric(server, "proxy_telemetry_unacknowledged_scopes") == 0
    sent = metric(server, "proxy_telemetry_reports_total")
    assert sent >= 3 and metric(server, "proxy_telemetry_reports_acknowledged_total") in (sent, sent - 1)
    assert metric(server, "proxy_telemetry_connected") == 1
    # Tap subscriptions on the response direction reach the callback.
    servicer.taps["web-0"].append(pb.TapSubscription(tap_id="t1", active=True, max_events_per_second=0.5))
    await eventually(lambda: [s.tap_id for s in subscriptions] == ["t1"], 5.0, "the tap subscription")


async def test_unacknowledged_deltas_are_resent_after_a_dropped_stream_and_counted_once(
    meshed: Mesh, telemetry: tuple[Telemetry, str]
) -> None:
    servicer, addr = telemetry
    servicer.ack = False
    server = await reporting_pod(meshed, addr, "echo", "echo", "echo-0")
    client = await ready_pod(meshed, meshed=True, serviceaccount="web")
    lost: list[int] = []
    assert server.proxy.reporter is not None
    server.proxy.reporter.on_stream_lost = lambda: lost.append(1)
    await meshed.register("echo", [server])
    await traffic(client, calls=7, failures=1)
    web_id = identity_of("web", NAMESPACE).dns_name
    inbound = {"client_id": web_id, "authority": authority("echo")}
    await eventually(
        lambda: requests(servicer.unacked["echo-0"], INBOUND, **inbound) == 7, 15.0, "the requests were sent"
    )
    # Nothing acknowledged: everything is held, and still held after further intervals.
    assert metric(server, "proxy_telemetry_reports_acknowledged_total") == 0
    assert metric(server, "proxy_telemetry_unacknowledged_scopes") >= 1
    # The replica dies before acknowledging; the proxy reconnects and resends, merged.
    servicer.ack = True
    servicer.drop_pod = "echo-0"
    await eventually(
        lambda: requests(servicer.acked["echo-0"], INBOUND, **inbound) == 7, 20.0, "the requests were resent"
    )
    await traffic(client, calls=3, failures=0)
    await eventually(
        lambda: requests(servicer.acked["echo-0"], INBOUND, **inbound) == 10, 15.0, "the later requests"
    )
    await asyncio.sleep(2.5)
    acked = servicer.acked["echo-0"]
    assert requests(acked, INBOUND, **inbound) == 10
    assert responses(acked, INBOUND, **inbound) == {(200, 0, True): 9, (200, 14, False): 1}
    merged = acked[0]
    unacked_sequences = [r.sequence for r in servicer.unacked["echo-0"]]
    assert merged.first_sequence == 1 and merged.sequence > max(unacked_sequences)
    # After the merged report, sequences go on one by one, each report its own interval.
    assert [(r.first_sequence, r.sequence) for r in acked[1:]] == [
        (s, s) for s in range(merged.sequence + 1, merged.sequence + len(acked))
    ]
    assert [hello.pod for hello, _ in servicer.hellos] == ["echo-0", "echo-0"]
    assert metric(server, "proxy_telemetry_stream_reconnects_total") == 1
    assert lost == [1]  # the tap hook heard of the lost stream
    assert metric(server, "proxy_telemetry_unacknowledged_scopes") == 0
    assert metric(server, "proxy_telemetry_dropped_scopes_total") == 0


def tap(tap_id: str, *, rate: float, expires_in: float, path_prefix: str = "") -> pb.TapSubscription:
    wall = time.time() + expires_in
    return pb.TapSubscription(
        tap_id=tap_id,
        active=True,
        match=pb.TapMatch(path_prefix=path_prefix),
        max_events_per_second=rate,
        expires_at=Timestamp(seconds=math.floor(wall), nanos=int((wall % 1) * 1e9)),
        header_names=["authorization", "x-trace"],
    )


def inits(events: list[tuple[float, pb.TapEvent]], tap_id: str) -> list[pb.TapEvent]:
    return [e for _, e in events if e.tap_id == tap_id and e.WhichOneof("phase") == "request_init"]


async def calls(client: Pod, count: int, method: str = "Unary", pause: float = 0.0) -> None:
    metadata = (("authorization", "Bearer s3cr3t"), ("x-trace", "t-1"))
    async with client.channel(authority("echo")) as channel:
        for _ in range(count):
            if method == "Unary":
                assert await unary(channel)(b"echo:hi", timeout=10, metadata=metadata) == b"echo:hi"
            else:
                stream = channel.unary_stream(f"/{SERVICE}/ServerStream")(
                    b"2:10", timeout=10, metadata=metadata
                )
                assert len([m async for m in stream]) == 2
            await asyncio.sleep(pause)


async def test_tap_events_for_matching_calls_only_within_the_rate_until_stopped_or_expired(
    meshed: Mesh, telemetry: tuple[Telemetry, str]
) -> None:
    servicer, addr = telemetry
    server = await reporting_pod(meshed, addr, "echo", "echo", "echo-0")
    client = await reporting_pod(meshed, addr, None, "web", "web-0")
    await meshed.register("echo", [server])
    await eventually(lambda: len(servicer.hellos) == 2, 15.0, "both proxies said hello")
    instances = {hello.pod: hello.instance for hello, _ in servicer.hellos}
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in instances.values())
    assert instances["echo-0"] != instances["web-0"]
    await calls(client, 2)
    await asyncio.sleep(1.5)
    assert not servicer.tap_events  # no tap: no per-request data at all

    # The client's proxy (outbound) taps Unary calls at 2 requests/s; the server's (inbound) everything,
    # for 3 s only.
    servicer.taps["web-0"].append(tap("t1", rate=2.0, expires_in=60.0, path_prefix=f"/{SERVICE}/Unary"))
    servicer.taps["echo-0"].append(tap("t2", rate=100.0, expires_in=3.0))
    await eventually(
        lambda: metric(client, "proxy_tap_active") == 1 and metric(server, "proxy_tap_active") == 1,
        5.0,
        "both taps applied",
    )
    started = time.monotonic()
    await calls(client, 5, method="ServerStream")  # no match for t1
    await calls(client, 20, pause=0.1)  # over 2 s: the bucket refills
    elapsed = time.monotonic() - started
    await eventually(lambda: len(inits(servicer.tap_events["web-0"], "t1")) >= 2, 5.0, "t1 events")
    await asyncio.sleep(0.5)
    t1 = [e for _, e in servicer.tap_events["web-0"] if e.tap_id == "t1"]
    captured = inits(servicer.tap_events["web-0"], "t1")
    # At most max(1, rate) + rate * T over T seconds; and the bucket did refill.
    assert 2 <= len(captured) <= 2 + 2.0 * elapsed
    assert {e.request_init.path for e in captured} == {f"/{SERVICE}/Unary"}
    assert all(e.direction == OUTBOUND for e in captured)
    assert {e.request_init.authority for e in captured} == {authority("echo")}
    echo_id, web_id = identity_of("echo", NAMESPACE).dns_name, identity_of("web", NAMESPACE).dns_name
    assert {(e.source_identity, e.destination_identity, e.tls) for e in captured} == {
        (web_id, echo_id, "true")
    }
    assert {e.destination_labels["service"] for e in captured} == {"echo"}
    assert all(dict(e.headers) == {"x-trace": "t-1"} for e in captured)
    ends = [e.response_end for e in t1 if e.WhichOneof("phase") == "response_end"]
    assert len(ends) == len(captured) and {end.grpc_status for end in ends} == {0}
    assert metric(client, "proxy_tap_rate_limited_total") >= 20 - len(captured) - 1
    # The server's inbound tap saw both methods, with the client's identity.
    t2 = inits(servicer.tap_events["echo-0"], "t2")
    assert {e.request_init.path for e in t2} == {f"/{SERVICE}/Unary", f"/{SERVICE}/ServerStream"}
    assert {(e.direction, e.source_identity, e.destination_identity) for e in t2} == {
        (INBOUND, web_id, echo_id)
    }
    everything = [e for events in servicer.tap_events.values() for _, e in events]
    assert "s3cr3t" not in repr(everything)

    # t2 expires without a renewal (the proxy's sweeper); t1 is stopped explicitly.
    servicer.taps["web-0"].append(pb.TapSubscription(tap_id="t1", active=False))
    await eventually(
        lambda: metric(client, "proxy_tap_active") == 0 and metric(server, "proxy_tap_active") == 0,
        10.0,
        "capture stopped on both proxies",
    )
    stopped = time.monotonic()
    requests_before = metric(client, "proxy_tap_requests_total") + metric(server, "proxy_tap_requests_total")
    await calls(client, 5)
    await asyncio.sleep(1.5)
    assert all(at <= stopped for events in servicer.tap_events.values() for at, _ in events)
    after = metric(client, "proxy_tap_requests_total") + metric(server, "proxy_tap_requests_total")
    assert after == requests_before
    assert metric(client, "proxy_tap_events_sent_total") == len(servicer.tap_events["web-0"])
