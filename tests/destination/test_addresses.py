"""Acceptance: ``IP:port`` authorities and opaque ports through a real replica, from the local registry
file and from the (emulated) Kubernetes API, watched by real grpc.aio clients."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tether.shared.testing import eventually

from .conftest import Mesh, env_for
from .test_kubernetes_source import Deployment, FakeKubeApi

IDENTITY = "redis.shop.serviceaccount.identity.cluster.local"


def write_redis(path: Path, pods: list[str], addresses: list[str]) -> None:
    services = [
        {
            "namespace": "shop",
            "name": "redis",
            "addresses": addresses,
            "ports": [
                {"name": "redis", "port": 6379, "target_port": 7000, "opaque": True},
                {"name": "http", "port": 80, "target_port": 8080},
            ],
            "endpoints": [{"address": a, "identity": IDENTITY} for a in pods],
        }
    ]
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"services": services}))
    os.replace(temporary, path)


async def test_registry_addresses_resolve_and_follow_the_file(mesh: Mesh, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    write_redis(registry, ["10.0.0.1"], ["10.96.0.10", "fd00::10"])
    replica = mesh.replica(**env_for(registry))
    await replica.wait_ready()
    vip4 = mesh.client(replica, "10.96.0.10:6379")
    vip6 = mesh.client(replica, "[fd00::10]:6379")
    http = mesh.client(replica, "10.96.0.10:80")
    pod = mesh.client(replica, "10.0.0.2:7000")
    unknown = mesh.client(replica, "10.96.0.99:6379")
    await eventually(
        lambda: (
            vip4.addresses == vip6.addresses == http.addresses == {"10.0.0.1"}
            and pod.exists is False
            and unknown.exists is False
        ),
        what="first messages",
    )
    assert vip6.state["10.0.0.1"] == {
        "port": 7000,
        "identity": IDENTITY,
        "h2": True,
        "opaque": True,
        "labels": {"namespace": "shop", "service": "redis"},
    }
    assert http.state["10.0.0.1"]["port"] == 8080 and not http.state["10.0.0.1"]["opaque"]

    write_redis(registry, ["10.0.0.1", "10.0.0.2"], ["10.96.0.10"])
    await eventually(
        lambda: vip4.addresses == {"10.0.0.1", "10.0.0.2"} and vip6.exists is False and pod.exists is True,
        what="the file's change served",
    )
    assert pod.state["10.0.0.2"]["identity"] == IDENTITY and pod.state["10.0.0.2"]["opaque"]
    assert vip4.log == [("add", ("10.0.0.1",)), ("add", ("10.0.0.2",))]
    assert vip6.log == [("add", ("10.0.0.1",)), ("no_endpoints", ("False",))]
    assert pod.log == [("no_endpoints", ("False",)), ("add", ("10.0.0.2",))]
    assert unknown.log == [("no_endpoints", ("False",))]
    for client in (vip4, vip6, http, pod, unknown):
        assert client.first_messages == 1 and client.error is None


@pytest.fixture
async def kube_api() -> AsyncIterator[FakeKubeApi]:
    api = FakeKubeApi()
    await api.start()
    yield api
    await api.stop()


def with_annotation(obj: dict[str, Any], value: str) -> dict[str, Any]:
    obj["metadata"].setdefault("annotations", {})["tether.io/opaque-ports"] = value
    return obj


async def test_cluster_ips_and_opaque_ports_annotations(mesh: Mesh, kube_api: FakeKubeApi) -> None:
    web = Deployment(kube_api)
    service = kube_api.objects["services"][("shop", "web")]
    service["spec"].update(clusterIP="10.96.0.20", clusterIPs=["10.96.0.20", "fd00::20"])
    kube_api.put("services", with_annotation(service, "80"))
    web.scale(1)
    (pod_name,) = web.pods
    pod_ip = web.pods[pod_name].ip
    kube_api.put("pods", with_annotation(web._pod(pod_name), "not-a-port"))  # ignored, logged once
    replica = mesh.replica(
        TETHER_DESTINATION_SOURCE="kubernetes",
        TETHER_DESTINATION_KUBE_API_URL=f"http://127.0.0.1:{kube_api.port}",
        TETHER_DESTINATION_KUBE_WATCH_TIMEOUT="3",
    )
    await replica.wait_ready()
    vip = mesh.client(replica, "[fd00::20]:80")
    pod = mesh.client(replica, f"{pod_ip}:9000")
    await eventually(lambda: vip.addresses == {pod_ip} and pod.addresses == {pod_ip}, what="first messages")
    assert vip.state[pod_ip]["opaque"] and vip.state[pod_ip]["port"] == 8080
    assert pod.state[pod_ip]["identity"] == "web.shop.serviceaccount.identity.cluster.local"
    assert not pod.state[pod_ip]["opaque"]

    # The same bad value again is not logged again; a good one applies.
    kube_api.put("pods", with_annotation(web._pod(pod_name), "not-a-port"))
    kube_api.put("pods", with_annotation(web._pod(pod_name), "9000-9100"))
    await eventually(lambda: pod.state.get(pod_ip, {}).get("opaque") is True, what="pod annotation served")
    lines = [json.loads(x) for x in replica.logs().splitlines() if "kube_annotation_invalid" in x]
    assert len(lines) == 1, lines
    assert (lines[0]["level"], lines[0]["resource"], lines[0]["name"], lines[0]["value"]) == (
        "warning",
        "pods",
        pod_name,
        "not-a-port",
    )

    # A new cluster IP moves the virtual address: the old one is no longer in the mesh.
    service = kube_api.objects["services"][("shop", "web")]
    service["spec"].update(clusterIP="10.96.0.21", clusterIPs=["10.96.0.21"])
    kube_api.put("services", service)
    await eventually(lambda: vip.exists is False, what="cluster IP change served")
    assert replica.process is not None and replica.process.poll() is None
