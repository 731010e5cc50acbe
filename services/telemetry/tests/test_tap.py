"""The telemetry replica's tap registry (live taps, matching proxies, mesh-wide shares) and the NATS tap
messages it reads and writes."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from tether.shared import cloudevents, subjects
from tether.shared.cloudevents import EventDecoder
from tether.shared.events import Workload
from tether.shared.proto.telemetry.v1 import telemetry_pb2
from tether.shared.tap_requests import TapFilter, TapMatchCount, TapRequest, TapTarget
from tether.telemetry.tap import Changes, Ended, ProxyInfo, Refused, TapRegistry, target_matches

T0 = 1_800_000_000.0  # wall clock, Unix seconds
LEASE = 7.0  # three missed 2 s renewals plus half an interval

WEB = TapTarget(namespace="default", workload=Workload("deployment", "web"))


def proxy(pod: str, *, namespace: str = "default", deployment: str = "web", **labels: str) -> ProxyInfo:
    return ProxyInfo(
        namespace=namespace,
        pod=pod,
        labels={"deployment": deployment, "serviceaccount": deployment, **labels},
        identity=f"{deployment}.{namespace}.serviceaccount.identity.cluster.local",
    )


def tap_request(
    tap_id: str = "tap1",
    *,
    action: str = "start",
    target: TapTarget | None = WEB,
    rate: float = 10.0,
    header_names: tuple[str, ...] = (),
    expires_at: float | None = None,
    match: TapFilter | None = None,
    max_requests: int = 0,
) -> TapRequest:
    return TapRequest(
        action=action,  # type: ignore[arg-type]
        tap_id=tap_id,
        target=target,
        match=match or TapFilter(),
        max_events_per_second=rate,
        max_requests=max_requests,
        header_names=header_names,
        expires_at=datetime.fromtimestamp(expires_at, UTC) if expires_at is not None else None,
    )


def count(replica: str, matching: int, at: float, tap_id: str = "tap1") -> TapMatchCount:
    return TapMatchCount(
        replica=replica, tap_id=tap_id, matching=matching, at=datetime.fromtimestamp(at, UTC)
    )


def sent(changes: Changes) -> dict[object, telemetry_pb2.TapSubscription]:
    out = {send.proxy: send.subscription for send in changes.sends}
    assert len(out) == len(changes.sends), "one subscription per proxy per change"
    return out


def expiry(subscription: telemetry_pb2.TapSubscription) -> float:
    return subscription.expires_at.seconds + subscription.expires_at.nanos / 1e9


def registry_with(*pods: str, replica: str = "r1") -> TapRegistry:
    registry = TapRegistry(replica)
    for pod in pods:
        registry.proxy_connected(pod, proxy(pod), T0)
    return registry


# --- matching targets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "info", "matches"),
    [
        (WEB, proxy("web-1"), True),
        (WEB, proxy("api-1", deployment="api"), False),
        (WEB, proxy("web-1", namespace="other"), False),
        (TapTarget(namespace="default", workload=Workload("Deployment", "web")), proxy("web-1"), True),
        (TapTarget(namespace="default", workload=Workload("statefulset", "web")), proxy("web-1"), False),
        (TapTarget(namespace="default", pod="web-1"), proxy("web-1"), True),
        (TapTarget(namespace="default", pod="web-1"), proxy("web-2"), False),
        (TapTarget(namespace="default", service="web-svc"), proxy("web-1", service="web-svc"), True),
        (TapTarget(namespace="default", service="web-svc"), proxy("web-1", service="a, web-svc"), True),
        (TapTarget(namespace="default", service="web-svc"), proxy("web-1", service="web-svc2"), False),
        (TapTarget(namespace="default", service="web-svc"), proxy("web-1"), False),
    ],
)
def test_target_matches(target: TapTarget, info: ProxyInfo, matches: bool) -> None:
    assert target_matches(target, info) is matches


def test_proxy_info_from_hello() -> None:
    hello = telemetry_pb2.ProxyHello(
        namespace="default", pod="web-1", labels={"deployment": "web"}, identity="web.default.x"
    )
    assert ProxyInfo.from_hello(hello) == ProxyInfo(
        "default", "web-1", {"deployment": "web"}, "web.default.x"
    )


# --- start, renew, lapse, cancel ----------------------------------------------------------------------------


def test_start_subscribes_only_matching_proxies_with_their_share() -> None:
    registry = registry_with("web-1", "web-2")
    registry.proxy_connected("api-1", proxy("api-1", deployment="api"), T0)
    match = TapFilter(method="GET", authority="a:80", path_prefix="/x", destination_service="b")
    changes = registry.request(
        tap_request(rate=5.0, header_names=("x-request-id", "authorization", "cookie"), match=match), T0
    )
    subs = sent(changes)
    assert set(subs) == {"web-1", "web-2"}
    sub = subs["web-1"]
    assert sub.tap_id == "tap1"
    assert sub.active
    assert sub.max_events_per_second == 2.5
    assert expiry(sub) == pytest.approx(T0 + LEASE)
    assert list(sub.header_names) == ["x-request-id"]
    assert sub.match == telemetry_pb2.TapMatch(
        method="GET", authority="a:80", path_prefix="/x", destination_service="b"
    )
    assert changes.started == ["tap1"]
    assert [(c.replica, c.tap_id, c.matching) for c in changes.counts] == [("r1", "tap1", 2)]
    assert registry.local_matches("tap1") == 2
    assert registry.share("tap1", T0) == 2.5


def test_configured_sensitive_headers_are_stripped_too() -> None:
    registry = TapRegistry("r1", sensitive_headers=["X-Api-Key"])
    registry.proxy_connected("web-1", proxy("web-1"), T0)
    subs = sent(registry.request(tap_request(header_names=("x-api-key", "set-cookie", "user-agent")), T0))
    assert list(subs["web-1"].header_names) == ["user-agent"]


def test_renewal_resends_with_the_new_expiry() -> None:
    registry = registry_with("web-1")
    registry.request(tap_request(), T0)
    changes = registry.request(tap_request(action="renew"), T0 + 2.0)
    assert expiry(sent(changes)["web-1"]) == pytest.approx(T0 + 2.0 + LEASE)
    assert changes.started == []
    assert changes.counts == []  # the count did not change


def test_renewals_keep_it_alive_and_three_missed_end_it() -> None:
    registry = registry_with("web-1", "web-2")
    registry.request(tap_request(), T0)
    for renewal in range(1, 30):
        now = T0 + 2.0 * renewal
        registry.request(tap_request(action="renew"), now)
        assert not registry.tick(now + 1.0).ended
    last = T0 + 58.0
    # Renewals due at +2, +4 and +6 are missed: the tap is still live just before, ended at +7.
    for now in (last + 2.0, last + 4.0, last + 6.0, last + 6.9):
        assert not registry.tick(now).ended
        assert registry.live_taps == {"tap1"}
    changes = registry.tick(last + LEASE)
    assert changes.ended == [Ended("tap1", "lapsed")]
    subs = sent(changes)
    assert set(subs) == {"web-1", "web-2"}
    assert all(not sub.active for sub in subs.values())
    assert registry.live_taps == frozenset()
    assert [(c.matching) for c in changes.counts] == [0]


def test_subscriptions_expire_on_the_proxies_at_the_same_deadline() -> None:
    """A replica that dies sends no stop: the proxies stop by themselves at the lease's end (the proxy side
    is exercised in tests/telemetry/test_tap_simulation.py)."""
    registry = registry_with("web-1")
    sub = sent(registry.request(tap_request(rate=100.0), T0))["web-1"]
    assert sub.active and expiry(sub) == T0 + LEASE
    assert registry.next_deadline() <= T0 + LEASE


def test_cancel_stops_every_proxy_and_a_late_renewal_does_not_revive_it() -> None:
    registry = registry_with("web-1", "web-2")
    registry.request(tap_request(), T0)
    changes = registry.request(tap_request(action="cancel", target=None), T0 + 1.0)
    assert changes.ended == [Ended("tap1", "cancelled")]
    assert {key: sub.active for key, sub in sent(changes).items()} == {"web-1": False, "web-2": False}
    assert registry.live_taps == frozenset()
    assert not registry.request(tap_request(action="renew"), T0 + 1.5)
    assert registry.live_taps == frozenset()
    assert not registry.accepts_event("web-1", "tap1")


def test_cancel_before_start_wins() -> None:
    registry = registry_with("web-1")
    registry.request(tap_request(action="cancel", target=None), T0)
    assert not registry.request(tap_request(), T0 + 0.1)
    assert registry.live_taps == frozenset()


def test_a_renewal_of_an_unknown_tap_starts_it() -> None:
    """A replica that started after the tap (or missed the start) joins on the next renewal."""
    registry = registry_with("web-1")
    changes = registry.request(tap_request(action="renew"), T0)
    assert changes.started == ["tap1"]
    assert sent(changes)["web-1"].active


def test_requested_expiry_caps_the_subscription_and_ends_the_tap() -> None:
    registry = registry_with("web-1")
    changes = registry.request(tap_request(expires_at=T0 + 3.0), T0)
    assert expiry(sent(changes)["web-1"]) == pytest.approx(T0 + 3.0)
    assert not registry.tick(T0 + 2.9).ended
    changes = registry.tick(T0 + 3.0)
    assert changes.ended == [Ended("tap1", "expired")]
    assert not sent(changes)["web-1"].active
    # Renewals carrying the past expiry do not restart it.
    assert not registry.request(tap_request(action="renew", expires_at=T0 + 3.0), T0 + 4.0).sends
    assert registry.live_taps == frozenset()


def test_too_many_taps_are_refused() -> None:
    registry = TapRegistry("r1", max_taps=2)
    registry.request(tap_request("a"), T0)
    registry.request(tap_request("b"), T0)
    changes = registry.request(tap_request("c"), T0)
    assert changes.refused == [Refused("c", "too_many_taps")]
    assert registry.live_taps == {"a", "b"}
    assert not registry.request(tap_request("a", action="renew"), T0 + 1).refused


def test_a_renewal_may_change_the_target() -> None:
    registry = registry_with("web-1")
    registry.proxy_connected("api-1", proxy("api-1", deployment="api"), T0)
    registry.request(tap_request(), T0)
    api = TapTarget(namespace="default", workload=Workload("deployment", "api"))
    changes = registry.request(tap_request(action="renew", target=api), T0 + 2)
    assert {key: sub.active for key, sub in sent(changes).items()} == {"api-1": True, "web-1": False}


# --- proxies that come and go -------------------------------------------------------------------------------


def test_a_proxy_that_connects_later_joins_and_the_shares_shrink() -> None:
    registry = registry_with("web-1")
    registry.request(tap_request(rate=10.0), T0)
    changes = registry.proxy_connected("web-2", proxy("web-2"), T0 + 1.0)
    subs = sent(changes)
    assert set(subs) == {"web-1", "web-2"}
    assert all(sub.max_events_per_second == 5.0 for sub in subs.values())
    assert expiry(subs["web-2"]) == pytest.approx(T0 + LEASE)
    assert [c.matching for c in changes.counts] == [2]
    # A proxy the tap does not target changes nothing.
    assert not registry.proxy_connected("api-1", proxy("api-1", deployment="api"), T0 + 1.0)


def test_a_proxy_that_leaves_is_sent_nothing_and_the_others_get_more() -> None:
    registry = registry_with("web-1", "web-2")
    registry.request(tap_request(rate=10.0), T0)
    changes = registry.proxy_disconnected("web-2", T0 + 1.0)
    assert {key: sub.max_events_per_second for key, sub in sent(changes).items()} == {"web-1": 10.0}
    assert [c.matching for c in changes.counts] == [1]
    assert not registry.accepts_event("web-2", "tap1")
    assert registry.accepts_event("web-1", "tap1")
    assert not registry.proxy_disconnected("web-2", T0 + 1.0)


def test_a_reconnecting_stream_is_sent_its_subscriptions_again() -> None:
    registry = registry_with("web-1")
    registry.request(tap_request(), T0)
    changes = registry.proxy_connected("web-1", proxy("web-1"), T0 + 1.0)
    assert sent(changes)["web-1"].active
    assert changes.counts == []
    assert registry.local_matches("tap1") == 1


def test_accepts_events_only_for_live_taps_the_proxy_was_sent() -> None:
    registry = registry_with("web-1")
    registry.proxy_connected("api-1", proxy("api-1", deployment="api"), T0)
    registry.request(tap_request(), T0)
    assert registry.accepts_event("web-1", "tap1")
    assert not registry.accepts_event("api-1", "tap1")
    assert not registry.accepts_event("web-1", "other")


# --- mesh-wide shares ---------------------------------------------------------------------------------------


def test_another_replicas_count_shrinks_the_share_until_it_goes_stale() -> None:
    registry = registry_with("web-1", "web-2")
    registry.request(tap_request(rate=12.0), T0)
    changes = registry.match_count(count("r2", 4, T0), T0 + 0.5)
    assert {sub.max_events_per_second for sub in sent(changes).values()} == {2.0}
    assert registry.total_matches("tap1", T0 + 0.5) == 6
    # The same count again changes nothing.
    assert not registry.match_count(count("r2", 4, T0 + 2), T0 + 2.5).sends
    # r2 falls silent (the tap is still renewed): 7 s after its last count the share grows back.
    for renewal in (T0 + 2.0, T0 + 4.0, T0 + 6.0, T0 + 8.0):
        assert {
            s.max_events_per_second for s in sent(registry.request(tap_request(rate=12.0), renewal)).values()
        } == {2.0}
    assert not registry.tick(T0 + 2.5 + LEASE - 0.1).sends
    changes = registry.tick(T0 + 2.5 + LEASE)
    assert {sub.max_events_per_second for sub in sent(changes).values()} == {6.0}
    assert registry.total_matches("tap1", T0 + 2.5 + LEASE) == 2


def test_counts_from_several_replicas_add_up() -> None:
    registry = registry_with("web-1")
    registry.request(tap_request(rate=1.0), T0)
    registry.match_count(count("r2", 1, T0), T0)
    changes = registry.match_count(count("r3", 2, T0), T0)
    assert sent(changes)["web-1"].max_events_per_second == 0.25
    # A replica whose count drops to zero gives its share back.
    changes = registry.match_count(count("r3", 0, T0 + 1), T0 + 1)
    assert sent(changes)["web-1"].max_events_per_second == 0.5


def test_own_and_out_of_order_counts_are_ignored() -> None:
    registry = registry_with("web-1")
    registry.request(tap_request(rate=8.0), T0)
    assert not registry.match_count(count("r1", 100, T0), T0)  # our own, echoed by NATS
    registry.match_count(count("r2", 3, T0 + 2), T0 + 2)
    assert not registry.match_count(count("r2", 1, T0 + 1), T0 + 2.1)  # older than the last seen
    assert registry.share("tap1", T0 + 2.1) == 2.0


def test_a_count_that_arrives_before_the_request_is_used() -> None:
    registry = registry_with("web-1")
    registry.match_count(count("r2", 3, T0), T0)
    changes = registry.request(tap_request(rate=8.0), T0 + 0.1)
    assert sent(changes)["web-1"].max_events_per_second == 2.0


def test_remote_counts_of_unknown_taps_are_bounded() -> None:
    registry = TapRegistry("r1", max_remote_taps=2)
    for index in range(5):
        registry.match_count(count("r2", 1, T0, tap_id=f"t{index}"), T0)
    registry.proxy_connected("web-1", proxy("web-1"), T0)
    assert registry.share("t0", T0) == 0.0
    assert registry.total_matches("t1", T0) == 1
    assert registry.total_matches("t4", T0) == 0


def test_local_counts_are_republished_while_not_zero() -> None:
    registry = registry_with("web-1")
    assert [c.matching for c in registry.request(tap_request(), T0).counts] == [1]
    assert registry.next_deadline() == pytest.approx(T0 + 2.0)
    assert not registry.tick(T0 + 1.9).counts
    changes = registry.tick(T0 + 2.0)
    assert [(c.matching, c.at) for c in changes.counts] == [(1, datetime.fromtimestamp(T0 + 2.0, UTC))]
    registry.proxy_disconnected("web-1", T0 + 3.0)
    registry.request(tap_request(action="renew"), T0 + 4.0)
    assert not registry.tick(T0 + 10.0 - 0.5).counts  # zero: published once, not repeated


def test_no_matching_proxy_publishes_nothing() -> None:
    registry = TapRegistry("r1")
    changes = registry.request(tap_request(), T0)
    assert changes.started == ["tap1"]
    assert not changes.sends
    assert not changes.counts
    assert not registry.tick(T0 + 2.0).counts


# --- the NATS messages --------------------------------------------------------------------------------------


def test_tap_request_round_trips_as_a_cloudevent() -> None:
    request = tap_request(
        header_names=("x-request-id",),
        expires_at=T0 + 60,
        match=TapFilter(method="GET", path_prefix="/api"),
        max_requests=100,
    )
    payload = cloudevents.encode(request, source="/tether/public-api/p1")
    envelope, decoded = EventDecoder(TapRequest).decode(payload)
    assert envelope.type == "io.tether.tap.request.v1"
    assert envelope.subject == "tap1"
    assert decoded == request
    cancel = tap_request(action="cancel", target=None)
    assert EventDecoder(TapRequest).decode(cloudevents.encode(cancel, source="/x"))[1] == cancel


def test_match_count_round_trips_as_a_cloudevent() -> None:
    message = count("telemetry-0", 3, T0)
    envelope, decoded = EventDecoder(TapMatchCount).decode(cloudevents.encode(message, source="/x"))
    assert envelope.type == "io.tether.tap.matches.v1"
    assert envelope.subject == "tap1/telemetry-0"
    assert decoded == message
    assert subjects.tap_matches(decoded.tap_id) == "tether.v1.tap.matches.tap1"


@pytest.mark.parametrize(
    "data",
    [
        {"action": "start", "tap_id": "t"},  # no target
        {"action": "start", "tap_id": "a.b", "target": {"namespace": "default", "pod": "p"}},
        {"action": "start", "tap_id": "t", "target": {"namespace": "default"}},
        {"action": "start", "tap_id": "t", "target": {"namespace": "default", "pod": "p", "service": "s"}},
        {"action": "start", "tap_id": "t", "target": {"namespace": "Default", "pod": "p"}},
        {"action": "pause", "tap_id": "t", "target": {"namespace": "default", "pod": "p"}},
        {
            "action": "start",
            "tap_id": "t",
            "target": {"namespace": "d", "pod": "p"},
            "max_events_per_second": 0,
        },
        {"action": "start", "tap_id": "t", "target": {"namespace": "d", "pod": "p"}, "header_names": ["X-A"]},
        {
            "action": "start",
            "tap_id": "t",
            "target": {"namespace": "d", "pod": "p"},
            "header_names": [":path"],
        },
        {
            "action": "start",
            "tap_id": "t",
            "target": {"namespace": "d", "pod": "p"},
            "header_names": [f"h{i}" for i in range(17)],
        },
        {
            "action": "start",
            "tap_id": "t",
            "target": {"namespace": "d", "workload": {"kind": "", "name": "w"}},
        },
        {
            "action": "start",
            "tap_id": "t",
            "target": {"namespace": "d", "pod": "p"},
            "expires_at": "2030-01-01T00:00:00",
        },
    ],
)
def test_bad_tap_requests_do_not_decode(data: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(data, TapRequest)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(data), type=TapRequest)


def test_unknown_fields_are_ignored() -> None:
    data = {"action": "cancel", "tap_id": "t", "future": 1}
    assert msgspec.json.decode(msgspec.json.encode(data), type=TapRequest).tap_id == "t"
