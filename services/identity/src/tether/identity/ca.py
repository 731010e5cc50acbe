"""The certificate authority's key material: trust anchors and the issuer, loaded from PEM files and
verified before use, plus a state machine deciding what to serve as the files change.

Loading is pure (bytes and the time in). `AuthorityState.observe()` is fed the files' current contents
by a thin poller (see server.py) and keeps the last valid issuer while the files are mid-rotation.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from tether.identity import der
from tether.identity.errors import IssuerLoadError
from tether.identity.issuance import Issuer, fingerprint_sha256, issue_leaf
from tether.shared.identity_names import WorkloadIdentity

_SIGNATURE_HASHES: dict[type[ec.EllipticCurve], hashes.HashAlgorithm] = {
    ec.SECP256R1: hashes.SHA256(),
    ec.SECP384R1: hashes.SHA384(),
}
_SIGNATURE_ALGORITHMS: dict[type[ec.EllipticCurve], bytes] = {
    ec.SECP256R1: der.ECDSA_WITH_SHA256,
    ec.SECP384R1: der.ECDSA_WITH_SHA384,
}
_MAX_CHAIN = 8


@dataclass(frozen=True, slots=True)
class TrustAnchors:
    certificates: tuple[x509.Certificate, ...]
    pem: bytes


@dataclass(frozen=True, slots=True)
class Authority:
    """A verified issuer and the anchors it chains to. `generation` grows with each load."""

    anchors: TrustAnchors
    issuer: Issuer
    generation: int


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _load_pem_certificates(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise IssuerLoadError(f"{what} is not a PEM certificate bundle") from None
    if not certificates or len(certificates) > _MAX_CHAIN:
        raise IssuerLoadError(f"{what} must hold 1 to {_MAX_CHAIN} certificates")
    return certificates


def parse_trust_anchors(pem: bytes) -> TrustAnchors:
    """Parses the trust anchor bundle; it must hold CA certificates only, and no private key."""
    if b"PRIVATE KEY" in pem:
        raise IssuerLoadError(
            "trust anchor file contains a private key; it must hold public certificates only"
        )
    certificates = _load_pem_certificates(pem, "trust anchor file")
    if not all(_is_ca(certificate) for certificate in certificates):
        raise IssuerLoadError("every trust anchor must be a CA certificate")
    return TrustAnchors(certificates=tuple(certificates), pem=pem)


def _load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IssuerLoadError("issuer key is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or type(key.curve) not in _SIGNATURE_HASHES:
        raise IssuerLoadError("issuer key must be ECDSA P-256 or P-384")
    return key


def _check_validity(certificate: x509.Certificate, now: datetime, what: str) -> None:
    if now < certificate.not_valid_before_utc:
        raise IssuerLoadError(f"{what} is not valid yet")
    if now >= certificate.not_valid_after_utc:
        raise IssuerLoadError(f"{what} has expired")


def verify_chain(chain: list[x509.Certificate], anchors: TrustAnchors, now: datetime) -> None:
    """Checks that chain[0] chains through chain[1:] to one of the anchors, each link a valid CA."""
    for index, certificate in enumerate(chain):
        what = "issuer certificate" if index == 0 else f"intermediate {index}"
        _check_validity(certificate, now, what)
        if not _is_ca(certificate):
            raise IssuerLoadError(f"{what} is not a CA certificate")
    for child, parent in itertools.pairwise(chain):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise IssuerLoadError("issuer chain is out of order or broken") from None
    top = chain[-1]
    for anchor in anchors.certificates:
        if anchor.not_valid_after_utc <= now or anchor.not_valid_before_utc > now:
            continue
        try:
            top.verify_directly_issued_by(anchor)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return
    raise IssuerLoadError("issuer does not chain to any valid trust anchor")


def _probe(issuer: Issuer, anchors: TrustAnchors, trust_domain: str, now: datetime) -> None:
    # Issue a throwaway leaf and run it through cryptography's RFC 5280 path validation: the issuer is
    # only accepted if what it signs will verify for the proxies.
    identity = WorkloadIdentity("probe", "probe", trust_domain)
    leaf = issue_leaf(issuer, ec.generate_private_key(ec.SECP256R1()).public_key(), identity, now)
    verifier = (
        PolicyBuilder()
        .store(Store(list(anchors.certificates)))
        .time(now + timedelta(seconds=1))
        .build_server_verifier(x509.DNSName(identity.dns_name))
    )
    intermediates = [x509.load_der_x509_certificate(der) for der in issuer.chain_der]
    try:
        verifier.verify(x509.load_der_x509_certificate(leaf.certificate_der), intermediates)
    except VerificationError as error:
        raise IssuerLoadError(f"leaves from this issuer do not verify: {error}") from None


def load_issuer(
    anchors: TrustAnchors, certificate_pem: bytes, key_pem: bytes, now: datetime, trust_domain: str
) -> Issuer:
    """Parses and verifies the issuer: a CA whose key matches, valid now, chaining to an anchor."""
    chain = _load_pem_certificates(certificate_pem, "issuer certificate file")
    key = _load_private_key(key_pem)
    certificate = chain[0]
    public_format = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*public_format) != certificate.public_key().public_bytes(*public_format):
        raise IssuerLoadError("issuer key does not match the issuer certificate")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_cert_sign:
            raise IssuerLoadError("issuer certificate's key usage does not allow signing certificates")
    except x509.ExtensionNotFound:
        pass
    verify_chain(chain, anchors, now)
    try:
        subject_key_identifier = certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        authority_key_identifier = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            subject_key_identifier
        )
    except x509.ExtensionNotFound:
        authority_key_identifier = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    chain_der = tuple(c.public_bytes(serialization.Encoding.DER) for c in chain)
    issuer = Issuer(
        certificate=certificate,
        private_key=key,
        chain_der=chain_der,
        authority_key_identifier=authority_key_identifier,
        signature_hash=_SIGNATURE_HASHES[type(key.curve)],
        fingerprint_sha256=fingerprint_sha256(chain_der[0]),
        name_der=certificate.subject.public_bytes(),
        signature_algorithm_der=_SIGNATURE_ALGORITHMS[type(key.curve)],
        authority_key_identifier_der=der.extension(
            der.OID_AUTHORITY_KEY_IDENTIFIER, authority_key_identifier.public_bytes(), critical=False
        ),
    )
    _probe(issuer, anchors, trust_domain, now)
    return issuer


@dataclass(frozen=True, slots=True)
class IssuerFiles:
    """Where the mounted Secret puts the CA material."""

    trust_anchors: Path
    issuer_certificate: Path
    issuer_key: Path


@dataclass(frozen=True, slots=True, repr=False)
class FileContents:
    """The files' bytes as read at one instant; None for a file that could not be read."""

    trust_anchors: bytes | None
    issuer_certificate: bytes | None
    issuer_key: bytes | None

    def digest(self) -> bytes:
        hasher = hashlib.sha256()
        for part in (self.trust_anchors, self.issuer_certificate, self.issuer_key):
            hasher.update(b"-" if part is None else len(part).to_bytes(8, "big") + part)
        return hasher.digest()

    def __repr__(self) -> str:
        return "FileContents(<redacted>)"


