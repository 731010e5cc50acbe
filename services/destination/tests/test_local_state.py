"""The local source's core: file services merged with heartbeat-kept registrations, time passed in."""

from __future__ import annotations

from typing import TypedDict, Unpack

import msgspec
import pytest

from tether.destination.errors import RegistryFileError
from tether.destination.model import EndpointSet, WorkloadRegistration
from tether.destination.sources.local import LocalState
from tether.destination.sources.registrations import InvalidRegistration

FILE = """\
services:
  - namespace: ns
    name: web
    ports: [{name: http, port: 80, target_port: 8080}]
    endpoints:
      - address: 10.0.0.1
"""


class OptionalRegistrationFields(TypedDict, total=False):
    identity: str | None
    labels: dict[str, str]
    deregister: bool
    service_port: int | None


def reg(
    instance: str, address: str, service: str = "web", **extra: Unpack[OptionalRegistrationFields]
) -> WorkloadRegistration:
    return WorkloadRegistration(
        namespace="ns",
        service=service,
        instance=instance,
        address=address,
        port=9000,
        ttl_seconds=5.0,
        **extra,
    )


def addresses(state: LocalState, key: str) -> list[str]:
    desired = state.desired(key)
    return [e.address for e in desired.endpoints] if desired else []


def test_invalid_file_keeps_last_good_services() -> None:
    state = LocalState("cluster.local")
    assert state.load_file(FILE, "r.yaml") == {"ns.web"}
    with pytest.raises(RegistryFileError):
        state.load_file(FILE.replace("10.0.0.1", "10.0.0.300"), "r.yaml")
    assert addresses(state, "ns.web") == ["10.0.0.1"]
    assert state.load_file(FILE, "r.yaml") == set()
    assert state.load_file("", "r.yaml") == {"ns.web"}
    assert state.desired("ns.web") is None


def test_registration_joins_a_declared_service_on_its_ports() -> None:
    state = LocalState("cluster.local")
    state.load_file(FILE, "r.yaml")
    assert state.register(reg("w-1", "10.0.0.2"), now=0.0) == {"ns.web"}
    assert state.register(reg("w-1", "10.0.0.2"), now=2.0) == set()  # heartbeat: no change
    desired = state.desired("ns.web")
    assert desired is not None
    registered = desired.endpoints[1]
    assert (registered.address, registered.ports, registered.origin, registered.instance) == (
        "10.0.0.2",
        {"http": 9000},
        "registration",
        "w-1",
    )
    assert state.expire(6.9) == set()  # the heartbeat at 2.0 extended it to 7.0
    assert state.expire(7.0) == {"ns.web"}
    assert addresses(state, "ns.web") == ["10.0.0.1"]


def test_registration_into_an_undeclared_service_declares_it() -> None:
    state = LocalState("cluster.local")
    state.register(reg("a", "10.0.0.5", service="api"), now=0.0)
    desired = state.desired("ns.api")
    assert desired is not None
    assert [(p.name, p.port) for p in desired.ports] == [("", 9000)]
    assert state.register(reg("a", "10.0.0.5", service="api", deregister=True), now=1.0) == {"ns.api"}
    assert state.desired("ns.api") is None


def test_a_registration_may_give_the_service_it_creates_another_port_than_its_own() -> None:
    """``tether run``: the service keeps the application's port, its endpoint is the proxy's port; a new
    leader adopting it from the bucket keeps both."""
    state = LocalState("cluster.local")
    state.register(reg("a", "127.0.0.1", service="api", service_port=8000), now=0.0)
    desired = state.desired("ns.api")
    assert desired is not None
    assert [(p.name, p.port) for p in desired.ports] == [("", 8000)]
    assert [e.ports for e in desired.endpoints] == [{"": 9000}]
    in_bucket = EndpointSet(
        namespace="ns", service="api", generation=1, ports=desired.ports, endpoints=desired.endpoints
    )
    after = LocalState("cluster.local")
    assert after.adopt([in_bucket], now=100.0, ttl=10.0) == {"ns.api"}
    adopted = after.desired("ns.api")
    assert adopted is not None and adopted.ports == desired.ports and adopted.endpoints == desired.endpoints
    # The workload's next heartbeat is no change.
    assert after.register(reg("a", "127.0.0.1", service="api", service_port=8000), now=101.0) == set()


