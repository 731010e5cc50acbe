"""The rendered RBAC against what the code really asks of the API.

Each component that talks to Kubernetes runs its real client code (the destination's Kubernetes source,
identity's TokenReview verifier, the public API's tap authorisation, the bootstrap Job) against an API
server emulated on loopback (tests/deploy/kube_emulator.py) that authorises every request with the
rendered RBAC of the component's ServiceAccount and records it. Every request must be allowed, and every
grant must be used by some request or be listed below as granted by the contract though unused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from tether.shared.identity_names import WorkloadIdentity
from tether.shared.testing import eventually

from .kube_emulator import KubeEmulator
from .manifests import NAMESPACE, Manifests
from .pods import parse
from .rbac import ApiRequest, Grant, allowed, grants, service_account

Recorder = Callable[[Manifests, KubeEmulator], Awaitable[list[ApiRequest]]]


def _config(manifests: Manifests, component: str, api: KubeEmulator) -> Any:
    """The component's configuration as rendered, but for the emulated API's address: with no
    --kube-api-url it would look for the in-cluster one, which presents the pod's ServiceAccount token."""
    config = parse(manifests, manifests.container_of(component)).config
    return msgspec.structs.replace(config, kube=msgspec.structs.replace(config.kube, api_url=api.url))


def _as(api: KubeEmulator, manifests: Manifests, account: str) -> str:
    """Requests without a token (an explicit --kube-api-url sends none) act as ``account``."""
    user = service_account(NAMESPACE, account)
    api.users[""] = (user, grants(manifests).get(user, set()))
    return user


async def destination_source(manifests: Manifests, api: KubeEmulator) -> list[ApiRequest]:
    """What DestinationService.prepare() and its Kubernetes source do: the API's /version, then list and
    watch of Services, EndpointSlices and Pods."""
    from tether.destination.metrics import DestinationMetrics
    from tether.destination.sources.kubernetes import KubernetesSource
    from tether.shared.kube import KubeSettings, api_client, wait_reachable

    user = _as(api, manifests, "tether-destination")
    config = _config(manifests, "destination", api)
    settings = KubeSettings.from_config(config.kube)
    client = api_client(settings, remedy="")
    await wait_reachable(client, settings.connect_timeout, what_to_check="")
    source = KubernetesSource(
        client,
        config.trust_domain,
        DestinationMetrics(CollectorRegistry()),
        watch_timeout=config.kube_watch_timeout,
    )

    def no_tasks(*_: Any) -> Any:
        raise AssertionError("the Kubernetes source starts no supervised task")

    watched = {"services", "endpointslices", "pods"}
    try:
        await source.start(lambda keys: None, no_tasks)
        await eventually(
            lambda: (
                source.synced
                and {r.request.resource for r in api.requests_of(user) if r.request.verb == "watch"}
                == watched
            ),
            what=lambda: f"the source's lists and watches: {api.requests_of(user)}",
        )
    finally:
        await source.stop()
        await asyncio.to_thread(client.close)
    return [r.request for r in api.requests_of(user)]


async def identity_token_verifier(manifests: Manifests, api: KubeEmulator) -> list[ApiRequest]:
    """identity's `--token-verifier kubernetes`, built as its service builds it, reviewing a proxy's token."""
    from tether.identity.service import build_verifier

    user = _as(api, manifests, "tether-identity")
    config = _config(manifests, "identity", api)
    verifier = await build_verifier(config)
    try:
        identity = await verifier.verify(b"a-proxy-token", datetime.now(UTC))
    finally:
        await verifier.close()
    assert identity == WorkloadIdentity("web", "shop", config.trust_domain)
    return [r.request for r in api.requests_of(user)]