def read_issuer_files(files: IssuerFiles) -> FileContents:
    def read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except OSError:
            return None

    return FileContents(read(files.trust_anchors), read(files.issuer_certificate), read(files.issuer_key))


class Outcome(enum.Enum):
    UNCHANGED = "unchanged"
    LOADED = "loaded"
    # The new files are not usable; the previous issuer is still valid and keeps serving.
    KEPT_PREVIOUS = "kept_previous"
    # No valid issuer is (any longer) loaded.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Observation:
    outcome: Outcome
    error: str | None = None


class AuthorityState:
    """Decides which issuer to serve given the files' contents over time.

    Files change in place during rotation, possibly one at a time, so a load that fails keeps the
    previous issuer as long as it is unexpired and still chains to the anchors in the files; a
    withdrawn anchor or an expired issuer leaves the service with none (UNAVAILABLE).
    """

    def __init__(self, trust_domain: str) -> None:
        self._trust_domain = trust_domain
        self._current: Authority | None = None
        self._last_digest: bytes | None = None
        self._generation = 0

    @property
    def current(self) -> Authority | None:
        return self._current

    def observe(self, contents: FileContents, now: datetime) -> Observation:
        if self._current is not None and now >= self._current.issuer.not_after:
            self._current = None
            self._last_digest = None
            return Observation(Outcome.UNAVAILABLE, "issuer has expired")
        digest = contents.digest()
        if digest == self._last_digest:
            return Observation(Outcome.UNCHANGED)
        self._last_digest = digest
        try:
            self._current = self._load(contents, now)
            return Observation(Outcome.LOADED)
        except IssuerLoadError as error:
            return self._keep_previous_if_still_trusted(contents, now, str(error))

    def _load(self, contents: FileContents, now: datetime) -> Authority:
        if contents.trust_anchors is None:
            raise IssuerLoadError("trust anchor file cannot be read")
        if contents.issuer_certificate is None or contents.issuer_key is None:
            raise IssuerLoadError("issuer certificate or key file cannot be read")
        anchors = parse_trust_anchors(contents.trust_anchors)
        issuer = load_issuer(
            anchors, contents.issuer_certificate, contents.issuer_key, now, self._trust_domain
        )
        self._generation += 1
        return Authority(anchors=anchors, issuer=issuer, generation=self._generation)

    def _keep_previous_if_still_trusted(
        self, contents: FileContents, now: datetime, error: str
    ) -> Observation:
        # Trying again on the next poll even if the bytes do not change lets an issuer whose NotBefore
        # was slightly in the future become usable.
        self._last_digest = None
        previous = self._current
        if previous is None:
            return Observation(Outcome.UNAVAILABLE, error)
        if contents.trust_anchors is not None:
            try:
                anchors = parse_trust_anchors(contents.trust_anchors)
                chain = [x509.load_der_x509_certificate(der) for der in previous.issuer.chain_der]
                verify_chain(chain, anchors, now)
            except IssuerLoadError as withdrawn:
                self._current = None
                return Observation(Outcome.UNAVAILABLE, f"{error}; previous issuer: {withdrawn}")
        return Observation(Outcome.KEPT_PREVIOUS, error)
