"""A workload's key and certificate signing request: ECDSA P-256, one DNS SAN and its SPIFFE ID.

Control-plane services make them in-process. The proxy must not load ``cryptography`` (it would double
the sidecar's memory), so it runs this module as a short-lived helper process,
``python -m tether.shared.keygen <identity>``, which prints the key and CSR as one JSON line on stdout: the
key travels over a pipe into the proxy's memory and never touches a disk.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from tether.shared.errors import FatalError
from tether.shared.identity_names import InvalidIdentityName, WorkloadIdentity, parse_identity
from tether.shared.tls import KeyPair

HELPER_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True, repr=False)
class KeyMaterial:
    """A private key (PEM, PKCS#8) and a DER CSR for it."""

    key_pem: bytes
    csr_der: bytes

    def __repr__(self) -> str:
        return f"KeyMaterial(csr={len(self.csr_der)} bytes, key=<redacted>)"


class _Wire(msgspec.Struct, frozen=True):
    key_pem: str
    csr_der: str  # base64


def make_key_and_csr(identity: WorkloadIdentity) -> KeyMaterial:
    """A fresh P-256 key and a CSR identity accepts for ``identity`` (imports cryptography)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName(identity.dns_name),
        x509.UniformResourceIdentifier(identity.spiffe_id),
    ]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return KeyMaterial(key_pem=key_pem, csr_der=csr.public_bytes(serialization.Encoding.DER))


def placeholder_key_pair(now: datetime, name: str = "tether-no-certificate-yet") -> KeyPair:
    """A self-signed certificate nobody trusts, served until a real one arrives (clients fail the handshake
    rather than trust anything)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return KeyPair(key_pem=key_pem, chain_pem=certificate.public_bytes(serialization.Encoding.PEM))


async def make_key_and_csr_in_helper(identity: WorkloadIdentity) -> KeyMaterial:
    """The same, made by a helper process so that this one never loads cryptography."""
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tether.shared.keygen",
            identity.dns_name,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise FatalError(
            f"cannot start the key helper {sys.executable}: {exc.strerror}", "check the install"
        ) from None
    try:
        async with asyncio.timeout(HELPER_TIMEOUT):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        raise FatalError(
            f"the key helper did not answer within {HELPER_TIMEOUT:g}s", "check the host's load"
        ) from None
    if process.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise FatalError(
            f"the key helper failed (exit {process.returncode}): {detail[0][:300]}", "check the install"
        )
    wire = msgspec.json.decode(out, type=_Wire)
    return KeyMaterial(key_pem=wire.key_pem.encode("ascii"), csr_der=base64.b64decode(wire.csr_der))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m tether.shared.keygen <identity>\n")
        return 2
    try:
        identity = parse_identity(args[0])
    except InvalidIdentityName as exc:
        sys.stderr.write(f"tether-keygen: error: {exc}\n")
        return 2
    material = make_key_and_csr(identity)
    wire = _Wire(
        key_pem=material.key_pem.decode("ascii"), csr_der=base64.b64encode(material.csr_der).decode()
    )
    sys.stdout.buffer.write(msgspec.json.encode(wire) + b"\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
