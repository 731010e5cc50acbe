"""The one wait-until, in both forms: the same deadline, interval and failure message."""

from __future__ import annotations

import itertools
import time

import pytest

from tether.shared.testing import eventually, eventually_sync


async def test_eventually_returns_the_seconds_it_took_for_sync_and_async_conditions() -> None:
    polls = itertools.count()
    assert await eventually(lambda: next(polls) >= 3, 5, interval=0.01) >= 0.02

    async def ready() -> bool:
        return True

    assert await eventually(ready, 5) < 1.0


async def test_eventually_fails_after_the_timeout_naming_the_condition_asked_only_then() -> None:
    asked: list[bool] = []

    def what() -> str:
        asked.append(True)
        return "the answer"

    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"^timed out after 0.1s waiting for the answer$"):
        await eventually(lambda: False, 0.1, what, interval=0.01)
    assert 0.1 <= time.monotonic() - started < 1.0
    assert asked == [True]


def test_eventually_sync_returns_the_first_value_that_is_not_none_or_false() -> None:
    values = iter([None, False, 0])
    assert eventually_sync(lambda: next(values), 5, "a value", interval=0.001) == 0
    assert eventually_sync(lambda: [1, 2], 5, "a list") == [1, 2]


def test_eventually_sync_fails_like_eventually_and_lets_a_check_end_the_wait() -> None:
    with pytest.raises(AssertionError, match=r"^timed out after 0.05s waiting for nothing$"):
        eventually_sync(lambda: None, 0.05, lambda: "nothing", interval=0.01)

    def gone() -> bool:
        raise AssertionError("the process exited")

    with pytest.raises(AssertionError, match=r"^the process exited$"):
        eventually_sync(gone, 5, "never asked")
