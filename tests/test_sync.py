"""LedgerSync (core/sync.py) on its own: what it accepts, counts, holds back, pulls and serves."""

from __future__ import annotations

import random
from collections.abc import Iterable

from swarm.core import gossip, wire
from swarm.core.ledger import HeartbeatRecord, Outcome, ResultRecord, TaskRecord, Version
from swarm.core.replication import Intake
from swarm.core.spec import Resources, TaskSpec
from swarm.core.sync import (
    PUSHES_QUEUED_MAX,
    Accepted,
    Checks,
    LedgerSync,
    RowSlice,
    encode_body,
    plan_slice,
)

ME = ("me", 1)
PEER = ("peer", 1)
SPEC = TaskSpec(cmd="true", argv=None, need=Resources(cpus=1, memory_bytes=1 << 20))
TRUSTING = Checks(result_signed=lambda origin, body: True, task_problem=lambda body: None)


def new(checks: Checks = TRUSTING) -> LedgerSync:
    return LedgerSync(random.Random(1), checks)


def beat(seq: int, counter: int) -> wire.RecordCopy:
    return (*PEER, seq, encode_body(HeartbeatRecord(counter)))


def result() -> ResultRecord:
    capacity = Resources(cpus=2, memory_bytes=1 << 30)
    return ResultRecord("t", 1, 1, Outcome.OK, 0, 0, 1, 0.1, 0.0, 0, None, capacity)


def take(
    sync: LedgerSync, records: Iterable[wire.RecordCopy], high: dict[tuple[str, int], int]
) -> tuple[list[Accepted], Intake]:
    intake = sync.intake(high, ME, None)
    accepted = sync.accept(tuple(records), intake)
    sync.stored(accepted)
    for row in accepted:
        high[(row.version.origin, row.version.generation)] = row.version.seq
    return accepted, intake


def test_a_too_large_or_undecodable_record_is_passed_over_and_counted_once() -> None:
    sync = new()
    big = (*PEER, 1, b"x" * (wire.RECORD_BODY_BYTES_MAX + 1))
    junk = (*PEER, 2, b"\xc1")
    fine = beat(3, 1)
    for _ in range(2):  # the same versions again, as a peer asking again would send them
        accepted, _ = take(sync, [big, junk, fine], {})
        assert [row.version.seq for row in accepted] == [3]  # nothing stalls behind them
    assert sync.refused_records == 2  # each version once
    assert sync.bad_records == 2  # (each copy that did not decode, as the daemon counts them)


def test_a_forged_result_or_task_is_refused_and_stops_its_origin() -> None:
    checks = Checks(result_signed=lambda origin, body: False, task_problem=lambda body: "forged")
    sync = new(checks)
    forged = (*PEER, 1, encode_body(result()))
    accepted, intake = take(sync, [forged, beat(2, 1)], {})
    assert accepted == [] and sync.forged_records == 1
    assert dict(intake.watermarks({PEER: 2})) == {}  # the watermark stays below it
    task = (*PEER, 1, encode_body(TaskRecord("t", "j", "t", SPEC, 1)))
    for _ in range(2):
        assert take(sync, [task], {})[0] == []
    assert sync.refused_tasks == 1  # each version counted once


def test_each_heartbeat_replaces_the_last_one_stored() -> None:
    sync = new()
    high: dict[tuple[str, int], int] = {}
    first, _ = take(sync, [beat(1, 1), beat(2, 2)], high)
    assert [row.replaces for row in first] == [None, Version(*PEER, 1)]
    later, _ = take(sync, [beat(3, 3)], high)
    assert later[0].replaces == Version(*PEER, 2)


def test_records_that_were_not_stored_count_as_refused() -> None:
    sync = new()
    intake = sync.intake({}, ME, {})
    accepted = sync.accept((beat(1, 1), beat(2, 2)), intake)
    sync.not_stored(accepted, intake)
    high: dict[tuple[str, int], int] = {}
    sync.raise_watermarks(intake, {PEER: 2}, high)
    assert high == {}


def test_the_push_queue_is_bounded() -> None:
    sync = new()
    push = wire.RecordsPush((beat(1, 1),))
    assert all(sync.queue_push(push) for _ in range(PUSHES_QUEUED_MAX))
    assert not sync.queue_push(push)
    assert len(sync.queued()) == 1  # the same record, many times: once, in order
    assert sync.queue_push(push)


def member(state: gossip.MemberState) -> gossip.Member:
    return gossip.Member("peer", ("10.0.0.2", 7946), 1, state, {}, 0.0)


def test_a_gap_pull_is_one_at_a_time_per_origin_and_never_from_a_member_gone() -> None:
    sync = new()
    alive = {"peer": member(gossip.MemberState.ALIVE)}

    def gap_at(now: float, members: dict[str, gossip.Member]) -> list[gossip.Member]:
        intake = sync.intake({}, ME, None)
        records = (beat(5, 5),)
        sync.accept(records, intake)
        return sync.pushed(records, intake, {}, now, members)

    assert [m.node for m in gap_at(0.0, alive)] == ["peer"]
    assert gap_at(10.0, alive) == []  # the first one has not ended
    sync.pull_done("peer")
    assert gap_at(20.0, {"peer": member(gossip.MemberState.DEAD)}) == []
    assert gap_at(30.0, {}) == []
    assert len(gap_at(40.0, alive)) == 1
    assert sync.gap_pulls == 2


def test_an_answer_is_planned_within_its_budget_and_ends_with_its_watermarks() -> None:
    sync = new()
    sync.withheld = {PEER: frozenset({3})}
    high = {PEER: 6, ME: 2}
    answer = sync.answer(high, {PEER: 1}, frame_rows_max=3)
    answer.budget = 4
    frames = []
    asks = []
    stored = {seq: bytes([seq]) for seq in range(2, 7)}
    while (ask := answer.next_ask()) is not None:
        asks.append((ask.key, ask.after, ask.limit))
        seqs = sorted(s for s in stored if s > ask.after)[: ask.limit]
        sizes = [(s, wire.RECORD_BODY_BYTES_MAX + 1 if s == 4 else 1) for s in seqs]
        last, oversized, passed = plan_slice(sizes, ask.after, 1 << 20, ask.withheld)
        rows = [(s, stored[s]) for s in seqs if s <= last and s not in {*oversized, *passed}]
        frame = answer.took(RowSlice(rows, oversized, passed, last))
        if frame is not None:
            frames.append(frame)
    # The peer's records past 1: seqs 2, 3 (withheld), 4 (too large) in the first slice of 3;
    # the budget of 4 leaves one more: seq 5. Our own records wait for the next answer.
    assert asks == [(PEER, 1, 3), (PEER, 4, 1)]
    assert [[r[2] for r in f.records] for f in frames] == [[2], [5]]
    assert answer.last() == wire.SyncBatch((), True, {PEER: 5})
    assert sync.refused_records == 1


def test_an_answer_covers_every_key_to_its_high_when_nothing_more_is_stored() -> None:
    sync = new()
    answer = sync.answer({PEER: 4}, {}, frame_rows_max=10)
    ask = answer.next_ask()
    assert ask is not None and (ask.key, ask.after) == (PEER, 0)
    assert answer.took(RowSlice([], [], [], 0)) is None  # superseded heartbeats: gone
    assert answer.next_ask() is None
    assert answer.last().upto == {PEER: 4}
