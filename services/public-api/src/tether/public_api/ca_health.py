"""The trust anchors' and issuer's validity, from identity's issuer status events: a pure table, time
passed in. The public API never reads the CA's files; identity tells it what it serves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tether.public_api.components import CheckOutcome
from tether.shared.events import CertificateStatus, IssuerStatus

#: ``tether check`` warns this long before a trust anchor or the issuer expires (Linkerd's threshold).
WARN_BEFORE = timedelta(days=60)
_ROTATE_ANCHOR = "rotate the trust anchor (docs/install.md)"
_ROTATE_ISSUER = "rotate the issuer (docs/install.md)"


def _when(moment: datetime, now: datetime) -> str:
    left = moment - now
    if left <= timedelta(0):
        return f"expired on {moment:%Y-%m-%d %H:%M} UTC"
    return f"expires on {moment:%Y-%m-%d %H:%M} UTC (in {left.days} days)"


def _expiry(what: str, cert: CertificateStatus, now: datetime, remedy: str) -> tuple[str, str]:
    """(status, hint) of one certificate's expiry."""
    if cert.not_after <= now:
        return "error", f"{what} {cert.subject} {_when(cert.not_after, now)}: {remedy} now"
    if cert.not_after - now <= WARN_BEFORE:
        return "warning", f"{what} {cert.subject} {_when(cert.not_after, now)}: {remedy} before then"
    return "ok", ""


class IssuerTable:
    """The latest issuer status of every identity replica; replicas silent for ``timeout`` are dropped."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._latest: dict[str, tuple[IssuerStatus, float]] = {}

    def observe(self, status: IssuerStatus, now: float) -> None:
        self._latest[status.replica] = (status, now)

    def current(self, now: float) -> list[IssuerStatus]:
        for replica in [r for r, (_, seen) in self._latest.items() if now - seen > self.timeout]:
            del self._latest[replica]
        return [status for _, (status, _) in sorted(self._latest.items())]

    def check(self, now: float) -> list[CheckOutcome]:
        statuses = self.current(now)
        moment = datetime.fromtimestamp(now, UTC)
        return [self._anchors(statuses, moment), self._issuer(statuses, moment)]

    def _silent(self, description: str) -> CheckOutcome:
        return CheckOutcome(
            "identity",
            description,
            True,
            f"no identity replica published its issuer status in the last {self.timeout:g}s: is identity "
            "running and connected to NATS?",
            level="warning",
        )

    def _anchors(self, statuses: list[IssuerStatus], now: datetime) -> CheckOutcome:
        description = "trust anchors are valid for at least 60 days"
        loaded = [s for s in statuses if s.issuer_loaded]
        if not loaded:
            return self._silent(description)
        anchors = {a.fingerprint_sha256: a for s in loaded for a in s.trust_anchors}
        return _worst(
            description,
            [
                _expiry("trust anchor", anchor, now, _ROTATE_ANCHOR)
                for anchor in sorted(anchors.values(), key=lambda a: a.not_after)
            ],
        )

    def _issuer(self, statuses: list[IssuerStatus], now: datetime) -> CheckOutcome:
        description = "issuer certificate is valid for at least 60 days and chains to the trust anchors"
        if not statuses:
            return self._silent(description)
        return _worst(description, [_issuer_finding(status, now) for status in statuses])


def _issuer_finding(status: IssuerStatus, now: datetime) -> tuple[str, str]:
    """(status, hint) of one replica's issuer."""
    if not status.issuer_loaded or status.issuer is None:
        reason = status.load_error or "no issuer loaded"
        return (
            "error",
            f"identity {status.replica} has no usable issuer ({reason}): it issues no certificates; "
            "fix the issuer files (tether-identity bootstrap, or Secret tether-identity-issuer)",
        )
    if status.load_error:
        return (
            "warning",
            f"identity {status.replica} keeps serving its previous issuer: the new files cannot be "
            f"used ({status.load_error})",
        )
    return _expiry("issuer", status.issuer, now, _ROTATE_ISSUER)


_RANK = {"ok": 0, "warning": 1, "error": 2}


def _worst(description: str, findings: list[tuple[str, str]]) -> CheckOutcome:
    """The check's outcome: its worst (status, hint) finding, the first of equals; ok without any."""
    status, hint = max(findings, key=lambda f: _RANK[f[0]], default=("ok", ""))
    return CheckOutcome("identity", description, status != "error", hint, level=status)
