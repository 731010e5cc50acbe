"""The asyncio side of a workload's certificate: asks identity when the lifecycle says so, hands it on.

The key and its CSR are made once per process (see :mod:`tether.shared.keygen`); each Certify sends the
same CSR with a freshly read token (projected ServiceAccount tokens rotate). Each new certificate is
handed to ``on_certificate`` as a PEM key pair, which rebuilds the TLS contexts: new connections use it at
once, established ones keep theirs. How Certify travels is the caller's (grpcio in the control plane, the
proxy's own HTTP/2 client in the proxy), passed in as ``certify``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from tether.shared.certlifecycle import CertificateState, IssuedCertificate, Lifecycle
from tether.shared.errors import TetherError
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.keygen import KeyMaterial
from tether.shared.proto.identity.v1 import identity_pb2
from tether.shared.tls import KeyPair

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Issued:
    """What Certify returned: the leaf and its issuer chain (DER, leaf-most first) and the leaf's NotAfter."""

    leaf_der: bytes
    intermediates_der: tuple[bytes, ...]
    not_after: float


class CertifyFailed(TetherError):
    """Certify did not return a certificate; ``reason`` is a short label for metrics and logs."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def certify_request(identity: WorkloadIdentity, token: bytes, csr_der: bytes) -> identity_pb2.CertifyRequest:
    """The Certify request for ``identity``: the same for every transport that carries it."""
    return identity_pb2.CertifyRequest(
        identity=identity.dns_name, token=token, certificate_signing_request=csr_der
    )


def issued_from(response: identity_pb2.CertifyResponse) -> Issued:
    """What a Certify response grants; CertifyFailed when it holds no certificate."""
    if not response.leaf_certificate:
        raise CertifyFailed("internal", "the identity service returned no certificate")
    return Issued(
        leaf_der=response.leaf_certificate,
        intermediates_der=tuple(response.intermediate_certificates),
        not_after=response.valid_until.ToNanoseconds() / 1e9,
    )


Certify = Callable[[WorkloadIdentity, bytes, bytes], Awaitable[Issued]]


class CertificateManager:
    def __init__(
        self,
        identity: WorkloadIdentity,
        key: KeyMaterial,
        certify: Certify,
        read_token: Callable[[], bytes],
        on_certificate: Callable[[KeyPair], None],
        *,
        clock: Callable[[], float] = time.time,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.identity = identity
        self._key = key
        self._certify = certify
        self._read_token = read_token
        self._on_certificate = on_certificate
        self._clock = clock
        self.lifecycle = lifecycle or Lifecycle()
        self._log = log.bind(identity=identity.dns_name)
        self._reported_expiry = False

    def state(self) -> CertificateState:
        return self.lifecycle.state(self._clock())

    def ready(self) -> bool:
        """A valid certificate is held (never an expired one)."""
        return self.state() is CertificateState.VALID

    @property
    def not_after(self) -> float:
        held = self.lifecycle.certificate
        return held.not_after if held is not None else 0.0

    async def refresh(self) -> bool:
        """One Certify attempt now; True when a certificate arrived."""
        now = self._clock()
        try:
            token = self._read_token()
            issued = await self._certify(self.identity, token, self._key.csr_der)
        except CertifyFailed as exc:
            retry = self.lifecycle.failed(self._clock())
            self._log.warning(
                "certificate_refresh_failed",
                reason=exc.reason,
                error=str(exc)[:300],
                state=self.state().value,
                retry_in=round(retry - self._clock(), 2),
            )
            return False
        chain = [issued.leaf_der, *issued.intermediates_der]
        chain_pem = "".join(ssl.DER_cert_to_PEM_cert(der) for der in chain).encode("ascii")
        self.lifecycle.issued(IssuedCertificate(chain_pem, issued.not_after, now), self._clock())
        self._reported_expiry = False
        self._on_certificate(KeyPair(key_pem=self._key.key_pem, chain_pem=chain_pem))
        self._log.info(
            "certificate_issued",
            not_after=round(issued.not_after, 3),
            renew_in=round(self.lifecycle.next_attempt() - self._clock(), 1),
        )
        return True

    async def run(self) -> None:
        """The supervised task: refresh whenever the lifecycle says so, until cancelled."""
        while True:
            now = self._clock()
            if self.lifecycle.due(now):
                await self.refresh()
                continue
            held = self.lifecycle.certificate
            wake = self.lifecycle.next_attempt()
            if held is not None and now < held.not_after:
                wake = min(wake, held.not_after)  # to notice the expiry the moment it happens
            elif held is not None and not self._reported_expiry:
                self._reported_expiry = True
                self._log.error("certificate_expired", not_after=round(held.not_after, 3))
            await asyncio.sleep(max(0.0, min(wake - now, 3600.0)))


def read_token_file(path: str) -> Callable[[], bytes]:
    """A token source reading ``path`` on every call (a projected token is rotated in place)."""

    def read() -> bytes:
        try:
            with open(path, "rb") as handle:
                return handle.read().strip()
        except OSError as exc:
            problem = f"cannot read the token file {path}: {exc.strerror}"
            raise CertifyFailed("token_unreadable", problem) from None

    return read
