"""Certify end to end: a proxy-like grpc.aio client over real TLS against a running identity server."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from tether.shared.identity_names import WorkloadIdentity

WEB = WorkloadIdentity("web", "shop", "cluster.local")


def verify_chain(
    anchor_pem: bytes, leaf_der: bytes, chain_der: list[bytes], identity: WorkloadIdentity
) -> None:
    """Runs cryptography's RFC 5280 path validation as both a TLS client and a TLS server would."""
    store = Store(x509.load_pem_x509_certificates(anchor_pem))
    leaf = x509.load_der_x509_certificate(leaf_der)
    intermediates = [x509.load_der_x509_certificate(der) for der in chain_der]
    builder = PolicyBuilder().store(store).time(datetime.now(UTC))
    builder.build_server_verifier(x509.DNSName(identity.dns_name)).verify(leaf, intermediates)
    verified = builder.build_client_verifier().verify(leaf, intermediates)
    assert verified.subjects is not None
    assert x509.DNSName(identity.dns_name) in verified.subjects
    assert x509.UniformResourceIdentifier(identity.spiffe_id) in verified.subjects


async def test_proxy_certifies_and_chain_verifies_against_trust_anchor(
    start_identity: Any, mint: Any, csr_for: Any
) -> None:
    running = await start_identity()
    key, csr = csr_for(WEB)
    before = datetime.now(UTC).replace(microsecond=0)

    response = await running.certify(WEB.dns_name, mint(WEB), csr)

    after = datetime.now(UTC)
    verify_chain(
        running.ca.anchor.certificate_pem,
        response.leaf_certificate,
        list(response.intermediate_certificates),
        WEB,
    )
    leaf = x509.load_der_x509_certificate(response.leaf_certificate)
    assert list(response.intermediate_certificates) == [
        running.ca.issuer.certificate.public_bytes(serialization.Encoding.DER)
    ]
    assert leaf.public_key() == key.public_key()
    alt_names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt_names.get_values_for_type(x509.DNSName) == [WEB.dns_name]
    assert alt_names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/shop/sa/web"
    ]
    assert len(alt_names) == 2
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not (usage.value.key_cert_sign or usage.value.crl_sign or usage.value.key_encipherment)
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    assert 0 < leaf.serial_number < 2**128
    assert before - timedelta(seconds=21) <= leaf.not_valid_before_utc <= after - timedelta(seconds=19)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=24, seconds=20)
    assert response.valid_until.ToDatetime(tzinfo=UTC) == leaf.not_valid_after_utc
    assert running.metric("tether_identity_certificates_issued_total") == 1.0
    assert running.metric("tether_identity_certify_duration_seconds_count") == 1.0


async def test_leaf_lifetime_is_configurable_and_serials_are_random(
    start_identity: Any, mint: Any, csr_for: Any
) -> None:
    running = await start_identity(leaf_lifetime=timedelta(minutes=1))
    serials = set()
    for _ in range(3):
        _, csr = csr_for(WEB)
        response = await running.certify(WEB.dns_name, mint(WEB), csr)
        leaf = x509.load_der_x509_certificate(response.leaf_certificate)
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(minutes=1, seconds=20)
        serials.add(leaf.serial_number)
    assert len(serials) == 3


async def test_leaf_not_after_is_clamped_to_issuer_expiry(
    start_identity: Any, mint: Any, csr_for: Any, ca: Any
) -> None:
    from tether.identity.bootstrap import generate_issuer

    short = generate_issuer(ca.anchor, datetime.now(UTC), "cluster.local", lifetime=timedelta(hours=2))
    ca.write(issuer=short)
    running = await start_identity()
    _, csr = csr_for(WEB)
    response = await running.certify(WEB.dns_name, mint(WEB), csr)
    leaf = x509.load_der_x509_certificate(response.leaf_certificate)
    assert leaf.not_valid_after_utc == short.certificate.not_valid_after_utc
    assert running.metric("tether_identity_issuer_not_after_timestamp_seconds") == (
        short.certificate.not_valid_after_utc.timestamp()
    )


async def test_server_presents_certificate_for_its_own_identity(start_identity: Any) -> None:
    """The client channel verifies the serving certificate against the trust anchor and the name
    identity.tether.serviceaccount.identity.cluster.local; a client trusting another anchor fails."""
    from tether.identity.bootstrap import generate_trust_anchor
    from tether.shared.proto.identity.v1 import identity_pb2, identity_pb2_grpc

    running = await start_identity()
    assert running.server.identity.dns_name == "identity.tether.serviceaccount.identity.cluster.local"
    other_anchor = generate_trust_anchor(datetime.now(UTC))
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{running.server.port}",
        grpc.ssl_channel_credentials(root_certificates=other_anchor.certificate_pem),
        options=[("grpc.ssl_target_name_override", running.server.identity.dns_name)],
    )
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await identity_pb2_grpc.IdentityStub(channel).Certify(identity_pb2.CertifyRequest(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_two_replicas_share_only_the_files(start_identity: Any, mint: Any, csr_for: Any) -> None:
    first = await start_identity(replica="identity-0")
    second = await start_identity(replica="identity-1")
    for running in (first, second):
        _, csr = csr_for(WEB)
        response = await running.certify(WEB.dns_name, mint(WEB), csr)
        verify_chain(
            running.ca.anchor.certificate_pem,
            response.leaf_certificate,
            list(response.intermediate_certificates),
            WEB,
        )


async def test_logs_audit_issuance_without_secret_material(
    start_identity: Any, mint: Any, csr_for: Any, log_output: io.StringIO
) -> None:
    """The autouse `secrets` fixture scans every test's log lines; this test also checks the audit lines
    are there, so the scan is known to look at real output."""
    running = await start_identity()
    _, csr = csr_for(WEB)
    await running.certify(WEB.dns_name, mint(WEB), csr)
    with pytest.raises(grpc.aio.AioRpcError):
        await running.certify(WEB.dns_name, b"tlt1.forged.token", csr)
    lines = [json.loads(line) for line in log_output.getvalue().splitlines() if line.startswith("{")]
    events = {line["event"] for line in lines}
    assert {"issuer_loaded", "certificate_issued", "certify_rejected"} <= events
    issued = next(line for line in lines if line["event"] == "certificate_issued")
    assert issued["identity"] == WEB.dns_name and len(issued["fingerprint_sha256"]) == 64
    assert "forged" not in log_output.getvalue()
