"""Acceptance: values that decode but mean nothing are rejected, counted and skipped, never served.

Three ways in, each against real replica processes and a real nats-server:

* the bucket: endpoint sets that are valid JSON of the right shape but break a constraint (an address that
  is not an IP literal, a negative port, a namespace with capitals, 100 labels...), written with ``put_raw``;
* the Kubernetes API (emulated): objects of the wrong shape in list responses and watch events;
* registrations over NATS: too many labels, oversized values, another namespace's identity, more instances
  than ``--max-registrations``.

Each time the last good state stays served to open and new streams, and the garbage is logged and counted.
"""

from __future__ import annotations

import copy
import json
import signal
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tether.destination.model import EndpointsChanged, EndpointSet, WorkloadRegistration
from tether.shared import subjects
from tether.shared.bus import Bus, KeyValue
from tether.shared.testing import eventually

from .conftest import Client, Mesh, Replica, env_for, http_get, two_replicas, write_registry
from .test_kubernetes_source import Deployment, FakeKubeApi, bucket_view

GOOD = {"10.0.0.1", "10.0.0.2"}


async def metric(replica: Replica, name: str, **labels: str) -> float:
    """The sum of the replica's samples called ``name`` whose labels include ``labels``."""
    _, body = await http_get(replica.admin_port, "/metrics")
    total = 0.0
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def metric_is(replica: Replica, name: str, expected: float, **labels: str) -> bool:
    return await metric(replica, name, **labels) == expected


def described(replica: Replica, what: str) -> str:
    return f"{replica.name} {what}: {replica.logs()[-3000:]}"


def no_value_errors(replica: Replica) -> None:
    logs = replica.logs()
    assert "ValueError" not in logs and "Traceback" not in logs, logs[-3000:]
    assert "unexpected_error" not in logs and "task_failed" not in logs, logs[-3000:]


def rejected_revisions(replica: Replica, key: str) -> set[int]:
    revisions = set()
    for line in replica.logs().splitlines():
        if '"endpoint_value_rejected"' in line:
            record = json.loads(line)
            if record["key"] == key:
                assert record["level"] == "error", record
                revisions.add(int(record["revision"]))
    return revisions


def untouched(clients: list[Client], expected: set[str]) -> None:
    for client in clients:
        assert client.log == [("add", tuple(sorted(expected)))], client.log
        assert client.error is None and not client.done and client.first_messages == 1


