"""The aggregation core on its own: validation, exact merging, sequence ranges, windows."""

from __future__ import annotations

import math

import pytest

from tether.shared.proto.telemetry.v1 import telemetry_pb2 as pb
from tether.shared.telemetry_scopes import HISTOGRAM_LENGTH, MAX_COUNT, MAX_RESPONSES_PER_SCOPE, MAX_SCOPES
from tether.telemetry.aggregate import Aggregator, PartialRollup
from tether.telemetry.errors import HelloRefused, ReportRefused
from tether.telemetry.model import ProxyKey, WorkloadKey, check_hello, validate_report
from tether.telemetry.rollups import merge_rollups, to_event
from tether.telemetry.testing import bucket_index, interval_report, scope
from tether.telemetry.windows import Windows, summarise

WEB_ID = "web.shop.serviceaccount.identity.cluster.local"
API_ID = "api.shop.serviceaccount.identity.cluster.local"
IN, OUT = pb.DIRECTION_INBOUND, pb.DIRECTION_OUTBOUND


def hello(
    pod: str = "web-1", labels: dict[str, str] | None = None, identity: str = WEB_ID, instance: str = ""
) -> pb.ProxyHello:
    return pb.ProxyHello(
        namespace="shop",
        pod=pod,
        identity=identity,
        labels={"deployment": "web", **(labels or {})},
        instance=instance,
    )


def ok_scope(n: int, latency: float = 3.0, failures: int = 0) -> pb.ScopeStats:
    responses = [(200, 0, True, [latency] * (n - failures))]
    if failures:
        responses.append((200, 14, False, [latency * 10] * failures))
    return scope(IN, {"authority": "web.shop:80", "client_id": API_ID, "tls": "true"}, responses)


def setup(now: float = 0.0) -> tuple[Aggregator, ProxyKey]:
    core = Aggregator(now)
    accepted = check_hello(hello(), WEB_ID)
    core.open_stream(accepted, now)
    return core, accepted.proxy


def fold(core: Aggregator, proxy: ProxyKey, first: int, last: int, scopes: list[pb.ScopeStats]) -> str:
    report = interval_report(first, last, scopes)  # kept serialized by the core, as the server hands it
    return core.fold(proxy, validate_report(report, report.SerializeToString()), 1.0).outcome


def totals(rollups: list[PartialRollup]) -> tuple[int, int, list[int]]:
    requests = successes = 0
    buckets = [0] * HISTOGRAM_LENGTH
    for rollup in rollups:
        for counts in rollup.contribution.values():
            requests += counts.requests
            for (_s, _g, success), response in counts.responses.items():
                successes += response.count if success else 0
                buckets = [a + b for a, b in zip(buckets, response.buckets, strict=True)]
    return requests, successes, buckets


# --- the hello --------------------------------------------------------------------------------------------


def test_hello_names_the_workload_by_its_owner_else_the_pod() -> None:
    assert check_hello(hello(), WEB_ID).workload == WorkloadKey("shop", "deployment", "web")
    sts = pb.ProxyHello(namespace="shop", pod="db-0", identity=WEB_ID, labels={"statefulset": "db"})
    assert check_hello(sts, WEB_ID).workload == WorkloadKey("shop", "statefulset", "db")
    bare = pb.ProxyHello(namespace="shop", pod="web-1", identity=WEB_ID)
    assert check_hello(bare, WEB_ID).workload == WorkloadKey("shop", "pod", "web-1")


@pytest.mark.parametrize(
    ("message", "peer", "code", "reason"),
    [
        (hello(), API_ID, "PERMISSION_DENIED", "identity_mismatch"),
        (hello(labels={"serviceaccount": "api"}), WEB_ID, "PERMISSION_DENIED", "serviceaccount_mismatch"),
        (
            pb.ProxyHello(namespace="other", pod="web-1", identity=WEB_ID),
            WEB_ID,
            "PERMISSION_DENIED",
            "namespace_mismatch",
        ),
        (
            pb.ProxyHello(namespace="shop", pod="a.b", identity=WEB_ID),
            WEB_ID,
            "INVALID_ARGUMENT",
            "bad_hello",
        ),
        (
            pb.ProxyHello(namespace="shop", pod="web-1", identity="nope"),
            WEB_ID,
            "INVALID_ARGUMENT",
            "bad_hello",
        ),
    ],
)
def test_hello_must_match_the_certificate(message: pb.ProxyHello, peer: str, code: str, reason: str) -> None:
    with pytest.raises(HelloRefused) as refused:
        check_hello(message, peer)
    assert (refused.value.code, refused.value.reason) == (code, reason)


