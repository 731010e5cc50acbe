"""The dashboard as the public API runs it: a real nats-server fed with real rollups, the real service and
runtime, the dashboard's JSON read over HTTP against what the gRPC API answers at the same moment."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tether.public_api.config import PublicApiConfig
from tether.public_api.dashboard.testing import fetch
from tether.public_api.service import PublicApiService
from tether.public_api.testing import API_ID, WEB_ID, inbound, outbound_to_web, rollup
from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.config import config_from
from tether.shared.errors import PortInUse
from tether.shared.natsserver import EmbeddedNats
from tether.shared.proto.public.v1 import public_pb2 as pb
from tether.shared.proto.public.v1 import public_pb2_grpc
from tether.shared.runtime import Runtime
from tether.shared.stat_rows import stat_row
from tether.shared.testing import eventually


def _config(nats: EmbeddedNats, **flags: str) -> PublicApiConfig:
    return config_from(
        PublicApiConfig,
        "public-api",
        {
            "nats_url": nats.url,
            "admin_addr": "127.0.0.1:0",
            "grpc_addr": "127.0.0.1:0",
            "destination_trust_anchors": "",
            "dashboard_addr": "127.0.0.1:0",
            **flags,
        },
        {},
    )


@dataclass
class Running:
    service: PublicApiService
    stub: public_pb2_grpc.ApiStub

    @property
    def port(self) -> int:
        assert self.service.dashboard is not None
        return self.service.dashboard.port


@pytest.fixture
async def running(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Running]:
    bus = await Bus.connect(nats_server.url, name="test")
    await bus.ensure_stream(subjects.ROLLUPS_STREAM, [subjects.ROLLUP_ALL], max_age=3600)
    for subject, event in (
        (
            subjects.rollup("shop", "deployment", "web"),
            rollup("t1", "web", "web-1", WEB_ID, [inbound(90, 10)]),
        ),
        (
            subjects.rollup("shop", "deployment", "api"),
            rollup("t1", "api", "api-1", API_ID, [outbound_to_web(50)]),
        ),
    ):
        await bus.publish_stored(subject, event)
    service = PublicApiService(_config(nats_server))
    runtime = Runtime("public-api", service.config, service, version="9.9.9")
    await runtime.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield Running(service, public_pb2_grpc.ApiStub(channel))
    finally:
        await channel.close()
        await runtime.stop()
        await bus.close()


async def test_the_overview_shows_what_stat_summary_answers(running: Running) -> None:
    async def web_listed() -> bool:
        answer = await fetch(running.port, "/api/overview")
        return any(row["name"] == "web" and row["requests"] == 100 for row in answer.json()["workloads"])

    await eventually(web_listed, what="web in the overview")
    overview = (await fetch(running.port, "/api/overview")).json()
    answer = await running.stub.StatSummary(
        pb.StatSummaryRequest(selector=pb.Resource(kind="deployment"), time_window=Duration(seconds=60))
    )
    expected = {row.resource.name: stat_row(row) for row in answer.rows}
    shown = {row["name"]: {k: v for k, v in row.items() if k != "health"} for row in overview["workloads"]}
    assert shown == expected
    health = {row["name"]: row["health"] for row in overview["workloads"]}
    assert health == {"api": "no-traffic", "web": "failing"}  # 90 of 100 succeeded
    namespaces = {row["name"]: row for row in overview["namespaces"]}
    assert namespaces["shop"]["requests"] == 100
    descriptions = [r["description"] for r in overview["check"]["results"]]
    assert "public API is connected to NATS" in descriptions


async def test_the_workload_page_shows_edges_pods_and_windows(running: Running) -> None:
    async def page() -> dict[str, Any] | None:
        answer = await fetch(running.port, "/api/workloads/shop/deployment/web")
        data: dict[str, Any] = answer.json()
        return data if answer.status == 200 and data["inbound"] else None

    async def ready() -> bool:
        return await page() is not None

    await eventually(ready, what="web's page with its inbound edge")
    data = await page()
    assert data is not None
    (edge,) = data["inbound"]
    assert edge["src"]["name"] == "api" and edge["client_id"] == API_ID and edge["server_id"] == WEB_ID
    assert edge["secured"] is True and edge["requests"] == 50
    assert [pod["name"] for pod in data["workload"]["pods"]] == ["web-1"]
    assert data["workload"]["identity"] == WEB_ID
    by_window = {w["window"]: w["stat"] for w in data["windows"]}
    assert by_window["1m"]["success"] == 90 and by_window["1h"]["failure"] == 10
    missing = await fetch(running.port, "/api/workloads/shop/deployment/nothing")
    assert missing.status == 404 and "no deployment 'nothing'" in missing.json()["error"]


async def test_the_history_sampler_runs_under_the_supervisor(running: Running) -> None:
    dashboard = running.service.dashboard
    assert dashboard is not None

    def sampled() -> bool:
        return bool(dashboard.history.samples(("shop", "deployment", "web")))

    await eventually(sampled, what="a 10-second sample of web")
    (sample,) = dashboard.history.samples(("shop", "deployment", "web"))[:1]
    assert set(sample) == {"at", "rps", "success_rate", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99"}


async def test_no_dashboard_without_an_address(nats_server: EmbeddedNats) -> None:
    service = PublicApiService(_config(nats_server, dashboard_addr=""))
    runtime = Runtime("public-api", service.config, service, version="9.9.9")
    await runtime.start()
    try:
        assert service.dashboard is None and service.port > 0
    finally:
        await runtime.stop()


async def test_a_taken_dashboard_port_names_the_option(nats_server: EmbeddedNats) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = PublicApiService(_config(nats_server, dashboard_addr=f"127.0.0.1:{port}"))
        runtime = Runtime("public-api", service.config, service, version="9.9.9")
        try:
            with pytest.raises(PortInUse, match=rf"--dashboard-addr 127.0.0.1:{port} is already in use"):
                await runtime.start()
        finally:
            await runtime.stop()
