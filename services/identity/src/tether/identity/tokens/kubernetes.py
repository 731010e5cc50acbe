"""`kubernetes` tokens: ServiceAccount tokens checked with a TokenReview against the API server.

The review asks for the audience `identity.tether.io`; the token authenticates only if the API server
says so *for that audience*, and the username must be `system:serviceaccount:<ns>:<sa>`. The blocking
kubernetes client runs on a small dedicated thread pool so a slow API server never blocks the loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import structlog
from kubernetes import client as k8s

from tether.identity.errors import IssuerUnavailable, Reason, Unauthenticated
from tether.identity.tokens import MAX_TOKEN_BYTES
from tether.shared.identity_names import InvalidIdentityName, WorkloadIdentity, parse_kubernetes_username

AUDIENCE = "identity.tether.io"

log = structlog.get_logger(__name__)


class KubernetesTokenVerifier:
    def __init__(
        self,
        api_client: k8s.ApiClient,
        trust_domain: str,
        audience: str = AUDIENCE,
        timeout_seconds: float = 5.0,
        max_concurrent_reviews: int = 8,
    ) -> None:
        self._api_client = api_client
        self._api = k8s.AuthenticationV1Api(api_client)
        self._trust_domain = trust_domain
        self._audience = audience
        self._timeout = timeout_seconds
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent_reviews, thread_name_prefix="token-review")

    def _review(self, token: str) -> Any:
        body = k8s.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=k8s.V1TokenReviewSpec(token=token, audiences=[self._audience]),
        )
        return self._api.create_token_review(body, _request_timeout=self._timeout)

    async def verify(self, token: bytes, now: datetime) -> WorkloadIdentity:
        invalid = Unauthenticated(Reason.TOKEN_INVALID, "token was not authenticated by the Kubernetes API")
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise invalid
        try:
            text = token.decode("ascii")
        except UnicodeDecodeError:
            raise invalid from None
        if not text.isprintable() or any(c.isspace() for c in text):
            raise invalid
        loop = asyncio.get_running_loop()
        try:
            review = await loop.run_in_executor(self._pool, self._review, text)
        except k8s.ApiException as error:
            # The exception's body may echo the request: log only the status.
            log.warning("token_review_failed", http_status=error.status)
            raise IssuerUnavailable(Reason.TOKEN_REVIEW_FAILED, "token review failed; retry later") from None
        except Exception as error:
            log.warning("token_review_unreachable", error_type=type(error).__name__)
            raise IssuerUnavailable(Reason.TOKEN_REVIEW_FAILED, "token review failed; retry later") from None
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            raise invalid
        if self._audience not in (status.audiences or []):
            raise Unauthenticated(Reason.TOKEN_INVALID, f"token is not valid for audience {self._audience}")
        try:
            return parse_kubernetes_username(status.user.username or "", self._trust_domain)
        except InvalidIdentityName:
            raise Unauthenticated(
                Reason.TOKEN_INVALID,
                "token does not belong to a ServiceAccount (system:serviceaccount:<ns>:<sa>)",
            ) from None

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._api_client.close)
