"""Power-of-two-choices over peak-EWMA: pure, with time and randomness passed in."""

from __future__ import annotations

import random
from collections import Counter

from tether.proxy.core.balancer import DEFAULT_RTT, Balancer, EndpointLoad


def load(rtt: float = DEFAULT_RTT, decay: float = 10.0) -> EndpointLoad[str]:
    return EndpointLoad("a", 0, now=0.0, decay=decay, default_rtt=rtt)


def test_a_slower_observation_takes_effect_at_once() -> None:
    endpoint = load(rtt=0.010)
    endpoint.observe(0.500, now=1.0)
    assert endpoint.cost == 0.500


def test_faster_observations_pull_the_cost_down_gradually() -> None:
    endpoint = load(rtt=0.500)
    endpoint.observe(0.010, now=1.0)
    first = endpoint.cost
    assert 0.010 < first < 0.500
    for step in range(2, 60):
        endpoint.observe(0.010, now=float(step))
    assert endpoint.cost < 0.02


def test_unobserved_cost_decays_so_a_slow_endpoint_is_retried_eventually() -> None:
    endpoint = load(rtt=1.0, decay=10.0)
    assert endpoint.load(0.0) == 1.0
    assert endpoint.load(10.0) < 0.4
    assert endpoint.load(100.0) < 0.001


def test_requests_in_flight_raise_the_load() -> None:
    endpoint = load(rtt=0.1)
    idle = endpoint.load(0.0)
    endpoint.started()
    endpoint.started()
    assert endpoint.load(0.0) == 3 * idle
    endpoint.finished()
    endpoint.finished()
    endpoint.finished()  # never below zero
    assert endpoint.load(0.0) == idle


def test_weight_divides_the_load() -> None:
    heavy = EndpointLoad("a", 20_000, now=0.0, decay=10.0, default_rtt=0.1)
    light = EndpointLoad("b", 5_000, now=0.0, decay=10.0, default_rtt=0.1)
    assert heavy.load(0.0) == 0.05
    assert light.load(0.0) == 0.2


def test_pick_prefers_the_less_loaded_of_two() -> None:
    balancer: Balancer[str] = Balancer(random.Random(1))
    balancer.set_endpoints([("fast", 0), ("slow", 0)], now=0.0)
    slow = balancer.get("slow")
    assert slow is not None
    slow.observe(1.0, now=0.0)
    assert all(balancer.pick(0.0).key == "fast" for _ in range(50))  # type: ignore[union-attr]


def test_empty_and_single_endpoint_sets() -> None:
    balancer: Balancer[str] = Balancer(random.Random(1))
    assert balancer.pick(0.0) is None
    balancer.set_endpoints([("only", 0)], now=0.0)
    assert balancer.pick(0.0).key == "only"  # type: ignore[union-attr]


def test_set_endpoints_keeps_statistics_of_endpoints_that_stay() -> None:
    balancer: Balancer[str] = Balancer(random.Random(1))
    balancer.set_endpoints([("a", 0), ("b", 0)], now=0.0)
    a = balancer.get("a")
    assert a is not None
    a.observe(0.9, now=0.0)
    balancer.set_endpoints([("a", 0), ("c", 0)], now=1.0)
    assert balancer.get("a") is a and a.cost == 0.9
    assert "b" not in balancer and "c" in balancer and len(balancer) == 2


def test_simulated_traffic_avoids_the_slow_endpoint() -> None:
    """Sequential requests with latencies 5, 5 and 55 ms: the slow one gets a small share."""
    rng = random.Random(7)
    balancer: Balancer[str] = Balancer(rng)
    latency = {"a": 0.005, "b": 0.005, "slow": 0.055}
    balancer.set_endpoints([(key, 0) for key in latency], now=0.0)
    now = 0.0
    served: Counter[str] = Counter()
    for _ in range(1000):
        endpoint = balancer.pick(now)
        assert endpoint is not None
        endpoint.started()
        now += latency[endpoint.key]
        endpoint.observe(latency[endpoint.key], now)
        endpoint.finished()
        served[endpoint.key] += 1
    assert served["slow"] < 0.05 * 1000
    assert served["a"] > 400 and served["b"] > 400


def test_an_endpoint_added_to_fast_ones_is_picked_at_once() -> None:
    """Regression (issue 15, scale out): warm endpoints at 3 ms, a new one started at the 30 ms default RTT
    and lost every pick for some 20 s; it starts at the others' median now, and takes its share at once."""
    rng = random.Random(1)
    balancer: Balancer[str] = Balancer(rng)
    balancer.set_endpoints([("a", 0), ("b", 0)], now=0.0)
    now = 0.0
    for _ in range(750):  # 30 s at 25 requests/s
        now += 0.04
        endpoint = balancer.pick(now)
        assert endpoint is not None
        endpoint.observe(0.003 * rng.uniform(0.8, 1.3), now)
    balancer.set_endpoints([("a", 0), ("b", 0), ("new", 0)], now)
    served: Counter[str] = Counter()
    for _ in range(50):  # the next 2 s
        now += 0.04
        endpoint = balancer.pick(now)
        assert endpoint is not None
        endpoint.observe(0.003 * rng.uniform(0.8, 1.3), now)
        served[endpoint.key] += 1
    assert served["new"] >= 5, served
    new = balancer.get("new")
    assert new is not None and new.estimate(now) < DEFAULT_RTT


def test_the_first_endpoints_start_at_the_default_rtt() -> None:
    balancer: Balancer[str] = Balancer(random.Random(1))
    balancer.set_endpoints([("a", 0)], now=0.0)
    first = balancer.get("a")
    assert first is not None and first.cost == DEFAULT_RTT
