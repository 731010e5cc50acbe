"""Kubernetes RBAC, evaluated over the rendered Roles, ClusterRoles and bindings as the API server's RBAC
authorizer does: a request (verb, API group, resource, namespace, name) is allowed when a rule of a role
bound to the subject matches it, a RoleBinding's rules only in its own namespace, `resourceNames` only for
requests that name an object (so never for `create` or `list`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from .manifests import Doc, Manifests

CLUSTER = "*"  # the scope of a ClusterRoleBinding's grants

#: Non-resource URLs every authenticated user may GET through Kubernetes' default ClusterRoles
#: (system:discovery, system:public-info-viewer), not through anything these manifests grant.
DEFAULT_NON_RESOURCE = ("/version", "/version/", "/healthz", "/livez", "/readyz", "/api", "/apis", "/openapi")


@dataclass(frozen=True, order=True)
class Grant:
    """One thing a role lets a subject do: verb on group/resource, in a namespace or cluster-wide (CLUSTER),
    on every object or only the one named."""

    scope: str
    group: str
    resource: str
    verb: str
    name: str = ""

    def allows(self, request: ApiRequest) -> bool:
        return (
            request.path == ""
            and self.scope in (CLUSTER, request.namespace)
            and self.group in ("*", request.group)
            and self.resource in ("*", request.resource)
            and self.verb in ("*", request.verb)
            and self.name in ("", request.name)
            and (self.name == "" or request.name != "")
        )


@dataclass(frozen=True, order=True)
class ApiRequest:
    """What RBAC sees of an HTTP request to the API server (its RequestInfo); ``path`` for a non-resource
    URL (then the other fields are empty but ``verb``)."""

    verb: str
    group: str = ""
    resource: str = ""  # with "/<subresource>"
    namespace: str = ""
    name: str = ""
    path: str = ""

    @classmethod
    def from_http(cls, method: str, target: str) -> ApiRequest:
        """The API server's reading of ``METHOD /path?query``."""
        path, _, query = target.partition("?")
        watching = parse_qs(query).get("watch", [""])[-1] in ("true", "1")
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, rest = "", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, rest = parts[1], parts[3:]
        else:
            return cls(verb=method.lower(), path=path)
        namespace = ""
        if rest[0] == "namespaces" and len(rest) > 1:
            namespace = rest[1]
            rest = rest[2:] or ["namespaces", namespace]
        resource, name = rest[0], rest[1] if len(rest) > 1 else ""
        if len(rest) > 2:
            resource += "/" + rest[2]
        verb = {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }.get(method, "watch" if watching else ("get" if name else "list"))
        return cls(verb, group, resource, namespace, name)

    def __str__(self) -> str:
        if self.path:
            return f"{self.verb} {self.path}"
        where = f"namespace {self.namespace}" if self.namespace else "cluster-wide"
        named = f" {self.name}" if self.name else ""
        return f"{self.verb} {self.resource}.{self.group or 'core'}{named} ({where})"


def service_account(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def _rules(role: Doc, scope: str) -> set[Grant]:
    grants = set()
    for rule in role.get("rules") or []:
        assert "nonResourceURLs" not in rule, f"{role['metadata']['name']} grants non-resource URLs"
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    for name in rule.get("resourceNames") or [""]:
                        grants.add(Grant(scope, group, resource, verb, name))
    return grants


def grants(manifests: Manifests) -> dict[str, set[Grant]]:
    """Every subject's effective grants, from the rendered bindings (subject -> grants)."""
    out: dict[str, set[Grant]] = {}
    for binding in manifests.of_kind("RoleBinding") + manifests.of_kind("ClusterRoleBinding"):
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace", "")
        if ref["kind"] == "ClusterRole":
            role = manifests.find("ClusterRole", ref["name"], None)
        else:
            role = manifests.find("Role", ref["name"], namespace)
        assert role is not None, f"{binding['kind']} {binding['metadata']['name']} binds a missing {ref}"
        scope = CLUSTER if binding["kind"] == "ClusterRoleBinding" else namespace
        for subject in binding.get("subjects") or []:
            if subject["kind"] == "ServiceAccount":
                who = service_account(subject.get("namespace") or namespace, subject["name"])
            else:
                who = f"{subject['kind']}:{subject['name']}"
            out.setdefault(who, set()).update(_rules(role, scope))
    return out


def allowed(granted: set[Grant], request: ApiRequest) -> bool:
    if request.path:
        return request.verb == "get" and (
            request.path in DEFAULT_NON_RESOURCE or request.path.startswith(("/api/", "/apis/", "/openapi/"))
        )
    return any(grant.allows(request) for grant in granted)
