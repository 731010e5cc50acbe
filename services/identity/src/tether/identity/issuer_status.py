"""What this replica signs with and trusts, published for ``tether check``: the public API warns before the
trust anchor or issuer expires without ever reading the CA's files.

:func:`issuer_status` is pure (the loaded authority, the last load error and the time in, the event out);
:class:`IssuerStatusReporter` publishes it when it changes and every ``interval`` seconds, so a public API
that starts later learns it within one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tether.identity.ca import Authority
from tether.identity.issuance import fingerprint_sha256
from tether.identity.observe import EventPublisher
from tether.shared import subjects
from tether.shared.events import ISSUER_STATUS_INTERVAL, MAX_TRUST_ANCHORS, CertificateStatus, IssuerStatus

_MAX_ERROR = 512


def certificate_status(certificate: x509.Certificate) -> CertificateStatus:
    return CertificateStatus(
        subject=certificate.subject.rfc4514_string()[:1024],
        not_after=certificate.not_valid_after_utc,
        fingerprint_sha256=fingerprint_sha256(certificate.public_bytes(serialization.Encoding.DER)),
    )


def issuer_status(authority: Authority | None, load_error: str, replica: str, now: datetime) -> IssuerStatus:
    if authority is None:
        return IssuerStatus(
            replica=replica, issuer_loaded=False, load_error=load_error[:_MAX_ERROR], observed_at=now
        )
    return IssuerStatus(
        replica=replica,
        issuer_loaded=True,
        issuer=certificate_status(authority.issuer.certificate),
        trust_anchors=[
            certificate_status(anchor) for anchor in authority.anchors.certificates[:MAX_TRUST_ANCHORS]
        ],
        load_error=load_error[:_MAX_ERROR],
        observed_at=now,
    )


class IssuerStatusReporter:
    """Publishes :func:`issuer_status` through the identity event queue (never blocking the CA on NATS)."""

    def __init__(
        self,
        replica: str,
        events: EventPublisher,
        current: Callable[[], tuple[Authority | None, str]],
        interval: float = ISSUER_STATUS_INTERVAL,
    ) -> None:
        self._replica = replica
        self._events = events
        self._current = current
        self._interval = interval
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()

    async def run(self) -> None:
        while True:
            authority, error = self._current()
            self._events.emit(
                subjects.IDENTITY_ISSUER, issuer_status(authority, error, self._replica, datetime.now(UTC))
            )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._interval)
