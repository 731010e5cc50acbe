"""The public API against a real nats-server fed with real rollups and tap events, called by a real grpcio
client generated from the public protos."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tether.destination.config import DestinationConfig
from tether.destination.service import DestinationService
from tether.public_api.config import PublicApiConfig
from tether.public_api.service import PublicApiService
from tether.public_api.testing import API_ID, CERTIFICATE_LEFT, WEB_ID, inbound, outbound_to_web, rollup
from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.config import config_from
from tether.shared.events import (
    TapAddress,
    TapEvent,
    TapRequest,
    TapRequestInit,
    TapResponseEnd,
)
from tether.shared.natsserver import EmbeddedNats
from tether.shared.proto.public.v1 import public_pb2 as pb
from tether.shared.proto.public.v1 import public_pb2_grpc
from tether.shared.runtime import Runtime
from tether.shared.testing import eventually


@dataclass
class Api:
    stub: public_pb2_grpc.ApiStub
    bus: Bus
    channel: grpc.aio.Channel
    service: PublicApiService


@pytest.fixture
async def api(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Api]:
    bus = await Bus.connect(nats_server.url, name="test")
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        json.dumps(  # JSON is YAML
            {
                "services": [
                    {
                        "namespace": "shop",
                        "name": "web",
                        "ports": [{"name": "http", "port": 80, "target_port": 8080}],
                        "endpoints": [
                            {"address": "10.0.0.1", "identity": WEB_ID, "labels": {"pod": "web-1"}}
                        ],
                    },
                    {"namespace": "shop", "name": "idle", "ports": [{"port": 81}], "endpoints": []},
                ]
            }
        )
    )
    destination_config = config_from(
        DestinationConfig,
        "destination",
        {"nats_url": nats_server.url, "admin_addr": "127.0.0.1:0", "grpc_addr": "127.0.0.1:0"},
        {
            "TETHER_DESTINATION_IDENTITY_DISABLED": "true",
            "TETHER_DESTINATION_SOURCE": "local",
            "TETHER_DESTINATION_REGISTRY_FILE": str(registry),
        },
    )
    destination_service = DestinationService(destination_config)
    destination = Runtime("destination", destination_config, destination_service, version="9.9.9")
    await destination.start()
    await bus.ensure_stream(subjects.ROLLUPS_STREAM, [subjects.ROLLUP_ALL], max_age=3600)
    # Before the API starts: it must read these from the stream's start.
    await bus.publish_stored(
        subjects.rollup("shop", "deployment", "web"),
        rollup("t1", "web", "web-1", WEB_ID, [inbound(90, 10)]),
    )
    service = PublicApiService(
        config_from(
            PublicApiConfig,
            "public-api",
            {
                "nats_url": nats_server.url,
                "admin_addr": "127.0.0.1:0",
                "grpc_addr": "127.0.0.1:0",
                "destination_addr": f"127.0.0.1:{destination_service.grpc_port}",
                "destination_trust_anchors": "",
            },
            {},
        )
    )
    runtime = Runtime("public-api", service.config, service, version="9.9.9")
    await runtime.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield Api(public_pb2_grpc.ApiStub(channel), bus, channel, service)
    finally:
        await channel.close()
        await runtime.stop()
        await destination.stop()
        await bus.close()


async def test_every_method(api: Api) -> None:
    stub, bus, channel = api.stub, api.bus, api.channel
    # Live: the same report range again from a second replica (counted once), and new ranges.
    await bus.publish_stored(
        subjects.rollup("shop", "deployment", "web"),
        rollup("t2", "web", "web-1", WEB_ID, [inbound(90, 10)]),
    )
    await bus.publish_stored(
        subjects.rollup("shop", "deployment", "web"),
        rollup("t2", "web", "web-2", WEB_ID, [inbound(10, 0, tls=False)]),
    )
    await bus.publish_stored(
        subjects.rollup("shop", "deployment", "api"),
        rollup("t1", "api", "api-1", API_ID, [outbound_to_web(50)]),
    )
    minute = Duration(seconds=60)

    async def web_row() -> pb.StatRow | None:
        answer = await stub.StatSummary(
            pb.StatSummaryRequest(
                selector=pb.Resource(namespace="shop", kind="deployment", name="web"), time_window=minute
            )
        )
        rows = list(answer.rows)
        return rows[0] if rows and rows[0].request_count == 110 else None

    async def merged() -> bool:
        return await web_row() is not None

    await eventually(merged, what="web's merged row")
    row = await web_row()
    assert row is not None
    assert (row.success_count, row.failure_count) == (100, 10)
    assert row.success_rate == pytest.approx(100 / 110)
    assert row.request_rate == pytest.approx(110 / 60)
    assert row.tls_share == pytest.approx(100 / 110)
    assert (row.meshed_pods, row.total_pods) == (2, 2)
    assert row.tcp_open_connections == 4  # (3 - 1) per counted rollup
    # 100 responses in (2, 3] ms, 10 in (100, 200] ms: p50 interpolates in the first, p99 in the second.
    assert row.latency_ms_p50 == pytest.approx(2.0 + 0.5 * 110 / 100)
    assert row.latency_ms_p99 == pytest.approx(100 + 100 * (0.99 * 110 - 100) / 10) and row.has_latency

    # Per pod: each of web's pods its own row, one meshed pod each.
    answer = await stub.StatSummary(
        pb.StatSummaryRequest(selector=pb.Resource(namespace="shop", kind="pod"), time_window=minute)
    )
    by_pod = {r.resource.name: r for r in answer.rows}
    assert (by_pod["web-1"].request_count, by_pod["web-1"].success_count) == (100, 90)
    assert (by_pod["web-2"].request_count, by_pod["web-2"].tls_share) == (10, 0.0)
    assert by_pod["web-1"].meshed_pods == 1 and by_pod["web-1"].tls_share == 1.0
    assert set(by_pod) == {"web-1", "web-2", "api-1"}
    answer = await stub.StatSummary(
        pb.StatSummaryRequest(
            selector=pb.Resource(namespace="shop", kind="deployment", name="api"),
            to=pb.Resource(namespace="shop", kind="deployment", name="web"),
        )
    )
    assert [(r.resource.name, r.request_count, r.success_count) for r in answer.rows] == [("api", 50, 50)]
    request = pb.StatSummaryRequest(selector=pb.Resource(namespace="shop", kind="deployment"))
    getattr(request, "from").CopyFrom(pb.Resource(namespace="shop", kind="deployment", name="api"))
    answer = await stub.StatSummary(request)
    assert [(r.resource.name, r.request_count) for r in answer.rows] == [("web", 50)]
    answer = await stub.StatSummary(pb.StatSummaryRequest(selector=pb.Resource(kind="service")))
    assert [(r.resource.namespace, r.resource.name, r.request_count) for r in answer.rows] == [
        ("shop", "web", 50)
    ]

    edges = await stub.Edges(pb.EdgesRequest(selector=pb.Resource(namespace="shop", kind="deployment")))
    assert [
        (e.src.name, e.dst.name, e.client_id, e.server_id, e.secured, e.request_count) for e in edges.edges
    ] == [("api", "web", API_ID, WEB_ID, True, 50)]

    workloads = await stub.ListWorkloads(pb.ListWorkloadsRequest(namespace="shop"))
    assert [(w.resource.name, w.meshed_pods, w.identity) for w in workloads.workloads] == [
        ("api", 1, API_ID),
        ("web", 2, WEB_ID),
    ]
    web = workloads.workloads[1]
    assert sorted(p.name for p in web.pods) == ["web-1", "web-2"] and all(p.reporting for p in web.pods)
    assert web.proxy_version == "0.1.0" and {p.proxy_version for p in web.pods} == {"0.1.0"}
    left = web.certificate_expiry.ToDatetime(tzinfo=UTC).timestamp() - time.time()
    assert CERTIFICATE_LEFT - 60 < left <= CERTIFICATE_LEFT
    assert all(p.certificate_expiry.seconds >= web.certificate_expiry.seconds for p in web.pods)
    assert abs(web.last_report.ToDatetime(tzinfo=UTC).timestamp() - time.time()) < 30

    async def versions() -> set[tuple[str, str, bool]]:
        answer = await stub.Version(pb.VersionRequest())
        assert answer.api_version == "v1"
        return {(c.service, c.version, c.ready) for c in answer.components}

    async def api_heard() -> bool:
        return ("public-api", "9.9.9", True) in await versions()

    await eventually(api_heard, what="the public API's own heartbeat in Version")
    check = await stub.Check(pb.CheckRequest())
    by_description = {r.description: r for r in check.results}
    assert by_description["public API is connected to NATS"].status == pb.CHECK_STATUS_OK
    assert (
        by_description["destination is running and ready (0/0 instances ready)"].status
        == pb.CHECK_STATUS_ERROR
    )
    assert by_description["meshed pods' proxies are reporting"].status == pb.CHECK_STATUS_OK
    assert by_description["public API reads the telemetry rollups"].status == pb.CHECK_STATUS_OK
    assert check.status == pb.CHECK_STATUS_ERROR and not check.ok

    # Health and reflection.
    health = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="tether.public.v1.Api")
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = [s.name async for r in reflect for s in r.list_services_response.service]
    assert "tether.public.v1.Api" in names and "grpc.health.v1.Health" in names


async def test_tap_streams_events_and_cancels(api: Api) -> None:
    stub, bus = api.stub, api.bus
    requests: list[TapRequest] = []

    async def on_request(request: TapRequest, _subject: str) -> None:
        requests.append(request)

    await bus.subscribe(subjects.TAP_REQUESTS, TapRequest, on_request)
    call = stub.Tap(
        pb.TapRequest(
            target=pb.Resource(namespace="shop", kind="deployment", name="web"),
            max_events_per_second=2,
            header_names=["x-request-id"],
        )
    )
    await eventually(lambda: bool(requests), what="the tap's start")
    start = requests[0]
    assert start.action == "start" and start.target is not None and start.target.workload is not None
    assert (start.target.workload.name, start.max_events_per_second, start.header_names) == (
        "web",
        2.0,
        ("x-request-id",),
    )

    def event(stream_id: int, end: bool = False) -> TapEvent:
        return TapEvent(
            tap_id=start.tap_id,
            replica="t1",
            namespace="shop",
            pod="web-1",
            direction="inbound",
            stream_id=stream_id,
            at=datetime.now(UTC),
            source=TapAddress(ip="10.0.0.9", port=4000),
            destination=TapAddress(ip="10.0.0.1", port=8080),
            source_labels={},
            destination_labels={"deployment": "web"},
            source_identity=API_ID,
            destination_identity=WEB_ID,
            tls="true",
            request_init=None
            if end
            else TapRequestInit(method="GET", scheme="http", authority="web.shop:80", path=f"/{stream_id}"),
            response_end=TapResponseEnd(
                grpc_status=-1, since_request_init_us=1200, response_bytes=5, reset_error_code=0
            )
            if end
            else None,
        )

    for stream_id in range(1, 6):  # 5 requests at once: 2/s admits 2
        await bus.publish(subjects.tap_events(start.tap_id), event(stream_id))
        await bus.publish(subjects.tap_events(start.tap_id), event(stream_id, end=True))
    got = []
    async for message in call:
        got.append(message)
        if len(got) == 4:
            break
    assert [(g.stream_id, g.WhichOneof("phase")) for g in got] == [
        (1, "request_init"),
        (1, "response_end"),
        (2, "request_init"),
        (2, "response_end"),
    ]
    assert got[0].request_init.path == "/1" and got[0].source.port == 4000 and got[0].tls == "true"
    assert got[0].source.ip.ipv4 == (10 << 24) + 9 and got[0].destination_identity == WEB_ID
    await eventually(lambda: any(r.action == "renew" for r in requests), timeout=5, what="a renewal")
    call.cancel()
    await eventually(
        lambda: any(r.action == "cancel" and r.tap_id == start.tap_id for r in requests),
        what="the cancel when the client went away",
    )


@pytest.mark.parametrize(
    ("method", "message", "field"),
    [
        ("StatSummary", pb.StatSummaryRequest(), "selector"),
        ("StatSummary", pb.StatSummaryRequest(selector=pb.Resource(kind="bogus")), "selector.kind"),
        (
            "StatSummary",
            pb.StatSummaryRequest(selector=pb.Resource(kind="deployment", namespace="Bad_NS")),
            "selector.namespace",
        ),
        (
            "StatSummary",
            pb.StatSummaryRequest(selector=pb.Resource(kind="deployment"), time_window=Duration(seconds=7)),
            "time_window",
        ),
        ("Edges", pb.EdgesRequest(selector=pb.Resource(kind="service")), "selector.kind"),
        ("ListWorkloads", pb.ListWorkloadsRequest(namespace="-x"), "namespace"),
        ("Endpoints", pb.EndpointsRequest(), "authority"),
        ("Tap", pb.TapRequest(), "target"),
        (
            "Tap",
            pb.TapRequest(
                target=pb.Resource(namespace="shop", kind="deployment", name="web"), max_events_per_second=-1
            ),
            "max_events_per_second",
        ),
        (
            "Tap",
            pb.TapRequest(
                target=pb.Resource(namespace="shop", kind="deployment", name="web"),
                header_names=["Bad Header"],
            ),
            "header_names[0]",
        ),
    ],
)
async def test_bad_requests_name_the_field(api: Api, method: str, message: object, field: str) -> None:
    stub = api.stub
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        call = getattr(stub, method)(message)
        if method == "Tap":
            async for _ in call:
                pass
        else:
            await call
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith(f"{field}:"), raised.value.details()


async def test_unknown_resources_are_not_found(api: Api) -> None:
    stub = api.stub
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.StatSummary(
            pb.StatSummaryRequest(selector=pb.Resource(namespace="shop", kind="deployment", name="nope"))
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_endpoints_asks_destination(api: Api) -> None:
    stub = api.stub

    async def resolved() -> bool:
        try:
            await stub.Endpoints(pb.EndpointsRequest(authority="web.shop.svc.cluster.local:80"))
        except grpc.aio.AioRpcError:
            return False
        return True

    await eventually(resolved, what="destination resolving web")
    answer = await stub.Endpoints(pb.EndpointsRequest(authority="web:80", namespace="shop"))
    assert answer.exists
    [endpoint] = answer.endpoints
    assert endpoint.addr.ip.ipv4 == (10 << 24) + 1 and endpoint.addr.port == 8080
    assert endpoint.tls_identity.dns_like_identity == WEB_ID
    assert endpoint.metric_labels["pod"] == "web-1"
    idle = await stub.Endpoints(pb.EndpointsRequest(authority="idle.shop.svc.cluster.local:81"))
    assert idle.exists and not idle.endpoints
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Endpoints(pb.EndpointsRequest(authority="nothing.shop.svc.cluster.local:80"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert (raised.value.details() or "").startswith("authority: ")
