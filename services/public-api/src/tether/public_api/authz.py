"""Who may Tap and ask Endpoints (``--authz``).

``none`` (the local mesh): anyone who reaches the API. ``kubernetes`` (a cluster): the caller sends its own
Kubernetes credentials as gRPC metadata ``authorization: Bearer <token>`` (``tether --kube`` does); the
public API verifies the token with a TokenReview (the API server's default audiences: it is the caller's
own kubeconfig token, not a mesh token), then asks a SubjectAccessReview whether that user may ``watch``
the resource ``tap`` in the group ``tap.tether.io`` in the namespace concerned: the tap target's, or for
Endpoints the namespace of the authority's service (an IP authority may name a pod of any namespace, so it
needs the permission in every namespace). The manifests' ClusterRole ``tether-tap`` grants exactly that.

No token: UNAUTHENTICATED; a token the API does not authenticate: UNAUTHENTICATED; not allowed:
PERMISSION_DENIED naming the user, the permission and the namespace; the API server unreachable or refusing
the public API's own requests: UNAVAILABLE. The token is never logged nor echoed.

The blocking kubernetes client runs on a small thread pool of its own, so a slow API server never blocks
the event loop; the module imports ``kubernetes`` only when ``--authz kubernetes`` builds the client.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import grpc
import structlog

from tether.public_api.errors import Refused

TAP_VERB = "watch"
TAP_GROUP = "tap.tether.io"
TAP_RESOURCE = "tap"
#: The ClusterRole of the manifests that grants TAP_VERB on TAP_RESOURCE.
TAP_CLUSTER_ROLE = "tether-tap"
MAX_TOKEN_BYTES = 16 * 1024
AuthzMode = Literal["none", "kubernetes"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class KubeRequest:
    """One kind of Kubernetes API request, as RBAC sees it."""

    verb: str
    group: str
    resource: str


#: Every Kubernetes API request ``--authz kubernetes`` makes: what the public-api ServiceAccount's RBAC
#: must grant (and the tests check the emulated API saw nothing else).
API_REQUESTS: tuple[KubeRequest, ...] = (
    KubeRequest("create", "authentication.k8s.io", "tokenreviews"),
    KubeRequest("create", "authorization.k8s.io", "subjectaccessreviews"),
)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who called, as the Kubernetes API authenticated them (empty with ``--authz none``)."""

    username: str = ""
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)


ANONYMOUS = Caller()


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the ``authorization: Bearer <token>`` metadata, or None when there is none.

    Raises Refused (UNAUTHENTICATED) when the header is there but is not a bearer token."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused(
                "unauthenticated",
                grpc.StatusCode.UNAUTHENTICATED,
                "the authorization metadata is not 'Bearer <token>'",
            )
        if len(token) > MAX_TOKEN_BYTES or not token.isprintable() or any(c.isspace() for c in token):
            raise Refused("unauthenticated", grpc.StatusCode.UNAUTHENTICATED, "the bearer token is malformed")
        return token
    return None


def authority_namespace(authority: str, namespace: str) -> str:
    """The namespace whose permission an Endpoints request for ``authority`` needs ("": every namespace).

    A service name names its namespace (``svc.ns...``; a bare ``svc`` is in ``namespace``, the request's);
    an IP address may be any namespace's pod or service, and anything else is answered NOT_FOUND by
    destination whatever it is, so both need the permission in every namespace."""
    host = authority.lower()
    if host.startswith("["):
        return ""
    host = host.rpartition(":")[0] if ":" in host else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return ""
    labels = host.removesuffix(".").split(".")
    if len(labels) >= 2:
        return labels[1]
    return namespace


class Authorizer(Protocol):
    mode: AuthzMode

    async def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        """The caller; raises Refused (UNAUTHENTICATED, UNAVAILABLE)."""
        ...

    async def authorize(self, caller: Caller, namespace: str) -> None:
        """Return if ``caller`` may tap in ``namespace`` ("": every namespace); raises Refused."""
        ...

    async def close(self) -> None: ...


class OpenAuthorizer:
    """``--authz none``: everyone may (the local mesh, where whoever reaches the API owns the mesh)."""

    mode: AuthzMode = "none"

    async def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        return ANONYMOUS

    async def authorize(self, caller: Caller, namespace: str) -> None:
        return None

    async def close(self) -> None:
        return None


def _where(namespace: str) -> str:
    return f'in namespace "{namespace}"' if namespace else "in every namespace (cluster-wide)"


