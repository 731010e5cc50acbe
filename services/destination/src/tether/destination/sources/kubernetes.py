"""The Kubernetes source: list+watch of Services, EndpointSlices and Pods through the kubernetes client.

The client is blocking, so each resource is reflected by its own daemon thread that only does HTTP and
JSON; everything it learns is handed to the event loop with ``call_soon_threadsafe``, where the pure
``KubeIndex`` turns it into desired endpoint sets. The loop is never blocked. Raw JSON is used instead of
the client's model classes, which are slow to build for pods.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch import watch as kube_watch

from tether.destination.metrics import DestinationMetrics
from tether.destination.model import EndpointSet
from tether.destination.reconcile import DesiredService
from tether.destination.sources.base import ChangeCallback, Spawn
from tether.destination.sources.kube_index import KINDS, Kind, KubeIndex, MalformedObject
from tether.destination.sources.reflector import List, ReflectorAction, ReflectorCore, Wait, Watch
from tether.shared.backoff import Backoff

log = structlog.get_logger(__name__)

LIST_PAGE_SIZE = 500


class KubernetesSource:
    kind = "kubernetes"

    def __init__(
        self,
        api_client: Any,
        trust_domain: str,
        metrics: DestinationMetrics,
        watch_timeout: int = 300,
        initial_backoff: float = 0.2,
        max_backoff: float = 30.0,
    ) -> None:
        self._index = KubeIndex(trust_domain)
        self._metrics = metrics
        self._watch_timeout = watch_timeout
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        core = kube_client.CoreV1Api(api_client)
        discovery = kube_client.DiscoveryV1Api(api_client)
        self._list_functions: dict[Kind, Callable[..., Any]] = {
            "services": core.list_service_for_all_namespaces,
            "endpointslices": discovery.list_endpoint_slice_for_all_namespaces,
            "pods": core.list_pod_for_all_namespaces,
        }
        self._listed: set[Kind] = set()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._responses: dict[Kind, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_change: ChangeCallback | None = None

    @property
    def synced(self) -> bool:
        return len(self._listed) == len(KINDS)

    def keys(self) -> set[str]:
        return self._index.keys()

    def desired(self, key: str) -> DesiredService | None:
        return self._index.desired(key)

    def on_leadership(self, current: Iterable[EndpointSet], now: float) -> set[str]:
        return set()

    async def start(self, on_change: ChangeCallback, spawn: Spawn) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_change = on_change
        for kind in KINDS:
            thread = threading.Thread(target=self._reflect, args=(kind,), name=f"kube-{kind}", daemon=True)
            self._threads.append(thread)
            thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        for response in list(self._responses.values()):
            _shutdown(response)
        threads, self._threads = self._threads, []
        for thread in threads:
            await asyncio.to_thread(thread.join, 2.0)

    # --- on the event loop ---

    def _replace(self, kind: Kind, items: list[Mapping[str, Any]]) -> None:
        self._metrics.source_events.labels("kubernetes", "list").inc()
        was_synced = self.synced
        changed, rejected = self._index.replace(kind, items)
        for problem in rejected:
            self._metrics.source_rejected.labels("kubernetes", kind).inc()
            log.error("kube_object_rejected", resource=kind, error=problem[:300], keeping="previous version")
        self._report_annotations()
        self._listed.add(kind)
        if self.synced and not was_synced:
            changed = self._index.keys()
            log.info("kube_synced", services=len(changed))
        self._notify(changed)

    def _apply(self, kind: Kind, event_type: str, obj: Mapping[str, Any]) -> None:
        self._metrics.source_events.labels("kubernetes", event_type.lower()).inc()
        try:
            changed = self._index.apply(kind, event_type, obj)
        except MalformedObject as exc:
            self._metrics.source_rejected.labels("kubernetes", kind).inc()
            log.error(
                "kube_object_rejected",
                resource=kind,
                watch_event=event_type,  # not ``event``: structlog's name for the message itself
                error=str(exc)[:300],
                keeping="previous version",
            )
            return
        self._report_annotations()
        self._notify(changed)

    def _report_annotations(self) -> None:
        for warning in self._index.take_warnings():
            log.warning(
                "kube_annotation_invalid",
                resource=warning.kind,
                namespace=warning.namespace,
                name=warning.name,
                annotation=warning.annotation,
                value=warning.value[:200],
                problem=warning.problem,
                ignoring="the whole annotation",
            )

    def _notify(self, keys: set[str]) -> None:
        if keys and self.synced and self._on_change is not None:
            self._on_change(keys)

    # --- on the reflector threads ---

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed() and not self._stopping.is_set():
            try:
                loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:
                self._stopping.set()  # the loop closed under us: the service is gone

    def _reflect(self, kind: Kind) -> None:
        core = ReflectorCore(Backoff(self._initial_backoff, self._max_backoff))
        bound = log.bind(resource=kind)
        action: ReflectorAction = core.start()
        while not self._stopping.is_set():
            try:
                if isinstance(action, Wait):
                    if self._stopping.wait(action.seconds):
                        break
                    action = core.resume()
                elif isinstance(action, List):
                    items, resource_version = self._list(kind)
                    self._post(self._replace, kind, items)
                    bound.debug("kube_listed", items=len(items), resource_version=resource_version)
                    action = core.listed(resource_version)
                elif isinstance(action, Watch):
                    action = self._watch(kind, core, action.resource_version)
            except ApiException as exc:
                if exc.status == 410:
                    bound.info("kube_resource_version_expired", relisting=True)
                    action = core.gone()
                else:
                    action = self._failed(core, bound, f"HTTP {exc.status} {exc.reason}")
            except Exception as exc:
                if self._stopping.is_set():
                    break
                action = self._failed(core, bound, f"{type(exc).__name__}: {exc}")

    def _failed(self, core: ReflectorCore, bound: Any, error: str) -> ReflectorAction:
        action = core.failed()
        assert isinstance(action, Wait)
        bound.warning("kube_watch_failed", error=error[:300], retry_in=round(action.seconds, 2))
        return action

    def _list(self, kind: Kind) -> tuple[list[Mapping[str, Any]], str]:
        items: list[Mapping[str, Any]] = []
        continue_token: str | None = None
        while True:
            response = self._list_functions[kind](
                limit=LIST_PAGE_SIZE,
                _continue=continue_token,
                _preload_content=False,
                _request_timeout=(5, 60),
            )
            try:
                body = json.loads(response.data)
            finally:
                response.release_conn()
            items.extend(body.get("items") or [])
            metadata = body.get("metadata") or {}
            continue_token = metadata.get("continue") or None
            if continue_token is None:
                return items, str(metadata.get("resourceVersion") or "")

    def _watch(self, kind: Kind, core: ReflectorCore, resource_version: str) -> ReflectorAction:
        response = self._list_functions[kind](
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _preload_content=False,
            _request_timeout=(5, self._watch_timeout + 30),
        )
        self._responses[kind] = response
        try:
            lines: Any = kube_watch.iter_resp_lines
            for line in lines(response):
                if self._stopping.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                if not isinstance(event, dict):
                    log.warning("kube_watch_unknown_event", resource=kind, watch_event=type(event).__name__)
                    continue
                event_type = event.get("type")
                raw = event.get("object") or {}
                # An object of the wrong shape goes to the index, which rejects it: nothing read here may
                # raise on one, or the watch would fail and replay it forever.
                obj = raw if isinstance(raw, dict) else {}
                if event_type == "ERROR":
                    if obj.get("code") == 410:
                        log.info("kube_watch_expired", resource=kind, message=str(obj.get("message"))[:200])
                        return core.gone()
                    raise ApiException(status=int(obj.get("code") or 500), reason=str(obj.get("message")))
                metadata = obj.get("metadata")
                if not isinstance(metadata, dict):
                    metadata = {}
                resource_version_seen = metadata.get("resourceVersion")
                if event_type in ("ADDED", "MODIFIED", "DELETED"):
                    self._post(self._apply, kind, event_type, raw)
                elif event_type != "BOOKMARK":
                    log.warning("kube_watch_unknown_event", resource=kind, watch_event=str(event_type)[:40])
                core.seen(resource_version_seen)
            return core.watch_ended()
        finally:
            self._responses.pop(kind, None)
            _shutdown(response)


def _shutdown(response: Any) -> None:
    try:
        response.shutdown()
        response.release_conn()
    except Exception:
        log.debug("kube_response_close_failed")
