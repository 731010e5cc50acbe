"""Validation of a workload's certificate signing request. Pure: bytes in, a validated key or a
typed rejection out.

Only the CSR's public key is ever used to build a certificate: its subject, requested extensions and
attributes are checked against the rules below and then discarded, so a CSR cannot smuggle anything
into a leaf.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tether.identity.errors import InvalidRequest, Reason
from tether.shared.identity_names import WorkloadIdentity

MAX_CSR_BYTES = 8 * 1024


@dataclass(frozen=True, slots=True)
class ValidatedCsr:
    """A CSR that passed every rule; `public_key` is the only part used for issuance."""

    public_key: ec.EllipticCurvePublicKey


def _reject(reason: Reason, message: str) -> InvalidRequest:
    return InvalidRequest(reason, message)


def _parse(der: bytes) -> x509.CertificateSigningRequest:
    if len(der) > MAX_CSR_BYTES:
        raise _reject(Reason.REQUEST_TOO_LARGE, f"CSR is larger than {MAX_CSR_BYTES} bytes")
    if not der:
        raise _reject(Reason.CSR_MALFORMED, "CSR is empty")
    try:
        return x509.load_der_x509_csr(der)
    except ValueError:
        raise _reject(Reason.CSR_MALFORMED, "CSR is not a DER-encoded PKCS#10 request") from None


def _check_signature(csr: x509.CertificateSigningRequest) -> None:
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise _reject(Reason.CSR_BAD_SIGNATURE, "CSR signature does not verify with its public key")


def _check_key(csr: x509.CertificateSigningRequest) -> ec.EllipticCurvePublicKey:
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise _reject(Reason.CSR_KEY_TYPE, "CSR public key must be ECDSA P-256") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _reject(Reason.CSR_KEY_TYPE, "CSR public key must be ECDSA P-256")
    return key


def _check_common_name(csr: x509.CertificateSigningRequest, identity: WorkloadIdentity) -> None:
    try:
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        raise _reject(Reason.CSR_MALFORMED, "CSR subject cannot be parsed") from None
    values = [name.value for name in names]
    if values and values != [identity.dns_name]:
        raise _reject(Reason.CSR_COMMON_NAME, "CSR common name must be empty or equal to the identity")


def _check_subject_alt_names(csr: x509.CertificateSigningRequest, identity: WorkloadIdentity) -> None:
    try:
        extension = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise _reject(
            Reason.CSR_DNS_SAN, "CSR must have exactly one DNS SAN, equal to the identity"
        ) from None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        raise _reject(Reason.CSR_MALFORMED, "CSR extensions cannot be parsed") from None
    # One pass with exact type checks: get_values_for_type() would walk the list four times through
    # ABC isinstance checks. Parsed names are always exact instances of these classes.
    dns_names: list[str] = []
    uris: list[str] = []
    others = 0
    has_ip = has_email = False
    for name in extension.value:
        kind = type(name)
        if kind is x509.DNSName:
            dns_names.append(name.value)
        elif kind is x509.UniformResourceIdentifier:
            uris.append(name.value)
        elif kind is x509.IPAddress:
            has_ip = True
        elif kind is x509.RFC822Name:
            has_email = True
        else:
            others += 1
    if has_ip:
        raise _reject(Reason.CSR_IP_SAN, "CSR must not have IP address SANs")
    if has_email:
        raise _reject(Reason.CSR_EMAIL_SAN, "CSR must not have e-mail SANs")
    if uris and uris != [identity.spiffe_id]:
        raise _reject(Reason.CSR_URI_SAN, "CSR may only have one URI SAN, the identity's SPIFFE ID")
    if dns_names != [identity.dns_name]:
        raise _reject(Reason.CSR_DNS_SAN, "CSR must have exactly one DNS SAN, equal to the identity")
    if others:
        raise _reject(Reason.CSR_OTHER_SAN, "CSR must only have DNS and SPIFFE URI SANs")


def validate_csr(der: bytes, identity: WorkloadIdentity) -> ValidatedCsr:
    """Checks a DER CSR against the rules for `identity`, in order; raises `InvalidRequest`."""
    csr = _parse(der)
    # Key type before signature: the signature check is then only ever run on a P-256 key.
    key = _check_key(csr)
    _check_signature(csr)
    _check_subject_alt_names(csr, identity)
    _check_common_name(csr, identity)
    return ValidatedCsr(public_key=key)
