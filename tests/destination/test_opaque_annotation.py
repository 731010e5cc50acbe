"""Acceptance: the ``config.tether.io/opaque-ports`` Pod annotation (what ``tether inject`` reads, as
Linkerd's ``config.linkerd.io/opaque-ports``) through a real replica and the real kubernetes client, from
the emulated Kubernetes API (``FakeKubeApi`` speaks its wire protocol: see test_kubernetes_source), watched
by real grpc.aio clients: the pod's endpoints are announced with ``protocol_hint.opaque`` on the ports it
names, for its own address and for the services it backs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tether.shared.testing import eventually

from .conftest import Mesh
from .test_kubernetes_source import Deployment, FakeKubeApi

ANNOTATION = "config.tether.io/opaque-ports"
LEGACY = "tether.io/opaque-ports"


class AnnotatedDeployment(Deployment):
    """A Deployment whose pod template carries ``annotations`` (every pod it makes has them)."""

    def __init__(self, api: FakeKubeApi, annotations: dict[str, str], **options: Any) -> None:
        self.annotations = annotations
        super().__init__(api, **options)

    def _pod(self, pod_name: str) -> dict[str, Any]:
        pod = super()._pod(pod_name)
        pod["metadata"]["annotations"] = dict(self.annotations)
        return pod


@pytest.fixture
async def kube_api() -> AsyncIterator[FakeKubeApi]:
    api = FakeKubeApi()
    await api.start()
    yield api
    await api.stop()


async def test_pod_annotation_marks_its_ports_opaque(mesh: Mesh, kube_api: FakeKubeApi) -> None:
    # Ports and ranges as Linkerd writes them: the service's target port 8080, and a database range.
    db = AnnotatedDeployment(kube_api, {ANNOTATION: "8080, 5432,9000-9100"}, name="db")
    db.scale(2)
    # Both names set: the config.tether.io one wins.
    web = AnnotatedDeployment(kube_api, {ANNOTATION: "9000", LEGACY: "8080"})
    web.scale(1)
    replica = mesh.replica(
        TETHER_DESTINATION_SOURCE="kubernetes",
        TETHER_DESTINATION_KUBE_API_URL=f"http://127.0.0.1:{kube_api.port}",
        TETHER_DESTINATION_KUBE_WATCH_TIMEOUT="3",
    )
    await replica.wait_ready()
    db_ips = {state.ip for state in db.pods.values()}
    (web_ip,) = {state.ip for state in web.pods.values()}
    first_db_ip = sorted(db_ips)[0]
    service = mesh.client(replica, "db.shop.svc.cluster.local:80")
    by_pod = {port: mesh.client(replica, f"{first_db_ip}:{port}") for port in (5432, 9050, 9101, 8080)}
    web_service = mesh.client(replica, "web.shop.svc.cluster.local:80")
    web_pod = mesh.client(replica, f"{web_ip}:9000")
    await eventually(
        lambda: (
            service.addresses == db_ips
            and all(client.addresses == {first_db_ip} for client in by_pod.values())
            and web_service.addresses == {web_ip}
            and web_pod.addresses == {web_ip}
        ),
        what="first messages",
    )
    # The service port 80 goes to target port 8080, which every db pod names: opaque for both endpoints.
    assert all(service.state[ip]["opaque"] and service.state[ip]["port"] == 8080 for ip in db_ips)
    assert {port: client.state[first_db_ip]["opaque"] for port, client in by_pod.items()} == {
        5432: True,
        9050: True,
        9101: False,
        8080: True,
    }
    assert not web_service.state[web_ip]["opaque"], "the legacy annotation must not win over the new one"
    assert web_pod.state[web_ip]["opaque"]

    # A changed annotation is served: port 8080 is no longer opaque for db's service.
    for pod_name in db.pods:
        pod = db._pod(pod_name)
        pod["metadata"]["annotations"] = {ANNOTATION: "5432"}
        kube_api.put("pods", pod)
    await eventually(
        lambda: all(service.state.get(ip, {}).get("opaque") is False for ip in db_ips),
        what="the changed annotation served",
    )
    # A value that does not parse is ignored (logged once, as kube_annotation_invalid), never half-applied.
    broken = db._pod(sorted(db.pods)[0])
    broken["metadata"]["annotations"] = {ANNOTATION: "5432,http"}
    kube_api.put("pods", broken)
    await eventually(
        lambda: any("kube_annotation_invalid" in line for line in replica.logs().splitlines()),
        what="the invalid annotation logged",
    )
    [line] = [json.loads(x) for x in replica.logs().splitlines() if "kube_annotation_invalid" in x]
    assert (line["annotation"], line["value"]) == (ANNOTATION, "5432,http")
    await eventually(
        lambda: by_pod[5432].state.get(first_db_ip, {}).get("opaque") is False,
        what="the invalid value ignored as a whole",
    )
    assert replica.process is not None and replica.process.poll() is None
