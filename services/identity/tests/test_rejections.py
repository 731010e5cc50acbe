"""One test per Certify rejection rule: the gRPC status and a message naming the broken rule, over a real
grpc.aio TLS connection. Also the metrics by reason."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tether.identity.bootstrap import generate_issuer, generate_trust_anchor
from tether.identity.ratelimit import BucketPolicy
from tether.identity.tokens.local import TokenKey, mint_token
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.proto.identity.v1 import identity_pb2, identity_pb2_grpc
from tether.shared.testing import eventually as poll_until

WEB = WorkloadIdentity("web", "shop", "cluster.local")
API = WorkloadIdentity("api", "shop", "cluster.local")

# Each case: (identity to request, a function (csr_for, mint) -> (token, csr), status, message, reason).
Build = Callable[[Any, Any], tuple[bytes, bytes]]


def _ok_token(csr_der: bytes) -> Build:
    return lambda _csr_for, mint: (mint(WEB), csr_der)


def _with_csr(**kwargs: Any) -> Build:
    return lambda csr_for, mint: (mint(WEB), csr_for(WEB, **kwargs)[1])


def _bad_signature(csr_for: Any, mint: Any) -> tuple[bytes, bytes]:
    der = bytearray(csr_for(WEB)[1])
    der[-5] ^= 0x01  # inside the ECDSA signature value
    return mint(WEB), bytes(der)


def _oversized(csr_for: Any, mint: Any) -> tuple[bytes, bytes]:
    return mint(WEB), csr_for(WEB)[1] + b"\x00" * 8192


def _garbage(csr_for: Any, mint: Any) -> tuple[bytes, bytes]:
    return mint(WEB), b"\x30\x82\x01\x00not a csr"


def _foreign_token(csr_for: Any, _mint: Any) -> tuple[bytes, bytes]:
    forged = mint_token(TokenKey(b"k" * 32), WEB, datetime.now(UTC), timedelta(hours=1))
    return forged, csr_for(WEB)[1]


def _other_identity_token(csr_for: Any, mint: Any) -> tuple[bytes, bytes]:
    return mint(API), csr_for(WEB)[1]


INVALID = grpc.StatusCode.INVALID_ARGUMENT
CASES: dict[str, tuple[str, Build, grpc.StatusCode, str, str]] = {
    "csr_not_der": (WEB.dns_name, _garbage, INVALID, "not a DER-encoded PKCS#10", "csr_malformed"),
    "csr_empty": (WEB.dns_name, lambda c, m: (m(WEB), b""), INVALID, "CSR is empty", "csr_malformed"),
    "csr_bad_signature": (
        WEB.dns_name,
        _bad_signature,
        INVALID,
        "signature does not verify",
        "csr_bad_signature",
    ),
    "csr_rsa_key": (
        WEB.dns_name,
        _with_csr(key=rsa.generate_private_key(65537, 2048)),
        INVALID,
        "ECDSA P-256",
        "csr_key_type",
    ),
    "csr_p384_key": (
        WEB.dns_name,
        _with_csr(key=ec.generate_private_key(ec.SECP384R1())),
        INVALID,
        "ECDSA P-256",
        "csr_key_type",
    ),
    "csr_ed25519_key": (
        WEB.dns_name,
        _with_csr(key=ed25519.Ed25519PrivateKey.generate()),
        INVALID,
        "ECDSA P-256",
        "csr_key_type",
    ),
    "csr_no_san": (
        WEB.dns_name,
        _with_csr(dns_names=[], uris=[]),
        INVALID,
        "exactly one DNS SAN",
        "csr_dns_san",
    ),
    "csr_two_dns_sans": (
        WEB.dns_name,
        _with_csr(dns_names=[WEB.dns_name, API.dns_name]),
        INVALID,
        "exactly one DNS SAN",
        "csr_dns_san",
    ),
    "csr_dns_san_mismatch": (
        WEB.dns_name,
        _with_csr(dns_names=[API.dns_name], uris=[]),
        INVALID,
        "exactly one DNS SAN",
        "csr_dns_san",
    ),
    "csr_common_name_mismatch": (
        WEB.dns_name,
        _with_csr(common_name="admin"),
        INVALID,
        "common name must be empty or equal",
        "csr_common_name",
    ),
    "csr_ip_san": (
        WEB.dns_name,
        _with_csr(extra=[x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]),
        INVALID,
        "IP address SANs",
        "csr_ip_san",
    ),
    "csr_email_san": (
        WEB.dns_name,
        _with_csr(extra=[x509.RFC822Name("web@example.com")]),
        INVALID,
        "e-mail SANs",
        "csr_email_san",
    ),
    "csr_foreign_uri_san": (
        WEB.dns_name,
        _with_csr(uris=[API.spiffe_id]),
        INVALID,
        "only have one URI SAN",
        "csr_uri_san",
    ),
    "csr_directory_name_san": (
        WEB.dns_name,
        _with_csr(extra=[x509.DirectoryName(x509.Name([]))]),
        INVALID,
        "only have DNS and SPIFFE URI SANs",
        "csr_other_san",
    ),
    "csr_too_large": (WEB.dns_name, _oversized, INVALID, "larger than 8192 bytes", "request_too_large"),
    "identity_malformed": (
        "web.shop.cluster.local",
        _ok_token(b""),
        INVALID,
        "invalid identity",
        "invalid_identity",
    ),
    "identity_bad_label": (
        "Web_1.shop.serviceaccount.identity.cluster.local",
        _ok_token(b""),
        INVALID,
        "DNS-1123",
        "invalid_identity",
    ),
    "identity_foreign_trust_domain": (
        "web.shop.serviceaccount.identity.example.org",
        _ok_token(b""),
        INVALID,
        "not in this trust domain",
        "invalid_identity",
    ),
    "token_garbage": (
        WEB.dns_name,
        lambda c, m: (b"not-a-token", c(WEB)[1]),
        grpc.StatusCode.UNAUTHENTICATED,
        "not a valid local mesh token",
        "token_invalid",
    ),
    "token_wrong_key": (
        WEB.dns_name,
        _foreign_token,
        grpc.StatusCode.UNAUTHENTICATED,
        "not a valid local mesh token",
        "token_invalid",
    ),
    "token_for_other_identity": (
        WEB.dns_name,
        _other_identity_token,
        grpc.StatusCode.PERMISSION_DENIED,
        "different identity",
        "identity_mismatch",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_rejection_rule(case: str, start_identity: Any, csr_for: Any, mint: Any) -> None:
    identity, build, status, message, reason = CASES[case]
    running = await start_identity()
    token, csr = build(csr_for, mint)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await running.certify(identity, token, csr)

    assert raised.value.code() == status
    assert message in (raised.value.details() or "")
    assert running.metric("tether_identity_certify_rejections_total", {"reason": reason}) == 1.0
    assert running.metric("tether_identity_certificates_issued_total") == 0.0


async def test_rejects_expired_token(start_identity: Any, csr_for: Any, mint: Any) -> None:
    from tether.identity.tokens.local import LocalTokenVerifier

    # The verifier is given a clock-independent check: a token whose exp is already in the past.
    token = mint_token(mint.key, WEB, datetime.now(UTC) - timedelta(hours=2), timedelta(hours=1))
    mint.secrets.add(token)
    running = await start_identity(verifier=LocalTokenVerifier(mint.key, "cluster.local"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await running.certify(WEB.dns_name, token, csr_for(WEB)[1])
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "token has expired" in (raised.value.details() or "")


async def test_rate_limit_per_identity_spares_other_identities(
    start_identity: Any, csr_for: Any, mint: Any
) -> None:
    running = await start_identity(identity_limit=BucketPolicy(rate=0.001, burst=2))
    for _ in range(2):
        await running.certify(WEB.dns_name, mint(WEB), csr_for(WEB)[1])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await running.certify(WEB.dns_name, mint(WEB), csr_for(WEB)[1])
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many requests for this identity" in (raised.value.details() or "")
    # Another workload from the same address is not slowed down.
    await running.certify(API.dns_name, mint(API), csr_for(API)[1])


async def test_rate_limit_per_peer_address_spares_other_addresses(
    start_identity: Any, csr_for: Any, mint: Any
) -> None:
    """Two client addresses, 127.0.0.1 and ::1, against a listener on both loopbacks."""
    running = await start_identity(peer_limit=BucketPolicy(rate=0.001, burst=2), listen="localhost:0")
    for _ in range(2):
        await running.certify(WEB.dns_name, mint(WEB), csr_for(WEB)[1])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await running.certify(WEB.dns_name, mint(WEB), csr_for(WEB)[1])
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many requests from this address" in (raised.value.details() or "")

    async with grpc.aio.secure_channel(
        f"[::1]:{running.server.port}",
        grpc.ssl_channel_credentials(root_certificates=running.ca.anchor.certificate_pem),
        options=[("grpc.ssl_target_name_override", running.server.identity.dns_name)],
    ) as channel:
        stub = identity_pb2_grpc.IdentityStub(channel)
        _, csr = csr_for(WEB)
        request = identity_pb2.CertifyRequest(
            identity=WEB.dns_name, token=mint(WEB), certificate_signing_request=csr
        )
        response = await stub.Certify(request, timeout=10)
    assert response.leaf_certificate


async def test_issuer_not_chaining_to_trust_anchor_is_refused(
    start_identity: Any, ca: Any, csr_for: Any, mint: Any
) -> None:
    """An issuer signed by another root: the server refuses it, is not ready, and clients get UNAVAILABLE."""
    stranger = generate_trust_anchor(datetime.now(UTC))
    ca.write(issuer=generate_issuer(stranger, datetime.now(UTC)))
    running = await start_identity()
    assert running.server.authority is None and not running.server.ready()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await running.certify(WEB.dns_name, mint(WEB), csr_for(WEB)[1], timeout=5)
    # No valid issuer means no trusted serving certificate either: the TLS handshake fails.
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert running.metric("tether_identity_issuer_loaded") == 0.0


async def test_unavailable_when_issuer_withdrawn(
    start_identity: Any, ca: Any, csr_for: Any, mint: Any
) -> None:
    """The anchors file is replaced by an unrelated anchor while serving: the issuer no longer chains, so
    Certify answers UNAVAILABLE (over the still-trusted serving connection) and /ready goes false."""
    running = await start_identity()
    await running.certify(WEB.dns_name, mint(WEB), csr_for(WEB)[1])
    ca.write(anchor=generate_trust_anchor(datetime.now(UTC)))
    await poll_until(lambda: not running.server.ready())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await running.certify(WEB.dns_name, mint(WEB), csr_for(WEB)[1])
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no valid issuer is loaded" in (raised.value.details() or "")
    assert running.metric("tether_identity_certify_rejections_total", {"reason": "issuer_unavailable"}) == 1.0
