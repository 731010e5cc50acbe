"""Two telemetry replicas' tap registries and four real proxy-side tap modules (``tether.proxy.tap.Taps``),
wired as NATS and the Report streams would carry their messages, over simulated time: mesh-wide the proxies
never capture more than the tap asked for. Cross-service (telemetry and proxy), so it lives here, not in
either service's unit tests."""

from __future__ import annotations

from tether.proxy.tap import Taps
from tether.shared.events import Workload
from tether.shared.tap_requests import TapFilter, TapRequest, TapTarget
from tether.telemetry.tap import Changes, ProxyInfo, TapRegistry

T0 = 1_800_000_000.0  # wall clock, Unix seconds
LEASE = 7.0  # three missed 2 s renewals plus half an interval

WEB = TapTarget(namespace="default", workload=Workload("deployment", "web"))


def proxy(pod: str) -> ProxyInfo:
    return ProxyInfo(
        namespace="default",
        pod=pod,
        labels={"deployment": "web", "serviceaccount": "web"},
        identity="web.default.serviceaccount.identity.cluster.local",
    )


def tap_request(*, action: str = "start", rate: float = 10.0) -> TapRequest:
    return TapRequest(
        action=action,  # type: ignore[arg-type]
        tap_id="tap1",
        target=WEB,
        match=TapFilter(),
        max_events_per_second=rate,
    )


def test_subscriptions_expire_on_the_proxies_at_the_same_deadline() -> None:
    """A replica that dies sends no stop: the proxies stop by themselves at the lease's end."""
    registry = TapRegistry("r1")
    registry.proxy_connected("web-1", proxy("web-1"), T0)
    (send,) = registry.request(tap_request(rate=100.0), T0).sends
    sub = send.subscription
    taps = Taps()
    mono = 50.0  # the proxy's monotonic clock at T0
    assert taps.apply(sub, mono, T0)
    assert taps.taps_active == 1
    taps.expire(mono + LEASE - 0.01)
    assert taps.taps_active == 1
    taps.expire(mono + LEASE)
    assert taps.taps_active == 0


def _deliver(registries: list[TapRegistry], changes: Changes, now: float) -> list[Changes]:
    """Publish the counts of ``changes`` to the other replicas (as NATS would)."""
    return [registry.match_count(message, now) for message in changes.counts for registry in registries]


def test_mesh_wide_the_proxies_never_capture_more_than_the_tap_asked_for() -> None:
    """Two replicas, three matching proxies (two on r1, one on r2, then a late fourth on r2), the match
    counts exchanged as NATS would: over simulated time the proxies together stay within the rate."""
    r1, r2 = TapRegistry("r1"), TapRegistry("r2")
    homes = {"web-1": r1, "web-2": r1, "web-3": r2, "web-4": r2}
    proxies = {pod: Taps() for pod in homes}
    mono_offset = -T0 + 1000.0  # each proxy's monotonic clock

    def carry(changes: list[Changes], now: float) -> None:
        pending = list(changes)
        while pending:
            change = pending.pop()
            for send in change.sends:
                proxies[str(send.proxy)].apply(send.subscription, now + mono_offset, now)
            pending.extend(_deliver([r1, r2], change, now))

    for pod in ("web-1", "web-2", "web-3"):
        carry([homes[pod].proxy_connected(pod, proxy(pod), T0)], T0)
    rate = 3.0
    carry([r.request(tap_request(rate=rate), T0) for r in (r1, r2)], T0)
    assert r1.share("tap1", T0) == r2.share("tap1", T0) == 1.0

    captured: list[float] = []
    step = 0.01
    for tick in range(int(60 / step)):
        now = T0 + tick * step
        if tick % 200 == 0 and tick:  # the public API renews every 2 s
            carry([r.request(tap_request(action="renew", rate=rate), now) for r in (r1, r2)], now)
        if tick % 50 == 0:
            carry([r.tick(now) for r in (r1, r2)], now)
        if tick == 3000:  # a proxy connects after the tap started
            carry([r2.proxy_connected("web-4", proxy("web-4"), now)], now)
            assert r1.share("tap1", now) == r2.share("tap1", now) == rate / 4
        for index, taps in enumerate(proxies.values()):
            key = (tick, index)
            if taps.request_started(
                key,
                "inbound",
                "GET",
                "http",
                "web",
                "/",
                (),
                None,
                None,
                {},
                {},
                "",
                "",
                "",
                now + mono_offset,
            ):
                captured.append(now)
                taps.finished(key, 0, None, 0, now + mono_offset)
    # Three proxies each start with one token (3 at once), then never more than `rate` per second overall.
    assert len(captured) <= rate * 60 + 4
    assert len(captured) >= rate * 60 - 4
    for start in range(0, 60, 5):
        window = [t for t in captured if T0 + start <= t < T0 + start + 5]
        assert len(window) <= rate * 5 + 4, (start, len(window))
    assert all(taps.taps_active == 1 for taps in proxies.values())

    # The requester disappears: three missed renewals later every proxy has stopped capturing.
    last_renewal = T0 + 58.0
    carry([r.tick(last_renewal + LEASE) for r in (r1, r2)], last_renewal + LEASE)
    assert all(taps.taps_active == 0 for taps in proxies.values())
