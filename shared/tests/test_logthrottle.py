from tether.shared.logthrottle import LogThrottle


def test_lines_beyond_the_rate_are_dropped_and_counted_on_the_next_admitted_line() -> None:
    throttle = LogThrottle(per_second=2)
    assert [throttle.admit("flood", 0.0), throttle.admit("flood", 0.1)] == [0, 0]
    assert [throttle.admit("flood", 0.2) for _ in range(5)] == [None] * 5
    assert throttle.admit("flood", 1.0) == 5
    assert throttle.admit("flood", 1.1) == 0


def test_keys_are_throttled_independently() -> None:
    throttle = LogThrottle(per_second=1)
    assert throttle.admit("a", 0.0) == 0
    assert throttle.admit("a", 0.0) is None
    assert throttle.admit("b", 0.0) == 0
