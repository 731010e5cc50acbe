"""An emulated Kubernetes API server that authorises every request with the rendered RBAC and records it.

No Kubernetes API server can run here, so this speaks its wire protocol as the official kubernetes client
sees it, for what the control plane asks: `GET /version`; list (JSON `*List` objects with
`metadata.resourceVersion`, `limit`/`continue` honoured by returning everything at once) and watch
(`?watch=true`: a chunked stream that stays open until `timeoutSeconds` or the server stops) of any
collection; `POST` of TokenReviews (authenticated as a ServiceAccount, with the audiences asked for) and
SubjectAccessReviews (allowed). Each request is read as the API server's RequestInfo does (verb, group,
resource, namespace, name) and authorised as its RBAC authorizer would, from the grants of the
ServiceAccount whose bearer token it carries: `401 Unauthorized` for an unknown token, `403 Forbidden`
(the RBAC wording) when not granted, both as `Status` bodies.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tether.shared.kube_testing import Answer, EmulatedApiServer, Request, Watch, status

from .rbac import ApiRequest, Grant, allowed

VERSION = {"major": "1", "minor": "37", "gitVersion": "v1.37.0", "platform": "linux/amd64"}
LIST_KINDS = {
    "services": ("ServiceList", "v1"),
    "pods": ("PodList", "v1"),
    "endpointslices": ("EndpointSliceList", "discovery.k8s.io/v1"),
    "secrets": ("SecretList", "v1"),
    "configmaps": ("ConfigMapList", "v1"),
}
REVIEWS = {
    ("authentication.k8s.io", "tokenreviews"),
    ("authorization.k8s.io", "subjectaccessreviews"),
}


@dataclass(frozen=True)
class Recorded:
    user: str
    request: ApiRequest
    code: int


@dataclass
class KubeEmulator:
    #: bearer token -> (user name, that user's grants from the rendered RBAC)
    users: dict[str, tuple[str, set[Grant]]] = field(default_factory=dict)
    recorded: list[Recorded] = field(default_factory=list)
    url: str = ""
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def requests_of(self, user: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.recorded if r.user == user]

    def _record(self, user: str, request: ApiRequest, code: int) -> None:
        with self._lock:
            self.recorded.append(Recorded(user, request, code))

    def handle(self, http: Request) -> Answer:
        body = http.json()
        request = ApiRequest.from_http(http.method, http.target)
        auth = http.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        if token not in self.users:
            self._record("", request, 401)
            return 401, status(401, "Unauthorized", "Unauthorized")
        user, grants = self.users[token]
        if not allowed(grants, request):
            self._record(user, request, 403)
            what = (
                f'{request.resource} "{request.name}"' if request.name else request.resource or request.path
            )
            message = f'{what} is forbidden: User "{user}" cannot {request.verb} it'
            return 403, status(403, "Forbidden", message)
        code, answer = self._answer(request, body)
        self._record(user, request, code)
        if code == 0:
            return Watch(self._idle_watch(float(http.query.get("timeoutSeconds") or 300)))
        return code, answer

    def _answer(self, request: ApiRequest, body: Any) -> tuple[int, Any]:
        if request.path == "/version":
            return 200, VERSION
        if request.verb == "list" and request.resource in LIST_KINDS:
            kind, api_version = LIST_KINDS[request.resource]
            return 200, {
                "kind": kind,
                "apiVersion": api_version,
                "metadata": {"resourceVersion": "7"},
                "items": [],
            }
        if request.verb == "watch":
            return 0, None
        if request.verb == "create" and (request.group, request.resource) == (
            "authentication.k8s.io",
            "tokenreviews",
        ):
            spec = body["spec"]
            user = {
                "username": "system:serviceaccount:shop:web",
                "uid": "0c6f8a1e-3b1f-4a8e-9c62-1f0a5a3c9d11",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
            }
            review_status = {
                "authenticated": True,
                "user": user,
                "audiences": spec.get("audiences") or ["https://kubernetes.default.svc.cluster.local"],
            }
            return 201, {**body, "status": review_status}
        if request.verb == "create" and (request.group, request.resource) in REVIEWS:
            return 201, {
                **body,
                "status": {"allowed": True, "reason": 'RBAC: allowed by ClusterRoleBinding "x"'},
            }
        return 404, status(404, "NotFound", f"{request} is not emulated")

    def _idle_watch(self, timeout: float) -> Iterator[dict[str, Any]]:
        """A watch on which nothing happens: open until its timeoutSeconds, or until the server stops."""
        self._stopping.wait(timeout)
        yield from ()

    @contextmanager
    def serving(self) -> Iterator[KubeEmulator]:
        server = EmulatedApiServer(self.handle)  # keep-alive, as the API server serves a client's pool
        self.url = server.start()
        try:
            yield self
        finally:
            self._stopping.set()
            server.stop()
