"""Generating a fresh trust anchor and issuer (`tether-identity bootstrap`).

Files written to the output directory:
- `ca.crt`     trust anchor certificate (ECDSA P-256, 10 years); give to every proxy.
- `ca.key`     trust anchor key (0600): only needed to sign future issuers; keep it offline, never mount it.
- `issuer.crt` issuer (intermediate CA) certificate (ECDSA P-256, 1 year), signed by the anchor.
- `issuer.key` issuer key (0600); mounted into the identity service only.
- `token-signing.key` HMAC key (0600) for `local` tokens; identity service and `mint-token` only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tether.identity.issuance import random_serial
from tether.identity.tokens.local import generate_token_key_file
from tether.shared.identity_names import DEFAULT_TRUST_DOMAIN, validate_trust_domain

TRUST_ANCHOR_LIFETIME = timedelta(days=3650)
ISSUER_LIFETIME = timedelta(days=365)
_BACKDATE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True, repr=False)
class CertifiedKey:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def __repr__(self) -> str:
        return f"CertifiedKey({self.certificate.subject.rfc4514_string()!r}, key=<redacted>)"


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    signer: CertifiedKey | None,
    now: datetime,
    lifetime: timedelta,
    path_length: int,
) -> x509.Certificate:
    signing_key = key if signer is None else signer.key
    issuer_name = subject if signer is None else signer.certificate.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False
        )
    )
    return builder.sign(signing_key, hashes.SHA256())


def generate_trust_anchor(
    now: datetime, trust_domain: str = DEFAULT_TRUST_DOMAIN, lifetime: timedelta = TRUST_ANCHOR_LIFETIME
) -> CertifiedKey:
    validate_trust_domain(trust_domain)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"root.identity.{trust_domain}"[:64])])
    return CertifiedKey(_ca_certificate(subject, key, None, now, lifetime, path_length=1), key)


def generate_issuer(
    anchor: CertifiedKey,
    now: datetime,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    lifetime: timedelta = ISSUER_LIFETIME,
) -> CertifiedKey:
    validate_trust_domain(trust_domain)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"issuer.identity.{trust_domain}"[:64])])
    not_after = min(now + lifetime, anchor.certificate.not_valid_after_utc)
    return CertifiedKey(_ca_certificate(subject, key, anchor, now, not_after - now, path_length=0), key)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Writes atomically (temp file + rename) with `mode` set before any byte is written."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)  # left over by an interrupted earlier write
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def bootstrap(out: Path, now: datetime, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> dict[str, Path]:
    """Generates and writes a trust anchor, issuer and token signing key; refuses to overwrite keys."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        name: out / name for name in ("ca.crt", "ca.key", "issuer.crt", "issuer.key", "token-signing.key")
    }
    existing = [str(path) for path in paths.values() if path.exists()]
    if existing:
        raise FileExistsError(f"refusing to overwrite existing files: {', '.join(existing)}")
    anchor = generate_trust_anchor(now, trust_domain)
    issuer = generate_issuer(anchor, now, trust_domain)
    write_file(paths["ca.key"], anchor.key_pem, 0o600)
    write_file(paths["issuer.key"], issuer.key_pem, 0o600)
    write_file(paths["token-signing.key"], generate_token_key_file(), 0o600)
    write_file(paths["ca.crt"], anchor.certificate_pem, 0o644)
    write_file(paths["issuer.crt"], issuer.certificate_pem, 0o644)
    return paths