VALID_REGISTRATION: dict[str, object] = {
    "namespace": "ns",
    "service": "web",
    "instance": "i",
    "address": "10.0.0.1",
    "port": 80,
    "ttl_seconds": 5.0,
}


@pytest.mark.parametrize(
    "bad",
    [
        {"address": "not-an-ip"},
        {"address": "010.0.0.1"},
        {"port": 0},
        {"port": 65536},
        {"ttl_seconds": 0.0},
        {"instance": ""},
        {"namespace": "Bad"},
        {"labels": {f"l{i}": "v" for i in range(17)}},
        {"labels": {"pod": "x" * 129}},
        {"labels": {"not a label": "v"}},
    ],
)
def test_meaningless_registrations_do_not_decode(bad: dict[str, object]) -> None:
    """What arrives over NATS is decoded with every constraint: such a message never reaches the state."""
    fields = {**VALID_REGISTRATION, **bad}
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(fields, type=WorkloadRegistration)


@pytest.mark.parametrize(
    "bad",
    [
        {"identity": "x.ns.serviceaccount.identity.other.org"},
        {"identity": "not-an-identity"},
        # A valid identity of another namespace may not join this namespace's service.
        {"identity": "web.other.serviceaccount.identity.cluster.local"},
    ],
)
def test_invalid_registrations_are_refused(bad: dict[str, object]) -> None:
    fields = {**VALID_REGISTRATION, **bad}
    with pytest.raises(InvalidRegistration):
        LocalState("cluster.local").register(WorkloadRegistration(**fields), now=0.0)  # type: ignore[arg-type]


def test_new_leader_adopts_registrations_from_the_bucket_with_a_fresh_ttl() -> None:
    before = LocalState("cluster.local")
    before.load_file(FILE, "r.yaml")
    before.register(reg("w-1", "10.0.0.2"), now=0.0)
    desired = before.desired("ns.web")
    assert desired is not None
    in_bucket = EndpointSet(
        namespace="ns", service="web", generation=3, ports=desired.ports, endpoints=desired.endpoints
    )

    after = LocalState("cluster.local")
    after.load_file(FILE, "r.yaml")
    assert after.adopt([in_bucket], now=100.0, ttl=10.0) == {"ns.web"}
    assert addresses(after, "ns.web") == ["10.0.0.1", "10.0.0.2"]
    assert after.adopt([in_bucket], now=101.0, ttl=10.0) == set()
    assert after.expire(109.9) == set()
    assert after.expire(110.0) == {"ns.web"}
    assert addresses(after, "ns.web") == ["10.0.0.1"]


def test_registrations_are_capped_in_number() -> None:
    state = LocalState("cluster.local", max_registrations=2)
    state.load_file(FILE, "r.yaml")
    assert state.register(reg("w-1", "10.0.0.2"), now=0.0) == {"ns.web"}
    assert state.register(reg("w-2", "10.0.0.3"), now=0.0) == {"ns.web"}
    with pytest.raises(InvalidRegistration, match="limit of 2"):
        state.register(reg("w-3", "10.0.0.4"), now=0.0)
    assert state.register(reg("w-1", "10.0.0.2"), now=1.0) == set()  # a heartbeat of a known one is fine
    state.register(reg("w-1", "10.0.0.2", deregister=True), now=2.0)
    assert state.register(reg("w-3", "10.0.0.4"), now=3.0) == {"ns.web"}
    assert addresses(state, "ns.web") == ["10.0.0.1", "10.0.0.3", "10.0.0.4"]