def garbage_variants(good: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The good endpoint set with one meaningless-but-decodable change each."""

    def variant(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        value = copy.deepcopy(good)
        change(value)
        return value

    def endpoint(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda v: v["endpoints"][0].__setitem__(field, value)

    return {
        "address not an IP": variant(endpoint("address", "not-an-ip")),
        "address not canonical": variant(endpoint("address", "FD00:0::1")),
        "negative endpoint port": variant(endpoint("ports", {"http": -5})),
        "service port out of range": variant(lambda v: v["ports"][0].__setitem__("port", 70000)),
        "namespace with capitals": variant(lambda v: v.__setitem__("namespace", "Shop")),
        "100 labels": variant(endpoint("labels", {f"label_{i}": "x" for i in range(100)})),
        "label name not a label": variant(endpoint("labels", {"no spaces please": "x"})),
        "unknown protocol hint": variant(endpoint("protocol_hint", "h3")),
        "negative generation": variant(lambda v: v.__setitem__("generation", -1)),
        "value of another key": variant(lambda v: v.__setitem__("service", "api")),
    }


async def leader_rewrote(kv: KeyValue, key: str, after: int, writer: str) -> bool:
    """The key's latest value is a good set with the original endpoints, written after ``after``."""
    revision, data = await kv.latest(key)
    if revision <= after or data is None:
        return False
    value = msgspec.json.decode(data, type=EndpointSet)
    return {e.address for e in value.endpoints} == GOOD and value.writer == writer


def instance_of(replica: Replica) -> str:
    line = next(x for x in replica.logs().splitlines() if '"service_started"' in x)
    return str(json.loads(line)["instance"])


async def test_meaningless_bucket_values_are_skipped_and_rewritten(mesh: Mesh, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    write_registry(registry, sorted(GOOD))
    await two_replicas(mesh, registry)
    leader = await mesh.leader()
    follower = next(r for r in mesh.replicas if r is not leader)
    leader_instance = instance_of(leader)
    clients = [mesh.client(replica, "web.shop:80") for replica in mesh.replicas for _ in range(2)]
    await eventually(lambda: all(c.addresses == GOOD for c in clients), what="initial set")

    bus = await Bus.connect(mesh.nats_url, name="test-vandal")
    try:
        kv = await bus.kv(subjects.ENDPOINTS_BUCKET)
        entry = await kv.get("shop.web", msgspec.Raw)
        assert entry is not None and entry.value is not None
        good = json.loads(bytes(entry.value))
        variants = garbage_variants(good)

        # With a leader: every replica skips each value, the leader rewrites the key from its source.
        planted: dict[int, str] = {}
        for what, value in variants.items():
            revision = await kv.put_raw("shop.web", json.dumps(value).encode())
            planted[revision] = what
            await eventually(
                partial(leader_rewrote, kv, "shop.web", revision, leader_instance),
                what=f"the leader rewrites {what!r}: {leader.logs()[-2000:]}",
            )
        for replica in mesh.replicas:
            await eventually(
                partial(metric_is, replica, "tether_destination_watch_rejected_total", len(variants)),
                what=partial(described, replica, "counts every value"),
            )
            assert rejected_revisions(replica, "shop.web") == set(planted), planted
        untouched(clients, GOOD)
        late = [mesh.client(replica, "web.shop:80") for replica in mesh.replicas]
        await eventually(lambda: all(c.addresses == GOOD for c in late), what="new streams get the good set")

        # Without anyone writing (the leader paused), garbage is the latest value and stays so: streams
        # opened now still get the last good set.
        assert leader.process is not None
        leader.process.send_signal(signal.SIGSTOP)
        try:
            revision = await kv.put_raw("shop.web", json.dumps(variants["address not an IP"]).encode())
            await eventually(
                lambda: revision in rejected_revisions(follower, "shop.web"), what="the follower skips it"
            )
            during = [mesh.client(follower, "web.shop:80") for _ in range(2)]
            await eventually(lambda: all(c.addresses == GOOD for c in during), what="streams during garbage")
            assert (await kv.latest("shop.web"))[0] == revision  # nobody rewrote it meanwhile
        finally:
            leader.process.send_signal(signal.SIGCONT)
        await eventually(
            partial(leader_rewrote, kv, "shop.web", revision, leader_instance),
            what=lambda: f"the resumed leader rewrites it: {leader.logs()[-2000:]}",
        )
        untouched(clients, GOOD)

        # The mesh still works: the next change reaches every stream.
        write_registry(registry, ["10.0.0.2", "10.0.0.9"])
        everyone = clients + late + during
        await eventually(
            lambda: all(c.addresses == {"10.0.0.2", "10.0.0.9"} for c in everyone), what="next change"
        )
        for client in everyone:
            assert client.error is None and not client.done
        assert await metric(follower, "tether_bus_decode_errors_total") == 0  # the watch reads raw bytes
    finally:
        await bus.close()
    for replica in mesh.replicas:
        no_value_errors(replica)


# --- Kubernetes objects of the wrong shape ---------------------------------------------------------------


def inject(api: FakeKubeApi, kind: str, event_type: str, obj: Any) -> None:
    """A watch event the fake cannot build itself (its ``put`` needs a metadata mapping)."""
    api.resource_version += 1
    api.history.append((api.resource_version, kind, event_type, obj))
    for queue in api.watches[kind]:
        queue.put_nowait({"type": event_type, "object": obj})


def inject_line(api: FakeKubeApi, kind: str, payload: Any) -> None:
    """A watch line that is JSON but not an event object at all."""
    for queue in api.watches[kind]:
        queue.put_nowait(payload)


def bad_service(name: str, ports: Any) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": "shop"}, "spec": {"ports": ports}}


@pytest.fixture
async def kube_api() -> AsyncIterator[FakeKubeApi]:
    api = FakeKubeApi()
    await api.start()
    yield api
    await api.stop()


async def rejected_kube(replica: Replica, kind: str) -> float:
    return await metric(replica, "tether_destination_source_rejected_total", source="kubernetes", kind=kind)


async def test_kubernetes_objects_of_the_wrong_shape_are_rejected(mesh: Mesh, kube_api: FakeKubeApi) -> None:
    web = Deployment(kube_api)
    web.scale(2)
    # In the first list: objects the source can make nothing of.
    kube_api.objects["services"][("shop", "zz-metadata-list")] = {"kind": "Service", "metadata": ["shop"]}
    kube_api.put("services", bad_service("api", ["http", 80]))  # port entries that are not objects
    kube_api.put("services", bad_service("big", [{"name": "http", "port": 70000}]))
    kube_api.put(
        "endpointslices",
        {
            "kind": "EndpointSlice",
            "metadata": {
                "name": "api-x",
                "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "api"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 0}],
            "endpoints": [{"addresses": ["10.1.0.1"]}],
        },
    )
    kube_api.objects["pods"][("shop", "zz-pod")] = {"kind": "Pod", "metadata": [], "spec": {}}

    replica = mesh.replica(
        TETHER_DESTINATION_SOURCE="kubernetes",
        TETHER_DESTINATION_KUBE_API_URL=f"http://127.0.0.1:{kube_api.port}",
    )
    await replica.wait_ready()
    bus = await Bus.connect(mesh.nats_url, name="test-kube-garbage")
    try:
        kv = await bus.kv(subjects.ENDPOINTS_BUCKET)

        async def converged() -> bool:
            return await bucket_view(kv, "shop.web") == web.expected()

        await eventually(converged, what=lambda: f"the source syncs despite the garbage: {replica.logs()}")
        assert '"kube_synced"' in replica.logs()
        for key in ("shop.api", "shop.big", "shop.zz-metadata-list"):
            assert await kv.get(key, msgspec.Raw) is None, key
        listed = {kind: await rejected_kube(replica, kind) for kind in ("services", "endpointslices", "pods")}
        assert listed == {"services": 3, "endpointslices": 1, "pods": 1}, listed
        client = mesh.client(replica, "web.shop.svc.cluster.local:80")
        served = {pod.ip for pod in web.pods.values()}
        await eventually(lambda: client.addresses == served, what="the good service is served")
        entry = await kv.get("shop.web", msgspec.Raw)
        assert entry is not None
        before = entry.revision

        # In watch events: new versions of good objects, each of the wrong shape, are rejected and the
        # previous version kept; the bucket is not rewritten.
        await eventually(lambda: all(kube_api.watches.values()), what="every resource watched")
        slice_name = f"{web.name}-abcde"
        pod_name = sorted(web.pods)[0]
        kube_api.put("services", bad_service("web", [{"name": "http", "port": 70000}]))
        kube_api.put("services", bad_service("web", "http"))
        inject(kube_api, "services", "MODIFIED", {"kind": "Service", "metadata": [{"name": "web"}]})
        inject(
            kube_api,
            "endpointslices",
            "MODIFIED",
            {
                "kind": "EndpointSlice",
                "metadata": {"name": slice_name, "namespace": "shop"},
                "addressType": "IPv4",
                "ports": ["http"],
                "endpoints": "10.42.0.1",
            },
        )
        inject(kube_api, "pods", "MODIFIED", {"kind": "Pod", "metadata": ["shop", pod_name]})
        inject(kube_api, "pods", "MODIFIED", ["not", "an", "object"])
        inject_line(kube_api, "endpointslices", ["not", "an", "event"])
        expected = {"services": 6, "endpointslices": 2, "pods": 3}

        async def counted() -> bool:
            return {kind: await rejected_kube(replica, kind) for kind in expected} == expected

        await eventually(counted, what=lambda: f"every watched object counted: {replica.logs()[-4000:]}")
        rejected_lines = [json.loads(x) for x in replica.logs().splitlines() if '"kube_object_rejected"' in x]
        assert len(rejected_lines) == sum(expected.values())
        assert all(x["level"] == "error" and x["keeping"] == "previous version" for x in rejected_lines)

        # The source keeps watching: a good change after the garbage still arrives, on every resource.
        kube_api.put(
            "services",
            {
                "kind": "Service",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
            },
        )
        web.scale(3)
        await eventually(converged, what=lambda: f"a good change after the garbage: {replica.logs()[-4000:]}")
        await eventually(
            lambda: client.addresses == {pod.ip for pod in web.pods.values()}, what="served after garbage"
        )
        assert client.log[0] == ("add", tuple(sorted(served)))
        assert all(kind == "add" for kind, _ in client.log), client.log  # the garbage removed nothing
        entry = await kv.get("shop.web", msgspec.Raw)
        assert entry is not None and entry.revision > before
        assert await counted()  # nothing was counted twice (no relist, no replayed watch)
    finally:
        await bus.close()
    logs = replica.logs()
    assert "kube_watch_failed" not in logs, logs[-4000:]
    assert '"kube_watch_unknown_event"' in logs
    no_value_errors(replica)


# --- registrations over NATS -------------------------------------------------------------------------------

MAX_REGISTRATIONS = 3


def registration(address: str, instance: str, **fields: Any) -> WorkloadRegistration:
    settings: dict[str, Any] = {"port": 7000, "ttl_seconds": 60.0, **fields}
    return WorkloadRegistration(
        namespace=settings.pop("namespace", "shop"),
        service=settings.pop("service", "web"),
        instance=instance,
        address=address,
        **settings,
    )


async def bucket_addresses(kv: KeyValue, key: str) -> set[str]:
    entry = await kv.get(key, msgspec.Raw)
    if entry is None or entry.value is None:
        return set()
    return {e.address for e in msgspec.json.decode(entry.value, type=EndpointSet).endpoints}


async def test_oversized_and_foreign_registrations_are_refused(mesh: Mesh, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    write_registry(registry, ["10.0.0.1"])
    for _ in range(2):
        mesh.replica(**env_for(registry), TETHER_DESTINATION_MAX_REGISTRATIONS=str(MAX_REGISTRATIONS))
    for replica in mesh.replicas:
        await replica.wait_ready()
    clients = [mesh.client(replica, "web.shop:80") for replica in mesh.replicas]
    await eventually(lambda: all(c.addresses == {"10.0.0.1"} for c in clients), what="initial set")

    bus = await Bus.connect(mesh.nats_url, name="test-registrar")
    added: set[str] = set()

    async def on_event(event: EndpointsChanged, _subject: str) -> None:
        added.update(e.address for e in event.added)

    await bus.subscribe(subjects.endpoints("shop", "web"), EndpointsChanged, on_event)
    await bus.flush()
    try:
        kv = await bus.kv(subjects.ENDPOINTS_BUCKET)
        undecodable = [
            registration("10.0.0.90", "many-labels", labels={f"l{i}": "v" for i in range(17)}),
            registration("10.0.0.91", "huge-label", labels={"team": "x" * 10_000}),
        ]
        foreign = [
            registration("10.0.0.92", "foreign", identity="web.other.serviceaccount.identity.cluster.local")
        ]
        valid = [registration(f"10.0.0.5{i}", f"local-web-{i}") for i in range(1, MAX_REGISTRATIONS + 1)]
        over_cap = registration("10.0.0.60", "one-too-many")
        for reg in [*undecodable, *foreign, *valid]:
            await bus.publish(subjects.REGISTRY_REGISTER, reg)
        valid_addresses = {reg.address for reg in valid}
        await eventually(
            lambda: all(c.addresses == {"10.0.0.1", *valid_addresses} for c in clients), what="valid ones"
        )
        await bus.publish(subjects.REGISTRY_REGISTER, over_cap)

        decode_errors = partial(
            metric_is,
            expected=len(undecodable),
            name="tether_bus_decode_errors_total",
            subject=subjects.REGISTRY_REGISTER,
            reason="invalid_data",
        )
        refused = partial(
            metric_is,
            expected=len(foreign) + 1,
            name="tether_destination_source_rejected_total",
            source="local",
            kind="registration",
        )
        for replica in mesh.replicas:
            await eventually(partial(decode_errors, replica), what=f"{replica.name} counts undecodable ones")
            await eventually(partial(refused, replica), what=f"{replica.name} counts refused ones")
            logs = replica.logs()
            assert logs.count('"bus_decode_failed"') == len(undecodable), logs[-3000:]
            assert logs.count('"registration_rejected"') == len(foreign) + 1, logs[-3000:]
            assert "limit of 3 registrations" in logs and "not of the service's namespace" in logs

        # Valid registrations still work: a heartbeat keeps one, a freed slot takes a new instance.
        await bus.publish(subjects.REGISTRY_REGISTER, valid[0])
        deregistered = valid[-1]
        await bus.publish(
            subjects.REGISTRY_REGISTER,
            registration(deregistered.address, deregistered.instance, deregister=True),
        )
        await bus.publish(subjects.REGISTRY_REGISTER, over_cap)
        final = {"10.0.0.1", *(valid_addresses - {deregistered.address}), over_cap.address}
        await eventually(lambda: all(c.addresses == final for c in clients), what="a freed slot is reused")
        assert await bucket_addresses(kv, "shop.web") == final
        refused_addresses = {reg.address for reg in [*undecodable, *foreign]}
        assert not added & refused_addresses, added  # never written: no write published them
        for client in clients:
            assert client.error is None and not client.done
            assert not any(set(addresses) & refused_addresses for _, addresses in client.log), client.log
    finally:
        await bus.close()
    for replica in mesh.replicas:
        assert "Traceback" not in replica.logs()
