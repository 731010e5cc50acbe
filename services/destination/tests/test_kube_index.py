"""Kubernetes objects (the API's JSON) to desired endpoint sets, event by event."""

from __future__ import annotations

from typing import Any

from tether.destination.model import Workload
from tether.destination.sources.kube_index import KubeIndex
from tether.destination.sources.reflector import Backoff, List, ReflectorCore, Watch


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
    changed = index.replace("services", [service()])
    assert changed == {"ns.gone"}
    assert index.keys() == {"ns.web"}
    index.apply("endpointslices", "ADDED", endpoint_slice("a", [endpoint("10.0.0.1", None)]))
    assert index.replace("endpointslices", [endpoint_slice("b", [endpoint("10.0.0.2", None)])]) == {"ns.web"}
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
    core = ReflectorCore(initial_backoff=0.5, max_backoff=2.0)
    assert core.start() == List()
    assert core.listed("100") == Watch("100")
    core.seen("105")
    core.seen(None)
    assert core.watch_ended() == Watch("105")
    assert core.failed() == Backoff(0.5)
    assert core.failed() == Backoff(1.0)
    assert core.failed() == Backoff(2.0)
    assert core.failed() == Backoff(2.0)
    assert core.resume() == Watch("105")
    core.seen("106")  # progress resets the backoff
    assert core.failed() == Backoff(0.5)
    assert core.gone() == List()
    assert core.resume() == List()
