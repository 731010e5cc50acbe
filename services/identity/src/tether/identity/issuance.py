"""Building and signing leaf certificates. Pure: the issuer, a public key, an identity and the time in;
a signed certificate out.

Every leaf has one fixed shape (see `issue_leaf`), written straight to DER with der.py; the tests check
it byte for byte against cryptography's CertificateBuilder.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tether.identity import der
from tether.shared.identity_names import WorkloadIdentity

BACKDATE = timedelta(seconds=20)
MIN_LEAF_LIFETIME = timedelta(minutes=1)
DEFAULT_LEAF_LIFETIME = timedelta(hours=24)
# X.520 upper bound for a common name; longer identities get an empty subject and a critical SAN.
_MAX_COMMON_NAME = 64

_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_EXTENDED_KEY_USAGE = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)
_NOT_A_CA = x509.BasicConstraints(ca=False, path_length=None)
_NOT_A_CA_DER = der.extension(der.OID_BASIC_CONSTRAINTS, _NOT_A_CA.public_bytes(), critical=True)
_LEAF_KEY_USAGE_DER = der.extension(der.OID_KEY_USAGE, _LEAF_KEY_USAGE.public_bytes(), critical=True)
_LEAF_EXTENDED_KEY_USAGE_DER = der.extension(
    der.OID_EXTENDED_KEY_USAGE, _LEAF_EXTENDED_KEY_USAGE.public_bytes(), critical=False
)


def fingerprint_sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True, slots=True, repr=False)
class Issuer:
    """An intermediate CA ready to sign: everything derived from it is computed once, at load time."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    # The issuer certificate then any further intermediates up to (not including) the trust anchor.
    chain_der: tuple[bytes, ...]
    authority_key_identifier: x509.AuthorityKeyIdentifier
    signature_hash: hashes.HashAlgorithm
    fingerprint_sha256: str
    # DER pieces every leaf repeats, encoded once.
    name_der: bytes
    signature_algorithm_der: bytes
    authority_key_identifier_der: bytes

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    def __repr__(self) -> str:
        subject = self.certificate.subject.rfc4514_string()
        return f"Issuer(subject={subject!r}, fingerprint={self.fingerprint_sha256[:16]})"


@dataclass(frozen=True, slots=True)
class IssuedLeaf:
    certificate_der: bytes
    chain_der: tuple[bytes, ...]
    serial: int
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")


def random_serial() -> int:
    """A positive serial with 128 random bits (RFC 5280 allows up to 20 octets)."""
    while True:
        serial = secrets.randbits(128)
        if serial:
            return serial


def issue_leaf(
    issuer: Issuer,
    public_key: ec.EllipticCurvePublicKey,
    identity: WorkloadIdentity,
    now: datetime,
    lifetime: timedelta = DEFAULT_LEAF_LIFETIME,
    serial: int | None = None,
) -> IssuedLeaf:
    """Signs a leaf for `identity` valid from `now - 20 s` for `lifetime`, clamped to the issuer's expiry."""
    if lifetime < MIN_LEAF_LIFETIME:
        raise ValueError("leaf lifetime must be at least one minute")
    # X.509 times have whole seconds: round here so the leaf and IssuedLeaf agree exactly.
    now = now.replace(microsecond=0)
    not_before = max(now - BACKDATE, issuer.not_before)
    not_after = min(now + lifetime, issuer.not_after)
    if not_after <= now:
        raise ValueError("issuer has expired")
    dns_name = identity.dns_name
    long_name = len(dns_name) > _MAX_COMMON_NAME
    serial = random_serial() if serial is None else serial
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    point = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    if long_name:
        subject = der.sequence()
    else:
        common_name = der.sequence(der.OID_COMMON_NAME, der.tlv(0x0C, dns_name.encode("ascii")))
        subject = der.sequence(der.tlv(0x31, common_name))
    alt_names = der.sequence(
        der.tlv(0x82, dns_name.encode("ascii")), der.tlv(0x86, identity.spiffe_id.encode("ascii"))
    )
    # RFC 5280 4.2.1.2 method 1, as cryptography's SubjectKeyIdentifier.from_public_key.
    key_identifier = der.octet_string(hashlib.sha1(point, usedforsecurity=False).digest())
    extensions = b"".join(
        (
            _NOT_A_CA_DER,
            _LEAF_KEY_USAGE_DER,
            _LEAF_EXTENDED_KEY_USAGE_DER,
            der.extension(der.OID_SUBJECT_ALT_NAME, alt_names, critical=long_name),
            der.extension(der.OID_SUBJECT_KEY_IDENTIFIER, key_identifier, critical=False),
            issuer.authority_key_identifier_der,
        )
    )
    tbs = der.sequence(
        der.VERSION_3,
        der.positive_integer(serial),
        issuer.signature_algorithm_der,
        issuer.name_der,
        der.sequence(der.time(not_before), der.time(not_after)),
        subject,
        spki,
        der.tlv(0xA3, der.sequence(extensions)),
    )
    signature = issuer.private_key.sign(tbs, ec.ECDSA(issuer.signature_hash))
    certificate_der = der.sequence(tbs, issuer.signature_algorithm_der, der.bit_string(signature))
    return IssuedLeaf(
        certificate_der=certificate_der,
        chain_der=issuer.chain_der,
        serial=serial,
        not_before=not_before,
        not_after=not_after,
        fingerprint_sha256=fingerprint_sha256(certificate_der),
    )
