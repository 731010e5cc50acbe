"""The dashboard's HTTP side against a real grpcio server answering as the public API would (canned answers,
so each test controls what the API says; the real API is in test_dashboard_service.py), with raw HTTP/1.1
requests (h11): routes, headers, the Host and same-origin checks, the JSON, and taps streamed, stopped and
cancelled."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tether.public_api.dashboard.app import Dashboard
from tether.public_api.dashboard.security import SECURITY_HEADERS
from tether.public_api.dashboard.testing import EventStream, fetch, fetch_raw
from tether.shared.grpcserver import start_grpc_server
from tether.shared.proto.public.v1 import public_pb2 as pb
from tether.shared.proto.public.v1 import public_pb2_grpc
from tether.shared.proto.telemetry.v1 import telemetry_pb2
from tether.shared.testing import RecordingSupervisor, eventually

WEB = pb.Resource(namespace="shop", kind="deployment", name="web")
API = pb.Resource(namespace="shop", kind="deployment", name="api")
HOSTILE_PATH = '/x/<script>window.pwned=1</script>\n\ndata: {"forged": true}'


def web_row() -> pb.StatRow:
    row = pb.StatRow(
        resource=WEB,
        meshed_pods=2,
        total_pods=2,
        success_count=90,
        failure_count=10,
        request_count=100,
        request_rate=100 / 60,
        success_rate=0.9,
        tls_share=1.0,
        latency_ms_p50=2.5,
        latency_ms_p95=150.0,
        latency_ms_p99=190.0,
        has_latency=True,
        tcp_open_connections=3,
    )
    row.time_window.FromSeconds(60)
    return row


@dataclass
class FakeApi(public_pb2_grpc.ApiServicer):
    telemetry_ready: bool = True
    tap_metadata: list[dict[str, Any]] = field(default_factory=list)
    tap_requests: list[pb.TapRequest] = field(default_factory=list)
    tap_ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def Version(self, request: Any, context: Any) -> pb.VersionResponse:
        return pb.VersionResponse(
            api_version="v1",
            components=[
                pb.ComponentVersion(service="public-api", instance="p", version="1", ready=True),
                pb.ComponentVersion(
                    service="telemetry", instance="t", version="1", ready=self.telemetry_ready
                ),
            ],
        )

    async def Check(self, request: Any, context: Any) -> pb.CheckResponse:
        return pb.CheckResponse(
            ok=True,
            status=pb.CHECK_STATUS_OK,
            results=[
                pb.CheckResult(
                    category="control-plane", description="all good", ok=True, status=pb.CHECK_STATUS_OK
                )
            ],
        )

    async def ListWorkloads(self, request: Any, context: Any) -> pb.ListWorkloadsResponse:
        expiry = Timestamp(seconds=2_000_000_000)
        pods = [pb.Pod(name="web-1", identity="web.shop", proxy_version="1.2.3", certificate_expiry=expiry)]
        return pb.ListWorkloadsResponse(
            workloads=[
                pb.Workload(resource=API, meshed_pods=1, total_pods=1, pods=[pb.Pod(name="api-1")]),
                pb.Workload(resource=WEB, meshed_pods=2, total_pods=2, pods=pods),
            ]
        )

    async def StatSummary(self, request: pb.StatSummaryRequest, context: Any) -> pb.StatSummaryResponse:
        if request.selector.kind == "deployment" and request.selector.name in ("", "web"):
            return pb.StatSummaryResponse(rows=[web_row()])
        if request.selector.kind == "deployment":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such deployment")
        return pb.StatSummaryResponse()

    async def Edges(self, request: Any, context: Any) -> pb.EdgesResponse:
        return pb.EdgesResponse(
            edges=[pb.Edge(src=API, dst=WEB, client_id="api.shop", server_id="web.shop", secured=True)]
        )

    async def Tap(self, request: pb.TapRequest, context: Any) -> AsyncIterator[telemetry_pb2.TapEvent]:
        self.tap_requests.append(request)
        self.tap_metadata.append(dict(context.invocation_metadata()))
        try:
            init = telemetry_pb2.TapEvent.RequestInit(
                method="GET", authority="web.shop:80", path=HOSTILE_PATH
            )
            yield telemetry_pb2.TapEvent(
                stream_id=7, request_init=init, headers={"x-id": "1", "cookie": "secret"}
            )
            await asyncio.Event().wait()  # live until the client cancels
        finally:
            self.tap_ended.set()


@dataclass
class Setup:
    api: FakeApi
    dashboard: Dashboard

    @property
    def port(self) -> int:
        return self.dashboard.port


async def _started(supervisor: RecordingSupervisor, target: str, **options: Any) -> Dashboard:
    dashboard = Dashboard(
        addr="127.0.0.1:0", api_target=target, spawn=supervisor.spawn, timeout=2.0, **options
    )
    await dashboard.start()
    return dashboard


@pytest.fixture
async def setup(supervisor: RecordingSupervisor) -> AsyncIterator[Setup]:
    api = FakeApi()
    server, port = await start_grpc_server(
        "127.0.0.1:0", lambda s: public_pb2_grpc.add_ApiServicer_to_server(api, s)
    )
    dashboard = await _started(supervisor, f"127.0.0.1:{port}", extra_hosts=("dash.example",))
    try:
        yield Setup(api, dashboard)
    finally:
        await dashboard.close()
        await server.stop(0)


def assert_secured(headers: dict[str, str]) -> None:
    for name, value in SECURITY_HEADERS:
        assert headers[name.decode()] == value.decode(), name


async def test_pages_and_files_with_their_types_and_security_headers(setup: Setup) -> None:
    for path, kind in (
        ("/", "text/html"),
        ("/tap", "text/html"),
        ("/workloads/shop/deployment/web", "text/html"),
        ("/static/dashboard.js", "text/javascript"),
        ("/static/dashboard.css", "text/css"),
        ("/static/favicon.svg", "image/svg+xml"),
        ("/api/overview", "application/json"),
    ):
        answer = await fetch(setup.port, path)
        assert answer.status == 200, path
        assert answer.headers["content-type"].startswith(kind), path
        assert_secured(answer.headers)
    for path, status in (
        ("/static/../app.py", 404),
        ("/static/index.html", 404),
        ("/workloads/Shop/deployment/web", 404),
        ("/workloads/shop/service/web", 404),
        ("/nope", 404),
        ("/api/nope", 404),
        ("/api/overview?window=2m", 400),
    ):
        answer = await fetch(setup.port, path)
        assert answer.status == status, path
        assert_secured(answer.headers)
    refused = await fetch(setup.port, "/api/overview", method="POST")
    assert refused.status == 405 and refused.headers["allow"] == "GET, HEAD"
    head = await fetch(setup.port, "/", method="HEAD")
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "style" or "style" in names or any(name.startswith("on") for name in names):
            self.inline.append(tag)
        if tag == "script" and "src" not in names:
            self.inline.append("script")
        for name, value in attrs:
            if name in ("src", "href") and value and "//" in value:
                self.inline.append(f"{tag} {name}={value}")  # nothing from elsewhere


async def test_the_page_has_no_inline_script_or_style_and_loads_nothing_from_elsewhere(setup: Setup) -> None:
    markup = _Markup()
    markup.feed((await fetch(setup.port, "/")).body.decode())
    assert markup.inline == []
    script = (await fetch(setup.port, "/static/dashboard.js")).body.decode()
    # The script builds the page from text nodes and attributes only.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert '.setAttribute("style"' not in script and "http://" not in script.replace("http://www.w3.org", "")


async def test_a_foreign_host_gets_403(setup: Setup) -> None:
    for host in ("localhost:1234", "127.0.0.1", "[::1]:8084", "dash.example:8084"):
        assert (await fetch(setup.port, "/", headers={"host": host})).status == 200, host
    for host in ("evil.example:8084", "evil.example", "127.0.0.1.evil.example", "dash.example.evil"):
        answer = await fetch(setup.port, "/api/overview", headers={"host": host})
        assert answer.status == 403, host
        assert_secured(answer.headers)
        assert b"--dashboard-host" in answer.body
    # No Host at all (HTTP/1.0), or two of them.
    status, raw = await fetch_raw(setup.port, b"GET / HTTP/1.0\r\n\r\n")
    assert status == 403 and b"content-security-policy" in raw
    two = b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    assert (await fetch_raw(setup.port, two))[0] == 400


async def test_other_sites_pages_may_not_use_the_api(setup: Setup) -> None:
    for site in ("cross-site", "same-site"):
        answer = await fetch(setup.port, "/api/overview", headers={"sec-fetch-site": site})
        assert answer.status == 403
    assert (await fetch(setup.port, "/", headers={"sec-fetch-site": "cross-site"})).status == 200  # a link


async def test_the_overview_has_the_cli_numbers_and_marks_failing_workloads(setup: Setup) -> None:
    data = (await fetch(setup.port, "/api/overview")).json()
    assert data["problems"] == [] and data["window"] == "1m" and data["refresh_seconds"] > 0
    rows = {row["name"]: row for row in data["workloads"]}
    assert sorted(rows) == ["api", "web"]
    web = rows["web"]
    assert web["health"] == "failing"  # 90% success
    assert {
        k: web[k] for k in ("meshed", "total", "requests", "success", "failure", "tcp_open_connections")
    } == {
        "meshed": 2,
        "total": 2,
        "requests": 100,
        "success": 90,
        "failure": 10,
        "tcp_open_connections": 3,
    }
    assert web["success_rate"] == 0.9 and web["rps"] == 100 / 60 and web["latency_ms_p99"] == 190.0
    assert web["window_seconds"] == 60 and web["tls_share"] == 1.0
    # Listed, no traffic: the CLI's nulls, and not "failing".
    assert rows["api"]["health"] == "no-traffic" and rows["api"]["success_rate"] is None
    assert data["check"]["results"][0] == {
        "category": "control-plane",
        "description": "all good",
        "status": "ok",
        "hint": "",
    }


async def test_the_workload_page_data(setup: Setup) -> None:
    data = (await fetch(setup.port, "/api/workloads/shop/deployment/web?window=10m")).json()
    assert data["health"] == "failing" and data["window"] == "10m"
    assert [w["window"] for w in data["windows"]] == ["10s", "1m", "10m", "1h"]
    assert data["inbound"][0]["src"]["name"] == "api" and data["inbound"][0]["secured"] is True
    assert data["outbound"] == []
    (pod,) = data["workload"]["pods"]
    assert pod["proxy_version"] == "1.2.3" and pod["certificate_expiry"] == 2_000_000_000
    assert data["history"]["interval_seconds"] == 10
    assert (await fetch(setup.port, "/api/workloads/shop/deployment/gone")).status == 404


async def test_a_telemetry_or_api_outage_is_a_problem_not_an_error(
    setup: Setup, supervisor: RecordingSupervisor
) -> None:
    setup.api.telemetry_ready = False
    data = (await fetch(setup.port, "/api/overview")).json()
    assert [p["kind"] for p in data["problems"]] == ["telemetry"]
    assert data["workloads"]  # the numbers are still there
    status = (await fetch(setup.port, "/api/status")).json()
    assert [p["kind"] for p in status["problems"]] == ["telemetry"]
    # Nothing answers at the API's address: every call fails, the dashboard still answers.
    silent = await _started(supervisor, "127.0.0.1:1")
    try:
        answer = await fetch(silent.port, "/api/overview")
        assert answer.status == 200
        kinds = {p["kind"] for p in answer.json()["problems"]}
        assert kinds == {"api"} and "did not answer" in answer.json()["problems"][0]["message"]
    finally:
        await silent.close()


SAME_ORIGIN = {
    "origin": "http://localhost:8084",
    "host": "localhost:8084",
    "content-type": "application/json",
}
FORM = json.dumps({"namespace": "shop", "kind": "deployment", "name": "web", "path": "/x"}).encode()


async def start_tap(port: int, headers: Mapping[str, str | None] | None = None, body: bytes = FORM) -> Any:
    return await fetch(
        port, "/api/taps", method="POST", headers={**SAME_ORIGIN, **(headers or {})}, body=body
    )


async def test_starting_a_tap_needs_the_dashboards_own_page(setup: Setup) -> None:
    refusals: list[dict[str, str | None]] = [
        {"origin": None},
        {"origin": "http://localhost:3000"},
        {"origin": None, "sec-fetch-site": "same-site"},
        {"origin": "http://evil.example"},
    ]
    for headers in refusals:
        answer = await start_tap(setup.port, headers)
        assert answer.status == 403, headers
        assert "own page" in answer.json()["error"] or "another site" in answer.json()["error"]
    assert (await start_tap(setup.port, {"origin": None, "sec-fetch-site": "same-origin"})).status == 201
    assert (await start_tap(setup.port, {"content-type": "text/plain"})).status == 415  # a plain form post
    invalid = await start_tap(setup.port, body=b'{"name": "Web!"}')
    assert invalid.status == 400 and "name" in invalid.json()["error"]
    assert (await start_tap(setup.port, body=b'{"name": "web", "x": 1}')).status == 400
    assert (await start_tap(setup.port, {"authorization": "Basic abc"})).status == 400
    assert (await fetch(setup.port, "/api/taps")).json()["active"] == 1
    assert setup.api.tap_requests == []  # nothing reaches the API until the page listens


async def test_a_tap_streams_events_as_data_and_stops_when_asked(setup: Setup) -> None:
    created = (await start_tap(setup.port, {"authorization": "Bearer abc.def-123"})).json()
    refused = await fetch(setup.port, created["events"], method="HEAD")
    assert refused.status == 405
    stream = await EventStream(setup.port, created["events"]).open()
    try:
        assert stream.status == 200 and stream.fields["content-type"].startswith("text/event-stream")
        assert_secured(stream.fields)
        assert await stream.next() == ("started", {"target": "deployment/web", "namespace": "shop"})
        name, event = await stream.next() or ("", {})
        # The client-controlled path arrives whole, as data: its newlines did not end the event.
        assert name == "tap" and event["path"] == HOSTILE_PATH and event["phase"] == "request"
        assert event["headers"] == {"x-id": "1"}  # a cookie is never shown
        (request,) = setup.api.tap_requests
        assert (
            request.target == WEB
            and request.match.path_prefix == "/x"
            and request.max_events_per_second == 100
        )
        assert setup.api.tap_metadata[0]["authorization"] == "Bearer abc.def-123"  # as `tether tap` sends it
        assert (await fetch(setup.port, created["events"])).status == 404  # attached once only
        cross = await fetch(setup.port, created["stop"], method="POST", headers={"host": "localhost:8084"})
        assert cross.status == 403
        stopped = await fetch(setup.port, created["stop"], method="POST", headers=SAME_ORIGIN)
        assert stopped.status == 200
        assert await stream.next() == ("end", {"reason": "stopped", "dropped": 0})
        assert await stream.next() is None
        await asyncio.wait_for(setup.api.tap_ended.wait(), 5)  # the gRPC call was cancelled
        assert (await fetch(setup.port, "/api/taps")).json()["active"] == 0
        assert (await fetch(setup.port, created["stop"], method="POST", headers=SAME_ORIGIN)).status == 404
    finally:
        await stream.close()


async def test_a_page_that_goes_away_cancels_its_tap(setup: Setup) -> None:
    created = (await start_tap(setup.port)).json()
    stream = await EventStream(setup.port, created["events"]).open()
    assert (await stream.next() or ("",))[0] == "started"
    assert (await stream.next() or ("",))[0] == "tap"
    assert "authorization" not in setup.api.tap_metadata[0]
    await stream.close()
    await asyncio.wait_for(setup.api.tap_ended.wait(), 5)
    await eventually(lambda: setup.dashboard.taps.active == 0, what="the tap forgotten")


async def test_with_kubernetes_authorisation_a_tap_needs_a_token(
    setup: Setup, supervisor: RecordingSupervisor
) -> None:
    guarded = await _started(supervisor, "127.0.0.1:1", needs_token=True)
    try:
        answer = await start_tap(guarded.port)
        assert answer.status == 401 and "bearer token" in answer.json()["error"]
        assert (await start_tap(guarded.port, {"authorization": "Bearer t0ken"})).status == 201
    finally:
        await guarded.close()


async def test_an_api_refusal_ends_the_stream_with_its_reason(supervisor: RecordingSupervisor) -> None:
    class Refusing(public_pb2_grpc.ApiServicer):
        async def Tap(self, request: Any, context: Any) -> AsyncIterator[telemetry_pb2.TapEvent]:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "alice may not tap shop")
            yield telemetry_pb2.TapEvent()

    server, port = await start_grpc_server(
        "127.0.0.1:0", lambda s: public_pb2_grpc.add_ApiServicer_to_server(Refusing(), s)
    )
    dashboard = await _started(supervisor, f"127.0.0.1:{port}")
    try:
        created = (await start_tap(dashboard.port)).json()
        stream = await EventStream(dashboard.port, created["events"]).open()
        assert (await stream.next() or ("",))[0] == "started"
        name, failure = await stream.next() or ("", {})
        assert name == "failed" and failure["code"] == "PERMISSION_DENIED"
        assert "alice may not tap shop" in failure["message"] and "bearer token" in failure["message"]
        assert await stream.next() is None
        await stream.close()
    finally:
        await dashboard.close()
        await server.stop(0)