# --- bad input --------------------------------------------------------------------------------------------


def _report(scopes: list[pb.ScopeStats], first: int = 1, last: int = 1) -> pb.IntervalReport:
    return interval_report(first, last, scopes)


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        (_report([], first=0, last=0), "bad_sequence"),
        (_report([], first=3, last=2), "bad_sequence"),
        (_report([ok_scope(1)] * (MAX_SCOPES + 1)), "too_many_scopes"),
        (
            _report(
                [scope(IN, {}, [(200 + i, -1, True, [1.0]) for i in range(MAX_RESPONSES_PER_SCOPE + 1)])]
            ),
            "too_many_responses",
        ),
        (pb.IntervalReport(sequence=1, first_sequence=1, dropped_scopes=MAX_COUNT + 1), "count_overflow"),
    ],
)
def test_reports_refused_as_a_whole(report: pb.IntervalReport, reason: str) -> None:
    with pytest.raises(ReportRefused) as refused:
        validate_report(report)
    assert refused.value.reason == reason


def _bad_scopes() -> list[tuple[pb.ScopeStats, str]]:
    unknown = ok_scope(1)
    unknown.labels["password"] = "x"
    long_label = ok_scope(1)
    long_label.labels["authority"] = "a" * 254
    overflow = ok_scope(1)
    overflow.requests = MAX_COUNT + 1
    short = ok_scope(1)
    del short.responses[0].latency_buckets[-1]
    mismatch = ok_scope(2)
    mismatch.responses[0].count = 3
    negative = ok_scope(1)
    negative.responses[0].latency_sum_ms = -1.0
    nan = ok_scope(1)
    nan.responses[0].latency_sum_ms = math.nan
    no_direction = ok_scope(1)
    no_direction.direction = pb.DIRECTION_UNSPECIFIED
    big_bucket = ok_scope(1)
    big_bucket.responses[0].count = MAX_COUNT + 1
    return [
        (unknown, "unknown_label"),
        (long_label, "label_too_long"),
        (overflow, "count_overflow"),
        (short, "histogram_length"),
        (mismatch, "histogram_mismatch"),
        (negative, "bad_latency_sum"),
        (nan, "bad_latency_sum"),
        (no_direction, "bad_direction"),
        (big_bucket, "count_overflow"),
    ]


@pytest.mark.parametrize(("bad", "reason"), _bad_scopes(), ids=[r for _, r in _bad_scopes()])
def test_a_bad_scope_is_dropped_and_counted_and_the_rest_folded(bad: pb.ScopeStats, reason: str) -> None:
    good = scope(OUT, {"authority": "api.shop:80", "dst_namespace": "shop"}, [(200, -1, True, [4.0] * 5)])
    valid = validate_report(_report([good, bad]))
    assert valid.rejected == {reason: 1}
    core, proxy = setup()
    assert core.fold(proxy, valid, 1.0).outcome == "folded"
    (rollup,) = core.cut(2.0)
    assert totals([rollup])[:2] == (5, 5)
    # Kept, labelled with the pod that reported it (from the hello).
    assert list(rollup.contribution) == [
        (OUT, (("authority", "api.shop:80"), ("dst_namespace", "shop"), ("pod", "web-1")))
    ]


# --- exact merging and sequence ranges -------------------------------------------------------------------


def test_counts_add_and_histograms_add_bucket_by_bucket() -> None:
    core, proxy = setup()
    assert fold(core, proxy, 1, 1, [ok_scope(100, 3.0, failures=10)]) == "folded"
    assert fold(core, proxy, 2, 2, [ok_scope(100, 30.0, failures=10)]) == "folded"
    (rollup,) = core.cut(10.0)
    requests, successes, buckets = totals([rollup])
    assert (requests, successes) == (200, 180)
    expected = [0] * HISTOGRAM_LENGTH
    for latency, count in ((3.0, 90), (30.0, 10), (30.0, 90), (300.0, 10)):
        expected[bucket_index(latency)] += count
    assert buckets == expected
    assert rollup.ranges == {proxy: [[1, 2]]}
    event = to_event(rollup, "telemetry-1")
    assert (event.namespace, event.kind, event.name) == ("shop", "deployment", "web")
    assert [(r.first, r.last) for r in event.ranges] == [(1, 2)]


