"""Kubernetes objects (the API's JSON) to desired endpoint sets, event by event."""

from __future__ import annotations

from typing import Any

import pytest

from tether.destination.model import Workload
from tether.destination.sources.kube_index import KubeIndex, MalformedObject
from tether.destination.sources.reflector import List, ReflectorCore, Wait, Watch
from tether.shared.backoff import Backoff


def service(
    name: str = "web", ns: str = "ns", ports: list[dict[str, Any]] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": {
            "ports": ports if ports is not None else [{"name": "http", "port": 80, "targetPort": 8080}],
            **spec,
        },
    }


def pod(
    name: str, ns: str = "ns", meshed: bool = True, sa: str = "web", rs: str | None = "web-7d4f"
) -> dict[str, Any]:
    containers = [{"name": "app"}] + ([{"name": "tether-proxy"}] if meshed else [])
    metadata: dict[str, Any] = {"name": name, "namespace": ns, "labels": {"pod-template-hash": "7d4f"}}
    if rs:
        metadata["ownerReferences"] = [{"kind": "ReplicaSet", "name": rs, "controller": True}]
    return {"kind": "Pod", "metadata": metadata, "spec": {"serviceAccountName": sa, "containers": containers}}


def endpoint(
    ip: str, pod_name: str | None, ready: bool | None = True, terminating: bool = False
) -> dict[str, Any]:
    conditions: dict[str, Any] = {"terminating": terminating}
    if ready is not None:
        conditions["ready"] = ready
    entry: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if pod_name:
        entry["targetRef"] = {"kind": "Pod", "name": pod_name, "namespace": "ns"}
    return entry


def endpoint_slice(
    name: str, endpoints: list[dict[str, Any]], svc: str = "web", family: str = "IPv4"
) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": family,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def test_meshed_pod_gets_identity_h2_and_workload() -> None:
    index = KubeIndex("cluster.local")
    assert index.apply("services", "ADDED", service()) == {"ns.web"}
    assert index.apply(
        "endpointslices", "ADDED", endpoint_slice("web-abc", [endpoint("10.0.0.1", "web-1")])
    ) == {"ns.web"}
    assert index.apply("pods", "ADDED", pod("web-1")) == {"ns.web"}
    desired = index.desired("ns.web")
    assert desired is not None
    assert [(p.name, p.port) for p in desired.ports] == [("http", 80)]
    (ep,) = desired.endpoints
    assert ep.address == "10.0.0.1" and ep.ports == {"http": 8080}
    assert ep.identity == "web.ns.serviceaccount.identity.cluster.local"
    assert ep.protocol_hint == "h2"
    assert (ep.pod, ep.workload, ep.serviceaccount, ep.origin) == (
        "web-1",
        Workload("deployment", "web"),
        "web",
        "kubernetes",
    )


def test_unmeshed_pod_has_no_identity_and_owner_kinds() -> None:
    index = KubeIndex("cluster.local")
    index.apply("services", "ADDED", service())
    index.apply("endpointslices", "ADDED", endpoint_slice("s", [endpoint("10.0.0.1", "db-0")]))
    sts_pod = pod("db-0", meshed=False, rs=None)
    sts_pod["metadata"]["ownerReferences"] = [{"kind": "StatefulSet", "name": "db", "controller": True}]
    index.apply("pods", "ADDED", sts_pod)
    desired = index.desired("ns.web")
    assert desired is not None
    (ep,) = desired.endpoints
    assert (ep.identity, ep.protocol_hint, ep.workload) == (None, None, Workload("statefulset", "db"))


def test_conditions_follow_the_endpointslice_api() -> None:
    index = KubeIndex("cluster.local")
    index.apply("services", "ADDED", service())
    index.apply(
        "endpointslices",
        "ADDED",
        endpoint_slice(
            "s",
            [
                endpoint("10.0.0.1", None, ready=True),
                endpoint("10.0.0.2", None, ready=False),
                endpoint("10.0.0.3", None, ready=None),  # nil means ready
                endpoint("10.0.0.4", None, ready=False, terminating=True),  # leaves the set
            ],
        ),
    )
    desired = index.desired("ns.web")
    assert desired is not None
    assert [(e.address, e.ready) for e in desired.endpoints] == [
        ("10.0.0.1", True),
        ("10.0.0.2", False),
        ("10.0.0.3", True),
    ]


