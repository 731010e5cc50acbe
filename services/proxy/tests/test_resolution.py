"""The endpoint set of one authority, built from Destination/Get updates."""

from __future__ import annotations

from tether.proxy.core.resolution import Add, Endpoint, NoEndpoints, Remove, Resolution, Status


def ep(last_octet: int, port: int = 8080, **labels: str) -> Endpoint:
    return Endpoint(address=(f"10.0.0.{last_octet}", port), labels=labels)


def addresses(resolution: Resolution) -> set[tuple[str, int]]:
    return set(resolution.endpoints)


def test_pending_until_the_first_message() -> None:
    resolution = Resolution("web.ns:80")
    assert resolution.status is Status.PENDING and not resolution.usable


def test_add_then_diffs_apply_in_order() -> None:
    resolution = Resolution("web.ns:80")
    resolution.apply(Add([ep(1), ep(2)]), now=0.0)
    assert resolution.status is Status.KNOWN and resolution.usable
    resolution.apply(Add([ep(3)]), now=1.0)
    removed = resolution.apply(Remove([("10.0.0.1", 8080)]), now=2.0)
    assert removed == [("10.0.0.1", 8080)]
    assert addresses(resolution) == {("10.0.0.2", 8080), ("10.0.0.3", 8080)}
    assert len(resolution.balancer) == 2


def test_add_of_a_known_address_replaces_its_metadata() -> None:
    resolution = Resolution("web.ns:80")
    resolution.apply(Add([ep(1, pod="old")]), now=0.0)
    resolution.apply(Add([ep(1, pod="new")]), now=0.0)
    assert resolution.endpoints[("10.0.0.1", 8080)].labels == {"pod": "new"}


def test_empty_add_is_a_keepalive_that_changes_nothing() -> None:
    resolution = Resolution("web.ns:80")
    resolution.apply(Add([ep(1)]), now=0.0)
    assert resolution.apply(Add([]), now=1.0) == []
    assert addresses(resolution) == {("10.0.0.1", 8080)}


def test_first_message_after_a_reconnect_replaces_everything() -> None:
    resolution = Resolution("web.ns:80")
    resolution.apply(Add([ep(1), ep(2)]), now=0.0)
    resolution.stream_restarted()
    # Until the new stream speaks, the last known endpoints stay in use.
    assert resolution.usable and len(resolution.endpoints) == 2
    removed = resolution.apply(Add([ep(2), ep(3)]), now=1.0)
    assert removed == [("10.0.0.1", 8080)]
    assert addresses(resolution) == {("10.0.0.2", 8080), ("10.0.0.3", 8080)}


def test_no_endpoints_distinguishes_unknown_from_empty() -> None:
    unknown = Resolution("db.example.com:5432")
    unknown.apply(NoEndpoints(exists=False), now=0.0)
    assert unknown.status is Status.NOT_IN_MESH and unknown.usable
    empty = Resolution("web.ns:80")
    empty.apply(Add([ep(1)]), now=0.0)
    removed = empty.apply(NoEndpoints(exists=True), now=1.0)
    assert removed == [("10.0.0.1", 8080)]
    assert empty.status is Status.KNOWN and not empty.usable


def test_an_opaque_port_is_kept_with_its_endpoint_and_cleared_by_a_later_add() -> None:
    resolution = Resolution("10.96.0.10:6379")
    resolution.apply(Add([Endpoint(address=("10.0.0.1", 6379), opaque=True)]), now=0.0)
    assert resolution.endpoints[("10.0.0.1", 6379)].opaque
    resolution.apply(Add([Endpoint(address=("10.0.0.1", 6379))]), now=1.0)
    assert not resolution.endpoints[("10.0.0.1", 6379)].opaque
