"""Leader election decisions, with time passed in."""

from __future__ import annotations

from tether.destination.lease import SAFETY, Acquire, Idle, LeaseCore, Renew


def test_absent_lease_is_created() -> None:
    core = LeaseCore("a", ttl=9.0)
    core.observe(None, "", now=0.0)
    assert core.next_action(0.0) == Acquire(None)


def test_holder_renews_every_third_of_ttl_and_expires_without_renewal() -> None:
    core = LeaseCore("a", ttl=9.0)
    core.written(revision=5, sent_at=0.0)
    assert core.is_leader(1.0)
    assert core.next_action(1.0) == Idle()
    assert core.next_action(3.0) == Renew(5)
    core.written(revision=6, sent_at=3.0)
    assert core.next_action(4.0) == Idle()
    # Renewals keep failing: the holder stands down before any candidate could take over.
    assert core.is_leader(3.0 + 9.0 * SAFETY - 0.01)
    assert not core.is_leader(3.0 + 9.0 * SAFETY)
    core.observe(6, "a", now=3.0 + 9.0 * SAFETY)
    assert core.next_action(3.0 + 9.0 * SAFETY) == Acquire(6)  # our own record: retake it at once


def test_candidate_waits_a_full_ttl_of_unchanged_revision() -> None:
    core = LeaseCore("b", ttl=9.0)
    core.observe(5, "a", now=10.0)
    assert core.next_action(18.9) == Idle()
    core.observe(6, "a", now=12.0)  # the holder renewed: the clock restarts
    assert core.next_action(20.9) == Idle()
    core.observe(6, "a", now=21.0)
    assert core.next_action(21.0) == Acquire(6)
    assert not core.is_leader(21.0)


def test_released_lease_is_taken_at_once() -> None:
    core = LeaseCore("b", ttl=9.0)
    core.observe(8, "", now=1.0)
    assert core.next_action(1.0) == Acquire(8)


def test_someone_elses_write_deposes_the_holder() -> None:
    core = LeaseCore("a", ttl=9.0)
    core.written(revision=5, sent_at=0.0)
    core.observe(7, "b", now=1.0)
    assert not core.is_leader(1.0)
    assert core.next_action(1.0) == Idle()


def test_conflict_and_release_depose() -> None:
    core = LeaseCore("a", ttl=9.0)
    core.written(revision=5, sent_at=0.0)
    core.conflicted()
    assert not core.is_leader(0.1)
    core.written(revision=6, sent_at=1.0)
    core.released()
    assert not core.is_leader(1.1)
