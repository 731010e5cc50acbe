"""Property: whatever mutated CSR, token or identity a client sends, the service answers with a gRPC error
(or, for a mutation that left the request valid, a leaf for the same key and identity) - never a crash,
an INTERNAL error or a hang. Real server, real TLS; the server runs on its own event loop thread so that
hypothesis can drive a blocking gRPC client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from tether.identity.certifier import CertifierSettings
from tether.identity.observe import CertifyReporter, IdentityMetrics
from tether.identity.ratelimit import BucketPolicy
from tether.identity.server import IdentityServer, ServerSettings
from tether.identity.tokens.local import LocalTokenVerifier, mint_token
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.proto.identity.v1 import identity_pb2, identity_pb2_grpc
from tether.shared.testing import RecordingSupervisor

WEB = WorkloadIdentity("web", "shop", "cluster.local")
EXPECTED_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}


class ServerThread:
    def __init__(self, server: IdentityServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.supervisor = RecordingSupervisor()

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(self.supervisor.spawn), self.loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def fuzz_target(ca: Any, mint: Any, csr_for: Any) -> Iterator[dict[str, Any]]:
    metrics = IdentityMetrics(CollectorRegistry())
    unlimited = BucketPolicy(rate=1e6, burst=1e6)
    server = IdentityServer(
        CertifierSettings(identity_limit=unlimited, peer_limit=unlimited),
        ServerSettings(listen="127.0.0.1:0", files=ca.files),
        LocalTokenVerifier(mint.key, "cluster.local"),
        CertifyReporter("fuzz", metrics, None),
        metrics,
    )
    key, csr = csr_for(WEB)
    with (
        ServerThread(server),
        grpc.secure_channel(
            f"127.0.0.1:{server.port}",
            grpc.ssl_channel_credentials(root_certificates=ca.anchor.certificate_pem),
            options=[("grpc.ssl_target_name_override", server.identity.dns_name)],
        ) as channel,
    ):
        yield {
            "stub": identity_pb2_grpc.IdentityStub(channel),
            "key": key,
            "csr": csr,
            "token": mint(WEB, ttl=timedelta(hours=1)),
            "other_token": mint(WorkloadIdentity("api", "shop", "cluster.local")),
            "expired": mint_token(mint.key, WEB, datetime.now(UTC) - timedelta(days=1), timedelta(hours=1)),
        }


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "truncate", "insert", "replace", "random"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if operation == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif operation == "truncate":
            del data[position:]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif operation == "replace" and data:
            data[position] = draw(st.integers(0, 255))
        elif operation == "random":
            data = bytearray(draw(st.binary(max_size=2048)))
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_requests_always_get_a_grpc_error(fuzz_target: dict[str, Any], data: st.DataObject) -> None:
    target = "csr", "token", "identity", "everything"
    what = data.draw(st.sampled_from(target))
    csr, token, identity = fuzz_target["csr"], fuzz_target["token"], WEB.dns_name
    if what in ("csr", "everything"):
        csr = data.draw(mutated(csr))
    if what in ("token", "everything"):
        token = data.draw(
            st.one_of(
                mutated(token),
                st.sampled_from([fuzz_target["other_token"], fuzz_target["expired"], b"", b"tlt1."]),
            )
        )
    if what in ("identity", "everything"):
        identity = data.draw(
            st.one_of(
                st.text(max_size=300),
                mutated(identity.encode()).map(lambda raw: raw.decode("utf-8", "replace")),
            )
        )
    request = identity_pb2.CertifyRequest(identity=identity, token=token, certificate_signing_request=csr)
    try:
        response = fuzz_target["stub"].Certify(request, timeout=10)
    except grpc.RpcError as error:
        assert error.code() in EXPECTED_ERRORS, (error.code(), error.details())
        assert error.details()
        return
    # Only a request that is still valid may succeed, and then only for the same key and identity.
    leaf = x509.load_der_x509_certificate(response.leaf_certificate)
    assert identity == WEB.dns_name
    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key == fuzz_target["key"].public_key()
