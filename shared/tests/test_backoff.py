"""Reconnect backoff for the NATS bus."""

from __future__ import annotations

import pytest

from tether.shared.bus import backoff_delay


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    assert backoff_delay(0, base=0.1, cap=2.0, jitter=0.0) == pytest.approx(0.05)
    assert backoff_delay(0, base=0.1, cap=2.0, jitter=0.999) < 0.1
    assert backoff_delay(3, base=0.1, cap=2.0, jitter=0.0) == pytest.approx(0.4)
    assert backoff_delay(50, base=0.1, cap=2.0, jitter=0.999) < 2.0
    assert backoff_delay(50, base=0.1, cap=2.0, jitter=0.0) == pytest.approx(1.0)