def test_a_resent_range_is_ignored_and_acknowledged_once_published() -> None:
    core, proxy = setup()
    fold(core, proxy, 1, 1, [ok_scope(10)])
    assert core.fold(proxy, validate_report(_report([ok_scope(10)])), 1.0).ack is None  # not published yet
    (rollup,) = core.cut(10.0)
    assert core.published(rollup) == {proxy: 1}
    resent = core.fold(proxy, validate_report(_report([ok_scope(10)])), 11.0)
    assert (resent.outcome, resent.ack) == ("duplicate", 1)
    assert core.cut(20.0) == []
    assert totals([rollup])[0] == 10


def test_a_superset_report_folds_only_its_difference() -> None:
    """[1, 2] after [1, 1] (whose ack was still in flight): only report 2's deltas are new."""
    core, proxy = setup()
    fold(core, proxy, 1, 1, [ok_scope(10)])
    (first,) = core.cut(10.0)
    core.published(first)
    assert fold(core, proxy, 1, 2, [ok_scope(25)]) == "superseded"
    (second,) = core.cut(20.0)
    assert second.ranges == {proxy: [[2, 2]]}
    assert totals([first, second])[0] == 25
    # ...and with both still pending in the same interval.
    core2, proxy2 = setup()
    fold(core2, proxy2, 1, 1, [ok_scope(10)])
    fold(core2, proxy2, 1, 2, [ok_scope(25)])
    (only,) = core2.cut(10.0)
    assert only.ranges == {proxy2: [[1, 2]]} and totals([only])[0] == 25


def test_overlaps_that_cannot_be_split_are_refused() -> None:
    core, proxy = setup()
    fold(core, proxy, 1, 2, [ok_scope(10)])
    assert fold(core, proxy, 2, 3, [ok_scope(10)]) == "overlap"  # starts inside [1, 2]
    assert fold(core, proxy, 1, 3, [ok_scope(5)]) == "overlap"  # fewer than already folded
    (rollup,) = core.cut(10.0)
    assert totals([rollup])[0] == 10 and rollup.ranges == {proxy: [[1, 2]]}


def test_a_restarted_proxy_counts_from_one_again() -> None:
    core, proxy = setup()
    fold(core, proxy, 1, 3, [ok_scope(10)])
    core.published(core.cut(10.0)[0])
    core.open_stream(check_hello(hello(), WEB_ID), 11.0)
    assert fold(core, proxy, 1, 1, [ok_scope(7)]) == "folded"
    assert totals(core.cut(20.0))[0] == 7


# --- restarts and reconnects: ProxyHello.instance -------------------------------------------------------


def setup_instance(instance: str, now: float = 0.0) -> tuple[Aggregator, ProxyKey]:
    core = Aggregator(now)
    accepted = check_hello(hello(instance=instance), WEB_ID)
    assert accepted.instance == instance
    core.open_stream(accepted, now)
    return core, accepted.proxy


def test_a_reconnect_of_the_same_instance_resending_what_was_folded_is_a_duplicate() -> None:
    """The case the heuristic double-counted: the stream broke before the ack of [1, 3] arrived; the proxy
    reconnects to the same replica and resends [1, 3] merged. The same instance: nothing is folded twice."""
    core, proxy = setup_instance("proc-a")
    fold(core, proxy, 1, 1, [ok_scope(10)])
    fold(core, proxy, 2, 3, [ok_scope(5)])
    core.open_stream(check_hello(hello(instance="proc-a"), WEB_ID), 11.0)
    assert fold(core, proxy, 1, 3, [ok_scope(15)]) == "duplicate"
    (rollup,) = core.cut(20.0)
    assert totals([rollup])[0] == 15 and rollup.ranges == {proxy: [[1, 3]]}
    assert core.published(rollup) == {proxy: 3}
    # ...and once published, a further resend is acknowledged at once, never folded.
    core.open_stream(check_hello(hello(instance="proc-a"), WEB_ID), 21.0)
    resent = core.fold(proxy, validate_report(_report([ok_scope(15)], 1, 3)), 22.0)
    assert (resent.outcome, resent.ack) == ("duplicate", 3)
    assert core.cut(30.0) == []


def test_the_heuristic_double_counted_that_reconnect() -> None:
    """Without an instance the same resend looks like a restart (a new stream starting at 1, not a strict
    superset): kept for proxies that predate the field, and documented as the reason for it."""
    core, proxy = setup_instance("")
    fold(core, proxy, 1, 3, [ok_scope(15)])
    core.open_stream(check_hello(hello(), WEB_ID), 11.0)
    assert fold(core, proxy, 1, 3, [ok_scope(15)]) == "folded"
    assert totals(core.cut(20.0))[0] == 30


