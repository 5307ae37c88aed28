"""Tests of swarm.core.policy: label matching and the pending queue (priority, FIFO, backfill, limits).

Requirements are built through the task file parser, so they have exactly the normalized shape the
node's queue sees.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from swarm.cli.taskfile import parse_jsonl
from swarm.core.policy import (
    Labels,
    PendingQueue,
    Requires,
    labels_match,
    rendezvous_rank,
    rendezvous_top,
)
from swarm.core.spec import Resources, TaskSpec

MIB = 1024**2
GIB = 1024**3


def req(raw: dict[str, Any] | None = None) -> Requires:
    """`requires` exactly as a task file line normalizes it."""
    line = json.dumps({"cmd": "x", "requires": raw or {}}).encode()
    return parse_jsonl(line, "t.jsonl", "job", Path("/"))[0].spec.requires


def spec(
    cpus: float = 1.0,
    memory: int = 512 * MIB,
    gpus: int = 0,
    priority: int = 0,
    requires: dict[str, Any] | None = None,
) -> TaskSpec:
    return TaskSpec(
        cmd="x",
        argv=None,
        need=Resources(cpus, memory, gpus),
        priority=priority,
        requires=req(requires),
    )


def box(cpus: float = 64.0, memory: int = 256 * GIB, gpus: int = 8) -> Resources:
    return Resources(cpus, memory, gpus)


def always(_: str) -> bool:
    return True


def pending_in(ids: Iterable[str]) -> Any:
    allowed = set(ids)
    return lambda task: task in allowed


def queue_of(*entries: tuple[str, TaskSpec, int]) -> PendingQueue:
    q = PendingQueue()
    for task, s, stamp in entries:
        q.push(task, s, stamp)
    return q


# --- labels_match --------------------------------------------------------------------------------

LABELS: list[tuple[str, dict[str, Any], Labels, bool]] = [
    # (id, requires, labels, match)
    ("none-required", {}, {}, True),
    ("none-required-any-labels", {}, {"zone": "eu"}, True),
    ("str-equal", {"zone": "eu"}, {"zone": "eu"}, True),
    ("str-differs", {"zone": "eu"}, {"zone": "us"}, False),
    ("str-case-sensitive", {"zone": "eu"}, {"zone": "EU"}, False),
    ("str-missing", {"zone": "eu"}, {}, False),
    ("str-other-label", {"zone": "eu"}, {"region": "eu"}, False),
    ("int-equal", {"cpus": 4}, {"cpus": 4}, True),
    ("int-vs-float-label", {"cpus": 4}, {"cpus": 4.0}, True),
    ("float-vs-int-label", {"cpus": 4.0}, {"cpus": 4}, True),
    ("int-differs", {"cpus": 4}, {"cpus": 8}, False),
    ("int-vs-str-label", {"cpus": 4}, {"cpus": "four"}, False),
    ("str-number-vs-int-label", {"cpus": "4"}, {"cpus": 4}, True),
    ("zero-is-not-missing", {"gpus": 0}, {"gpus": 0}, True),
    ("zero-missing", {"gpus": 0}, {}, False),
    ("empty-str-label", {"tag": ""}, {"tag": ""}, True),
    ("list-any-of-first", {"zone": ["eu", "us"]}, {"zone": "eu"}, True),
    ("list-any-of-second", {"zone": ["eu", "us"]}, {"zone": "us"}, True),
    ("list-none-of", {"zone": ["eu", "us"]}, {"zone": "asia"}, False),
    ("list-missing", {"zone": ["eu", "us"]}, {}, False),
    ("list-numbers", {"gpus": [1, 2]}, {"gpus": 2}, True),
    ("list-numbers-none", {"gpus": [1, 2]}, {"gpus": 3}, False),
    ("list-mixed", {"v": ["a", 3]}, {"v": 3}, True),
    ("list-of-comparators-low", {"n": [">=8", "<2"]}, {"n": 1}, True),
    ("list-of-comparators-high", {"n": [">=8", "<2"]}, {"n": 9}, True),
    ("list-of-comparators-between", {"n": [">=8", "<2"]}, {"n": 4}, False),
    ("ge-equal", {"cpus": ">=4"}, {"cpus": 4}, True),
    ("ge-above", {"cpus": ">=4"}, {"cpus": 8}, True),
    ("ge-below", {"cpus": ">=4"}, {"cpus": 2}, False),
    ("ge-spaced", {"cpus": ">= 4"}, {"cpus": 6}, True),
    ("ge-fraction", {"memory_gb": ">=15.5"}, {"memory_gb": 15.6}, True),
    ("ge-fraction-below", {"memory_gb": ">=15.5"}, {"memory_gb": 15.4}, False),
    ("ge-numeric-str-label", {"cpus": ">=4"}, {"cpus": "8"}, True),
    ("ge-word-label", {"cpus": ">=4"}, {"cpus": "many"}, False),
    ("ge-missing", {"cpus": ">=4"}, {}, False),
    ("le-equal", {"n": "<=4"}, {"n": 4}, True),
    ("le-above", {"n": "<=4"}, {"n": 5}, False),
    ("le-below", {"n": "<=4"}, {"n": -1}, True),
    ("gt-equal", {"n": ">4"}, {"n": 4}, False),
    ("gt-above", {"n": ">4"}, {"n": 4.5}, True),
    ("lt-equal", {"n": "<4"}, {"n": 4}, False),
    ("lt-below", {"n": "<4"}, {"n": 3}, True),
    ("ne-equal", {"n": "!=4"}, {"n": 4}, False),
    ("ne-float-equal", {"n": "!=4"}, {"n": 4.0}, False),
    ("ne-differs", {"n": "!=4"}, {"n": 5}, True),
    ("ne-missing", {"n": "!=4"}, {}, False),
    ("bool-true", {"ssd": True}, {"ssd": True}, True),
    ("bool-false", {"ssd": False}, {"ssd": False}, True),
    ("bool-true-vs-false", {"ssd": True}, {"ssd": False}, False),
    ("bool-false-vs-true", {"ssd": False}, {"ssd": True}, False),
    ("bool-false-missing", {"ssd": False}, {}, False),
    ("bool-vs-word", {"ssd": True}, {"ssd": "yes"}, False),
    ("bool-label-vs-comparator", {"ssd": ">=1"}, {"ssd": True}, False),
    ("all-must-match", {"zone": "eu", "cpus": ">=4"}, {"zone": "eu", "cpus": 8}, True),
    ("all-must-match-one-fails", {"zone": "eu", "cpus": ">=4"}, {"zone": "eu", "cpus": 2}, False),
    ("all-must-match-one-missing", {"zone": "eu", "cpus": ">=4"}, {"cpus": 8}, False),
]


@pytest.mark.parametrize(
    ("requires", "labels", "expected"), [v[1:] for v in LABELS], ids=[v[0] for v in LABELS]
)
def test_labels_match(requires: dict[str, Any], labels: Labels, expected: bool) -> None:
    assert labels_match(req(requires), labels) is expected


def test_a_comparison_with_no_number_matches_nothing() -> None:
    """A spec holding one is refused wherever it comes from (spec.check); matching still fails
    safe, by no node rather than by all."""
    assert labels_match((("cpus", ">=four"),), {"cpus": 8}) is False


# --- select: order -------------------------------------------------------------------------------


def test_empty_queue_selects_nothing() -> None:
    assert PendingQueue().select(always, box(), {}, 10) == []


def test_higher_priority_first() -> None:
    q = queue_of(
        ("low", spec(priority=0), 1),
        ("high", spec(priority=5), 2),
        ("mid", spec(priority=1), 3),
        ("neg", spec(priority=-3), 0),
    )
    assert q.select(always, box(), {}, 10) == ["high", "mid", "low", "neg"]


def test_priority_order_holds_across_shapes() -> None:
    q = queue_of(
        ("small-low", spec(cpus=1, priority=0), 1),
        ("big-high", spec(cpus=4, priority=9), 2),
        ("gpu-mid", spec(gpus=1, priority=5), 3),
        ("eu-mid2", spec(priority=7, requires={"zone": "eu"}), 4),
    )
    assert q.select(always, box(), {"zone": "eu"}, 10) == [
        "big-high",
        "eu-mid2",
        "gpu-mid",
        "small-low",
    ]


def test_fifo_by_stamp_within_a_priority() -> None:
    q = queue_of(("c", spec(), 30), ("a", spec(), 10), ("b", spec(), 20))
    assert q.select(always, box(), {}, 10) == ["a", "b", "c"]


def test_fifo_by_stamp_across_shapes() -> None:
    q = queue_of(("late", spec(cpus=1), 30), ("early", spec(cpus=2), 10), ("mid", spec(gpus=1), 20))
    assert q.select(always, box(), {}, 10) == ["early", "mid", "late"]


def test_same_priority_and_stamp_ordered_by_task_id() -> None:
    q = queue_of(("t-b", spec(), 5), ("t-c", spec(), 5), ("t-a", spec(), 5))
    assert q.select(always, box(), {}, 10) == ["t-a", "t-b", "t-c"]


def test_priority_beats_stamp() -> None:
    q = queue_of(("old", spec(priority=0), 1), ("new-urgent", spec(priority=1), 99))
    assert q.select(always, box(), {}, 10) == ["new-urgent", "old"]


# --- select: limit, resources, backfill ----------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "expected"), [(0, []), (1, ["a"]), (2, ["a", "b"]), (9, ["a", "b", "c"])]
)
def test_limit(limit: int, expected: list[str]) -> None:
    q = queue_of(("a", spec(), 1), ("b", spec(), 2), ("c", spec(), 3))
    assert q.select(always, box(), {}, limit) == expected


def test_limit_leaves_the_rest_for_next_time() -> None:
    q = queue_of(("a", spec(), 1), ("b", spec(), 2), ("c", spec(), 3))
    assert q.select(always, box(), {}, 2) == ["a", "b"]
    assert q.select(always, box(), {}, 2) == ["c"]
    assert q.select(always, box(), {}, 2) == []


def test_chosen_tasks_are_not_chosen_again() -> None:
    q = queue_of(("a", spec(), 1))
    assert q.select(always, box(), {}, 5) == ["a"]
    assert q.select(always, box(), {}, 5) == []


RESOURCE_CASES: list[tuple[str, list[TaskSpec], Resources, int]] = [
    # (id, tasks in push order, free, how many are chosen)
    ("two-1cpu-into-1.5", [spec(cpus=1)] * 2, box(cpus=1.5), 1),
    ("two-1cpu-into-2", [spec(cpus=1)] * 2, box(cpus=2), 2),
    ("ten-0.1-into-1", [spec(cpus=0.1)] * 10, box(cpus=1), 10),
    ("eleven-0.1-into-1", [spec(cpus=0.1)] * 11, box(cpus=1), 10),
    ("three-thirds-into-1", [spec(cpus=1 / 3)] * 3, box(cpus=1), 3),
    ("three-0.1-into-0.3", [spec(cpus=0.1)] * 3, box(cpus=0.3), 3),
    ("five-0.6-into-3", [spec(cpus=0.6)] * 6, box(cpus=3), 5),
    ("four-0.7-into-2.8", [spec(cpus=0.7)] * 4, box(cpus=2.8), 4),
    ("four-quarters-into-1", [spec(cpus=0.25)] * 5, box(cpus=1), 4),
    ("nothing-free", [spec(cpus=0.1)], box(cpus=0), 0),
    ("memory", [spec(memory=GIB)] * 3, box(memory=2 * GIB + GIB // 2), 2),
    ("memory-exact", [spec(memory=GIB)] * 3, box(memory=3 * GIB), 3),
    ("memory-one-byte-short", [spec(memory=GIB)], box(memory=GIB - 1), 0),
    ("gpus", [spec(gpus=1)] * 3, box(gpus=2), 2),
    ("gpus-none-free", [spec(gpus=1)] * 3, box(gpus=0), 0),
    ("two-gpu-task-one-free", [spec(gpus=2)], box(gpus=1), 0),
]


@pytest.mark.parametrize(
    ("specs", "free", "count"),
    [v[1:] for v in RESOURCE_CASES],
    ids=[v[0] for v in RESOURCE_CASES],
)
def test_resources_are_subtracted_as_tasks_are_chosen(
    specs: list[TaskSpec], free: Resources, count: int
) -> None:
    q = queue_of(*[(f"t{i:02}", s, i) for i, s in enumerate(specs)])
    chosen = q.select(always, free, {}, 100)
    assert chosen == [f"t{i:02}" for i in range(count)]


def test_gpu_tasks_wait_while_cpu_tasks_run() -> None:
    q = queue_of(("gpu", spec(gpus=1, priority=9), 1), ("cpu", spec(), 2))
    assert q.select(always, box(gpus=0), {}, 10) == ["cpu"]
    assert q.select(always, box(gpus=1), {}, 10) == ["gpu"]


def test_backfill_big_task_does_not_block_smaller_ones() -> None:
    q = queue_of(
        ("big", spec(cpus=4, priority=10), 1),
        ("small-1", spec(cpus=1), 2),
        ("small-2", spec(cpus=1), 3),
        ("small-3", spec(cpus=1), 4),
    )
    assert q.select(always, box(cpus=2), {}, 10) == ["small-1", "small-2"]
    # The big one was only passed over, not dropped.
    assert q.select(always, box(cpus=4), {}, 10) == ["big"]
    assert q.select(always, box(cpus=4), {}, 10) == ["small-3"]


def test_backfill_by_memory() -> None:
    q = queue_of(("huge", spec(memory=64 * GIB, priority=5), 1), ("small", spec(memory=GIB), 2))
    assert q.select(always, box(memory=8 * GIB), {}, 10) == ["small"]


def test_best_fit_after_the_first_choice_uses_what_is_left() -> None:
    # 3 cpus: the 2-cpu high-priority task goes first, then only a 1-cpu task still fits.
    q = queue_of(
        ("two", spec(cpus=2, priority=5), 1),
        ("two-b", spec(cpus=2, priority=4), 2),
        ("one", spec(cpus=1, priority=0), 3),
    )
    assert q.select(always, box(cpus=3), {}, 10) == ["two", "one"]


# --- select: lazy removal, duplicates, labels ----------------------------------------------------


def test_tasks_no_longer_pending_are_skipped_and_dropped() -> None:
    q = queue_of(("a", spec(), 1), ("b", spec(), 2), ("c", spec(), 3))
    assert q.select(pending_in({"b", "c"}), box(), {}, 10) == ["b", "c"]
    # "a" was dropped when it was seen not pending: the queue does not hold it any more.
    assert q.select(always, box(), {}, 10) == []


def test_not_pending_tasks_do_not_use_resources_or_limit() -> None:
    q = queue_of(
        ("gone-1", spec(cpus=1), 1), ("gone-2", spec(cpus=1), 2), ("live", spec(cpus=1), 3)
    )
    assert q.select(pending_in({"live"}), box(cpus=1), {}, 1) == ["live"]


def test_nothing_pending_selects_nothing() -> None:
    q = queue_of(("a", spec(), 1), ("b", spec(cpus=2), 2))
    assert q.select(pending_in(()), box(), {}, 10) == []
    assert q.select(always, box(), {}, 10) == []


def test_task_pushed_twice_is_chosen_once() -> None:
    s = spec()
    q = queue_of(("a", s, 1), ("a", s, 1), ("b", s, 2), ("a", s, 3))
    assert q.select(always, box(), {}, 10) == ["a", "b"]


def test_task_pushed_twice_uses_resources_once() -> None:
    s = spec(cpus=1)
    q = queue_of(("a", s, 1), ("a", s, 1), ("b", s, 2))
    assert q.select(always, box(cpus=2), {}, 10) == ["a", "b"]


def test_labels_filter_tasks() -> None:
    q = queue_of(
        ("eu", spec(requires={"zone": "eu"}, priority=9), 1),
        ("us", spec(requires={"zone": "us"}), 2),
        ("any", spec(), 3),
        ("big-node", spec(requires={"cpus": ">=32"}), 4),
        ("eu-or-us", spec(requires={"zone": ["eu", "us"]}), 5),
    )
    assert q.select(always, box(), {"zone": "us", "cpus": 8}, 10) == ["us", "any", "eu-or-us"]
    # The unmatched tasks stay queued for a node whose labels fit.
    assert q.select(always, box(), {"zone": "eu", "cpus": 64}, 10) == ["eu", "big-node"]


def test_tasks_with_list_requirements_can_be_queued_and_grouped() -> None:
    a = spec(requires={"zone": ["eu", "us"]})
    b = spec(requires={"zone": ["eu", "us"]})
    q = queue_of(("a", a, 1), ("b", b, 2))
    assert len(q.groups) == 1
    assert q.select(always, box(), {"zone": "us"}, 10) == ["a", "b"]


# --- infeasible ----------------------------------------------------------------------------------


def test_infeasible_lists_tasks_that_could_never_run_here() -> None:
    capacity = Resources(4.0, 8 * GIB, 1)
    q = queue_of(
        ("fits", spec(cpus=4, memory=8 * GIB, gpus=1), 1),
        ("too-many-cpus", spec(cpus=4.5), 2),
        ("too-much-memory", spec(memory=8 * GIB + 1), 3),
        ("too-many-gpus", spec(gpus=2), 4),
        ("wrong-zone", spec(requires={"zone": "us"}), 5),
        ("missing-label", spec(requires={"ssd": True}), 6),
        ("right-zone", spec(requires={"zone": "eu"}), 7),
        ("too-few-cores-label", spec(requires={"cpus": ">=8"}), 8),
    )
    labels = {"zone": "eu", "cpus": 4}
    assert q.infeasible(capacity, labels, always) == [
        "missing-label",
        "too-few-cores-label",
        "too-many-cpus",
        "too-many-gpus",
        "too-much-memory",
        "wrong-zone",
    ]


def test_infeasible_ignores_busy_capacity_and_non_pending_tasks() -> None:
    capacity = Resources(2.0, 4 * GIB, 0)
    q = queue_of(
        ("big", spec(cpus=3), 1),
        ("big-done", spec(cpus=3), 2),
        ("gpu", spec(gpus=1), 3),
        ("ok", spec(cpus=2), 4),
    )
    assert q.infeasible(capacity, {}, pending_in({"big", "gpu", "ok"})) == ["big", "gpu"]


def test_infeasible_lists_a_task_pushed_twice_once_and_consumes_nothing() -> None:
    s = spec(cpus=16)
    q = queue_of(("huge", s, 1), ("huge", s, 2), ("small", spec(), 3))
    assert q.infeasible(box(cpus=8), {}, always) == ["huge"]
    assert q.infeasible(box(cpus=8), {}, always) == ["huge"]
    assert q.select(always, box(cpus=8), {}, 10) == ["small"]
    assert q.select(always, box(cpus=16), {}, 10) == ["huge"]


def test_nothing_infeasible_on_a_big_enough_node() -> None:
    q = queue_of(("a", spec(cpus=2, gpus=1), 1), ("b", spec(requires={"zone": "eu"}), 2))
    assert q.infeasible(box(), {"zone": "eu"}, always) == []


# --- bugs found: each shows the contract and is expected to fail until fixed ---------------------


def test_not_equal_on_a_string_label() -> None:
    assert labels_match(req({"zone": "!=eu"}), {"zone": "us"}) is True


@pytest.mark.parametrize(
    ("requires", "labels"),
    [({"ssd": True}, {"ssd": 1}), ({"ssd": False}, {"ssd": 0}), ({"gpus": 1}, {"gpus": True})],
    ids=["true-vs-1", "false-vs-0", "1-vs-true"],
)
def test_bool_is_not_a_number(requires: dict[str, Any], labels: Labels) -> None:
    assert labels_match(req(requires), labels) is False


def test_huge_integer_requirement_does_not_crash_matching() -> None:
    assert labels_match(req({"n": 10**400}), {"n": 1}) is False


def test_huge_integer_label_does_not_crash_comparison() -> None:
    assert labels_match(req({"n": ">=4"}), {"n": 10**400}) is True


def test_one_bad_requirement_does_not_stop_select() -> None:
    q = queue_of(("bad", spec(requires={"n": 10**400}), 1), ("good", spec(), 2))
    assert q.select(always, box(), {"n": 1}, 10) == ["good"]


# -- rendezvous ranking and the stagger ---------------------------------------------------------

NODES = [("n1", 2.0), ("n2", 2.0), ("n3", 2.0), ("n4", 2.0)]


def test_every_node_gets_a_distinct_rank_for_each_task() -> None:
    for i in range(200):
        ranks = sorted(rendezvous_rank(f"t{i}", node, NODES) for node, _ in NODES)
        assert ranks == [0, 1, 2, 3]


def test_tasks_spread_evenly_and_a_bigger_node_takes_more() -> None:
    tasks = [f"task-{i}" for i in range(4000)]
    firsts = Counter(next(n for n, _ in NODES if rendezvous_rank(t, n, NODES) == 0) for t in tasks)
    assert all(800 < firsts[n] < 1200 for n, _ in NODES)  # about 1,000 each
    uneven = [("small", 1.0), ("big", 2.0)]
    big = sum(1 for t in tasks if rendezvous_rank(t, "big", uneven) == 0)
    assert 0.62 < big / len(tasks) < 0.72  # about 2/3


def test_a_member_leaving_moves_only_the_tasks_it_was_preferred_for() -> None:
    tasks = [f"task-{i}" for i in range(1000)]
    fewer = [m for m in NODES if m[0] != "n4"]
    for t in tasks:
        before = next(n for n, _ in NODES if rendezvous_rank(t, n, NODES) == 0)
        after = next(n for n, _ in fewer if rendezvous_rank(t, n, fewer) == 0)
        assert before == after or before == "n4"


def test_a_task_waits_aside_until_ready_and_blocks_nothing_behind_it() -> None:
    q = PendingQueue()
    q.push("theirs", spec(priority=5), 1, rank=1, ready_at=10.0)
    q.push("mine", spec(), 2)
    assert q.next_ready() == 10.0
    assert q.select(always, box(), {}, 10, now=5.0) == ["mine"]
    assert q.select(always, box(), {}, 10, now=9.9) == []
    assert q.select(always, box(), {}, 10, now=10.0) == ["theirs"]
    assert q.next_ready() is None


def test_own_tasks_come_before_stolen_ones_of_the_same_priority() -> None:
    q = PendingQueue()
    q.push("stolen-old", spec(), 1, rank=2)
    q.push("mine-new", spec(), 9, rank=0)
    q.push("urgent-stolen", spec(priority=1), 5, rank=3)
    assert q.select(always, box(), {}, 10) == ["urgent-stolen", "mine-new", "stolen-old"]


def test_stolen_tasks_are_taken_newest_first() -> None:
    q = PendingQueue()
    for stamp in (1, 2, 3):
        q.push(f"stolen-{stamp}", spec(), stamp, rank=1)
    assert q.select(always, box(), {}, 10) == ["stolen-3", "stolen-2", "stolen-1"]


def test_rendezvous_top_is_stable_and_moves_only_what_a_leaver_held() -> None:
    nodes = [f"n{i}" for i in range(6)]
    for i in range(300):
        key = f"digest-{i}"
        top = rendezvous_top(key, nodes, 3)
        assert len(set(top)) == 3 and top == rendezvous_top(key, list(reversed(nodes)), 3)
        fewer = [n for n in nodes if n != "n0"]
        after = rendezvous_top(key, fewer, 3)
        if "n0" not in top:
            assert after == top
        else:
            assert set(top) - {"n0"} < set(after)
    assert sorted(rendezvous_top("k", ["a", "b"], 3)) == ["a", "b"]  # fewer nodes than R: all


def test_infeasible_lists_a_bounded_number_the_first_in_queue_order() -> None:
    # 300 tasks too big for the node, priorities 0..299: the ten of highest priority are listed
    # (sorted by id), and a stale entry (no longer pending) is passed over.
    q = queue_of(*((f"t{n:03}", spec(cpus=16, priority=n), n) for n in range(300)))
    pending = pending_in(f"t{n:03}" for n in range(300) if n != 299)
    assert q.infeasible(box(cpus=8), {}, pending, listed_max=10) == [
        f"t{n:03}" for n in range(289, 299)
    ]
