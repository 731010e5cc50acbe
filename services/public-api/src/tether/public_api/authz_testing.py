"""An emulated Kubernetes API server for the TokenReview and SubjectAccessReview endpoints, for tests.

No Kubernetes API server can run here, so this speaks its wire protocol as the official kubernetes client
sees it: ``POST /apis/authentication.k8s.io/v1/tokenreviews`` and
``POST /apis/authorization.k8s.io/v1/subjectaccessreviews`` answer ``201 Created`` with the review object
and its ``status`` (an unauthenticated token: ``{"user": {}, "error": ...}``, as the API server writes it; a
decision: ``{"allowed": ...}`` with the authorizer's ``reason`` when allowed, as RBAC writes it),
``GET /version`` answers the version object, and a client whose own bearer token is wrong gets a
``401 Status`` and one whose ServiceAccount lacks a permission a ``403 Status``, both with the API server's
Status body. The RBAC decision is RBAC's: a grant of the ClusterRole ``tether-tap`` (``watch`` on
``tap.tether.io/tap``) to a user or a group, through a ClusterRoleBinding (every namespace, and
cluster-wide requests) or a RoleBinding (its namespace only).

Every request is recorded as RBAC sees it (:class:`Recorded`: verb, API group, resource, namespace), so a
test can check what a component asks of the API against the RBAC the manifests grant it. Kept in the
library, like :mod:`tether.public_api.testing`, because the public API's, the CLI's and the deployment
tests use it; nothing in a production code path imports it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.public_api.authz import TAP_CLUSTER_ROLE, TAP_GROUP, TAP_RESOURCE, TAP_VERB, KubeRequest
from tether.shared.kube_testing import EmulatedApiServer, Request, status

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request the emulated API received: RBAC's view of it, and the JSON body it carried."""

    verb: str
    group: str
    resource: str
    namespace: str
    body: Any = None

    @property
    def kind(self) -> KubeRequest:
        return KubeRequest(self.verb, self.group, self.resource)


@dataclass(frozen=True, slots=True)
class Grant:
    """``tether-tap`` bound to a subject: ``namespace`` "" is a ClusterRoleBinding, else a RoleBinding."""

    subject_kind: str  # "User" or "Group"
    name: str
    namespace: str = ""