def test_a_reconnect_of_the_same_instance_folds_only_what_is_new() -> None:
    core, proxy = setup_instance("proc-a")
    fold(core, proxy, 1, 1, [ok_scope(10)])
    fold(core, proxy, 2, 2, [ok_scope(5)])
    core.open_stream(check_hello(hello(instance="proc-a"), WEB_ID), 11.0)
    assert fold(core, proxy, 1, 3, [ok_scope(18)]) == "superseded"
    (rollup,) = core.cut(20.0)
    assert totals([rollup])[0] == 18 and rollup.ranges == {proxy: [[1, 3]]}


def test_a_new_instance_is_a_restarted_proxy_whatever_its_first_report() -> None:
    core, proxy = setup_instance("proc-a")
    fold(core, proxy, 1, 3, [ok_scope(10)])
    core.published(core.cut(10.0)[0])
    # A restart: the same (identity, pod), another process, counting from 1 again; [1, 3] again is new data.
    core.open_stream(check_hello(hello(instance="proc-b"), WEB_ID), 11.0)
    assert fold(core, proxy, 1, 3, [ok_scope(7)]) == "folded"
    assert fold(core, proxy, 4, 4, [ok_scope(1)]) == "folded"
    (rollup,) = core.cut(20.0)
    assert totals([rollup])[0] == 8 and rollup.ranges == {proxy: [[1, 4]]}
    # A restart without a first report at 1 (the proxy's first reports went to another replica): still reset.
    core.open_stream(check_hello(hello(instance="proc-c"), WEB_ID), 21.0)
    assert fold(core, proxy, 2, 2, [ok_scope(4)]) == "folded"
    assert totals(core.cut(30.0))[0] == 4


def test_an_instance_appearing_or_vanishing_is_a_restart() -> None:
    """An upgrade from a proxy that sent no instance (or back) is necessarily another process."""
    core, proxy = setup_instance("")
    fold(core, proxy, 1, 2, [ok_scope(10)])
    core.open_stream(check_hello(hello(instance="proc-a"), WEB_ID), 11.0)
    assert fold(core, proxy, 2, 2, [ok_scope(3)]) == "folded"
    core.open_stream(check_hello(hello(), WEB_ID), 12.0)
    assert fold(core, proxy, 2, 2, [ok_scope(2)]) == "folded"
    assert totals(core.cut(20.0))[0] == 15


def test_an_oversized_instance_is_refused() -> None:
    with pytest.raises(HelloRefused) as refused:
        check_hello(hello(instance="x" * 129), WEB_ID)
    assert refused.value.reason == "bad_hello"


def test_a_reconnect_that_never_saw_an_ack_folds_only_what_is_new() -> None:
    """The proxy's stream broke before any ack: it reconnects and sends [1, 3], everything merged."""
    core, proxy = setup()
    fold(core, proxy, 1, 1, [ok_scope(10)])
    fold(core, proxy, 2, 2, [ok_scope(5)])
    core.open_stream(check_hello(hello(), WEB_ID), 11.0)
    assert fold(core, proxy, 1, 3, [ok_scope(18)]) == "superseded"
    (rollup,) = core.cut(20.0)
    assert totals([rollup])[0] == 18 and rollup.ranges == {proxy: [[1, 3]]}


def test_a_failed_publish_goes_back_into_the_next_interval() -> None:
    core, proxy = setup()
    fold(core, proxy, 1, 1, [ok_scope(10)])
    (failed,) = core.cut(10.0)
    core.restore(failed)
    fold(core, proxy, 2, 2, [ok_scope(5)])
    (rollup,) = core.cut(20.0)
    assert totals([rollup])[0] == 15 and rollup.ranges == {proxy: [[1, 2]]} and rollup.start == 0.0


def test_consumers_count_each_range_once() -> None:
    core_a, proxy = setup()
    fold(core_a, proxy, 1, 2, [ok_scope(10)])
    a = to_event(core_a.cut(10.0)[0], "telemetry-a")
    core_b, _ = setup()
    fold(core_b, proxy, 3, 3, [ok_scope(4)])
    b = to_event(core_b.cut(10.0)[0], "telemetry-b")
    kept, conflicts = merge_rollups([a, b, a])
    assert kept == [a, b] and conflicts == []
    core_c, _ = setup()
    fold(core_c, proxy, 2, 4, [ok_scope(4)])
    kept, conflicts = merge_rollups([a, to_event(core_c.cut(10.0)[0], "telemetry-c")])
    assert kept == [a] and len(conflicts) == 1


