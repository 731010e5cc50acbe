"""The per-stream protocol, frame by frame: first message, ordered diffs, coalescing, existence changes."""

from __future__ import annotations

from tether.destination.model import Endpoint, EndpointSet, ServicePort, Workload
from tether.destination.view import (
    NOT_IN_MESH,
    AddFrame,
    NoEndpointsFrame,
    RemoveFrame,
    StreamCore,
    project,
)


def endpoint_set(*addresses: str, ready: dict[str, bool] | None = None, generation: int = 1) -> EndpointSet:
    ready = ready or {}
    return EndpointSet(
        namespace="ns",
        service="web",
        generation=generation,
        ports=(ServicePort(name="http", port=80), ServicePort(name="admin", port=9990)),
        endpoints=tuple(
            Endpoint(address=a, ports={"http": 8080}, ready=ready.get(a, True)) for a in sorted(addresses)
        ),
    )


def ips(frame: AddFrame) -> list[str]:
    return [a.ip for a in frame.addrs]


def test_project_maps_service_port_to_target_port_and_labels() -> None:
    value = EndpointSet(
        namespace="ns",
        service="web",
        generation=1,
        ports=(ServicePort(name="http", port=80),),
        endpoints=(
            Endpoint(
                address="10.0.0.1",
                ports={"http": 8080},
                identity="web.ns.serviceaccount.identity.cluster.local",
                protocol_hint="h2",
                pod="web-abc",
                workload=Workload("deployment", "web"),
                serviceaccount="web",
                labels={"zone": "a"},
            ),
        ),
    )
    resolution = project(value, 80)
    assert resolution.exists
    (addr,) = resolution.addrs.values()
    assert (addr.ip, addr.port, addr.identity, addr.h2) == (
        "10.0.0.1",
        8080,
        "web.ns.serviceaccount.identity.cluster.local",
        True,
    )
    assert dict(addr.labels) == {
        "namespace": "ns",
        "service": "web",
        "pod": "web-abc",
        "deployment": "web",
        "serviceaccount": "web",
        "zone": "a",
    }


def test_project_unknown_port_or_service_is_not_in_mesh() -> None:
    assert project(endpoint_set("10.0.0.1"), 81) == NOT_IN_MESH
    assert project(None, 80) == NOT_IN_MESH


def test_project_skips_not_ready_and_endpoints_without_the_port() -> None:
    resolution = project(endpoint_set("10.0.0.1", "10.0.0.2", ready={"10.0.0.2": False}), 80)
    assert list(resolution.addrs) == [("10.0.0.1", 8080)]
    assert project(endpoint_set("10.0.0.1"), 9990).addrs == {}


def test_first_message_is_full_set_then_diffs_in_order() -> None:
    core = StreamCore()
    (first,) = core.frames(project(endpoint_set("10.0.0.1", "10.0.0.2"), 80))
    assert isinstance(first, AddFrame)
    assert ips(first) == ["10.0.0.1", "10.0.0.2"]
    assert dict(first.set_labels) == {"namespace": "ns", "service": "web"}

    (added,) = core.frames(project(endpoint_set("10.0.0.1", "10.0.0.2", "10.0.0.3"), 80))
    assert isinstance(added, AddFrame)
    assert ips(added) == ["10.0.0.3"]

    (removed,) = core.frames(project(endpoint_set("10.0.0.2", "10.0.0.3"), 80))
    assert removed == RemoveFrame((("10.0.0.1", 8080),))

    assert core.frames(project(endpoint_set("10.0.0.2", "10.0.0.3", generation=9), 80)) == []


def test_replacement_sends_add_before_remove() -> None:
    core = StreamCore()
    core.frames(project(endpoint_set("10.0.0.1"), 80))
    frames = core.frames(project(endpoint_set("10.0.0.2"), 80))
    assert [type(f) for f in frames] == [AddFrame, RemoveFrame]


def test_coalescing_many_changes_gives_one_exact_diff() -> None:
    core = StreamCore()
    core.frames(project(endpoint_set("10.0.0.1", "10.0.0.2"), 80))
    # A slow stream only ever sees the latest state: one diff from what it was sent.
    frames = core.frames(project(endpoint_set("10.0.0.2", "10.0.0.9"), 80))
    assert [type(f) for f in frames] == [AddFrame, RemoveFrame]
    assert isinstance(frames[0], AddFrame) and ips(frames[0]) == ["10.0.0.9"]
    assert frames[1] == RemoveFrame((("10.0.0.1", 8080),))


def test_metadata_change_is_an_add_of_the_same_address() -> None:
    core = StreamCore()
    core.frames(project(endpoint_set("10.0.0.1"), 80))
    changed = endpoint_set("10.0.0.1")
    changed = EndpointSet(
        namespace="ns",
        service="web",
        generation=2,
        ports=changed.ports,
        endpoints=(Endpoint(address="10.0.0.1", ports={"http": 8080}, pod="web-1"),),
    )
    (frame,) = core.frames(project(changed, 80))
    assert isinstance(frame, AddFrame)
    assert dict(frame.addrs[0].labels)["pod"] == "web-1"


def test_existence_transitions() -> None:
    core = StreamCore()
    assert core.frames(NOT_IN_MESH) == [NoEndpointsFrame(False)]
    assert core.frames(NOT_IN_MESH) == []
    assert core.frames(project(endpoint_set(), 80)) == [NoEndpointsFrame(True)]
    (frame,) = core.frames(project(endpoint_set("10.0.0.1"), 80))
    assert isinstance(frame, AddFrame)
    assert core.frames(project(endpoint_set(), 80)) == [RemoveFrame((("10.0.0.1", 8080),))]
    assert core.frames(project(endpoint_set(), 80)) == []
    core.frames(project(endpoint_set("10.0.0.1"), 80))
    assert core.frames(NOT_IN_MESH) == [NoEndpointsFrame(False)]


def test_first_message_for_an_empty_existing_service() -> None:
    assert StreamCore().frames(project(endpoint_set(), 80)) == [NoEndpointsFrame(True)]
    assert StreamCore().frames(project(endpoint_set("10.0.0.1", ready={"10.0.0.1": False}), 80)) == [
        NoEndpointsFrame(True)
    ]
