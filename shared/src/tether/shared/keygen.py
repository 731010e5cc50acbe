"""A workload's key and certificate signing request: ECDSA P-256, one DNS SAN and its SPIFFE ID.

Control-plane services make them in-process. The proxy must not load ``cryptography`` (it would double
the sidecar's memory), so a forked, short-lived child makes them and writes them as one JSON line to a pipe:
the key travels into the proxy's memory and never touches a disk.
"""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

import msgspec

from tether.shared.errors import FatalError
from tether.shared.identity_names import WorkloadIdentity
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
    """The same, made by a forked child so that this process never loads cryptography.

    Forked rather than started from the interpreter's path: the proxy runs as an unprivileged user that may
    not be allowed to execute (or even reach) the interpreter it was started with. The child computes,
    writes one JSON line to a pipe and exits; it never returns to the event loop it was forked from.
    """
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe()
    try:
        child = os.fork()
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        raise FatalError(f"cannot fork the key helper: {exc.strerror}", "check the process limits") from None
    if child == 0:  # the child: reports through the pipe and its exit code, never returns
        _child(identity, read_end, write_end)
    os.close(write_end)
    try:
        async with asyncio.timeout(HELPER_TIMEOUT):
            data = await _read_all(loop, read_end)
    except TimeoutError:
        os.kill(child, 9)
        raise FatalError(
            f"the key helper did not answer within {HELPER_TIMEOUT:g}s", "check the host's load"
        ) from None
    finally:
        os.close(read_end)
        status = await _reap(child)
    code = os.waitstatus_to_exitcode(status)
    if not data or code != 0:
        raise FatalError(f"the key helper failed (exit {code})", "check the install")
    wire = msgspec.json.decode(data, type=_Wire)
    return KeyMaterial(key_pem=wire.key_pem.encode("ascii"), csr_der=base64.b64decode(wire.csr_der))


def _child(identity: WorkloadIdentity, read_end: int, write_end: int) -> NoReturn:
    code = 1
    try:
        os.close(read_end)
        material = make_key_and_csr(identity)
        wire = _Wire(
            key_pem=material.key_pem.decode("ascii"), csr_der=base64.b64encode(material.csr_der).decode()
        )
        payload = msgspec.json.encode(wire)
        while payload:
            payload = payload[os.write(write_end, payload) :]
        code = 0
    finally:
        os._exit(code)  # no atexit handlers, no flushing of the parent's buffers: only the result


async def _reap(child: int) -> int:
    """The child's wait status; it has closed its end of the pipe (exited, or was killed), so soon."""
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG never blocks
        if pid == child:
            return status
        await asyncio.sleep(0.005)


async def _read_all(loop: asyncio.AbstractEventLoop, descriptor: int) -> bytes:
    chunks: list[bytes] = []
    os.set_blocking(descriptor, False)
    while True:
        readable: asyncio.Future[None] = loop.create_future()

        def wake(future: asyncio.Future[None] = readable) -> None:
            if not future.done():
                future.set_result(None)

        loop.add_reader(descriptor, wake)
        try:
            await readable
        finally:
            loop.remove_reader(descriptor)
        try:
            chunk = os.read(descriptor, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