# --- windows ----------------------------------------------------------------------------------------------


def test_windows_are_exact_over_their_length() -> None:
    core, proxy = setup()
    windows = Windows()
    for n in range(1, 8):  # an interval every 10 s, n requests each
        fold(core, proxy, n, n, [ok_scope(n)])
        (rollup,) = core.cut(n * 10.0)
        windows.add(rollup.end, summarise(rollup))
    windows.advance(70.0)
    key = ("shop", "deployment", "web", "inbound")
    assert windows.totals["10s"][key].requests == 7
    assert windows.totals["1m"][key].requests == sum(range(2, 8))  # ended within (10, 70]
    assert windows.totals["1h"][key].requests == sum(range(1, 8))
    windows.advance(70.0 + 3600.0)
    assert all(not totals for totals in windows.totals.values())


def test_a_restart_before_publishing_never_acknowledges_the_old_process_reports_to_the_new_one() -> None:
    """The old process's [1, 3] is still in this interval's rollup when its successor folds [1, 1]: both are
    published (the old data is real and will never be resent), each range under its own instance, and the
    acknowledgement is only the new process's own."""
    core, proxy = setup_instance("proc-a")
    fold(core, proxy, 1, 3, [ok_scope(10)])
    core.open_stream(check_hello(hello(instance="proc-b"), WEB_ID), 5.0)
    assert fold(core, proxy, 1, 1, [ok_scope(2)]) == "folded"
    (rollup,) = core.cut(10.0)
    assert totals([rollup])[0] == 12
    assert core.published(rollup) == {proxy: 1}  # not 3: the new process has sent only report 1
    event = to_event(rollup, "telemetry-a")
    assert sorted((r.instance, r.first, r.last) for r in event.ranges) == [("proc-a", 1, 3), ("proc-b", 1, 1)]
    kept, conflicts = merge_rollups([event, event])  # a redelivery counts once
    assert (len(kept), conflicts) == (1, [])


def test_the_hellos_version_and_certificate_expiry_reach_the_rollup() -> None:
    core = Aggregator(0.0)
    message = hello(instance="i1")
    message.proxy_version = "0.1.0"
    message.certificate_expiry.FromSeconds(1_800_000_000)
    accepted = check_hello(message, WEB_ID)
    core.open_stream(accepted, 0.0)
    assert fold(core, accepted.proxy, 1, 1, [ok_scope(3)]) == "folded"
    (event,) = [to_event(r, "t1") for r in core.cut(10.0)]
    (span,) = event.ranges
    assert span.proxy_version == "0.1.0"
    assert span.certificate_expiry is not None and span.certificate_expiry.timestamp() == 1_800_000_000
    # A proxy without a certificate yet (or an old one) says nothing: unknown, not a made-up time.
    quiet = Aggregator(0.0)
    accepted = check_hello(hello(instance="i2"), WEB_ID)
    quiet.open_stream(accepted, 0.0)
    fold(quiet, accepted.proxy, 1, 1, [ok_scope(1)])
    (event,) = [to_event(r, "t1") for r in quiet.cut(10.0)]
    assert event.ranges[0].proxy_version == "" and event.ranges[0].certificate_expiry is None


def test_an_unprintable_or_oversized_proxy_version_is_refused() -> None:
    for version in ("0.1\n", "v" * 65):
        message = hello()
        message.proxy_version = version
        with pytest.raises(HelloRefused) as refused:
            check_hello(message, WEB_ID)
        assert "proxy_version" in str(refused.value)


def test_every_scope_is_labelled_with_the_pod_that_reported_it() -> None:
    core = Aggregator(0.0)
    for pod, calls in (("web-1", 3), ("web-2", 2)):
        accepted = check_hello(hello(pod=pod, instance=pod), WEB_ID)
        core.open_stream(accepted, 0.0)
        assert fold(core, accepted.proxy, 1, 1, [ok_scope(calls)]) == "folded"
    (rollup,) = core.cut(10.0)
    by_pod = {dict(labels)["pod"]: counts.requests for (_d, labels), counts in rollup.contribution.items()}
    assert by_pod == {"web-1": 3, "web-2": 2}
    # The label is telemetry's to set: a proxy cannot speak for another pod.
    claimed = scope(IN, {"authority": "web.shop:80", "pod": "web-1"}, [(200, 0, True, [3.0])])
    assert sum(validate_report(_report([claimed])).rejected.values()) == 1