def test_pod_change_touches_the_services_it_backs() -> None:
    index = KubeIndex("cluster.local")
    index.apply("services", "ADDED", service())
    index.apply("services", "ADDED", service("api"))
    index.apply("endpointslices", "ADDED", endpoint_slice("web-s", [endpoint("10.0.0.1", "p1")]))
    index.apply("endpointslices", "ADDED", endpoint_slice("api-s", [endpoint("10.0.0.1", "p1")], svc="api"))
    assert index.apply("pods", "ADDED", pod("p1")) == {"ns.web", "ns.api"}
    assert index.apply("pods", "MODIFIED", pod("p1")) == set()  # nothing we use changed
    assert index.apply("pods", "MODIFIED", pod("p1", sa="other")) == {"ns.web", "ns.api"}
    assert index.apply("pods", "ADDED", pod("unrelated")) == set()
    index.apply("endpointslices", "DELETED", endpoint_slice("api-s", []))
    assert index.apply("pods", "DELETED", pod("p1")) == {"ns.web"}


def test_replace_after_relist_removes_what_vanished() -> None:
    index = KubeIndex("cluster.local")
    index.apply("services", "ADDED", service())
    index.apply("services", "ADDED", service("gone"))
    changed, rejected = index.replace("services", [service()])
    assert changed == {"ns.gone"} and rejected == []
    assert index.keys() == {"ns.web"}
    index.apply("endpointslices", "ADDED", endpoint_slice("a", [endpoint("10.0.0.1", None)]))
    changed, _ = index.replace("endpointslices", [endpoint_slice("b", [endpoint("10.0.0.2", None)])])
    assert changed == {"ns.web"}
    desired = index.desired("ns.web")
    assert desired is not None and [e.address for e in desired.endpoints] == ["10.0.0.2"]


def test_ignored_objects() -> None:
    index = KubeIndex("cluster.local")
    index.apply("services", "ADDED", service("ext", type="ExternalName"))
    assert index.desired("ns.ext") is None
    index.apply("services", "ADDED", service(ports=[{"name": "dns", "port": 53, "protocol": "UDP"}]))
    index.apply("endpointslices", "ADDED", endpoint_slice("f", [endpoint("10.0.0.1", None)], family="FQDN"))
    desired = index.desired("ns.web")
    assert desired is not None and desired.ports == () and desired.endpoints == ()


def test_reflector_lists_watches_resumes_relists_and_backs_off() -> None:
    core = ReflectorCore(Backoff(1.0, 4.0, jitter=lambda: 0.0))
    assert core.start() == List()
    assert core.listed("100") == Watch("100")
    core.seen("105")
    core.seen(None)
    assert core.watch_ended() == Watch("105")
    assert core.failed() == Wait(0.5)
    assert core.failed() == Wait(1.0)
    assert core.failed() == Wait(2.0)
    assert core.failed() == Wait(2.0)
    assert core.resume() == Watch("105")
    core.seen("106")  # progress resets the backoff
    assert core.failed() == Wait(0.5)
    assert core.gone() == List()
    assert core.resume() == List()


@pytest.mark.parametrize(
    ("kind", "obj"),
    [
        ("services", service(ports=["http"])),  # type: ignore[list-item]
        ("services", service(ports=[{"name": "http", "port": 0}])),
        ("services", service(ports=[{"name": "http", "port": "eighty"}])),
        ("services", {"metadata": ["web"], "spec": {}}),
        ("services", {"metadata": {"namespace": "ns"}}),
        ("endpointslices", {**endpoint_slice("s", []), "endpoints": [["10.0.0.1"]]}),
        ("endpointslices", {**endpoint_slice("s", []), "ports": [{"port": 70000}]}),
        ("pods", {**pod("p1"), "spec": {"containers": "tether-proxy"}}),
        ("pods", {**pod("p1"), "metadata": {"name": "p1", "ownerReferences": {"kind": "ReplicaSet"}}}),
    ],
)
def test_objects_of_the_wrong_shape_are_rejected_and_change_nothing(kind: str, obj: dict[str, Any]) -> None:
    index = KubeIndex("cluster.local")
    index.apply("services", "ADDED", service())
    index.apply("endpointslices", "ADDED", endpoint_slice("s", [endpoint("10.0.0.1", "p1")]))
    index.apply("pods", "ADDED", pod("p1"))
    before = index.desired("ns.web")
    with pytest.raises(MalformedObject):
        index.apply(kind, "MODIFIED", obj)  # type: ignore[arg-type]
    assert index.desired("ns.web") == before


