"""The trust anchor and issuer checks as a pure table: statuses and the time in, check outcomes out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tether.public_api.ca_health import IssuerTable
from tether.shared.events import CertificateStatus, IssuerStatus

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def cert(name: str, days: float) -> CertificateStatus:
    return CertificateStatus(
        subject=f"CN={name}", not_after=NOW + timedelta(days=days), fingerprint_sha256=name
    )


def status(
    replica: str = "identity-a",
    issuer_days: float = 300,
    anchor_days: float = 3000,
    loaded: bool = True,
    error: str = "",
) -> IssuerStatus:
    return IssuerStatus(
        replica=replica,
        issuer_loaded=loaded,
        issuer=cert("issuer", issuer_days) if loaded else None,
        trust_anchors=[cert("root", anchor_days)] if loaded else [],
        load_error=error,
        observed_at=NOW,
    )


def outcomes(*statuses: IssuerStatus, at: float | None = None) -> dict[str, tuple[str, str]]:
    table = IssuerTable(timeout=30)
    for s in statuses:
        table.observe(s, NOW.timestamp())
    found = table.check(NOW.timestamp() if at is None else at)
    return {o.description.split()[0]: (o.status, o.hint) for o in found}


def test_healthy_ca_is_ok() -> None:
    assert outcomes(status()) == {"trust": ("ok", ""), "issuer": ("ok", "")}


def test_sixty_days_is_the_warning_line() -> None:
    assert outcomes(status(issuer_days=60.5))["issuer"][0] == "ok"
    level, hint = outcomes(status(issuer_days=59.5))["issuer"]
    assert level == "warning" and "expires on 2027-01-30 00:00 UTC (in 59 days)" in hint
    level, hint = outcomes(status(anchor_days=10))["trust"]
    assert level == "warning" and "trust anchor CN=root" in hint and "rotate the trust anchor" in hint


def test_expired_is_an_error() -> None:
    level, hint = outcomes(status(anchor_days=-1))["trust"]
    assert level == "error" and "expired on" in hint and hint.endswith("now")


def test_an_unusable_issuer_on_any_replica_is_an_error() -> None:
    result = outcomes(status("identity-a"), status("identity-b", loaded=False, error="issuer has expired"))
    level, hint = result["issuer"]
    assert level == "error" and "identity identity-b has no usable issuer (issuer has expired)" in hint


def test_files_that_fail_to_load_while_the_previous_issuer_serves_warn() -> None:
    level, hint = outcomes(status(error="issuer key does not match the issuer certificate"))["issuer"]
    assert level == "warning" and "keeps serving its previous issuer" in hint


def test_no_status_is_a_warning_and_silent_replicas_expire() -> None:
    assert outcomes()["issuer"][0] == "warning"
    assert outcomes(status(), at=NOW.timestamp() + 31)["issuer"][0] == "warning"
    assert "no identity replica published" in outcomes()["trust"][1]
