"""The pure core, without sockets: CA loading and the reload state machine, leaf building, rate limits,
local tokens, peer address parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tether.identity.bootstrap import generate_issuer, generate_trust_anchor
from tether.identity.ca import AuthorityState, FileContents, Outcome, load_issuer, parse_trust_anchors
from tether.identity.errors import ConfigurationError, IssuerLoadError, Unauthenticated
from tether.identity.issuance import issue_leaf
from tether.identity.ratelimit import BucketPolicy, KeyedRateLimiter
from tether.identity.server import peer_address
from tether.identity.tokens.local import (
    LocalTokenVerifier,
    generate_token_key_file,
    load_token_key,
    mint_token,
)
from tether.shared.identity_names import WorkloadIdentity

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
TD = "cluster.local"
WEB = WorkloadIdentity("web", "shop", TD)
ANCHOR = generate_trust_anchor(NOW - timedelta(days=1), TD)
ISSUER = generate_issuer(ANCHOR, NOW - timedelta(days=1), TD)


def contents(anchor_pem: bytes | None = None, issuer: object = ISSUER) -> FileContents:
    return FileContents(
        ANCHOR.certificate_pem if anchor_pem is None else anchor_pem,
        getattr(issuer, "certificate_pem", None),
        getattr(issuer, "key_pem", None),
    )


def test_load_issuer_accepts_chaining_issuer() -> None:
    issuer = load_issuer(
        parse_trust_anchors(ANCHOR.certificate_pem), ISSUER.certificate_pem, ISSUER.key_pem, NOW, TD
    )
    assert issuer.not_after == ISSUER.certificate.not_valid_after_utc


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("key_mismatch", "does not match"),
        ("not_chaining", "does not chain"),
        ("expired", "has expired"),
        ("not_yet_valid", "not valid yet"),
        ("leaf_as_issuer", "key usage does not allow signing"),
        ("garbage_key", "not an unencrypted PEM"),
        ("garbage_certificate", "not a PEM certificate"),
    ],
)
def test_load_issuer_refuses(case: str, message: str) -> None:
    anchors = parse_trust_anchors(ANCHOR.certificate_pem)
    cert, key, now = ISSUER.certificate_pem, ISSUER.key_pem, NOW
    if case == "key_mismatch":
        key = generate_issuer(ANCHOR, NOW, TD).key_pem
    elif case == "not_chaining":
        stranger = generate_issuer(generate_trust_anchor(NOW, TD), NOW, TD)
        cert, key = stranger.certificate_pem, stranger.key_pem
    elif case == "expired":
        now = NOW + timedelta(days=400)
    elif case == "not_yet_valid":
        now = NOW - timedelta(days=2)
    elif case == "leaf_as_issuer":
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = issue_leaf(load_issuer(anchors, cert, key, NOW, TD), leaf_key.public_key(), WEB, NOW)
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_der_x509_certificate(leaf.certificate_der).public_bytes(serialization.Encoding.PEM)
        key = leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    elif case == "garbage_key":
        key = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    elif case == "garbage_certificate":
        cert = b"nope"
    with pytest.raises(IssuerLoadError, match=message):
        load_issuer(anchors, cert, key, now, TD)


def test_trust_anchor_file_with_private_key_is_refused() -> None:
    with pytest.raises(IssuerLoadError, match="private key"):
        parse_trust_anchors(ANCHOR.certificate_pem + ANCHOR.key_pem)


def test_state_keeps_previous_issuer_during_partial_rotation_then_switches() -> None:
    state = AuthorityState(TD)
    assert state.observe(contents(), NOW).outcome is Outcome.LOADED
    assert state.observe(contents(), NOW).outcome is Outcome.UNCHANGED
    new = generate_issuer(ANCHOR, NOW - timedelta(hours=1), TD)
    half_rotated = FileContents(ANCHOR.certificate_pem, new.certificate_pem, ISSUER.key_pem)
    observation = state.observe(half_rotated, NOW)
    assert observation.outcome is Outcome.KEPT_PREVIOUS and "does not match" in (observation.error or "")
    assert state.current is not None and state.current.generation == 1
    assert state.observe(contents(issuer=new), NOW).outcome is Outcome.LOADED
    assert state.current is not None and state.current.issuer.certificate == new.certificate
    assert state.current.generation == 2


def test_state_without_valid_files_is_unavailable() -> None:
    state = AuthorityState(TD)
    assert state.observe(FileContents(None, None, None), NOW).outcome is Outcome.UNAVAILABLE
    assert state.current is None


def test_state_drops_issuer_when_its_anchor_is_withdrawn() -> None:
    state = AuthorityState(TD)
    state.observe(contents(), NOW)
    other = generate_trust_anchor(NOW, TD)
    assert state.observe(contents(anchor_pem=other.certificate_pem), NOW).outcome is Outcome.UNAVAILABLE
    assert state.current is None


def test_state_drops_expired_issuer() -> None:
    state = AuthorityState(TD)
    state.observe(contents(), NOW)
    observation = state.observe(contents(), ISSUER.certificate.not_valid_after_utc)
    assert observation.outcome is Outcome.UNAVAILABLE and state.current is None


def test_leaf_times_backdated_and_clamped() -> None:
    issuer = load_issuer(
        parse_trust_anchors(ANCHOR.certificate_pem), ISSUER.certificate_pem, ISSUER.key_pem, NOW, TD
    )
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    leaf = issue_leaf(issuer, key, WEB, NOW + timedelta(microseconds=700))
    assert leaf.not_before == NOW - timedelta(seconds=20)
    assert leaf.not_after == NOW + timedelta(hours=24)
    late = issuer.not_after - timedelta(hours=1)
    assert issue_leaf(issuer, key, WEB, late).not_after == issuer.not_after
    with pytest.raises(ValueError, match="one minute"):
        issue_leaf(issuer, key, WEB, NOW, timedelta(seconds=59))


def test_long_identity_gets_empty_subject_and_critical_san() -> None:
    issuer = load_issuer(
        parse_trust_anchors(ANCHOR.certificate_pem), ISSUER.certificate_pem, ISSUER.key_pem, NOW, TD
    )
    long_name = WorkloadIdentity("a" * 60, "b" * 60, TD)
    leaf_der = issue_leaf(issuer, ec.generate_private_key(ec.SECP256R1()).public_key(), long_name, NOW)
    leaf = x509.load_der_x509_certificate(leaf_der.certificate_der)
    assert len(leaf.subject) == 0
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_rate_limiter_refills_and_bounds_memory() -> None:
    limiter = KeyedRateLimiter(BucketPolicy(rate=1.0, burst=2.0), max_keys=3)
    assert limiter.allow("a", 0.0) and limiter.allow("a", 0.0)
    assert not limiter.allow("a", 0.5)
    assert limiter.allow("a", 1.5)
    assert limiter.allow("b", 1.5)  # another key is unaffected
    for key in "cdefg":
        limiter.allow(key, 2.0)
    assert len(limiter) == 3


def test_local_tokens() -> None:
    key = load_token_key(generate_token_key_file())
    verifier = LocalTokenVerifier(key, TD)
    token = mint_token(key, WEB, NOW, timedelta(minutes=5))
    assert verifier.verify_now(token, NOW + timedelta(minutes=4)) == WEB
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify_now(token, NOW + timedelta(minutes=5))
    signed, _, mac = token.rpartition(b".")
    forged_claims = signed[:-2] + b"Q0"
    for tampered in (
        signed + b"." + mac[:-2] + b"!!",
        forged_claims + b"." + mac,
        signed + b"." + mac + b"=",
        b"tlt1..",
        b"",
        mint_token(load_token_key(generate_token_key_file()), WEB, NOW, timedelta(1)),
    ):
        with pytest.raises(Unauthenticated, match="not a valid"):
            verifier.verify_now(tampered, NOW)
    assert LocalTokenVerifier(key, "example.org").verify_now(token, NOW).trust_domain == "example.org"


@pytest.mark.parametrize("contents", [b"", b"tether-token-key-v1:short", b"-----BEGIN PRIVATE KEY-----"])
def test_bad_token_key_files_are_refused(contents: bytes) -> None:
    with pytest.raises(ConfigurationError):
        load_token_key(contents)


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.1.2.3:5000", "10.1.2.3"),
        ("ipv6:[::1]:5000", "::1"),
        ("ipv6:%5B2001:db8::1%5D:443", "2001:db8::1"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
    ],
)
def test_peer_address(peer: str, address: str) -> None:
    assert peer_address(peer) == address
