"""Tap and Endpoints authorisation with ``--authz kubernetes``, against an emulated Kubernetes API.

No Kubernetes API server can run here: :mod:`tether.public_api.authz_testing` emulates the TokenReview and
SubjectAccessReview endpoints' wire protocol (the review objects the official client sends and reads, the
API server's Status bodies for 401/403) and RBAC's decision for the ClusterRole ``tether-tap``. The public
API runs in the real runtime with its own kubeconfig (a static ServiceAccount token), against a real
nats-server whose users and permissions are generated from ``tether.shared.permissions.ROLES``: the audit
event is published as the ``public-api`` user and read as the read-only ``reader`` user. Calls come from a
real grpcio client with the caller's bearer token in the ``authorization`` metadata.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from tether.destination.config import DestinationConfig
from tether.destination.service import DestinationService
from tether.public_api.authz import API_REQUESTS, TAP_CLUSTER_ROLE
from tether.public_api.authz_testing import ACCESS_REVIEWS, TOKEN_REVIEWS, EmulatedAuthApi
from tether.public_api.config import PublicApiConfig
from tether.public_api.service import PublicApiService
from tether.public_api.testing import WEB_ID
from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.config import config_from
from tether.shared.events import TapAudit, TapEvent, TapRequest, TapRequestInit
from tether.shared.natsserver import EmbeddedNats
from tether.shared.permissions import DEFAULT_USERS
from tether.shared.proto.public.v1 import public_pb2 as pb
from tether.shared.proto.public.v1 import public_pb2_grpc
from tether.shared.proto.telemetry.v1 import telemetry_pb2
from tether.shared.runtime import Runtime
from tether.shared.testing import eventually

ALICE, BOB, CAROL = "alice-token", "bob-token", "carol-token"


@dataclass
class Cluster:
    kube: EmulatedAuthApi
    stub: public_pb2_grpc.ApiStub
    telemetry: Bus
    tap_requests: list[TapRequest]
    audits: list[TapAudit]


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _destination(nats: EmbeddedNats, registry: Path) -> DestinationConfig:
    registry.write_text(
        '{"services": [{"namespace": "shop", "name": "web", "ports": [{"name": "http", "port": 80, '
        f'"target_port": 8080}}], "endpoints": [{{"address": "10.0.0.1", "identity": "{WEB_ID}"}}]}}]}}'
    )
    return config_from(
        DestinationConfig,
        "destination",
        {
            "nats_url": nats.url,
            "nats_nkey": nats.users["destination"].seed_file,
            "admin_addr": "127.0.0.1:0",
            "grpc_addr": "127.0.0.1:0",
        },
        {
            "TETHER_DESTINATION_IDENTITY_DISABLED": "true",
            "TETHER_DESTINATION_SOURCE": "local",
            "TETHER_DESTINATION_REGISTRY_FILE": str(registry),
        },
    )


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    kube = EmulatedAuthApi()
    kube.user(ALICE, "alice", ("developers",))
    kube.user(BOB, "bob")
    kube.user(CAROL, "carol", ("sre",))
    kube.grant("alice", namespace="shop")  # a RoleBinding in shop
    kube.grant("sre", subject_kind="Group")  # a ClusterRoleBinding
    kube.start()
    async with EmbeddedNats(tmp_path / "nats", users=DEFAULT_USERS) as nats:
        destination_config = _destination(nats, tmp_path / "registry.yaml")
        destination_service = DestinationService(destination_config)
        destination = Runtime("destination", destination_config, destination_service, version="9.9.9")
        await destination.start()
        config = config_from(
            PublicApiConfig,
            "public-api",
            {
                "nats_url": nats.url,
                "nats_nkey": nats.users["public-api"].seed_file,
                "admin_addr": "127.0.0.1:0",
                "grpc_addr": "127.0.0.1:0",
                "destination_addr": f"127.0.0.1:{destination_service.grpc_port}",
                "destination_trust_anchors": "",
                "authz": "kubernetes",
                "kubeconfig": str(kube.kubeconfig(tmp_path / "public-api.kubeconfig")),
            },
            {},
        )
        service = PublicApiService(config)
        runtime = Runtime("public-api", config, service, version="9.9.9")
        telemetry = await Bus.connect(nats.settings("telemetry"), name="telemetry-stand-in")
        reader = await Bus.connect(nats.settings("reader"), name="reader")
        tap_requests: list[TapRequest] = []
        audits: list[TapAudit] = []

        async def on_request(request: TapRequest, _subject: str) -> None:
            tap_requests.append(request)

        async def on_audit(audit: TapAudit, _subject: str) -> None:
            audits.append(audit)

        await telemetry.subscribe(subjects.TAP_REQUESTS, TapRequest, on_request)
        await reader.subscribe(subjects.AUDIT_TAP, TapAudit, on_audit)
        await runtime.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        try:
            yield Cluster(kube, public_pb2_grpc.ApiStub(channel), telemetry, tap_requests, audits)
        finally:
            await channel.close()
            await runtime.stop()
            await destination.stop()
            await telemetry.close()
            await reader.close()
            kube.stop()


def _tap(namespace: str = "shop") -> pb.TapRequest:
    return pb.TapRequest(
        target=pb.Resource(namespace=namespace, kind="deployment", name="web"),
        match=telemetry_pb2.TapMatch(method="GET", path_prefix="/orders"),
        max_events_per_second=50,
    )


async def _refused(call: grpc.aio.UnaryStreamCall) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass
    return raised.value


async def test_an_authorised_token_streams_and_the_tap_is_audited(cluster: Cluster) -> None:
    call = cluster.stub.Tap(_tap(), metadata=bearer(ALICE))
    await eventually(lambda: bool(cluster.tap_requests), what="the tap's start on NATS")
    start = cluster.tap_requests[0]
    assert start.action == "start" and start.target is not None and start.target.namespace == "shop"
    await cluster.telemetry.publish(
        subjects.tap_events(start.tap_id),
        TapEvent(
            tap_id=start.tap_id,
            replica="t1",
            namespace="shop",
            pod="web-1",
            direction="inbound",
            stream_id=1,
            at=datetime.now(UTC),
            source=None,
            destination=None,
            source_labels={},
            destination_labels={},
            source_identity="",
            destination_identity=WEB_ID,
            tls="true",
            request_init=TapRequestInit(
                method="GET", scheme="http", authority="web.shop:80", path="/orders/1"
            ),
        ),
    )
    event = await asyncio.wait_for(call.read(), 10)
    assert isinstance(event, telemetry_pb2.TapEvent) and event.request_init.path == "/orders/1"
    call.cancel()

    await eventually(lambda: bool(cluster.audits), what="the audit event, as the read-only user")
    [audit] = cluster.audits
    assert (audit.tap_id, audit.decision, audit.status, audit.authz) == (
        start.tap_id,
        "allowed",
        "OK",
        "kubernetes",
    )
    assert (audit.username, audit.groups) == ("alice", ("developers", "system:authenticated"))
    assert audit.target == start.target and audit.match == start.match
    assert audit.max_events_per_second == 50.0 and audit.peer == "127.0.0.1" and audit.replica

    # What the public API asked the Kubernetes API, exactly: one TokenReview and one SubjectAccessReview.
    reviews = [r for r in cluster.kube.requests if r.resource != "/version"]
    assert [(r.verb, r.group, r.resource) for r in reviews] == [
        ("create", "authentication.k8s.io", "tokenreviews"),
        ("create", "authorization.k8s.io", "subjectaccessreviews"),
    ]
    assert cluster.kube.resource_requests() == set(API_REQUESTS)
    token_review, access_review = reviews
    assert token_review.body == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": ALICE},
    }
    assert access_review.body["spec"] == {
        "user": "alice",
        "uid": "uid-0001",
        "groups": ["developers", "system:authenticated"],
        "resourceAttributes": {
            "namespace": "shop",
            "verb": "watch",
            "group": "tap.tether.io",
            "resource": "tap",
        },
    }
    assert TOKEN_REVIEWS.endswith("tokenreviews") and ACCESS_REVIEWS.endswith("subjectaccessreviews")


async def test_an_unauthorised_caller_is_denied_naming_what_is_missing(cluster: Cluster) -> None:
    error = await _refused(cluster.stub.Tap(_tap(), metadata=bearer(BOB)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    details = error.details() or ""
    assert 'user "bob" may not watch tap.tap.tether.io in namespace "shop"' in details, details
    assert TAP_CLUSTER_ROLE in details and "kubectl create rolebinding" in details
    # alice's RoleBinding is for shop only.
    elsewhere = await _refused(cluster.stub.Tap(_tap("billing"), metadata=bearer(ALICE)))
    assert elsewhere.code() == grpc.StatusCode.PERMISSION_DENIED
    assert 'in namespace "billing"' in (elsewhere.details() or "")
    # carol's group is bound cluster-wide.
    call = cluster.stub.Tap(_tap("billing"), metadata=bearer(CAROL))
    await eventually(lambda: bool(cluster.tap_requests), what="carol's tap")
    call.cancel()

    await eventually(lambda: len(cluster.audits) == 3, what="three audit events")
    assert [(a.username, a.target.namespace, a.decision, a.status) for a in cluster.audits] == [
        ("bob", "shop", "denied", "PERMISSION_DENIED"),
        ("alice", "billing", "denied", "PERMISSION_DENIED"),
        ("carol", "billing", "allowed", "OK"),
    ]
    assert "tap.tap.tether.io" in cluster.audits[0].reason
    assert [r.target.namespace for r in cluster.tap_requests if r.target] == ["billing"], (
        "a refused tap reached telemetry"
    )


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), "requires Kubernetes credentials"),
        (bearer("not-a-known-token"), "not authenticated by the Kubernetes API"),
        ((("authorization", "Basic YWxpY2U6c2VjcmV0"),), "is not 'Bearer <token>'"),
    ],
    ids=["no-token", "unknown-token", "not-bearer"],
)
async def test_no_valid_token_is_unauthenticated(
    cluster: Cluster, metadata: tuple[tuple[str, str], ...], expected: str
) -> None:
    error = await _refused(cluster.stub.Tap(_tap(), metadata=metadata))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert expected in (error.details() or ""), error.details()
    await eventually(lambda: bool(cluster.audits), what="the audit of the refused tap")
    [audit] = cluster.audits
    assert (audit.decision, audit.status, audit.username) == ("unauthenticated", "UNAUTHENTICATED", "")
    assert not cluster.tap_requests
    assert "not-a-known-token" not in repr(audit)


async def test_endpoints_needs_the_permission_in_the_services_namespace(cluster: Cluster) -> None:
    async def resolved() -> bool:
        try:
            await cluster.stub.Endpoints(
                pb.EndpointsRequest(authority="web.shop.svc.cluster.local:80"), metadata=bearer(ALICE)
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
            return False
        return True

    await eventually(resolved, what="alice resolving web.shop")
    answer = await cluster.stub.Endpoints(
        pb.EndpointsRequest(authority="web:80", namespace="shop"), metadata=bearer(ALICE)
    )
    assert [e.addr.port for e in answer.endpoints] == [8080]
    cases = [
        (BOB, pb.EndpointsRequest(authority="web.shop:80"), 'in namespace "shop"'),
        # An IP address may be any namespace's: it needs the permission everywhere.
        (ALICE, pb.EndpointsRequest(authority="10.0.0.1:8080"), "in every namespace"),
        (ALICE, pb.EndpointsRequest(authority="api.billing.svc.cluster.local:80"), 'in namespace "billing"'),
    ]
    for token, request, where in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await cluster.stub.Endpoints(request, metadata=bearer(token))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert where in (raised.value.details() or ""), raised.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await cluster.stub.Endpoints(pb.EndpointsRequest(authority="web.shop:80"))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    by_ip = await cluster.stub.Endpoints(
        pb.EndpointsRequest(authority="10.0.0.1:8080"), metadata=bearer(CAROL)
    )
    assert by_ip.exists
    asked = [r.body["spec"] for r in cluster.kube.requests if r.resource == "subjectaccessreviews"]
    assert {spec["resourceAttributes"].get("namespace", "") for spec in asked} == {"shop", "", "billing"}
    assert cluster.kube.resource_requests() == set(API_REQUESTS)


async def test_the_public_apis_own_rbac_missing_is_unavailable(cluster: Cluster) -> None:
    cluster.kube.forbidden.add("subjectaccessreviews")
    error = await _refused(cluster.stub.Tap(_tap(), metadata=bearer(ALICE)))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "needs create on subjectaccessreviews.authorization.k8s.io" in (error.details() or "")
    await eventually(lambda: bool(cluster.audits), what="the audit")
    assert cluster.audits[0].decision == "unavailable" and cluster.audits[0].username == "alice"


def test_no_kubernetes_configuration_fails_at_start_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.kubeconfig"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tether.public_api",
            "--authz",
            "kubernetes",
            "--kubeconfig",
            str(missing),
            "--admin-addr",
            "127.0.0.1:0",
            "--nats-connect-timeout",
            "1",
            "--destination-trust-anchors",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    expected = f"tether-public-api: error: --kubeconfig {missing} is not a usable kubeconfig"
    assert last.startswith(expected), last
    assert "--authz none" in last and "Traceback" not in done.stderr
