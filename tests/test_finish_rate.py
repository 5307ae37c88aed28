"""The finish rate a status shows: tasks finished per second over the last minute."""

from __future__ import annotations

from collections import deque

from hypothesis import given
from hypothesis import strategies as st

from swarm.core.ledger import FINISH_SAMPLES_MAX, Ledger
from swarm.core.snapshot import RATE_WINDOW_MS, finish_rate

NOW_MS = 10_000_000


def walked_rate(samples: list[int], now_ms: int) -> float:
    """The rate as a walk back from the newest finish gives it, stopping at the window's edge."""
    recent, oldest = 0, now_ms
    for ended in reversed(samples):
        if ended <= now_ms - RATE_WINDOW_MS:
            break
        recent += 1
        oldest = min(oldest, ended)
    return recent * 1000 / max(now_ms - oldest, 1000) if recent else 0.0


def ledger_with(samples: list[int]) -> Ledger:
    ledger = Ledger()
    ledger.finished_ms["job"] = deque(samples, maxlen=FINISH_SAMPLES_MAX)
    return ledger


def test_no_finishes_no_rate() -> None:
    assert finish_rate(Ledger(), "job", NOW_MS) == 0.0
    assert finish_rate(ledger_with([NOW_MS - 2 * RATE_WINDOW_MS]), "job", NOW_MS) == 0.0


def test_a_busy_job_counts_every_finish_since_its_oldest() -> None:
    samples = [NOW_MS - 4_000 + 2 * i for i in range(2_000)]  # 2,000 in the last 4 s
    assert finish_rate(ledger_with(samples), "job", NOW_MS) == 500.0


def test_the_first_second_counts_as_one() -> None:
    assert finish_rate(ledger_with([NOW_MS - 10, NOW_MS - 5]), "job", NOW_MS) == 2.0


@given(
    st.lists(
        st.integers(NOW_MS - 2 * RATE_WINDOW_MS, NOW_MS), max_size=FINISH_SAMPLES_MAX // 8
    ).map(sorted),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(-5_000, 5_000)), max_size=20),
)
def test_same_as_walking_back_from_the_newest(
    samples: list[int], moves: list[tuple[int, int]]
) -> None:
    # Mostly in finishing order, some out of it: a peer's result may come late.
    for where, shift in moves:
        if samples:
            i = where % len(samples)
            samples[i] = min(NOW_MS, max(0, samples[i] + shift))
    assert finish_rate(ledger_with(samples), "job", NOW_MS) == walked_rate(samples, NOW_MS)
