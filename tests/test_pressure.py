"""Memory pressure under --overcommit: admission by measured use, and which attempt is evicted."""

from __future__ import annotations

from swarm.core.pressure import MEMFREE_MIN, Guard, Running, default_memfree, headroom, left, victim

MIB = 1024**2


def run(task: str, started: float, declared_mib: int, measured_mib: int | None) -> Running:
    measured = None if measured_mib is None else measured_mib * MIB
    return Running(task, started, declared_mib * MIB, measured)


def test_running_attempts_count_for_what_they_use_not_what_they_declared() -> None:
    running = [run("a", 1.0, 400, 50), run("b", 2.0, 400, 30)]
    # Budget 1000, 80 used, 100 kept free: 820 may still be declared by a new task.
    assert headroom(1000 * MIB, running, 10_000 * MIB, 100 * MIB) == 820 * MIB


def test_an_attempt_not_yet_measured_counts_for_what_it_declared() -> None:
    running = [run("a", 1.0, 400, None)]
    assert headroom(1000 * MIB, running, 10_000 * MIB, 100 * MIB) == 500 * MIB


def test_the_machine_running_low_limits_admission_below_the_budget() -> None:
    assert headroom(1000 * MIB, [], 150 * MIB, 100 * MIB) == 50 * MIB
    assert headroom(1000 * MIB, [], 50 * MIB, 100 * MIB) == 0


def test_the_newest_measured_attempt_is_evicted_below_half_the_floor() -> None:
    running = [run("old", 1.0, 10, 300), run("new", 5.0, 10, 300), run("unseen", 9.0, 10, None)]
    budget, floor = 1000 * MIB, 200 * MIB
    assert left(budget, running, 10_000 * MIB) == 390 * MIB
    assert victim(running, 390 * MIB, floor) is None  # above half the floor
    assert victim(running, 99 * MIB, floor) == running[1]  # "unseen" has no measure yet
    assert victim([], -5, floor) is None


def test_the_default_floor_is_a_share_of_the_node_with_a_minimum() -> None:
    assert default_memfree(16 * 1024 * MIB) == int(16 * 1024 * MIB * 0.05)
    assert default_memfree(100 * MIB) == MEMFREE_MIN


def test_one_eviction_at_a_time_judged_on_a_sample_taken_after_the_victim_exited() -> None:
    guard = Guard(budget=1000 * MIB, memfree=200 * MIB)
    running = [run("a", 1.0, 10, 500), run("b", 2.0, 10, 500)]  # 0 left
    chosen = guard.choose(running, sampled_at=100.0)
    assert chosen is not None and chosen.task_id == "b"
    assert guard.choose(running, sampled_at=100.5) is None  # b is still exiting
    guard.ended("b", now=101.0)
    assert guard.choose(running, sampled_at=100.8) is None  # sampled before b was gone
    still = [run("a", 1.0, 10, 950)]  # a alone grew: 50 left, under half the floor
    chosen = guard.choose(still, sampled_at=101.5)
    assert chosen is not None and chosen.task_id == "a"
    assert guard.evictions == 2