@dataclass
class EmulatedAuthApi:
    """Answers reviews for the client presenting ``service_token`` (the public API's ServiceAccount)."""

    service_token: str = "public-api-serviceaccount-token"
    service_account: str = "system:serviceaccount:tether:tether-public-api"
    # token -> (username, uid, groups): what a TokenReview of that token authenticates.
    users: dict[str, tuple[str, str, tuple[str, ...]]] = field(default_factory=dict)
    grants: list[Grant] = field(default_factory=list)
    # Resources ("tokenreviews", "subjectaccessreviews") the service account may not create: 403.
    forbidden: set[str] = field(default_factory=set)
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""
    _server: EmulatedApiServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- what the cluster's administrator does ---

    def user(self, token: str, username: str, groups: tuple[str, ...] = ()) -> None:
        uid = f"uid-{len(self.users) + 1:04d}"
        # The API server adds system:authenticated to every authenticated user.
        self.users[token] = (username, uid, (*groups, "system:authenticated"))

    def grant(self, name: str, namespace: str = "", subject_kind: str = "User") -> None:
        self.grants.append(Grant(subject_kind, name, namespace))

    def kubeconfig(self, path: Path, token: str | None = None, context: str = "emulated") -> Path:
        """A kubeconfig for this server with a static bearer token (the service account's by default)."""
        path.write_text(
            json.dumps(  # JSON is YAML
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
                    "users": [{"name": "user", "user": {"token": token or self.service_token}}],
                    "contexts": [{"name": context, "context": {"cluster": "emulated", "user": "user"}}],
                    "current-context": context,
                }
            )
        )
        return path

    def resource_requests(self) -> set[KubeRequest]:
        """Every kind of resource request received (``/version`` is a non-resource URL, left out)."""
        with self._lock:
            return {r.kind for r in self.requests if r.resource and not r.resource.startswith("/")}

    # --- the API server ---

    def _allowed(self, spec: dict[str, Any]) -> tuple[bool, str]:
        attributes = spec.get("resourceAttributes") or {}
        if (attributes.get("verb"), attributes.get("group"), attributes.get("resource")) != (
            TAP_VERB,
            TAP_GROUP,
            TAP_RESOURCE,
        ) or attributes.get("subresource"):
            return False, ""
        namespace = attributes.get("namespace") or ""
        groups = set(spec.get("groups") or ())
        for grant in self.grants:
            subject = spec.get("user") == grant.name if grant.subject_kind == "User" else grant.name in groups
            if not subject or (grant.namespace and grant.namespace != namespace):
                continue
            binding = (
                f'RoleBinding "tap/{grant.namespace}"' if grant.namespace else 'ClusterRoleBinding "tap"'
            )
            return True, (
                f'RBAC: allowed by {binding} of ClusterRole "{TAP_CLUSTER_ROLE}" to '
                f'{grant.subject_kind} "{grant.name}"'
            )
        return False, ""

    def _answer(self, request: Request) -> tuple[int, dict[str, Any]]:
        method, path, body = request.method, request.target, request.json()
        if method == "GET" and path.split("?", 1)[0].rstrip("/") == "/version":
            with self._lock:
                self.requests.append(Recorded("get", "", "/version", ""))
            return 200, {
                "major": "1",
                "minor": "34",
                "gitVersion": "v1.34.1",
                "gitCommit": "93248f9ae092f571eb870b7664c534bfc7d00f03",
                "gitTreeState": "clean",
                "buildDate": "2025-09-09T19:43:17Z",
                "goVersion": "go1.24.6",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        parts = path.split("?", 1)[0].strip("/").split("/")
        group, resource, namespace = "", "", ""
        if len(parts) >= 4 and parts[0] == "apis":
            group = parts[1]
            rest = parts[3:]
            if len(rest) >= 3 and rest[0] == "namespaces":
                namespace, rest = rest[1], rest[2:]
            resource = rest[0] if rest else ""
        verb = {"POST": "create", "GET": "get", "PUT": "update", "DELETE": "delete"}.get(method, method)
        with self._lock:
            self.requests.append(Recorded(verb, group, resource, namespace, body))
        if request.headers.get("authorization") != f"Bearer {self.service_token}":
            return 401, status(401, "Unauthorized", "Unauthorized")
        if resource in self.forbidden or path not in (TOKEN_REVIEWS, ACCESS_REVIEWS) or method != "POST":
            return 403, status(
                403,
                "Forbidden",
                f'{resource}.{group} is forbidden: User "{self.service_account}" cannot {verb} resource '
                f'"{resource}" in API group "{group}" at the cluster scope',
                {"group": group, "kind": resource},
            )
        spec = dict(body.get("spec") or {})
        if path == TOKEN_REVIEWS:
            found = self.users.get(str(spec.get("token", "")))
            if found is None:
                review: dict[str, Any] = {"user": {}, "error": "[invalid bearer token, unknown]"}
            else:
                username, uid, groups = found
                review = {
                    "authenticated": True,
                    "user": {"username": username, "uid": uid, "groups": list(groups)},
                    "audiences": ["https://kubernetes.default.svc.cluster.local"],
                }
            kind, api_version = "TokenReview", "authentication.k8s.io/v1"
        else:
            allowed, reason = self._allowed(spec)
            review = {"allowed": True, "reason": reason} if allowed else {"allowed": False}
            kind, api_version = "SubjectAccessReview", "authorization.k8s.io/v1"
        return 201, {
            "kind": kind,
            "apiVersion": api_version,
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": review,
        }

    def start(self) -> None:
        # One request a connection (HTTP/1.0): once stopped, the emulated API answers nothing more.
        self._server = EmulatedApiServer(self._answer, keep_alive=False, poll_interval=0.01)
        self.url = self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
