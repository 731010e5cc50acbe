"""The writer's pure core: desired versus bucket in, expected-revision writes and diff events out."""

from __future__ import annotations

from tether.destination.model import Endpoint, EndpointSet, ServicePort, diff_endpoints
from tether.destination.reconcile import Current, Delete, Put, normalise, plan

PORTS = (ServicePort(name="http", port=80),)


def ep(address: str, ready: bool = True, pod: str | None = None) -> Endpoint:
    return Endpoint(address=address, ports={"http": 8080}, ready=ready, pod=pod)


def stored(*endpoints: Endpoint, generation: int = 1) -> EndpointSet:
    return EndpointSet(namespace="ns", service="web", generation=generation, ports=PORTS, endpoints=endpoints)


def test_new_service_is_created_expecting_no_key() -> None:
    desired = {"ns.web": normalise("ns", "web", PORTS, [ep("10.0.0.2"), ep("10.0.0.1")])}
    (write,) = plan(desired, {}, writer="r1")
    assert isinstance(write, Put)
    assert write.expected_revision is None
    assert write.value.generation == 1
    assert [e.address for e in write.value.endpoints] == ["10.0.0.1", "10.0.0.2"]
    assert write.value.writer == "r1"
    assert [e.address for e in write.event.added] == ["10.0.0.1", "10.0.0.2"]
    assert write.event.removed == ()


def test_unchanged_content_is_not_rewritten() -> None:
    desired = {"ns.web": normalise("ns", "web", PORTS, [ep("10.0.0.1")])}
    current = {"ns.web": Current(revision=7, value=stored(ep("10.0.0.1"), generation=4))}
    assert plan(desired, current, writer="r2") == []


def test_change_expects_the_current_revision_and_bumps_generation() -> None:
    desired = {"ns.web": normalise("ns", "web", PORTS, [ep("10.0.0.2"), ep("10.0.0.3", pod="p3")])}
    current = {"ns.web": Current(revision=7, value=stored(ep("10.0.0.1"), ep("10.0.0.2"), generation=4))}
    (write,) = plan(desired, current, writer="r1")
    assert isinstance(write, Put)
    assert write.expected_revision == 7
    assert write.value.generation == 5 and write.event.generation == 5
    assert [e.address for e in write.event.added] == ["10.0.0.3"]
    assert write.event.removed == ("10.0.0.1",)


def test_garbage_current_is_overwritten_with_a_higher_generation() -> None:
    desired = {"ns.web": normalise("ns", "web", PORTS, [ep("10.0.0.1")])}
    (write,) = plan(desired, {"ns.web": Current(revision=9, value=None, generation=6)}, writer="r1")
    assert isinstance(write, Put)
    assert (write.expected_revision, write.value.generation) == (9, 7)


def test_vanished_service_is_deleted_with_a_removal_event() -> None:
    current = {"ns.web": Current(revision=3, value=stored(ep("10.0.0.1"), ep("10.0.0.2"), generation=2))}
    (write,) = plan({}, current, writer="r1")
    assert isinstance(write, Delete)
    assert write.expected_revision == 3
    assert write.event.deleted and write.event.generation == 3
    assert write.event.removed == ("10.0.0.1", "10.0.0.2")


def test_deleted_key_is_recreated_expecting_the_tombstone_and_not_deleted_twice() -> None:
    tombstone = Current(revision=11, value=None, generation=5, deleted=True)
    assert plan({}, {"ns.web": tombstone}, writer="r1") == []
    desired = {"ns.web": normalise("ns", "web", PORTS, [ep("10.0.0.1")])}
    (write,) = plan(desired, {"ns.web": tombstone}, writer="r1")
    assert isinstance(write, Put)
    assert (write.expected_revision, write.value.generation) == (11, 6)


def test_keys_limit_the_plan() -> None:
    desired = {
        "ns.a": normalise("ns", "a", PORTS, [ep("10.0.0.1")]),
        "ns.b": normalise("ns", "b", PORTS, [ep("10.0.0.2")]),
    }
    assert [w.key for w in plan(desired, {}, writer="r", keys=["ns.b"])] == ["ns.b"]
    assert [w.key for w in plan(desired, {}, writer="r")] == ["ns.a", "ns.b"]


def test_normalise_dedupes_by_address_preferring_ready() -> None:
    desired = normalise("ns", "web", PORTS + PORTS, [ep("10.0.0.1", ready=False), ep("10.0.0.1")])
    assert desired.endpoints == (ep("10.0.0.1"),)
    assert desired.ports == PORTS


def test_diff_endpoints_reports_changed_records_as_added() -> None:
    added, removed = diff_endpoints([ep("10.0.0.1"), ep("10.0.0.2")], [ep("10.0.0.1", ready=False)])
    assert added == (ep("10.0.0.1", ready=False),)
    assert removed == ("10.0.0.2",)
