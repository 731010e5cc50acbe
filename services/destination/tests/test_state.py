"""The bucket view and the subscription registry, entry by entry."""

from __future__ import annotations

from tether.destination.model import Endpoint, EndpointSet, ServicePort, encode
from tether.destination.state import Applied, EndpointStore, Ignored, Rejected, SubscriptionRegistry
from tether.destination.view import Resolution


def value(*addresses: str, service: str = "web", generation: int = 1) -> bytes:
    return encode(
        EndpointSet(
            namespace="ns",
            service=service,
            generation=generation,
            ports=(ServicePort(port=80),),
            endpoints=tuple(Endpoint(address=a, ports={"": 8080}) for a in addresses),
        )
    )


def test_apply_put_delete_and_stale_revisions() -> None:
    store = EndpointStore()
    assert isinstance(store.apply("ns.web", 1, value("10.0.0.1")), Applied)
    assert store.apply("ns.web", 1, value("10.0.0.2")) == Ignored("ns.web")  # replayed revision
    assert store.apply("ns.web", 2, value("10.0.0.1", generation=2)) == Ignored("ns.web")  # same content
    assert store.revision("ns.web") == 2
    result = store.apply("ns.web", 3, None)
    assert result == Applied("ns.web", None, frozenset({"10.0.0.1"}))  # its addresses may resolve anew
    assert store.get("ns.web") is None
    assert store.is_deleted("ns.web")
    assert store.apply("ns.other", 4, None) == Ignored("ns.other")


def test_garbage_is_rejected_and_previous_value_stays() -> None:
    store = EndpointStore()
    store.apply("ns.web", 1, value("10.0.0.1"))
    for revision, garbage in enumerate([b"{not json", b'{"namespace": 7}', b"[]"], start=2):
        result = store.apply("ns.web", revision, garbage)
        assert isinstance(result, Rejected)
        stored = store.get("ns.web")
        assert stored is not None and stored.endpoints[0].address == "10.0.0.1"
    assert store.revision("ns.web") == 4


def test_value_for_another_key_is_rejected() -> None:
    store = EndpointStore()
    result = store.apply("ns.web", 1, value("10.0.0.1", service="api"))
    assert isinstance(result, Rejected)
    assert "ns.api" in result.reason


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    data = value("10.0.0.1").replace(b'"namespace"', b'"future":{"x":1},"namespace"')
    assert isinstance(EndpointStore().apply("ns.web", 1, data), Applied)


def test_registry_projects_once_per_port_and_offers_to_each_subscriber() -> None:
    store = EndpointStore()
    registry = SubscriptionRegistry(store)
    seen: dict[str, list[Resolution]] = {"a": [], "b": [], "c": []}
    first = registry.subscribe("ns.web", 80, seen["a"].append)
    assert not first.exists
    registry.subscribe("ns.web", 80, seen["b"].append)
    registry.subscribe("ns.web", 81, seen["c"].append)
    assert len(registry) == 3
    store.apply("ns.web", 1, value("10.0.0.1"))
    assert registry.publish("ns.web") == 3
    assert seen["a"][0] is seen["b"][0]  # the same projection object, computed once
    assert list(seen["a"][0].addrs) == [("10.0.0.1", 8080)]
    assert not seen["c"][0].exists  # the service has no port 81
    registry.unsubscribe("ns.web", 80, seen["a"].append)
    registry.unsubscribe("ns.web", 80, seen["a"].append)  # idempotent
    assert registry.publish("ns.web") == 2
    assert registry.publish("ns.none") == 0
    assert len(registry) == 2
