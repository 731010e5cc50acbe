"""Building and signing leaf certificates. Pure: the issuer, a public key, an identity and the time in;
a signed certificate out."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
_LEAF_EXTENDED_KEY_USAGE = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
_NOT_A_CA = x509.BasicConstraints(ca=False, path_length=None)


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

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    def __repr__(self) -> str:
        return f"Issuer(subject={self.certificate.subject.rfc4514_string()!r}, fp={self.fingerprint_sha256[:16]})"


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
    subject = x509.Name([]) if long_name else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)])
    alt_names = x509.SubjectAlternativeName(
        [x509.DNSName(dns_name), x509.UniformResourceIdentifier(identity.spiffe_id)]
    )
    serial = random_serial()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_NOT_A_CA, critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(_LEAF_EXTENDED_KEY_USAGE, critical=False)
        .add_extension(alt_names, critical=long_name)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(issuer.authority_key_identifier, critical=False)
    )
    certificate = builder.sign(issuer.private_key, issuer.signature_hash)
    der = certificate.public_bytes(serialization.Encoding.DER)
    return IssuedLeaf(
        certificate_der=der,
        chain_der=issuer.chain_der,
        serial=serial,
        not_before=not_before,
        not_after=not_after,
        fingerprint_sha256=fingerprint_sha256(der),
    )
