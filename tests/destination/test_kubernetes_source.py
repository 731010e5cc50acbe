"""Acceptance: the Kubernetes source against an emulated API server.

No Kubernetes API server can run here, so ``FakeKubeApi`` speaks its wire protocol faithfully for the three
collections the source reads (``/api/v1/services``, ``/apis/discovery.k8s.io/v1/endpointslices``,
``/api/v1/pods``): JSON list responses with ``metadata.resourceVersion`` (and ``limit``/``continue``
paging), chunked watch streams of ``ADDED``/``MODIFIED``/``DELETED``/``BOOKMARK``/``ERROR`` events resumed
from ``resourceVersion`` and ended after ``timeoutSeconds``, ``ERROR`` events with a ``410 Expired`` Status
when a watch's version was compacted away, and ``Status`` bodies (:func:`tether.shared.kube_testing.status`)
for injected HTTP errors. The replica is a real process using the real kubernetes client; the bucket is read
from a real nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import pytest

from tether.destination.model import EndpointSet
from tether.shared import subjects
from tether.shared.bus import Bus, KeyValue
from tether.shared.kube_testing import status
from tether.shared.testing import eventually

from .conftest import Mesh

COLLECTIONS = {
    "/api/v1/services": ("services", "ServiceList", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": (
        "endpointslices",
        "EndpointSliceList",
        "discovery.k8s.io/v1",
    ),
    "/api/v1/pods": ("pods", "PodList", "v1"),
}


class FakeKubeApi:
    def __init__(self) -> None:
        self.resource_version = 100
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            k: {} for k, _, _ in COLLECTIONS.values()
        }
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.compacted = 0
        self.watches: dict[str, set[asyncio.Queue[dict[str, Any] | None]]] = {k: set() for k in self.objects}
        self.deliver_live = True
        self.fail_next: dict[str, int] = {}
        self.requests: list[tuple[str, str, str]] = []  # (collection, "list" | "watch", resourceVersion)
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.end_watches()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    # --- what controllers do ---

    def put(self, kind: str, obj: dict[str, Any]) -> None:
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        event_type = "MODIFIED" if key in self.objects[kind] else "ADDED"
        self._record(kind, event_type, key, obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        obj = self.objects[kind].get((namespace, name))
        if obj is not None:
            self._record(kind, "DELETED", (namespace, name), obj)

    def _record(self, kind: str, event_type: str, key: tuple[str, str], obj: dict[str, Any]) -> None:
        self.resource_version += 1
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        if event_type == "DELETED":
            self.objects[kind].pop(key, None)
        else:
            self.objects[kind][key] = obj
        self.history.append((self.resource_version, kind, event_type, obj))
        if self.deliver_live:
            for queue in self.watches[kind]:
                queue.put_nowait({"type": event_type, "object": obj})

    # --- what the API server does on its own ---

    def expire_watches(self) -> None:
        """Compacts history and ends every open watch with ERROR 410, as etcd compaction does."""
        self.compacted = self.resource_version
        self.history.clear()
        gone = status(410, "Expired", f"too old resource version: (compacted at {self.compacted})")
        for queues in self.watches.values():
            for queue in queues:
                queue.put_nowait({"type": "ERROR", "object": gone})
                queue.put_nowait(None)

    def end_watches(self) -> None:
        for queues in self.watches.values():
            for queue in queues:
                queue.put_nowait(None)

    def bookmark(self) -> None:
        for kind, queues in self.watches.items():
            for queue in queues:
                bookmark_kind = {"services": "Service", "endpointslices": "EndpointSlice", "pods": "Pod"}[
                    kind
                ]
                queue.put_nowait(
                    {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": bookmark_kind,
                            "metadata": {"resourceVersion": str(self.resource_version)},
                        },
                    }
                )

    # --- HTTP ---

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                _method, target, _ = request_line.decode().split(" ", 2)
                url = urlsplit(target)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                keep_open = await self._route(url.path, query, writer)
                if not keep_open:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        reason = {200: "OK", 404: "Not Found", 410: "Gone", 500: "Internal Server Error"}[code]
        head = f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(data)}\r\n\r\n"
        writer.write(head.encode() + data)
        await writer.drain()

    async def _route(self, path: str, query: dict[str, str], writer: asyncio.StreamWriter) -> bool:
        if path not in COLLECTIONS:
            await self._respond(writer, 404, status(404, "NotFound", f"no collection {path}"))
            return True
        kind, list_kind, api_version = COLLECTIONS[path]
        watching = query.get("watch") in ("true", "1", "True")
        self.requests.append((kind, "watch" if watching else "list", query.get("resourceVersion", "")))
        failure = self.fail_next.pop(kind, None)
        if failure is not None:
            await self._respond(writer, failure, status(failure, "InternalError", "injected failure"))
            return True
        if not watching:
            items = [self.objects[kind][k] for k in sorted(self.objects[kind])]
            offset = int(query.get("continue") or 0)
            limit = int(query.get("limit") or 0) or len(items) or 1
            page, rest = items[offset : offset + limit], items[offset + limit :]
            metadata: dict[str, Any] = {"resourceVersion": str(self.resource_version)}
            if rest:
                metadata["continue"] = str(offset + limit)
            await self._respond(
                writer,
                200,
                {"kind": list_kind, "apiVersion": api_version, "metadata": metadata, "items": page},
            )
            return True
        await self._watch(kind, query, writer)
        return False

    async def _watch(self, kind: str, query: dict[str, str], writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
        )

        def chunk(event: dict[str, Any]) -> None:
            data = json.dumps(event).encode() + b"\n"
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        since = int(query.get("resourceVersion") or 0)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        if since < self.compacted:
            chunk({"type": "ERROR", "object": status(410, "Expired", f"too old resource version: {since}")})
        else:
            for revision, event_kind, event_type, obj in self.history:
                if event_kind == kind and revision > since:
                    chunk({"type": event_type, "object": obj})
            self.watches[kind].add(queue)
        try:
            await writer.drain()
            timeout = float(query.get("timeoutSeconds") or 300)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while queue in self.watches[kind]:
                try:
                    event = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
                if event is None:
                    break
                chunk(event)
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            self.watches[kind].discard(queue)


@dataclass
class PodState:
    ip: str
    ready: bool = True
    terminating: bool = False


class Deployment:
    """What the Deployment, ReplicaSet and EndpointSlice controllers would write for one service."""

    def __init__(
        self, api: FakeKubeApi, name: str = "web", namespace: str = "shop", meshed: bool = True
    ) -> None:
        self.api = api
        self.name = name
        self.namespace = namespace
        self.meshed = meshed
        self.pods: dict[str, PodState] = {}
        self._next = 1
        api.put(
            "services",
            {
                "kind": "Service",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
            },
        )

    def _pod(self, pod_name: str) -> dict[str, Any]:
        containers = [{"name": "app", "image": "app"}]
        if self.meshed:
            containers.append({"name": "tether-proxy", "image": "tether/proxy"})
        return {
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": self.namespace,
                "labels": {"app": self.name, "pod-template-hash": "5c9f7b"},
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": f"{self.name}-5c9f7b",
                        "controller": True,
                    }
                ],
            },
            "spec": {"serviceAccountName": self.name, "containers": containers},
        }

    def _sync_slice(self) -> None:
        self.api.put(
            "endpointslices",
            {
                "kind": "EndpointSlice",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {
                    "name": f"{self.name}-abcde",
                    "namespace": self.namespace,
                    "labels": {"kubernetes.io/service-name": self.name},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [
                    {
                        "addresses": [pod.ip],
                        "conditions": {
                            "ready": pod.ready and not pod.terminating,
                            "serving": pod.ready,
                            "terminating": pod.terminating,
                        },
                        "targetRef": {"kind": "Pod", "namespace": self.namespace, "name": name},
                    }
                    for name, pod in sorted(self.pods.items())
                ],
            },
        )

    def scale(self, replicas: int) -> None:
        while len(self.pods) < replicas:
            pod_name = f"{self.name}-5c9f7b-{self._next:05d}"
            self.pods[pod_name] = PodState(ip=f"10.42.0.{self._next}")
            self._next += 1
            self.api.put("pods", self._pod(pod_name))
            self._sync_slice()
        extra = sorted(self.pods)[replicas:]
        for pod_name in extra:  # graceful termination: first terminating, then gone
            self.pods[pod_name].terminating = True
        if extra:
            self._sync_slice()
        for pod_name in extra:
            del self.pods[pod_name]
            self.api.delete("pods", self.namespace, pod_name)
        if extra:
            self._sync_slice()

    def set_ready(self, pod_name: str, ready: bool) -> None:
        self.pods[pod_name].ready = ready
        self._sync_slice()

    def expected(self) -> dict[str, tuple[bool, str | None, str]]:
        identity = (
            f"{self.name}.{self.namespace}.serviceaccount.identity.cluster.local" if self.meshed else None
        )
        return {pod.ip: (pod.ready, identity, name) for name, pod in self.pods.items() if not pod.terminating}


async def bucket_view(kv: KeyValue, key: str) -> dict[str, tuple[bool, str | None, str]] | None:
    entry = await kv.get(key, msgspec.Raw)
    if entry is None or entry.value is None:
        return None
    value = msgspec.json.decode(entry.value, type=EndpointSet)
    return {e.address: (e.ready, e.identity, e.pod or "") for e in value.endpoints}


@pytest.fixture
async def kube_api() -> AsyncIterator[FakeKubeApi]:
    api = FakeKubeApi()
    await api.start()
    yield api
    await api.stop()


async def converged(kv: KeyValue, deployment: Deployment, what: str) -> None:
    key = f"{deployment.namespace}.{deployment.name}"
    latest: Any = None

    async def matches() -> bool:
        nonlocal latest
        latest = await bucket_view(kv, key)
        return bool(latest == deployment.expected())

    await eventually(
        matches,
        20.0,
        lambda: f"the bucket to converge ({what}): {latest} != {deployment.expected()}",
        interval=0.05,
    )


async def test_bucket_converges_to_what_the_api_says(
    mesh: Mesh, kube_api: FakeKubeApi, tmp_path: Path
) -> None:
    web = Deployment(kube_api)
    web.scale(2)
    kube_api.fail_next["pods"] = 500  # the first pod list fails: the source backs off and retries
    replica = mesh.replica(
        TETHER_DESTINATION_SOURCE="kubernetes",
        TETHER_DESTINATION_KUBE_API_URL=f"http://127.0.0.1:{kube_api.port}",
        TETHER_DESTINATION_KUBE_WATCH_TIMEOUT="3",
    )
    await replica.wait_ready()
    bus = await Bus.connect(mesh.nats_url, name="test-kube")
    try:
        kv = await bus.kv(subjects.ENDPOINTS_BUCKET)
        await converged(kv, web, "initial 2 replicas")
        view = await bucket_view(kv, "shop.web")
        assert view is not None
        entry = await kv.get("shop.web", msgspec.Raw)
        assert entry is not None and entry.value is not None
        first = msgspec.json.decode(entry.value, type=EndpointSet).endpoints[0]
        assert first.workload is not None and (first.workload.kind, first.workload.name) == (
            "deployment",
            "web",
        )
        assert first.serviceaccount == "web" and first.protocol_hint == "h2" and first.ports == {"http": 8080}
        client = mesh.client(replica, "web.shop.svc.cluster.local:80")

        web.scale(4)
        await converged(kv, web, "scaled up to 4")
        kube_api.bookmark()
        web.scale(1)
        await converged(kv, web, "scaled down to 1")
        web.scale(3)
        await converged(kv, web, "scaled up to 3")
        not_ready = sorted(web.pods)[1]
        web.set_ready(not_ready, False)
        await converged(kv, web, "a pod went not-ready")
        await eventually(
            lambda: client.addresses == {p.ip for p in web.pods.values() if p.ready}, what="served"
        )
        assert client.state[web.pods[sorted(web.pods)[0]].ip]["labels"]["deployment"] == "web"

        # Changes the open watches never see, then compaction ends them with 410: only a relist finds them.
        lists_before = sum(1 for _, verb, _ in kube_api.requests if verb == "list")
        kube_api.deliver_live = False
        web.set_ready(not_ready, True)
        web.scale(5)
        kube_api.deliver_live = True
        kube_api.expire_watches()
        await converged(kv, web, "after 410 Gone and relist")
        assert sum(1 for _, verb, _ in kube_api.requests if verb == "list") >= lists_before + 3

        # A watch resumed from a compacted version (it ended normally meanwhile) also relists.
        kube_api.deliver_live = False
        web.scale(2)
        kube_api.deliver_live = True
        kube_api.compacted = kube_api.resource_version
        kube_api.history.clear()
        kube_api.end_watches()
        await converged(kv, web, "after resuming from a compacted version")
        await eventually(
            lambda: client.addresses == {p.ip for p in web.pods.values()}, what="served after relist"
        )

        kube_api.delete("services", "shop", "web")
        await eventually(lambda: client.exists is False, what="service deletion served")
        assert await bucket_view(kv, "shop.web") is None
    finally:
        await bus.close()
    logs = replica.logs()
    assert "kube_watch_failed" in logs and "kube_watch_expired" in logs
