"""The hybrid logical clock: monotonic, close to wall time, causal across nodes."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.core.clock import (
    COUNTER_MAX,
    MAX_FORWARD_DRIFT_MS,
    HybridClock,
    counter_of,
    pack,
    wall_ms_of,
)


def test_follows_the_wall_clock_when_it_advances() -> None:
    clock = HybridClock()
    assert clock.now(1000) == pack(1000, 0)
    assert clock.now(1005) == pack(1005, 0)


def test_counter_breaks_ties_within_one_millisecond() -> None:
    clock = HybridClock()
    stamps = [clock.now(1000) for _ in range(3)]
    assert [counter_of(s) for s in stamps] == [0, 1, 2]
    assert {wall_ms_of(s) for s in stamps} == {1000}


def test_never_goes_backwards_when_the_wall_clock_does() -> None:
    clock = HybridClock()
    first = clock.now(5000)
    second = clock.now(4000)  # NTP stepped the clock back
    assert second > first
    assert wall_ms_of(second) == 5000


def test_counter_overflow_borrows_the_next_millisecond() -> None:
    clock = HybridClock(pack(7, COUNTER_MAX))
    assert clock.now(7) == pack(8, 0)


def test_observed_remote_stamp_orders_later_local_events_after_it() -> None:
    clock = HybridClock()
    remote = pack(9000, 4)
    assert clock.observe(remote, physical_ms=8999)
    assert clock.now(8999) > remote


def test_a_stamp_from_far_in_the_future_is_not_adopted() -> None:
    clock = HybridClock()
    assert not clock.observe(pack(10_000 + MAX_FORWARD_DRIFT_MS + 1, 0), physical_ms=10_000)
    assert wall_ms_of(clock.now(10_000)) == 10_000


@pytest.mark.parametrize("start", [0, pack(123, 9)])
def test_high_water_mark_survives_a_restart(start: int) -> None:
    before = HybridClock(start)
    stamp = before.now(50)
    after = HybridClock(before.last)
    assert after.now(50) > stamp


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10**6)), max_size=200))
def test_stamps_strictly_increase_whatever_the_inputs(events: list[tuple[bool, int]]) -> None:
    clock = HybridClock()
    last = -1
    for is_remote, ms in events:
        if is_remote:
            clock.observe(pack(ms, 0), physical_ms=ms)
            continue
        stamp = clock.now(ms)
        assert stamp > last
        last = stamp


def test_a_stamp_just_within_the_bound_is_adopted() -> None:
    clock = HybridClock()
    remote = pack(10_000 + MAX_FORWARD_DRIFT_MS, 3)
    assert clock.observe(remote, physical_ms=10_000)
    assert clock.now(10_000) == pack(10_000 + MAX_FORWARD_DRIFT_MS, 4)


def test_an_older_stamp_leaves_the_clock_alone() -> None:
    clock = HybridClock()
    mine = clock.now(5_000)
    assert clock.observe(pack(1_000, 7), physical_ms=5_000)
    assert clock.last == mine


def test_a_refused_stamp_leaves_the_clock_where_it_was() -> None:
    clock = HybridClock()
    clock.observe(pack(20_000, 0), physical_ms=10_000)  # within the bound: taken in
    before = clock.last
    assert not clock.observe(pack(10_000 + MAX_FORWARD_DRIFT_MS + 1, 0), physical_ms=10_000)
    assert not clock.observe(2**64 - 1, physical_ms=10_000)  # garbage
    assert clock.last == before


def test_a_cancel_stamped_after_seeing_a_submission_from_a_clock_ahead_orders_after_it() -> None:
    """The case the daemon relies on: the canceller's wall clock reads 30 s behind the
    submitter's, yet having seen the submission it stamps its cancel after it."""
    submitter, canceller = HybridClock(), HybridClock()
    submitted = submitter.now(100_000)
    assert canceller.observe(submitted, physical_ms=70_000)
    assert canceller.now(70_001) > submitted


@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(-(10**6), 10**6)), max_size=200),
)
def test_no_remote_stamp_takes_the_clock_further_ahead_than_the_bound(
    events: list[tuple[int, int]],
) -> None:
    """Whatever peers send, the clock's wall part stays within the bound of the highest wall
    time it was given (plus the milliseconds its counter borrowed)."""
    clock = HybridClock()
    wall_seen = 0
    for ms, ahead in sorted(events):
        wall_seen = max(wall_seen, ms)
        clock.observe(pack(max(0, ms + ahead), 0), physical_ms=ms)
        clock.now(ms)
        assert wall_ms_of(clock.last) <= wall_seen + MAX_FORWARD_DRIFT_MS + len(events)
