"""Leaves written by the DER template are byte-for-byte what cryptography's CertificateBuilder makes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tether.identity import der
from tether.identity.bootstrap import generate_issuer, generate_trust_anchor
from tether.identity.ca import load_issuer, parse_trust_anchors
from tether.identity.issuance import BACKDATE, Issuer, issue_leaf
from tether.shared.identity_names import WorkloadIdentity

NOW = datetime(2031, 6, 1, 8, 30, 15, tzinfo=UTC)


def _reference(
    issuer: Issuer,
    key: ec.EllipticCurvePublicKey,
    identity: WorkloadIdentity,
    serial: int,
    not_after: datetime,
) -> bytes:
    """The same leaf through CertificateBuilder; returns its TBSCertificate DER."""
    long_name = len(identity.dns_name) > 64
    subject = x509.Name([] if long_name else [x509.NameAttribute(NameOID.COMMON_NAME, identity.dns_name)])
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    # Issuer types it as any HashAlgorithm; CertificateBuilder accepts only the SHA-2/SHA-3 family.
    signature_hash = issuer.signature_hash
    assert isinstance(signature_hash, hashes.SHA256 | hashes.SHA384)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(key)
        .serial_number(serial)
        .not_valid_before(NOW - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(identity.dns_name), x509.UniformResourceIdentifier(identity.spiffe_id)]
            ),
            critical=long_name,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(issuer.authority_key_identifier, critical=False)
        .sign(issuer.private_key, signature_hash)
    )
    return certificate.tbs_certificate_bytes


@pytest.mark.parametrize(
    ("identity", "serial", "curve"),
    [
        (WorkloadIdentity("web", "shop"), 1, ec.SECP256R1()),
        (WorkloadIdentity("web", "shop"), 2**127, ec.SECP256R1()),
        (WorkloadIdentity("web", "shop"), 2**128 - 1, ec.SECP384R1()),
        (WorkloadIdentity("a" * 63, "b" * 63, "example.org"), 0x7F, ec.SECP256R1()),
    ],
)
def test_template_matches_certificate_builder(
    identity: WorkloadIdentity, serial: int, curve: ec.EllipticCurve
) -> None:
    anchor = generate_trust_anchor(
        NOW - timedelta(days=1), identity.trust_domain, lifetime=timedelta(days=9000)
    )
    issuer_material = generate_issuer(anchor, NOW - timedelta(days=1), identity.trust_domain)
    if isinstance(curve, ec.SECP384R1):
        # A P-384 issuer exercises the SHA-384 signature algorithm identifier.
        from tether.identity.bootstrap import CertifiedKey, _ca_certificate

        key = ec.generate_private_key(curve)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p384")])
        issuer_material = CertifiedKey(
            _ca_certificate(name, key, anchor, NOW - timedelta(days=1), timedelta(days=30), 0), key
        )
    issuer = load_issuer(
        parse_trust_anchors(anchor.certificate_pem),
        issuer_material.certificate_pem,
        issuer_material.key_pem,
        NOW,
        identity.trust_domain,
    )
    public_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    leaf = issue_leaf(issuer, public_key, identity, NOW, serial=serial)
    parsed = x509.load_der_x509_certificate(leaf.certificate_der)
    assert parsed.tbs_certificate_bytes == _reference(issuer, public_key, identity, serial, leaf.not_after)
    parsed.verify_directly_issued_by(issuer.certificate)
    assert parsed.public_bytes(serialization.Encoding.DER) == leaf.certificate_der


def test_times_switch_to_generalized_time_in_2050() -> None:
    assert der.time(datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)) == der.tlv(0x17, b"491231235959Z")
    assert der.time(datetime(2050, 1, 1, tzinfo=UTC)) == der.tlv(0x18, b"20500101000000Z")


def test_lengths_and_integers() -> None:
    assert (
        der.length(0x7F) == b"\x7f" and der.length(0x80) == b"\x81\x80" and der.length(300) == b"\x82\x01\x2c"
    )
    assert der.positive_integer(0x80) == b"\x02\x02\x00\x80"
    with pytest.raises(ValueError):
        der.positive_integer(0)
