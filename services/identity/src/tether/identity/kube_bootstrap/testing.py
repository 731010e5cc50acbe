"""An emulated Kubernetes API server for the bootstrap Job's tests, and the list of requests the Job makes.

No Kubernetes API server can run here, so :class:`FakeKubeApi` speaks its wire protocol faithfully for
what the Job touches: ``GET``/``POST`` on ``/api/v1/namespaces/{ns}/secrets|configmaps[/{name}]`` with the
API's JSON objects (``metadata.resourceVersion``, ``uid``, ``creationTimestamp`` assigned on create; Secret
``data`` base64, ``stringData`` merged; ``kubernetes.io/tls`` Secrets must hold ``tls.crt`` and ``tls.key``),
``Status`` bodies for 401 Unauthorized, 403 Forbidden (worded as the RBAC authorizer words it), 404
NotFound (object or namespace), 409 AlreadyExists, 422 Invalid and 405; ``GET /version``. RBAC is emulated
too: given ``rules`` (a Role's verbs, resources and resourceNames), a request is allowed as the API server
would allow it; in particular ``create`` carries no name to authorise, so a rule with ``resourceNames``
never grants it. Every request is recorded as the authorizer sees it (:class:`ApiRequest`).

Kept in the package (as :mod:`tether.shared.testing` is) so that the RBAC policy test under tests/deploy can
import :func:`bootstrap_requests`; nothing in a production code path imports it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tether.shared.kube_testing import EmulatedApiServer, status

_LIFETIME = timedelta(days=30)
BOOTSTRAP_USER = "system:serviceaccount:tether:tether-bootstrap"
_PATH = re.compile(
    r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<resource>secrets|configmaps)(?:/(?P<name>[^/]+))?$"
)
_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_KINDS = {"secrets": "Secret", "configmaps": "ConfigMap"}
VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.1",
    "gitCommit": "8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828",
    "gitTreeState": "clean",
    "buildDate": "2025-05-15T08:19:08Z",
    "goVersion": "go1.24.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True, order=True)
class ApiRequest:
    """One request as the API server's authorizer sees it. ``name`` is empty for collection requests and
    for ``create`` (the name is in the body, which RBAC does not look at); ``path`` is set for
    non-resource requests such as ``/version`` (granted to everyone by system:public-info-viewer)."""

    verb: str
    api_group: str
    resource: str
    namespace: str
    name: str
    path: str = ""


@dataclass(frozen=True)
class Rule:
    """A Role rule for the core API group ("")."""

    verbs: tuple[str, ...]
    resources: tuple[str, ...]
    resource_names: tuple[str, ...] = ()

    def allows(self, request: ApiRequest) -> bool:
        if request.verb not in self.verbs or request.resource not in self.resources:
            return False
        return not self.resource_names or request.name in self.resource_names


@dataclass
class FakeKubeApi:
    """Secrets and ConfigMaps by (resource, namespace, name); ``rules=None`` allows everything."""

    namespaces: set[str] = field(default_factory=lambda: {"tether"})
    token: str = ""
    rules: Sequence[Rule] | None = None
    user: str = BOOTSTRAP_USER
    # Called (resource, namespace, name) just before a create is handled: a concurrent writer's moment.
    before_create: Callable[[str, str, str], None] | None = None
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[ApiRequest] = field(default_factory=list)
    resource_version: int = 1000
    url: str = ""
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # --- what a user or another controller does (kubectl apply, cert-manager) ---

    def put(self, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            stored = self._store(resource, namespace, json.loads(json.dumps(obj)))
            self.objects[(resource, namespace, stored["metadata"]["name"])] = stored
            return stored

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self.objects.get((resource, namespace, name))

    def data(self, resource: str, namespace: str, name: str) -> dict[str, bytes]:
        """An object's data as bytes (Secrets decoded from base64)."""
        obj = self.objects[(resource, namespace, name)]
        raw = obj.get("data") or {}
        if resource == "secrets":
            return {key: base64.b64decode(value) for key, value in raw.items()}
        return {key: value.encode() for key, value in raw.items()}

    def writes(self) -> list[ApiRequest]:
        return [request for request in self.requests if request.verb not in ("get", "list", "watch")]

    # --- the API server ---

    def _store(self, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.resource_version += 1
        metadata = obj.setdefault("metadata", {})
        metadata.update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            resourceVersion=str(self.resource_version),
            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        obj["kind"], obj["apiVersion"] = _KINDS[resource], "v1"
        return obj

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        url = urlsplit(target)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        with self._lock:
            if self.token and headers.get("authorization") != f"Bearer {self.token}":
                return 401, status(401, "Unauthorized", "Unauthorized")
            if url.path in ("/version", "/version/") and method == "GET":
                self.requests.append(ApiRequest("get", "", "", "", "", url.path))
                return 200, VERSION
            match = _PATH.match(url.path)
            if match is None:
                self.requests.append(ApiRequest(_VERBS.get(method, method.lower()), "", "", "", "", url.path))
                return 404, status(404, "NotFound", "the server could not find the requested resource")
            namespace, resource, name = match["ns"], match["resource"], match["name"] or ""
            verb = _VERBS.get(method, method.lower())
            if method == "GET" and not name:
                verb = "watch" if query.get("watch") in ("1", "true") else "list"
            if method == "POST":
                name = ""  # create is authorised without a name
            request = ApiRequest(verb, "", resource, namespace, name)
            self.requests.append(request)
            if self.rules is not None and not any(rule.allows(request) for rule in self.rules):
                subject = f'{resource} "{name}"' if name else resource
                return 403, status(
                    403,
                    "Forbidden",
                    f'{subject} is forbidden: User "{self.user}" cannot {verb} resource "{resource}" in API '
                    f'group "" in the namespace "{namespace}"',
                    {"name": name, "kind": resource} if name else {"kind": resource},
                )
            if method == "GET" and name:
                found = self.objects.get((resource, namespace, name))
                if found is None:
                    return 404, status(
                        404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource}
                    )
                return 200, found
            if method == "POST" and not match["name"]:
                return self._create(resource, namespace, body)
            return 405, status(405, "MethodNotAllowed", f"the emulator does not serve {method} {url.path}")

    def _create(self, resource: str, namespace: str, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            obj = json.loads(body)
        except ValueError as error:
            return 400, status(400, "BadRequest", f"the object provided is unrecognized: {error}")
        kind = _KINDS[resource]
        metadata = obj.get("metadata") or {}
        name = str(metadata.get("name") or "")
        if obj.get("kind") not in (None, kind):
            return 400, status(
                400, "BadRequest", f"the object provided is unrecognized (kind {obj.get('kind')})"
            )
        if metadata.get("namespace") not in (None, "", namespace):
            return 400, status(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if namespace not in self.namespaces:
            return 404, status(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )
        invalid = self._validate(resource, name, obj)
        if invalid:
            return 422, status(
                422, "Invalid", f'{kind} "{name}" is invalid: {invalid}', {"name": name, "kind": resource}
            )
        if self.before_create is not None:
            hook, self.before_create = self.before_create, None
            hook(resource, namespace, name)
        if (resource, namespace, name) in self.objects:
            return 409, status(
                409, "AlreadyExists", f'{resource} "{name}" already exists', {"name": name, "kind": resource}
            )
        if resource == "secrets" and obj.get("stringData"):
            merged = dict(obj.get("data") or {})
            merged.update(
                {k: base64.b64encode(v.encode()).decode() for k, v in obj.pop("stringData").items()}
            )
            obj["data"] = merged
        if resource == "secrets":
            obj.setdefault("type", "Opaque")
        stored = self._store(resource, namespace, obj)
        self.objects[(resource, namespace, name)] = stored
        return 201, stored

    @staticmethod
    def _validate(resource: str, name: str, obj: dict[str, Any]) -> str:
        if not name or len(name) > 253 or not _NAME.match(name):
            return "metadata.name: Invalid value: a lowercase RFC 1123 subdomain must consist of ..."
        data = obj.get("data") or {}
        for key, value in data.items():
            if not _KEY.match(key):
                return (
                    f"data[{key}]: Invalid value: a valid config key must consist of alphanumeric characters"
                )
            if resource == "secrets":
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, TypeError):
                    return f"data[{key}]: Invalid value: illegal base64 data"
            elif not isinstance(value, str):
                return f"data[{key}]: Invalid value: must be a string"
        if resource == "secrets" and obj.get("type") == "kubernetes.io/tls":
            for required in ("tls.crt", "tls.key"):
                if required not in data and required not in (obj.get("stringData") or {}):
                    return f"data[{required}]: Required value"
        return ""

    @contextmanager
    def serving(self) -> Iterator[FakeKubeApi]:
        # Keep-alive, as the API server serves the client's pool.
        with EmulatedApiServer(lambda r: self.handle(r.method, r.target, dict(r.headers), r.body)) as server:
            self.url = server.url
            yield self


def _run_job(fake: FakeKubeApi, *argv: str) -> None:
    from tether.identity.kube_bootstrap.cli import run
    from tether.identity.kube_bootstrap.config import KubeBootstrapConfig
    from tether.shared.config import config_from
    from tether.shared.kube import KubeSettings, api_client

    flags = dict(zip(argv[::2], argv[1::2], strict=True))
    config = config_from(KubeBootstrapConfig, "identity", {**flags, "kube_api_url": fake.url}, {})
    client = api_client(KubeSettings(api_url=fake.url, bearer_token=fake.token), remedy="")
    try:
        run(config, client)
    finally:
        client.close()


def bootstrap_requests(namespace: str = "tether") -> list[ApiRequest]:
    """Every distinct request the bootstrap Job makes, over its paths: a first run in an empty namespace,
    a rerun, a run that finds the user's own issuer (--skip-issuer), and a run that loses a race (409).

    For the RBAC policy test: each must be allowed by the rendered Role of ServiceAccount tether-bootstrap
    (``/version`` is a non-resource URL every client may read). Safe to call from sync or async code.
    """

    def scenarios() -> list[ApiRequest]:
        from tether.identity.kube_bootstrap.objects import ISSUER_SECRET, issuer_objects
        from tether.shared.identity_names import DEFAULT_TRUST_DOMAIN

        seen: set[ApiRequest] = set()
        ns = ("namespace", namespace)
        with FakeKubeApi(namespaces={namespace}, token="bootstrap-sa-token").serving() as fake:
            _run_job(fake, *ns)
            _run_job(fake, *ns)
            seen.update(fake.requests)
        with FakeKubeApi(namespaces={namespace}, token="bootstrap-sa-token").serving() as fake:
            now = datetime.now(UTC)
            own = issuer_objects(now, DEFAULT_TRUST_DOMAIN, _LIFETIME, _LIFETIME)
            fake.put("secrets", namespace, secret_body(ISSUER_SECRET, own.data, own.secret_type))
            _run_job(fake, *ns, "skip_issuer", "true")
            seen.update(fake.requests)
        with FakeKubeApi(namespaces={namespace}, token="bootstrap-sa-token").serving() as fake:

            def concurrent_issuer(resource: str, ns_: str, name: str) -> None:
                other = issuer_objects(
                    datetime.now(UTC),
                    DEFAULT_TRUST_DOMAIN,
                    _LIFETIME,
                    _LIFETIME,
                )
                fake.put(resource, ns_, secret_body(name, other.data, other.secret_type))

            fake.before_create = concurrent_issuer
            _run_job(fake, *ns)
            seen.update(fake.requests)
        return sorted(seen)

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(scenarios).result()


def secret_body(name: str, data: Mapping[str, bytes], secret_type: str = "Opaque") -> dict[str, Any]:
    """A Secret as kubectl would send it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": secret_type,
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


def configmap_body(name: str, data: Mapping[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(data)}
