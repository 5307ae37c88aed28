"""Leases are judged on the observer's own clock: a stopped heartbeat, or a death, expires them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from swarm.core.lease import Leases


def test_a_lease_lives_while_the_heartbeat_advances() -> None:
    leases = Leases("me", ttl_s=10)
    leases.heartbeat("b", 1, 1, now=0)
    assert not leases.expired("b", 9.9)
    leases.heartbeat("b", 1, 2, now=9)
    assert not leases.expired("b", 18.9)
    assert leases.expired("b", 19)
    assert leases.expiry("b") == 19


def test_a_repeated_or_older_heartbeat_does_not_renew() -> None:
    leases = Leases("me", ttl_s=10)
    leases.heartbeat("b", 1, 5, now=0)
    leases.heartbeat("b", 1, 5, now=8)  # the same record again (a replay, a second path)
    leases.heartbeat("b", 1, 4, now=9)
    assert leases.expired("b", 10)


def test_a_dead_member_expires_at_once_and_a_revived_one_starts_afresh() -> None:
    leases = Leases("me", ttl_s=10)
    leases.heartbeat("b", 1, 1, now=0)
    leases.died("b")
    assert leases.expired("b", 0.1) and leases.expiry("b") is None
    leases.revived("b", now=30)
    assert not leases.expired("b", 39) and leases.expired("b", 40)


def test_a_node_known_only_from_a_claim_gets_a_lease_from_then() -> None:
    leases = Leases("me", ttl_s=10)
    assert not leases.expired("c", 100)  # never heard of: nothing to judge yet
    leases.seen("c", now=100)
    leases.seen("c", now=105)  # seeing it again does not renew it
    assert not leases.expired("c", 109) and leases.expired("c", 110)
    leases.heartbeat("c", 1, 0, now=109)  # its first heartbeat renews it
    assert not leases.expired("c", 118)


def test_our_own_claims_never_expire_in_our_eyes() -> None:
    leases = Leases("me", ttl_s=1)
    leases.seen("me", now=0)
    leases.died("me")
    assert not leases.expired("me", 1000)


@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 5)), max_size=30), st.floats(1, 10))
def test_expiry_depends_only_on_when_the_counter_last_advanced(
    beats: list[tuple[int, float]], ttl: float
) -> None:
    leases = Leases("me", ttl_s=ttl)
    now, best, advanced = 0.0, None, 0.0
    for counter, gap in beats:
        now += gap
        leases.heartbeat("b", 1, counter, now)
        if best is None or counter > best:
            best, advanced = counter, now
    if best is not None:
        assert leases.expired("b", advanced + ttl * 1.01)
        assert not leases.expired("b", advanced + ttl * 0.99)


def test_a_node_whose_ledger_was_wiped_counts_again_under_a_new_generation() -> None:
    leases = Leases("me", ttl_s=10)
    leases.heartbeat("b", 1, 5000, now=0)
    leases.heartbeat("b", 2, 1, now=8)  # wiped: its counter starts over, and that is an advance
    assert not leases.expired("b", 17)
    leases.heartbeat("b", 1, 5001, now=9)  # a late record of its old life renews nothing
    assert leases.expired("b", 18)
