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

import contextlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
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

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length)) if length else None
        request = ApiRequest.from_http(handler.command, handler.path)
        auth = handler.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        if token not in self.users:
            self._record("", request, 401)
            return _send(handler, 401, status(401, "Unauthorized", "Unauthorized"))
        user, grants = self.users[token]
        if not allowed(grants, request):
            self._record(user, request, 403)
            what = (
                f'{request.resource} "{request.name}"' if request.name else request.resource or request.path
            )
            return _send(
                handler,
                403,
                status(403, "Forbidden", f'{what} is forbidden: User "{user}" cannot {request.verb} it'),
            )
        code, answer = self._answer(request, body)
        self._record(user, request, code)
        if code == 0:
            return self._watch(handler, request, handler.path)
        return _send(handler, code, answer)

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

    def _watch(self, handler: BaseHTTPRequestHandler, request: ApiRequest, target: str) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.flush()
        timeout = 300.0
        for part in target.partition("?")[2].split("&"):
            if part.startswith("timeoutSeconds="):
                timeout = float(part.split("=", 1)[1])
        self._stopping.wait(timeout)
        with contextlib.suppress(OSError):  # the client may have gone first
            handler.wfile.write(b"0\r\n\r\n")
        handler.close_connection = True

    @contextmanager
    def serving(self) -> Iterator[KubeEmulator]:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                emulator.handle(self)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                return None

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stopping.set()
            server.shutdown()
            server.server_close()
            thread.join(5)


def _send(handler: BaseHTTPRequestHandler, code: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
