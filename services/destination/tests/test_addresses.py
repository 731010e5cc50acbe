"""``IP:port`` authorities against the store: virtual addresses, pod addresses, opaque ports, updates."""

from __future__ import annotations

import msgspec
import pytest

from tether.destination.model import Endpoint, EndpointSet, ServicePort, Workload, encode
from tether.destination.state import Applied, EndpointStore, SubscriptionRegistry
from tether.destination.view import NOT_IN_MESH, Resolution, project, project_address

IDENTITY = "redis.ns.serviceaccount.identity.cluster.local"


def redis(
    *addresses: str,
    vips: tuple[str, ...] = ("10.96.0.10", "fd00::10"),
    service: str = "redis",
    opaque: bool = True,
    ready: bool = True,
) -> EndpointSet:
    return EndpointSet(
        namespace="ns",
        service=service,
        generation=1,
        ports=(ServicePort(name="redis", port=6379, opaque=opaque), ServicePort(name="http", port=80)),
        endpoints=tuple(
            Endpoint(
                address=a,
                ports={"redis": 7000, "http": 8080},
                identity=IDENTITY,
                protocol_hint="h2",
                pod=f"redis-{i}",
                workload=Workload("statefulset", "redis"),
                serviceaccount="redis",
                ready=ready,
                opaque_ports=((9000, 9100),),
            )
            for i, a in enumerate(addresses)
        ),
        addresses=vips,
    )


def resolve(store: EndpointStore, ip: str, port: int) -> Resolution:
    return project_address(ip, port, *store.by_address(ip))


def stored(*sets: EndpointSet) -> EndpointStore:
    store = EndpointStore()
    for revision, value in enumerate(sets, start=1):
        store.apply(value.key, revision, encode(value))
    return store


def test_a_virtual_address_resolves_like_the_service_name() -> None:
    value = redis("10.0.0.1", "10.0.0.2")
    store = stored(value)
    for vip in ("10.96.0.10", "fd00::10"):
        assert resolve(store, vip, 6379) == project(value, 6379)
        assert resolve(store, vip, 80) == project(value, 80)
        assert resolve(store, vip, 1234) == NOT_IN_MESH  # a port the service lacks, as for its name
    addrs = resolve(store, "10.96.0.10", 6379).addrs
    assert sorted(addrs) == [("10.0.0.1", 7000), ("10.0.0.2", 7000)]
    assert all(a.opaque and a.identity == IDENTITY for a in addrs.values())
    assert not any(a.opaque for a in resolve(store, "10.96.0.10", 80).addrs.values())


def test_opaque_comes_from_the_service_port_or_the_endpoints_own_ports() -> None:
    value = redis("10.0.0.1", opaque=False)
    assert not project(value, 6379).addrs[("10.0.0.1", 7000)].opaque
    pod_marked = msgspec.structs.replace(
        value, endpoints=(msgspec.structs.replace(value.endpoints[0], opaque_ports=((7000, 7000),)),)
    )
    assert project(pod_marked, 6379).addrs[("10.0.0.1", 7000)].opaque


def test_a_pod_address_resolves_to_that_endpoint_on_any_port() -> None:
    store = stored(redis("10.0.0.1", "10.0.0.2"))
    resolution = resolve(store, "10.0.0.2", 7000)
    assert resolution.exists
    (addr,) = resolution.addrs.values()
    assert (addr.ip, addr.port, addr.identity, addr.h2, addr.opaque) == (
        "10.0.0.2",
        7000,
        IDENTITY,
        True,
        True,
    )
    # A pod may back several services: its labels name it, not one of them.
    assert dict(addr.labels) == {
        "namespace": "ns",
        "pod": "redis-1",
        "statefulset": "redis",
        "serviceaccount": "redis",
    }
    assert resolution.set_labels == (("namespace", "ns"),)
    # Its proxy intercepts every port: one no service names is still that pod, with its identity.
    (other,) = resolve(store, "10.0.0.2", 5555).addrs.values()
    assert (other.port, other.identity, other.opaque) == (5555, IDENTITY, False)
    (annotated,) = resolve(store, "10.0.0.2", 9050).addrs.values()
    assert annotated.opaque  # within the endpoint's own opaque range
    assert not resolve(store, "10.0.0.2", 8080).addrs[("10.0.0.2", 8080)].opaque


def test_a_pod_address_that_is_not_ready_still_resolves_and_unknown_addresses_do_not() -> None:
    store = stored(redis("10.0.0.1", ready=False))
    assert set(resolve(store, "10.0.0.1", 7000).addrs) == {("10.0.0.1", 7000)}
    assert resolve(store, "10.0.0.9", 7000) == NOT_IN_MESH
    assert resolve(store, "fd00::99", 7000) == NOT_IN_MESH


