"""The certificate lifecycle's schedule, time passed in."""

from __future__ import annotations

import pytest

from tether.shared.certlifecycle import CertificateState, IssuedCertificate, Lifecycle


def cert(now: float, lifetime: float) -> IssuedCertificate:
    return IssuedCertificate(chain_pem=b"-", not_after=now + lifetime, issued_at=now)


def test_renews_at_70_percent_jittered_downwards() -> None:
    low = Lifecycle(jitter=lambda: 0.0)
    assert low.issued(cert(1000.0, 100.0), 1000.0) == pytest.approx(1000.0 + 63.0)
    high = Lifecycle(jitter=lambda: 0.999999)
    assert high.issued(cert(1000.0, 100.0), 1000.0) == pytest.approx(1070.0, abs=1e-3)


def test_refresh_interval_is_clamped_between_10_s_and_24_h() -> None:
    life = Lifecycle(jitter=lambda: 0.999999)
    assert life.issued(cert(0.0, 7 * 86400.0), 0.0) == pytest.approx(86400.0, abs=0.1)
    assert life.issued(cert(0.0, 12.0), 0.0) == pytest.approx(10.0, abs=1e-3)
    # Shorter than 10 s: still renewed before it expires.
    assert life.issued(cert(0.0, 5.0), 0.0) <= 5.0


def test_waiting_valid_expired_and_never_an_expired_certificate() -> None:
    life = Lifecycle()
    assert life.state(0.0) is CertificateState.WAITING and life.usable(0.0) is None
    held = cert(0.0, 60.0)
    life.issued(held, 0.0)
    assert life.state(59.9) is CertificateState.VALID and life.usable(59.9) is held
    assert life.state(60.0) is CertificateState.EXPIRED and life.usable(60.0) is None


def test_a_failed_renewal_keeps_the_certificate_and_retries_at_70_percent_of_what_remains() -> None:
    life = Lifecycle(jitter=lambda: 0.999999)
    life.issued(cert(0.0, 100.0), 0.0)
    assert life.failed(70.0) == pytest.approx(70.0 + 21.0, abs=1e-3)  # 30 s remain
    assert life.usable(91.0) is not None
    assert life.failed(99.5) == pytest.approx(100.5)  # at least a second later
    assert life.failures == 2


def test_without_a_certificate_retries_back_off_and_reset_on_success() -> None:
    life = Lifecycle(retry_base=0.5, retry_cap=4.0, jitter=lambda: 0.0)
    delays = [life.failed(0.0) for _ in range(5)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 2.0]
    life.issued(cert(0.0, 100.0), 0.0)
    life.issued(cert(200.0, 100.0), 200.0)  # expired in between, then recovered
    assert life.state(201.0) is CertificateState.VALID and life.refreshes == 2
    assert life.failed(400.0) == 400.25  # the expired one: back to the start of the backoff