def test_a_malformed_object_in_a_relist_is_skipped_and_the_rest_applies() -> None:
    index = KubeIndex("cluster.local")
    index.apply("services", "ADDED", service())
    changed, rejected = index.replace(
        "services", [service(), service("api", ports=[{"port": -5}]), {"metadata": 3}, service("db")]
    )
    assert index.keys() == {"ns.web", "ns.db"}
    assert changed == {"ns.db"}
    assert len(rejected) == 2 and any("ns/api" in problem for problem in rejected)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "FD00:0::10"]}, ("10.96.0.10", "fd00::10")),
        ({"clusterIP": "10.96.0.10"}, ("10.96.0.10",)),  # an API server from before dual-stack
        ({"clusterIP": "None", "clusterIPs": ["None"]}, ()),  # headless
        ({"clusterIP": ""}, ()),
        ({"clusterIPs": [], "clusterIP": "10.96.0.12"}, ("10.96.0.12",)),
        ({}, ()),
    ],
)
def test_virtual_addresses_come_from_cluster_ips(spec: dict[str, Any], expected: tuple[str, ...]) -> None:
    index = KubeIndex("cluster.local")
    index.apply("services", "ADDED", service(**spec))
    desired = index.desired("ns.web")
    assert desired is not None and desired.addresses == expected


def test_a_cluster_ip_change_changes_the_service() -> None:
    index = KubeIndex("cluster.local")
    index.apply("services", "ADDED", service(clusterIP="10.96.0.10"))
    assert index.apply("services", "MODIFIED", service(clusterIP="10.96.0.10")) == set()
    assert index.apply("services", "MODIFIED", service(clusterIP="10.96.0.11")) == {"ns.web"}
    desired = index.desired("ns.web")
    assert desired is not None and desired.addresses == ("10.96.0.11",)


def annotated(obj: dict[str, Any], value: str) -> dict[str, Any]:
    obj["metadata"]["annotations"] = {"tether.io/opaque-ports": value, "other": "x"}
    return obj


def test_opaque_ports_annotations_on_the_service_and_the_pod() -> None:
    index = KubeIndex("cluster.local")
    ports = [{"name": "redis", "port": 6379}, {"name": "http", "port": 80}, {"name": "db", "port": 5432}]
    index.apply("services", "ADDED", annotated(service(ports=ports), "6379, 5000-5500"))
    index.apply("endpointslices", "ADDED", endpoint_slice("s", [endpoint("10.0.0.1", "p1")]))
    index.apply("pods", "ADDED", annotated(pod("p1"), "25,4000-4100,4101,9000-9001,9000"))
    desired = index.desired("ns.web")
    assert desired is not None
    assert [(p.port, p.opaque) for p in desired.ports] == [(80, False), (5432, True), (6379, True)]
    (ep,) = desired.endpoints
    assert ep.opaque_ports == ((25, 25), (4000, 4101), (9000, 9001))  # merged, as stored
    assert index.take_warnings() == []
    assert index.apply("pods", "MODIFIED", pod("p1")) == {"ns.web"}  # annotation removed
    desired = index.desired("ns.web")
    assert desired is not None and desired.endpoints[0].opaque_ports == ()


@pytest.mark.parametrize(
    "value", ["http", "80,", "0", "65536", "100-90", "1-2-3", "-5", "4000 - x", "8" * 5000]
)
def test_a_bad_opaque_ports_annotation_is_ignored_and_reported_once(value: str) -> None:
    index = KubeIndex("cluster.local")
    index.apply("services", "ADDED", annotated(service(), value))
    index.apply("endpointslices", "ADDED", endpoint_slice("s", [endpoint("10.0.0.1", "p1")]))
    index.apply("pods", "ADDED", annotated(pod("p1"), value))
    desired = index.desired("ns.web")
    assert desired is not None
    assert not desired.ports[0].opaque and desired.endpoints[0].opaque_ports == ()
    warnings = index.take_warnings()
    assert [(w.kind, w.namespace, w.name, w.annotation, w.value) for w in warnings] == [
        ("services", "ns", "web", "tether.io/opaque-ports", value),
        ("pods", "ns", "p1", "tether.io/opaque-ports", value),
    ]
    assert all(w.problem for w in warnings)
    # The same value again (a status update, a relist) is not reported again; a new bad value is.
    index.apply("pods", "MODIFIED", annotated(pod("p1", sa="other"), value))
    index.replace("services", [annotated(service(), value)])
    assert index.take_warnings() == []
    index.apply("pods", "MODIFIED", annotated(pod("p1"), value + "x"))
    assert [w.name for w in index.take_warnings()] == ["p1"]
    # Fixed, then broken again: reported again.
    index.apply("pods", "MODIFIED", annotated(pod("p1"), "80"))
    index.apply("pods", "MODIFIED", annotated(pod("p1"), value))
    assert [w.name for w in index.take_warnings()] == ["p1"]


def test_an_empty_opaque_ports_annotation_means_none() -> None:
    index = KubeIndex("cluster.local")
    index.apply("services", "ADDED", annotated(service(), " "))
    desired = index.desired("ns.web")
    assert desired is not None and not desired.ports[0].opaque
    assert index.take_warnings() == []