def test_an_address_in_several_services_prefers_a_ready_record_and_merges_opaque_ports() -> None:
    first = redis("10.0.0.1", vips=(), service="a", ready=False, opaque=False)
    second = msgspec.structs.replace(redis("10.0.0.1", vips=(), service="b"), endpoints=())
    second = msgspec.structs.replace(
        second,
        endpoints=(Endpoint(address="10.0.0.1", ports={"redis": 7000}, pod="other", labels={"zone": "z"}),),
    )
    store = stored(first, second)
    (addr,) = resolve(store, "10.0.0.1", 7000).addrs.values()
    assert dict(addr.labels)["pod"] == "other"  # b's record is the ready one
    assert addr.identity is None
    assert addr.opaque  # b's port 6379 maps to 7000 on it and is opaque


def test_registry_offers_address_streams_what_changed_and_only_that() -> None:
    store = EndpointStore()
    registry = SubscriptionRegistry(store)
    vip: list[Resolution] = []
    pod: list[Resolution] = []
    assert registry.subscribe_address("10.96.0.10", 6379, vip.append) == NOT_IN_MESH
    assert registry.subscribe_address("10.0.0.3", 7000, pod.append) == NOT_IN_MESH

    def apply(revision: int, value: EndpointSet | None, key: str = "ns.redis") -> int:
        result = store.apply(key, revision, encode(value) if value is not None else None)
        assert isinstance(result, Applied)
        return registry.publish(key, result.addresses)

    assert apply(1, redis("10.0.0.1")) == 1  # the address stream; the pod address is not in it yet
    assert set(vip[-1].addrs) == {("10.0.0.1", 7000)} and not pod
    assert apply(2, redis("10.0.0.1", "10.0.0.3")) == 2
    assert set(vip[-1].addrs) == {("10.0.0.1", 7000), ("10.0.0.3", 7000)}
    assert set(pod[-1].addrs) == {("10.0.0.3", 7000)}
    assert apply(3, redis("10.0.0.1"), key="ns.redis") == 2  # the pod left: its stream hears it
    assert pod[-1] == NOT_IN_MESH
    assert apply(1, redis("10.0.0.5", vips=(), service="other"), key="ns.other") == 0  # unrelated
    assert apply(4, redis("10.0.0.1", vips=("10.96.0.11",))) == 1  # the address moved away
    assert vip[-1] == NOT_IN_MESH
    assert apply(5, None) == 0
    registry.unsubscribe_address("10.96.0.10", 6379, vip.append)
    registry.unsubscribe_address("10.0.0.3", 7000, pod.append)
    assert len(registry) == 0


def test_deleting_a_service_tells_its_address_streams() -> None:
    store = stored(redis("10.0.0.1"))
    registry = SubscriptionRegistry(store)
    seen: list[Resolution] = []
    assert registry.subscribe_address("fd00::10", 6379, seen.append).exists
    result = store.apply("ns.redis", 2, None)
    assert isinstance(result, Applied)
    assert registry.publish("ns.redis", result.addresses) == 1
    assert seen == [NOT_IN_MESH]
    assert registry.publish_all() == 1


@pytest.mark.parametrize(
    "addresses",
    [["10.96.0.010"], ["FD00::10"], ["10.96.0.11", "10.96.0.10"], ["10.96.0.10", "10.96.0.10"], ["web"]],
)
def test_stored_service_addresses_must_be_canonical_sorted_and_unique(addresses: list[str]) -> None:
    good = encode(redis("10.0.0.1"))
    data = good.replace(
        b'"addresses":["10.96.0.10","fd00::10"]', b'"addresses":' + msgspec.json.encode(addresses)
    )
    assert data != good
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(data, type=EndpointSet)


def test_values_written_before_addresses_and_opaque_existed_still_decode() -> None:
    old = (
        b'{"schema_version":1,"namespace":"ns","service":"web","generation":3,'
        b'"ports":[{"name":"http","port":80}],'
        b'"endpoints":[{"address":"10.0.0.1","ports":{"http":8080},"protocol_hint":"h2"}],'
        b'"writer":"r","written_at":1.0}'
    )
    value = msgspec.json.decode(old, type=EndpointSet)
    assert value.addresses == () and value.ports[0].opaque is False and value.endpoints[0].opaque_ports == ()
    assert not project(value, 80).addrs[("10.0.0.1", 8080)].opaque
