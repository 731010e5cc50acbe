"""The one backoff every retry loop uses."""

from __future__ import annotations

import random

import pytest

from tether.shared.backoff import Backoff, backoff_delay


def test_backoff_delay_grows_with_jitter_and_is_capped() -> None:
    assert backoff_delay(0, base=0.1, cap=2.0, jitter=0.0) == pytest.approx(0.05)
    assert backoff_delay(0, base=0.1, cap=2.0, jitter=0.999) < 0.1
    assert backoff_delay(3, base=0.1, cap=2.0, jitter=0.0) == pytest.approx(0.4)
    assert backoff_delay(50, base=0.1, cap=2.0, jitter=0.999) < 2.0
    assert backoff_delay(50, base=0.1, cap=2.0, jitter=0.0) == pytest.approx(1.0)


def test_backoff_counts_failures_and_resets() -> None:
    backoff = Backoff(0.5, 2.0, jitter=lambda: 0.0)
    assert [backoff.next() for _ in range(4)] == [0.25, 0.5, 1.0, 1.0]
    assert backoff.attempt == 4
    backoff.reset()
    assert backoff.next() == 0.25


def test_backoff_jitter_spreads_clients() -> None:
    rng = random.Random(3)
    delays = [Backoff(0.1, 5.0, jitter=rng.random) for _ in range(10)]
    firsts = {round(b.next(), 6) for b in delays}
    assert len(firsts) > 5 and all(0.05 <= d < 0.1 for d in firsts)


def test_backoff_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError, match="base"):
        Backoff(2.0, 1.0)
