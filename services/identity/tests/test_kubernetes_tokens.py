"""The `kubernetes` token verifier against an in-test HTTP server that emulates the Kubernetes API
server's TokenReview endpoint: POST /apis/authentication.k8s.io/v1/tokenreviews with the real request
and response JSON (TokenReview objects, and a Status object for errors). A real API server cannot run
here; this emulates its wire protocol, as seen by the official kubernetes client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from tether.identity.errors import IssuerUnavailable, Unauthenticated
from tether.identity.tokens.kubernetes import AUDIENCE, KubernetesTokenVerifier
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.kube import KubeSettings, api_client
from tether.shared.kube_testing import EmulatedApiServer, Request, status

WEB = WorkloadIdentity("web", "shop", "cluster.local")
SERVICE_TOKEN = "identity-service-own-sa-token"
TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def _review(spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": spec,
        "status": status,
    }


def _authenticated(username: str, audiences: list[str]) -> dict[str, Any]:
    namespace = username.split(":")[2] if username.count(":") == 3 else "default"
    return {
        "authenticated": True,
        "user": {
            "username": username,
            "uid": "7a0e0b4e-5a4b-4d8e-9b6f-5f0c1b2a3c4d",
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            ],
            "extra": {"authentication.kubernetes.io/pod-name": ["web-5d8f7c9b6-x2x7q"]},
        },
        "audiences": audiences,
    }


@dataclass
class FakeApiServer:
    """Answers TokenReviews from `tokens`: token -> (HTTP status, status object or Status body)."""

    tokens: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def answer(self, request: Request) -> tuple[int, dict[str, Any]]:
        body = json.loads(request.body)
        self.requests.append({"path": request.target, "headers": dict(request.headers), "body": body})
        if (
            request.target != TOKEN_REVIEW_PATH
            or request.headers.get("authorization") != f"Bearer {SERVICE_TOKEN}"
        ):
            return 401, status(401, "Unauthorized", "Unauthorized")
        code, review = self.tokens.get(
            body["spec"]["token"], (201, {"user": {}, "error": "invalid bearer token"})
        )
        return (201, _review(body["spec"], review)) if code == 201 else (code, review)


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer()
    with EmulatedApiServer(fake.answer, keep_alive=False, poll_interval=0.01) as server:
        fake.url = server.url
        yield fake


def _verifier(url: str) -> KubernetesTokenVerifier:
    return KubernetesTokenVerifier(
        api_client(KubeSettings(api_url=url, bearer_token=SERVICE_TOKEN), remedy=""),
        "cluster.local",
        timeout_seconds=5,
    )


async def test_token_review_request_and_authenticated_identity(
    api_server: FakeApiServer, secrets: Any
) -> None:
    secrets.add("sa-token-web")
    api_server.tokens["sa-token-web"] = (201, _authenticated("system:serviceaccount:shop:web", [AUDIENCE]))
    verifier = _verifier(api_server.url)
    try:
        identity = await verifier.verify(b"sa-token-web", datetime.now(UTC))
    finally:
        await verifier.close()
    assert identity == WEB
    [request] = api_server.requests
    assert request["path"] == TOKEN_REVIEW_PATH
    assert request["body"] == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": "sa-token-web", "audiences": ["identity.tether.io"]},
    }


REFUSED = {
    "not_authenticated": (201, {"user": {}, "error": "[invalid bearer token, token has been invalidated]"}),
    "wrong_audience": (
        201,
        _authenticated("system:serviceaccount:shop:web", ["https://kubernetes.default.svc"]),
    ),
    "no_audiences_in_status": (201, _authenticated("system:serviceaccount:shop:web", [])),
    "not_a_serviceaccount": (201, _authenticated("system:node:worker-1", [AUDIENCE])),
    "namespace_not_dns_label": (201, _authenticated("system:serviceaccount:Shop_1:web", [AUDIENCE])),
    "serviceaccount_not_dns_label": (201, _authenticated("system:serviceaccount:shop:web.admin", [AUDIENCE])),
    "extra_username_part": (201, _authenticated("system:serviceaccount:shop:web:x", [AUDIENCE])),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_token_review_refusals_are_unauthenticated(
    api_server: FakeApiServer, case: str, secrets: Any
) -> None:
    token = f"sa-token-{case}"
    secrets.add(token)
    api_server.tokens[token] = REFUSED[case]
    verifier = _verifier(api_server.url)
    try:
        with pytest.raises(Unauthenticated):
            await verifier.verify(token.encode(), datetime.now(UTC))
    finally:
        await verifier.close()


async def test_forbidden_review_is_unavailable_and_logs_no_token(
    api_server: FakeApiServer, secrets: Any
) -> None:
    """The identity service lacks RBAC for tokenreviews: the API server answers a 403 Status."""
    secrets.add("sa-token-forbidden")
    api_server.tokens["sa-token-forbidden"] = (
        403,
        status(
            403,
            "Forbidden",
            "tokenreviews.authentication.k8s.io is forbidden: User "
            '"system:serviceaccount:tether:identity" cannot create resource "tokenreviews"',
            {"group": "authentication.k8s.io", "kind": "tokenreviews"},
        ),
    )
    verifier = _verifier(api_server.url)
    try:
        with pytest.raises(IssuerUnavailable):
            await verifier.verify(b"sa-token-forbidden", datetime.now(UTC))
    finally:
        await verifier.close()


async def test_unreachable_api_server_is_unavailable() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    verifier = _verifier(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(IssuerUnavailable):
            await verifier.verify(b"sa-token", datetime.now(UTC))
    finally:
        await verifier.close()


async def test_non_ascii_token_is_refused_without_a_review(api_server: FakeApiServer) -> None:
    verifier = _verifier(api_server.url)
    try:
        for token in (b"", b"\xff\xfe", b"two words", b"x" * 9000):
            with pytest.raises(Unauthenticated):
                await verifier.verify(token, datetime.now(UTC))
    finally:
        await verifier.close()
    assert api_server.requests == []


async def test_certify_with_kubernetes_tokens_over_grpc(
    api_server: FakeApiServer, start_identity: Any, csr_for: Any, secrets: Any
) -> None:
    secrets.add("sa-token-web")
    secrets.add("sa-token-api")
    api_server.tokens["sa-token-web"] = (201, _authenticated("system:serviceaccount:shop:web", [AUDIENCE]))
    api_server.tokens["sa-token-api"] = (201, _authenticated("system:serviceaccount:shop:api", [AUDIENCE]))
    running = await start_identity(verifier=_verifier(api_server.url))
    _, csr = csr_for(WEB)

    response = await running.certify(WEB.dns_name, b"sa-token-web", csr)
    assert response.leaf_certificate

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await running.certify(WEB.dns_name, b"sa-token-api", csr)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await running.certify(WEB.dns_name, b"sa-token-unknown", csr)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not authenticated by the Kubernetes API" in (raised.value.details() or "")