async def public_api_tap_authorisation(manifests: Manifests, api: KubeEmulator) -> list[ApiRequest]:
    """The public API's `--authz kubernetes`: a caller's TokenReview, then SubjectAccessReviews for a tap
    in a namespace and for Endpoints of an IP authority (every namespace)."""
    from tether.public_api.authz import build_authorizer
    from tether.shared.kube import KubeSettings

    user = _as(api, manifests, "tether-public-api")
    config = _config(manifests, "public-api", api)
    authorizer = await build_authorizer(
        config.authz, KubeSettings.from_config(config.kube), timeout=config.authz_timeout
    )
    try:
        caller = await authorizer.authenticate([("authorization", "Bearer a-users-kubeconfig-token")])
        await authorizer.authorize(caller, "shop")
        await authorizer.authorize(caller, "")
    finally:
        await authorizer.close()
    return [r.request for r in api.requests_of(user)]


async def bootstrap_job(manifests: Manifests, api: KubeEmulator) -> list[ApiRequest]:
    """The bootstrap Job's requests over its paths (first run, rerun, a user's own issuer, a lost race),
    recorded by its own emulated API (tether.identity.kube_bootstrap.testing)."""
    from tether.identity.kube_bootstrap.testing import bootstrap_requests

    recorded = await asyncio.to_thread(bootstrap_requests, NAMESPACE)
    return [ApiRequest(r.verb, r.api_group, r.resource, r.namespace, r.name, r.path) for r in recorded]


# ---------------------------------------------------------------------------------------------------------
# THE HOOK: ServiceAccount -> how to record what its component asks of the Kubernetes API. A component that
# starts talking to the API (or a new path of one that does) is added here; the test below fails for a
# ServiceAccount that is granted anything but has no recorder.
RECORDERS: dict[str, Recorder] = {
    "tether-destination": destination_source,
    "tether-identity": identity_token_verifier,
    "tether-public-api": public_api_tap_authorisation,
    "tether-bootstrap": bootstrap_job,
}

#: Granted though no recorded request uses it, each with why it stays: nothing, now.
GRANTED_UNUSED: dict[str, set[Grant]] = {}
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default(rendered: dict[str, Manifests]) -> Manifests:
    assert grants(rendered["ha"]) == grants(rendered["default"])  # the overlay changes no RBAC
    return rendered["default"]


def test_every_account_with_grants_is_recorded(default: Manifests) -> None:
    granted = {user.rsplit(":", 1)[1] for user, g in grants(default).items() if g}
    assert granted == set(RECORDERS)


@pytest.mark.parametrize("account", sorted(RECORDERS))
async def test_what_the_code_asks_is_granted_and_nothing_more(default: Manifests, account: str) -> None:
    with KubeEmulator().serving() as api:
        requests = await RECORDERS[account](default, api)
        refused = [r for r in api.recorded if r.code in (401, 403)]
    assert requests, f"{account}: nothing recorded"
    assert not refused, f"{account}: refused by the rendered RBAC: {[str(r.request) for r in refused]}"
    granted = grants(default)[service_account(NAMESPACE, account)]
    for request in requests:
        assert allowed(granted, request), f"{account}: {request} is not granted"
    used = {grant for grant in granted if any(grant.allows(r) for r in requests)}
    unused = granted - used
    assert unused == GRANTED_UNUSED.get(account, set()), (
        f"{account}: granted but unused {sorted(unused - GRANTED_UNUSED.get(account, set()))}; "
        f"listed as unused but used {sorted(GRANTED_UNUSED.get(account, set()) - unused)}"
    )


async def test_the_emulated_api_refuses_what_rbac_does_not_grant(default: Manifests) -> None:
    """The check above has teeth: the emulator answers 403 to what the ServiceAccount is not granted."""
    from tether.shared.kube import KubeSettings, api_client

    with KubeEmulator().serving() as api:
        _as(api, default, "tether-destination")
        client = api_client(KubeSettings(api_url=api.url), remedy="")
        from kubernetes import client as kube_client
        from kubernetes.client.exceptions import ApiException

        core = kube_client.CoreV1Api(client)
        with pytest.raises(ApiException) as raised:
            await asyncio.to_thread(core.list_namespaced_secret, NAMESPACE)
        assert raised.value.status == 403
        await asyncio.to_thread(core.list_pod_for_all_namespaces)  # granted
        client.close()
    assert [r.code for r in api.recorded] == [403, 200]