class KubernetesAuthorizer:
    """``--authz kubernetes``: TokenReview, then SubjectAccessReview (the module docstring)."""

    mode: AuthzMode = "kubernetes"

    def __init__(self, api_client: Any, *, timeout: float = 5.0, max_concurrent: int = 4) -> None:
        from kubernetes import client as k8s

        self._k8s = k8s
        self._api_client = api_client
        self._authn = k8s.AuthenticationV1Api(api_client)
        self._authz = k8s.AuthorizationV1Api(api_client)
        self._timeout = timeout
        self._host = str(api_client.configuration.host)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="public-api-authz")

    async def _call(self, what: KubeRequest, call: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, call)
        except self._k8s.ApiException as exc:
            # The body may echo the request (the token): only the status is reported.
            log.warning("authz_review_failed", request=what.resource, http_status=exc.status)
            if exc.status in (401, 403):
                remedy = (
                    f"the public API's own credentials were refused ({exc.status}): its ServiceAccount "
                    f"needs create on {what.resource}.{what.group}"
                )
            else:
                remedy = f"the Kubernetes API answered {exc.status} to {what.resource}; retry later"
            raise Refused(
                "unavailable", grpc.StatusCode.UNAVAILABLE, f"cannot check the caller: {remedy}"
            ) from None
        except Exception as exc:
            log.warning("authz_review_unreachable", request=what.resource, error_type=type(exc).__name__)
            raise Refused(
                "unavailable",
                grpc.StatusCode.UNAVAILABLE,
                f"cannot check the caller: the Kubernetes API at {self._host} did not answer; retry later",
            ) from None

    async def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        token = bearer_token(metadata)
        if token is None:
            raise Refused(
                "unauthenticated",
                grpc.StatusCode.UNAUTHENTICATED,
                "this public API requires Kubernetes credentials: send 'authorization: Bearer <token>' "
                "(tether does with --kube, from the kubeconfig)",
            )
        k8s = self._k8s
        body = k8s.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=k8s.V1TokenReviewSpec(token=token),
        )
        review = await self._call(
            API_REQUESTS[0], lambda: self._authn.create_token_review(body, _request_timeout=self._timeout)
        )
        status = review.status
        if status is None or not status.authenticated or status.user is None or not status.user.username:
            raise Refused(
                "unauthenticated",
                grpc.StatusCode.UNAUTHENTICATED,
                "the bearer token was not authenticated by the Kubernetes API (expired or revoked? "
                "refresh the kubeconfig's credentials)",
            )
        user = status.user
        return Caller(
            username=user.username,
            uid=user.uid or "",
            groups=tuple(user.groups or ()),
            extra={key: list(values or ()) for key, values in (user.extra or {}).items()},
        )

    async def authorize(self, caller: Caller, namespace: str) -> None:
        k8s = self._k8s
        body = k8s.V1SubjectAccessReview(
            api_version="authorization.k8s.io/v1",
            kind="SubjectAccessReview",
            spec=k8s.V1SubjectAccessReviewSpec(
                user=caller.username,
                uid=caller.uid or None,
                groups=list(caller.groups) or None,
                extra=caller.extra or None,
                resource_attributes=k8s.V1ResourceAttributes(
                    namespace=namespace or None, verb=TAP_VERB, group=TAP_GROUP, resource=TAP_RESOURCE
                ),
            ),
        )
        review = await self._call(
            API_REQUESTS[1],
            lambda: self._authz.create_subject_access_review(body, _request_timeout=self._timeout),
        )
        status = review.status
        if status is not None and status.allowed:
            return
        binding = (
            f"kubectl create rolebinding tap --clusterrole {TAP_CLUSTER_ROLE} --user {caller.username} "
            f"-n {namespace}"
            if namespace
            else f"kubectl create clusterrolebinding tap --clusterrole {TAP_CLUSTER_ROLE} "
            f"--user {caller.username}"
        )
        reason = f" ({status.reason})" if status is not None and status.reason else ""
        raise Refused(
            "denied",
            grpc.StatusCode.PERMISSION_DENIED,
            f'user "{caller.username}" may not {TAP_VERB} {TAP_RESOURCE}.{TAP_GROUP} {_where(namespace)}'
            f"{reason}; ask for the ClusterRole {TAP_CLUSTER_ROLE} there, e.g. `{binding}`",
        )

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._api_client.close)


async def build_authorizer(
    mode: AuthzMode, settings: Any, *, timeout: float, what_to_check: str = ""
) -> Authorizer:
    """The authorizer of ``--authz``; for ``kubernetes`` the API client from ``settings``
    (:class:`tether.shared.kube.KubeSettings`), once the API server answers. Raises SetupError when there is
    no Kubernetes configuration, FatalError when the API does not answer within its connect timeout."""
    if mode == "none":
        return OpenAuthorizer()
    from tether.shared.kube import api_client, kube_remedy, wait_reachable

    client = api_client(settings, remedy=kube_remedy("use --authz none"))
    await wait_reachable(
        client,
        settings.connect_timeout,
        what_to_check=what_to_check
        or "check --kube-api-url or the kubeconfig, and that the API server is up",
    )
    return KubernetesAuthorizer(client, timeout=timeout)
