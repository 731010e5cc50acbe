"""Just enough DER to emit a leaf certificate's TBSCertificate from a fixed template.

cryptography's CertificateBuilder spends most of a leaf's cost on generic encoding; every leaf this
CA issues has the same shape, so issuance.py writes it directly. tests/test_der.py proves the output is
byte-for-byte what CertificateBuilder produces for the same inputs.
"""

from __future__ import annotations

from datetime import datetime


def length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    encoded = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(encoded),)) + encoded


def tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + length(len(content)) + content


def sequence(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def positive_integer(value: int) -> bytes:
    if value <= 0:
        raise ValueError("only positive integers are encoded here")
    # bit_length // 8 + 1 bytes leaves a leading zero exactly when the top bit would be set.
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def time(moment: datetime) -> bytes:
    """RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; always UTC, whole seconds."""
    if 1950 <= moment.year < 2050:
        return tlv(0x17, moment.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return tlv(0x18, moment.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


def octet_string(content: bytes) -> bytes:
    return tlv(0x04, content)


def bit_string(content: bytes) -> bytes:
    return tlv(0x03, b"\x00" + content)


def extension(oid_der: bytes, value_der: bytes, critical: bool) -> bytes:
    return sequence(oid_der, b"\x01\x01\xff" if critical else b"", octet_string(value_der))


OID_COMMON_NAME = bytes.fromhex("0603550403")
OID_BASIC_CONSTRAINTS = bytes.fromhex("0603551d13")
OID_KEY_USAGE = bytes.fromhex("0603551d0f")
OID_EXTENDED_KEY_USAGE = bytes.fromhex("0603551d25")
OID_SUBJECT_ALT_NAME = bytes.fromhex("0603551d11")
OID_SUBJECT_KEY_IDENTIFIER = bytes.fromhex("0603551d0e")
OID_AUTHORITY_KEY_IDENTIFIER = bytes.fromhex("0603551d23")
ECDSA_WITH_SHA256 = sequence(bytes.fromhex("06082a8648ce3d040302"))
ECDSA_WITH_SHA384 = sequence(bytes.fromhex("06082a8648ce3d040303"))
VERSION_3 = bytes.fromhex("a003020102")
