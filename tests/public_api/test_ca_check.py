"""``Check`` reports the trust anchor's and issuer's validity from what a real identity service publishes on a
real nats-server: the public API never reads the CA's files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from tether.identity.bootstrap import generate_issuer, generate_trust_anchor, write_file
from tether.identity.config import IdentityConfig
from tether.identity.service import IdentityService
from tether.identity.tokens.local import generate_token_key_file
from tether.public_api.config import PublicApiConfig
from tether.public_api.service import PublicApiService
from tether.shared.config import config_from
from tether.shared.natsserver import EmbeddedNats
from tether.shared.proto.public.v1 import public_pb2 as pb
from tether.shared.proto.public.v1 import public_pb2_grpc
from tether.shared.runtime import Runtime
from tether.shared.testing import eventually

ANCHORS = "trust anchors are valid for at least 60 days"
ISSUER = "issuer certificate is valid for at least 60 days and chains to the trust anchors"


@dataclass
class Mesh:
    stub: public_pb2_grpc.ApiStub
    ca: Path

    async def identity_result(self, description: str) -> pb.CheckResult:
        check = await self.stub.Check(pb.CheckRequest())
        found = [r for r in check.results if r.description == description]
        assert len(found) == 1, [r.description for r in check.results]
        assert found[0].category == "identity"
        result: pb.CheckResult = found[0]
        return result


def write_ca(directory: Path, issuer_lifetime: timedelta) -> None:
    now = datetime.now(UTC) - timedelta(minutes=1)
    anchor = generate_trust_anchor(now)
    issuer = generate_issuer(anchor, now, lifetime=issuer_lifetime)
    write_file(directory / "ca.crt", anchor.certificate_pem, 0o644)
    write_file(directory / "issuer.crt", issuer.certificate_pem, 0o644)
    write_file(directory / "issuer.key", issuer.key_pem, 0o600)


@pytest.fixture
async def mesh(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Mesh]:
    # An issuer that expires in 30 days: inside the 60-day warning.
    write_ca(tmp_path, timedelta(days=30))
    write_file(tmp_path / "token.key", generate_token_key_file(), 0o600)
    identity_config = config_from(
        IdentityConfig,
        "identity",
        {
            "nats_url": nats_server.url,
            "admin_addr": "127.0.0.1:0",
            "grpc_addr": "127.0.0.1:0",
            "trust_anchors": str(tmp_path / "ca.crt"),
            "issuer_certificate": str(tmp_path / "issuer.crt"),
            "issuer_key": str(tmp_path / "issuer.key"),
            "token_verifier": "local",
            "token_key": str(tmp_path / "token.key"),
            "reload_interval": "0.1",
        },
        {},
    )
    identity = Runtime("identity", identity_config, IdentityService(identity_config), version="9.9.9")
    api_service = PublicApiService(
        config_from(
            PublicApiConfig,
            "public-api",
            {
                "nats_url": nats_server.url,
                "admin_addr": "127.0.0.1:0",
                "grpc_addr": "127.0.0.1:0",
                "destination_trust_anchors": "",  # Endpoints is not what this test asks
            },
            {},
        )
    )
    api = Runtime("public-api", api_service.config, api_service, version="9.9.9")
    await api.start()
    await identity.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{api_service.port}")
    try:
        yield Mesh(public_pb2_grpc.ApiStub(channel), tmp_path)
    finally:
        await channel.close()
        await identity.stop()
        await api.stop()


async def test_expiry_warns_and_a_withdrawn_anchor_fails(mesh: Mesh) -> None:
    async def issuer_warned() -> bool:
        return (await mesh.identity_result(ISSUER)).status == pb.CHECK_STATUS_WARNING

    await eventually(issuer_warned, what="the issuer's expiry warning")
    issuer = await mesh.identity_result(ISSUER)
    assert issuer.ok
    assert "issuer CN=issuer.identity.cluster.local expires on" in issuer.hint
    assert "(in 29 days)" in issuer.hint and "rotate the issuer" in issuer.hint
    # The anchor lives ten years: fine.
    anchors = await mesh.identity_result(ANCHORS)
    assert anchors.status == pb.CHECK_STATUS_OK and anchors.hint == ""

    # Rotation gone wrong: new anchor files the served issuer does not chain to. Identity stops issuing.
    now = datetime.now(UTC) - timedelta(minutes=1)
    write_file(mesh.ca / "ca.crt", generate_trust_anchor(now).certificate_pem, 0o644)

    async def issuer_failed() -> bool:
        return (await mesh.identity_result(ISSUER)).status == pb.CHECK_STATUS_ERROR

    await eventually(issuer_failed, what="the unusable issuer reported as an error")
    issuer = await mesh.identity_result(ISSUER)
    assert not issuer.ok and "has no usable issuer" in issuer.hint
    assert "does not chain" in issuer.hint
    check = await mesh.stub.Check(pb.CheckRequest())
    assert check.status == pb.CHECK_STATUS_ERROR and not check.ok

    # Fixed: a good issuer for the new files, valid for a year.
    write_ca(mesh.ca, timedelta(days=365))

    async def issuer_ok() -> bool:
        return (await mesh.identity_result(ISSUER)).status == pb.CHECK_STATUS_OK

    await eventually(issuer_ok, what="the fixed issuer reported ok")
