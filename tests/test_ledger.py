"""The ledger's records, their merge, and the states derived from them."""

from __future__ import annotations

import random
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.core.ledger import (
    EVICTION_CAP,
    INTERRUPTION_CAP,
    Body,
    CancelRecord,
    ClaimRecord,
    DrainRecord,
    HeartbeatRecord,
    Kind,
    Ledger,
    LostRecord,
    Outcome,
    ReplicaRecord,
    ResultRecord,
    RetryRecord,
    State,
    TaskRecord,
    Version,
    body_from_plain,
    body_to_plain,
    derive_state,
    stamp_of,
)
from swarm.core.snapshot import failure_rows
from swarm.core.spec import Resources, TaskSpec
from swarm.daemon import db
from swarm.errors import BadRecordError

SPEC = TaskSpec(cmd="true", argv=None, need=Resources(1.0, 512 << 20), retries=1)
CAP = Resources(2.0, 4 << 30)


def result(
    task: str, epoch: int, outcome: Outcome, ended_ms: int = 2000, evicted: bool = False
) -> ResultRecord:
    return ResultRecord(
        task_id=task,
        epoch=epoch,
        attempt=epoch,
        outcome=outcome,
        exit_code=0 if outcome is Outcome.OK else 1,
        started_ms=1000,
        ended_ms=ended_ms,
        wall_s=1.0,
        cpu_s=0.5,
        max_rss_kb=1024,
        digest="ab" * 32,
        node_capacity=CAP,
        reason="",
        evicted=evicted and outcome is Outcome.INTERRUPTED,
    )


class Writer:
    """Writes records as one node would: its own origin, consecutive seqs."""

    def __init__(self, ledger: Ledger, origin: str) -> None:
        self.ledger, self.origin, self.seq = ledger, origin, 0

    def __call__(self, body: Body) -> None:
        self.seq += 1
        self.ledger.apply(Version(self.origin, 1, self.seq), body)


def fresh(task: str = "t1", job: str = "job") -> tuple[Ledger, Writer, Writer]:
    ledger = Ledger()
    a, b = Writer(ledger, "node-a"), Writer(ledger, "node-b")
    a(TaskRecord(task, job, "one", SPEC, stamp=10))
    return ledger, a, b


# -- derived state ---------------------------------------------------------------------------


def test_a_new_task_is_pending() -> None:
    ledger, _, _ = fresh()
    assert ledger.tasks["t1"].state is State.PENDING
    assert ledger.job_counts["job"][State.PENDING] == 1


def test_claim_makes_it_running_and_an_ok_result_done() -> None:
    ledger, a, _ = fresh()
    a(ClaimRecord("t1", 1, stamp=20))
    assert ledger.tasks["t1"].state is State.RUNNING
    assert ledger.running == {"t1"}
    a(result("t1", 1, Outcome.OK))
    assert ledger.tasks["t1"].state is State.DONE
    assert ledger.running == set()
    assert ledger.job_finished("job")


def test_failures_up_to_retries_requeue_then_fail() -> None:
    ledger, a, _ = fresh()  # retries=1: two failed attempts allowed in all
    a(ClaimRecord("t1", 1, stamp=20))
    a(result("t1", 1, Outcome.FAILED))
    assert ledger.tasks["t1"].state is State.PENDING
    a(ClaimRecord("t1", 2, stamp=30))
    a(result("t1", 2, Outcome.TIMEOUT))
    assert ledger.tasks["t1"].state is State.FAILED


def test_a_claim_taken_over_with_no_result_counts_as_an_interruption() -> None:
    """A task that kills its node leaves no result behind: each takeover still counts, so it
    cannot loop over the swarm's nodes forever."""
    ledger, a, b = fresh()
    writers = [a, b]
    for epoch in range(1, INTERRUPTION_CAP + 2):
        writers[epoch % 2](ClaimRecord("t1", epoch, stamp=epoch))
        assert ledger.tasks["t1"].state is State.RUNNING
        assert ledger.tasks["t1"].interruptions() == epoch - 1
    # The last holder dies too; its claim is only judged lost when another takes over, so a
    # final epoch's claim (from whoever comes next) makes it exhausted, and its failure ends it.
    a(ClaimRecord("t1", INTERRUPTION_CAP + 2, stamp=99))
    a(result("t1", INTERRUPTION_CAP + 2, Outcome.INTERRUPTED))
    assert ledger.tasks["t1"].state is State.FAILED


def test_a_released_or_finished_claim_is_no_lost_lease() -> None:
    ledger, a, b = fresh()
    a(ClaimRecord("t1", 1, stamp=1))
    a(ClaimRecord("t1", 1, stamp=1, released=True))  # a thief that let go
    b(ClaimRecord("t1", 2, stamp=2))
    b(result("t1", 2, Outcome.FAILED))
    a(ClaimRecord("t1", 3, stamp=3))
    assert ledger.tasks["t1"].interruptions() == 0


def test_a_lost_race_in_one_epoch_is_no_lost_lease() -> None:
    ledger, a, b = fresh()
    a(ClaimRecord("t1", 1, stamp=1))
    b(ClaimRecord("t1", 1, stamp=2))  # lost the race: not the task's attempt
    a(ClaimRecord("t1", 2, stamp=3))  # node-a took it again (its first holder died)
    assert ledger.tasks["t1"].interruptions() == 1


def test_interruptions_do_not_use_up_retries_but_are_capped() -> None:
    ledger, a, _ = fresh()
    for epoch in range(1, INTERRUPTION_CAP + 1):
        a(ClaimRecord("t1", epoch, stamp=epoch))
        a(result("t1", epoch, Outcome.INTERRUPTED))
        assert ledger.tasks["t1"].state is State.PENDING
    a(ClaimRecord("t1", INTERRUPTION_CAP + 1, stamp=99))
    a(result("t1", INTERRUPTION_CAP + 1, Outcome.INTERRUPTED))
    assert ledger.tasks["t1"].state is State.FAILED


def test_evictions_have_their_own_cap_apart_from_interruptions() -> None:
    ledger, a, _ = fresh()
    epoch = 0
    for _ in range(INTERRUPTION_CAP):  # interruptions up to their cap: still pending
        epoch += 1
        a(ClaimRecord("t1", epoch, stamp=epoch))
        a(result("t1", epoch, Outcome.INTERRUPTED))
    for _ in range(EVICTION_CAP):  # evictions up to theirs, on top: still pending
        epoch += 1
        a(ClaimRecord("t1", epoch, stamp=epoch))
        a(result("t1", epoch, Outcome.INTERRUPTED, evicted=True))
        assert ledger.tasks["t1"].state is State.PENDING
    view = ledger.tasks["t1"]
    assert (view.interruptions(), view.evictions()) == (INTERRUPTION_CAP, EVICTION_CAP)
    epoch += 1
    a(ClaimRecord("t1", epoch, stamp=epoch))
    a(result("t1", epoch, Outcome.INTERRUPTED, evicted=True))
    assert ledger.tasks["t1"].state is State.FAILED
    a(RetryRecord("t1", failures=0, interruptions=0, evictions=EVICTION_CAP + 1))
    assert ledger.tasks["t1"].state is State.PENDING


def test_an_eviction_of_a_claim_that_lost_its_race_is_not_counted() -> None:
    ledger, a, b = fresh()
    a(ClaimRecord("t1", 1, stamp=1))
    b(ClaimRecord("t1", 1, stamp=2))
    b(result("t1", 1, Outcome.INTERRUPTED, evicted=True))
    assert ledger.tasks["t1"].evictions() == 0


def test_records_written_before_evictions_existed_keep_their_layout() -> None:
    """A result that is no eviction, and a retry that forgives none, encode as they did before
    those fields existed (so old signatures still check); the new fields round-trip."""
    evicted = result("t1", 1, Outcome.INTERRUPTED, evicted=True)
    assert body_from_plain(body_to_plain(evicted)) == evicted
    plain = replace(evicted, evicted=False)
    assert len(body_to_plain(plain)) == 15  # the kind and the 14 fields of before
    assert body_from_plain(body_to_plain(plain)) == plain
    retry = RetryRecord("t1", 1, 2, 3)
    assert body_from_plain(body_to_plain(retry)) == retry
    assert body_to_plain(RetryRecord("t1", 1, 2)) == [Kind.RETRY, "t1", 1, 2]


def test_retry_record_requeues_a_failed_task() -> None:
    ledger, a, _ = fresh()
    for epoch in (1, 2):
        a(ClaimRecord("t1", epoch, stamp=epoch))
        a(result("t1", epoch, Outcome.FAILED))
    assert ledger.tasks["t1"].state is State.FAILED
    a(RetryRecord("t1", failures=2, interruptions=0))
    assert ledger.tasks["t1"].state is State.PENDING
    assert ledger.tasks["t1"].next_epoch() == 3


def test_released_claim_returns_the_task_to_pending() -> None:
    ledger, a, _ = fresh()
    a(ClaimRecord("t1", 1, stamp=20))
    a(ClaimRecord("t1", 1, stamp=20, released=True))
    assert ledger.tasks["t1"].state is State.PENDING


def test_claim_winner_highest_epoch_then_earliest_stamp_then_lowest_node() -> None:
    ledger, a, b = fresh()
    b(ClaimRecord("t1", 1, stamp=5))
    a(ClaimRecord("t1", 1, stamp=7))
    assert ledger.tasks["t1"].winning_claim() == (1, "node-b")  # earlier stamp
    a(ClaimRecord("t1", 2, stamp=50))
    assert ledger.tasks["t1"].winning_claim() == (2, "node-a")  # higher epoch
    b(ClaimRecord("t1", 2, stamp=50))
    assert ledger.tasks["t1"].winning_claim() == (2, "node-a")  # same stamp: lower node id


def test_a_stolen_claim_loses_to_the_preferred_nodes_claim_of_its_epoch() -> None:
    ledger, a, b = fresh()
    b(ClaimRecord("t1", 1, stamp=5, stolen=True))  # a thief reached first ...
    a(ClaimRecord("t1", 1, stamp=7))  # ... but the preferred node's claim wins
    assert ledger.tasks["t1"].winning_claim() == (1, "node-a")
    b(ClaimRecord("t1", 1, stamp=5, stolen=True, released=True))  # the thief lets go
    assert ledger.tasks["t1"].active_claim() == (1, "node-a")
    b(ClaimRecord("t1", 2, stamp=9, stolen=True))  # a higher epoch wins, stolen or not
    assert ledger.tasks["t1"].winning_claim() == (2, "node-b")


def test_every_judgement_of_a_claim_race_follows_the_stolen_rule() -> None:
    """Interruptions, their cap and the credited result rank a race's claims as the winner
    does: a thief's lost race is no interruption, and its ok result is not the task's."""
    ledger, a, b = fresh()
    b(ClaimRecord("t1", 1, stamp=5, stolen=True))
    a(ClaimRecord("t1", 1, stamp=7))
    b(result("t1", 1, Outcome.INTERRUPTED))  # the thief lost its race
    assert ledger.tasks["t1"].interruptions() == 0
    a(ClaimRecord("t1", 2, stamp=9))  # node-a, the winner of epoch 1, died: taken over
    assert ledger.tasks["t1"].interruptions() == 1
    ledger, a, b = fresh()
    b(ClaimRecord("t1", 1, stamp=5, stolen=True))
    a(ClaimRecord("t1", 1, stamp=7))
    b(result("t1", 1, Outcome.OK))  # both ran to the end: the preferred node's result counts
    a(result("t1", 1, Outcome.OK))
    credited = ledger.tasks["t1"].ok_attempt()
    assert credited is not None and credited.version.origin == "node-a"


def test_a_claim_that_is_not_stolen_encodes_as_before_the_flag() -> None:
    """Records written before `stolen` existed decode the same, and a claim that is not
    stolen encodes to the very same bytes."""
    old = [Kind.CLAIM, "t1", 1, 5, False]
    assert body_from_plain(old) == ClaimRecord("t1", 1, 5)
    assert body_to_plain(ClaimRecord("t1", 1, 5)) == old
    stolen = ClaimRecord("t1", 1, 5, stolen=True)
    assert body_from_plain(body_to_plain(stolen)) == stolen


def test_a_losing_claims_result_does_not_hide_the_winner() -> None:
    ledger, a, b = fresh()
    a(ClaimRecord("t1", 1, stamp=5))
    b(ClaimRecord("t1", 1, stamp=9))
    b(result("t1", 1, Outcome.INTERRUPTED))
    assert ledger.tasks["t1"].active_claim() == (1, "node-a")
    assert ledger.tasks["t1"].state is State.RUNNING


def test_done_wins_over_cancel_and_cancel_over_running() -> None:
    ledger, a, _ = fresh()
    a(TaskRecord("t2", "job", "two", SPEC, stamp=11))
    a(ClaimRecord("t1", 1, stamp=20))
    a(result("t1", 1, Outcome.OK))
    a(ClaimRecord("t2", 1, stamp=21))
    a(CancelRecord("job", None, stamp=30))
    assert ledger.tasks["t1"].state is State.DONE
    assert ledger.tasks["t2"].state is State.CANCELLED
    a(result("t2", 1, Outcome.INTERRUPTED))
    assert ledger.tasks["t2"].state is State.CANCELLED


def test_records_before_their_task_are_kept_and_count_once_it_arrives() -> None:
    ledger = Ledger()
    w = Writer(ledger, "n")
    w(ClaimRecord("t9", 1, stamp=3))
    w(result("t9", 1, Outcome.OK))
    assert ledger.tasks["t9"].state is None
    assert "job" not in ledger.job_counts
    w(TaskRecord("t9", "job", "late", SPEC, stamp=1))
    assert ledger.tasks["t9"].state is State.DONE
    assert ledger.job_counts["job"][State.DONE] == 1


def test_the_earliest_submission_names_the_task() -> None:
    ledger = Ledger()
    Writer(ledger, "b")(TaskRecord("t", "job", "7", SPEC, stamp=20))
    Writer(ledger, "a")(TaskRecord("t", "job", "3", SPEC, stamp=10))
    assert ledger.tasks["t"].name == "3"
    assert ledger.jobs["job"] == ["t"]


def test_the_tasks_of_one_submission_share_their_stamp_and_origin_pair() -> None:
    """A million tasks submitted together hold one (stamp, origin) pair, not a million; a task
    submitted apart has its own, and the earliest submission still names a task."""
    ledger = Ledger()
    sub, other = Writer(ledger, "a"), Writer(ledger, "b")
    for task in ("t1", "t2", "t3"):
        sub(TaskRecord(task, "job", task, SPEC, stamp=10))
    other(TaskRecord("t4", "job", "t4", SPEC, stamp=10))
    other(TaskRecord("t2", "job", "early", SPEC, stamp=5))
    views = ledger.tasks
    assert views["t1"].submitted is views["t3"].submitted == (10, "a")
    assert views["t4"].submitted == (10, "b") and views["t2"].submitted == (5, "b")
    assert views["t2"].name == "early"


def test_heartbeat_and_replica_records() -> None:
    ledger, a, b = fresh()
    a(HeartbeatRecord(3))
    a(HeartbeatRecord(2))
    b(ReplicaRecord("cd" * 32))
    a(ReplicaRecord("cd" * 32))
    assert ledger.heartbeats == {"node-a": 3}
    assert ledger.holders["cd" * 32] == {"node-a", "node-b"}


def test_a_dropped_copy_is_no_longer_held_until_held_again_in_a_later_round() -> None:
    ledger, a, b = fresh()
    a(ClaimRecord("t1", 1, stamp=1))
    a(result("t1", 1, Outcome.OK))
    a(ledger.replica_record("ab" * 32, "node-a"))
    b(ledger.replica_record("ab" * 32, "node-b"))
    attempt = ledger.tasks["t1"].ok_attempt()
    assert attempt is not None and ledger.result_holders(attempt) == {"node-a", "node-b"}
    drop = ledger.replica_record("ab" * 32, "node-a", dropped=True)
    assert drop == ReplicaRecord("ab" * 32, dropped=True, round=0)
    a(drop)
    # The node that ran it no longer counts either: its copy was found damaged.
    assert ledger.result_holders(attempt) == {"node-b"}
    again = ledger.replica_record("ab" * 32, "node-a")
    assert again == ReplicaRecord("ab" * 32, round=1)
    a(again)
    assert ledger.result_holders(attempt) == {"node-a", "node-b"}
    a(ReplicaRecord("ab" * 32))  # a stale first hold, arriving late, changes nothing
    a(drop)
    assert ledger.result_holders(attempt) == {"node-a", "node-b"}
    for body in (drop, again, ReplicaRecord("ab" * 32)):
        assert db.decode(db.encode(body)) == body


def test_an_old_replica_record_reads_as_a_first_hold() -> None:
    from swarm.core.ledger import body_from_plain

    assert body_from_plain([5, "ab" * 32]) == ReplicaRecord("ab" * 32)
    assert body_from_plain([5, "ab" * 32, True, 3]) == ReplicaRecord("ab" * 32, True, 3)
    for bad in (
        [5, "ab" * 32, True],
        [5, "ab" * 32, True, -1],
        [5, "ab" * 32, True, 2**31],
        [5, "ab" * 32, 1, 3],  # not a bool
        [5, "ab" * 32, False, 0],  # a first hold has one form only
    ):
        with pytest.raises(BadRecordError):
            body_from_plain(bad)


# -- merge properties ------------------------------------------------------------------------

TASKS = ["t0", "t1", "t2"]
NODES = ["n0", "n1", "n2"]


@st.composite
def record_sets(draw: st.DrawFn) -> list[tuple[Version, Body]]:
    """Records as a small swarm could write them: each node numbers its own records."""
    bodies: list[tuple[str, Body]] = []
    for task in TASKS:
        for origin in draw(st.lists(st.sampled_from(NODES), min_size=0, max_size=2, unique=True)):
            name = draw(st.sampled_from(["a", "b"]))
            bodies.append((origin, TaskRecord(task, "job", name, SPEC, draw(st.integers(0, 3)))))
    body_strategy = st.one_of(
        st.builds(
            ClaimRecord,
            st.sampled_from(TASKS),
            st.integers(1, 3),
            st.integers(0, 5),
            st.booleans(),
            st.booleans(),
        ),
        st.builds(
            result,
            st.sampled_from(TASKS),
            st.integers(1, 3),
            st.sampled_from(list(Outcome)),
            st.integers(0, 9),
            st.booleans(),
        ),
        st.builds(HeartbeatRecord, st.integers(0, 5)),
        st.builds(ReplicaRecord, st.sampled_from(["aa" * 32, "bb" * 32])),
        st.builds(  # a copy dropped, or held again, in some round
            ReplicaRecord, st.sampled_from(["aa" * 32, "bb" * 32]), st.booleans(), st.integers(0, 2)
        ),
        st.builds(
            CancelRecord,
            st.just("job"),
            st.one_of(st.none(), st.sampled_from(TASKS)),
            st.integers(0, 5),
        ),
        st.builds(
            RetryRecord,
            st.sampled_from(TASKS),
            st.integers(0, 3),
            st.integers(0, 3),
            st.integers(0, 3),
            st.integers(0, 6),  # a revival, against the cancels' stamps
        ),
    )
    for _ in range(draw(st.integers(0, 25))):
        bodies.append((draw(st.sampled_from(NODES)), draw(body_strategy)))
    seqs: dict[str, int] = {}
    out = []
    for origin, body in bodies:
        seqs[origin] = seqs.get(origin, 0) + 1
        out.append((Version(origin, 1, seqs[origin]), body))
    return out


def replay(records: list[tuple[Version, Body]]) -> Ledger:
    ledger = Ledger()
    for version, body in records:
        ledger.apply(version, body)
    return ledger


@settings(max_examples=300, deadline=None)
@given(record_sets(), st.randoms(use_true_random=False))
def test_any_order_gives_the_same_state(
    records: list[tuple[Version, Body]], rng: random.Random
) -> None:
    shuffled = records[:]
    rng.shuffle(shuffled)
    assert replay(records).fingerprint() == replay(shuffled).fingerprint()


@settings(max_examples=200, deadline=None)
@given(record_sets())
def test_merge_is_idempotent(records: list[tuple[Version, Body]]) -> None:
    assert replay(records + records).fingerprint() == replay(records).fingerprint()


@settings(max_examples=200, deadline=None)
@given(record_sets(), st.data())
def test_merge_is_commutative_and_associative(
    records: list[tuple[Version, Body]], data: st.DataObject
) -> None:
    # Three replicas that each saw an overlapping part of the records, merged in every grouping.
    parts = [[r for r in records if data.draw(st.booleans())] for _ in range(3)]
    a, b, c = parts
    assert replay(a + b).fingerprint() == replay(b + a).fingerprint()
    assert replay((a + b) + c).fingerprint() == replay(a + (b + c)).fingerprint()


@settings(max_examples=200, deadline=None)
@given(record_sets())
def test_job_counts_match_a_recount(records: list[tuple[Version, Body]]) -> None:
    ledger = replay(records)
    recount: dict[State, int] = {}
    for view in ledger.tasks.values():
        if view.state is not None:
            recount[view.state] = recount.get(view.state, 0) + 1
    kept = {s: n for s, n in ledger.job_counts.get("job", {}).items() if n}
    assert kept == recount
    assert ledger.running == {t for t, v in ledger.tasks.items() if v.state is State.RUNNING}


BIG = replace(SPEC, need=Resources(8.0, 512 << 20), requires=(("zone", "eu"),))


def two_jobs_two_shapes(records: list[tuple[Version, Body]]) -> list[tuple[Version, Body]]:
    """The same records, their tasks spread over two jobs and two shapes (a task's job and spec
    follow from its id, as the hash makes them)."""
    out: list[tuple[Version, Body]] = []
    for version, body in records:
        if isinstance(body, TaskRecord) and TASKS.index(body.task_id) % 2:
            body = replace(body, job="other", spec=BIG)
        out.append((version, body))
    return out


@settings(max_examples=200, deadline=None)
@given(record_sets(), st.randoms(use_true_random=False))
def test_pending_counts_per_shape_match_a_walk_whatever_the_order(
    records: list[tuple[Version, Body]], rng: random.Random
) -> None:
    """What the status counts of tasks that fit no node: kept as records apply (from any
    origin), the same after a replay in another order (a restart, a peer's catch-up)."""
    records = two_jobs_two_shapes(records)
    shuffled = records[:]
    rng.shuffle(shuffled)
    for ledger in (replay(records), replay(shuffled), replay(records + shuffled)):
        walked: dict[object, dict[str, int]] = {}
        for view in ledger.tasks.values():
            if view.state is State.PENDING and view.spec is not None:
                jobs = walked.setdefault((view.spec.need, view.spec.requires), {})
                jobs[view.job] = jobs.get(view.job, 0) + 1
        assert {shape: dict(jobs) for shape, jobs in ledger.pending_shapes.items()} == walked


@settings(max_examples=200, deadline=None)
@given(record_sets(), st.randoms(use_true_random=False))
def test_a_load_derives_what_applying_each_record_derives(
    records: list[tuple[Version, Body]], rng: random.Random
) -> None:
    """Ledger.load (a restart) adds a new task's TASK record without apply(): the same states,
    counts, pending shapes, watermarks and stamps as apply() of each record, in any order."""
    records = two_jobs_two_shapes(records)
    shuffled = records[:]
    rng.shuffle(shuffled)
    applied = replay(shuffled)
    loaded = Ledger()
    loaded.load(shuffled)
    assert loaded.fingerprint() == applied.fingerprint()
    assert loaded.job_counts == applied.job_counts
    assert loaded.pending_shapes == applied.pending_shapes
    assert loaded.jobs == applied.jobs and loaded.running == applied.running
    assert loaded.max_stamps == applied.max_stamps
    assert loaded.records_applied == applied.records_applied == len(shuffled)


@settings(max_examples=200, deadline=None)
@given(record_sets(), st.randoms(use_true_random=False))
def test_a_load_keeps_each_task_in_the_state_its_records_derive(
    records: list[tuple[Version, Body]], rng: random.Random
) -> None:
    """Ledger.load and apply() both add a task first heard of by its TASK record with no
    derive_state(): each task's kept state, its job's counts and the running set must still be
    what derive_state() gives of its records (not only what the other way keeps)."""
    records = two_jobs_two_shapes(records)
    rng.shuffle(records)
    loaded, applied = Ledger(), replay(records)
    loaded.load(records)
    for ledger in (loaded, applied):
        recount: dict[str, dict[State, int]] = {}
        for view in ledger.tasks.values():
            assert view.state == derive_state(view, ledger._job_cancelled(view))
            if view.state is not None:
                job = recount.setdefault(view.job, {})
                job[view.state] = job.get(view.state, 0) + 1
        kept = {j: {s: n for s, n in c.items() if n} for j, c in ledger.job_counts.items()}
        assert {j: c for j, c in kept.items() if c} == recount
        running = {t for t, v in ledger.tasks.items() if v.state is State.RUNNING}
        assert ledger.running == running


# -- encoding --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(record_sets())
def test_records_round_trip_through_the_stored_encoding(
    records: list[tuple[Version, Body]],
) -> None:
    for _, body in records:
        assert db.decode(db.encode(body)) == body


def test_a_full_spec_round_trips() -> None:
    spec = TaskSpec(
        cmd=None,
        argv=("python3", "-c", "print('hi')"),
        need=Resources(0.5, 2 << 30, 1),
        priority=-3,
        timeout_s=1.5,
        retries=0,
        env=(("A", "1"), ("B", "x y")),
        cwd="/tmp",
        requires=(("cpus", ">=4"), ("zone", ("eu", "us"))),
        outputs=("out/*.csv",),
    )
    body = TaskRecord("t", "j", "n", spec, 5)
    assert db.decode(db.encode(body)) == body


@pytest.mark.parametrize(
    "raw",
    [
        [],
        [99, "x"],
        [1],
        [2, "t", "one", 3, False],
        [4, "t", 1, 1, "maybe", 0, 0, 0, 0.0, 0.0, 0, None, [1, 1, 0], ""],
        [1, "t", "j", "n", {"cpus": "lots"}, 1],
        "not a list",
    ],
)
def test_malformed_records_raise_bad_record_error(raw: object) -> None:
    with pytest.raises(BadRecordError):
        body_from_plain(raw)


@given(st.binary(max_size=200))
def test_junk_bytes_never_decode_to_anything_but_bad_record_error(junk: bytes) -> None:
    try:
        body = db.decode(junk)
    except BadRecordError:
        return
    # The rare junk that is a valid record must round-trip like one.
    assert body_from_plain(msgpack.unpackb(junk)) == body
    assert body_to_plain(body)


def test_cancelling_a_job_leaves_its_failed_tasks_failed_and_retryable() -> None:
    ledger, a, _ = fresh()
    for epoch in (1, 2):
        a(ClaimRecord("t1", epoch, stamp=epoch))
        a(result("t1", epoch, Outcome.FAILED))
    a(TaskRecord("t2", "job", "two", SPEC, stamp=11))
    a(CancelRecord("job", None, stamp=12))
    assert ledger.tasks["t1"].state is State.FAILED
    assert ledger.tasks["t2"].state is State.CANCELLED
    a(RetryRecord("t1", failures=2, interruptions=0))
    assert ledger.tasks["t1"].state is State.CANCELLED  # re-queued into a cancelled job: no run


def test_a_revival_lifts_the_cancels_before_it_and_a_later_cancel_wins_again() -> None:
    ledger, a, b = fresh()  # t1 submitted at stamp 10
    a(TaskRecord("t2", "job", "two", SPEC, stamp=11))
    a(CancelRecord("job", "t1", stamp=20))
    a(CancelRecord("job", None, stamp=21))
    assert ledger.tasks["t1"].state is State.CANCELLED
    b(RetryRecord("t1", 0, 0, 0, revived=30))  # a script run again
    assert ledger.tasks["t1"].state is State.PENDING
    assert ledger.tasks["t2"].state is State.CANCELLED  # not revived: still in the job cancel
    a(CancelRecord("job", "t1", stamp=40))
    assert ledger.tasks["t1"].state is State.CANCELLED


def test_a_revival_encodes_after_the_evictions_and_round_trips() -> None:
    revive = RetryRecord("t1", 1, 2, 0, revived=99)
    assert body_to_plain(revive) == [Kind.RETRY, "t1", 1, 2, 0, 99]
    assert body_from_plain(body_to_plain(revive)) == revive
    assert stamp_of(revive) == 99 and stamp_of(RetryRecord("t1", 1, 2)) is None


def test_a_job_cancel_does_not_reach_tasks_added_after_it() -> None:
    ledger, a, _ = fresh()  # t1 submitted at stamp 10
    a(CancelRecord("job", None, stamp=15))
    a(TaskRecord("t3", "job", "later", SPEC, stamp=20))
    assert ledger.tasks["t1"].state is State.CANCELLED
    assert ledger.tasks["t3"].state is State.PENDING


def test_the_highest_stamp_of_each_origin_is_kept_over_every_stamped_kind() -> None:
    """A restarted node starts its clock above its own stamps and takes the others' in as a
    peer's (bounded): so the ledger keeps them apart, over every kind that carries a stamp."""
    ledger, a, b = fresh()  # node-a's task at stamp 10
    b(ClaimRecord("t1", 1, stamp=12))
    a(CancelRecord("job", "t1", stamp=30))
    b(DrainRecord("node-a", 40))
    b(HeartbeatRecord(7))  # no stamp
    b(result("t1", 1, Outcome.OK))  # its times are for people, not a stamp
    assert ledger.max_stamps == {"node-a": 30, "node-b": 40}
    assert [stamp_of(body) for body in (HeartbeatRecord(1), ReplicaRecord("ab" * 32))] == [
        None,
        None,
    ]


def test_a_drain_round_trips_and_is_kept_as_the_latest_per_node() -> None:
    ledger, a, b = fresh()
    for body in (DrainRecord("node-b", 5, None), DrainRecord("node-b", 9, 30.0)):
        assert db.decode(db.encode(body)) == body
        a(body)
    b(DrainRecord("node-b", 7))
    assert ledger.drains == {"node-b": 9}


def test_the_credited_result_is_that_of_the_highest_epoch_whatever_the_order() -> None:
    """A holder frozen past its lease may still finish the attempt it lost; its successor's
    result is the task's, as SWARM_EPOCH fences the older one off."""
    for first_stale in (True, False):
        ledger, a, b = fresh()
        a(ClaimRecord("t1", 1, stamp=1))
        b(ClaimRecord("t1", 2, stamp=2))
        stale = replace(result("t1", 1, Outcome.OK), digest="aa" * 32)
        fresh_result = replace(result("t1", 2, Outcome.OK), digest="bb" * 32)
        if first_stale:
            a(stale)
            b(fresh_result)
        else:
            b(fresh_result)
            a(stale)
        credited = ledger.tasks["t1"].ok_attempt()
        assert credited is not None and credited.result.digest == "bb" * 32


def test_a_task_whose_result_is_lost_everywhere_runs_again() -> None:
    ledger, a, b = fresh()
    a(ClaimRecord("t1", 1, stamp=1))
    a(result("t1", 1, Outcome.OK))
    assert ledger.tasks["t1"].state is State.DONE
    b(LostRecord("t1", 1, "node-a"))
    assert ledger.tasks["t1"].state is State.PENDING
    assert db.decode(db.encode(LostRecord("t1", 1, "node-a"))) == LostRecord("t1", 1, "node-a")
    # The rerun of a deterministic task makes the same digest: it counts, held anew.
    b(ClaimRecord("t1", 2, stamp=5))
    b(result("t1", 2, Outcome.OK))
    assert ledger.tasks["t1"].state is State.DONE
    credited = ledger.tasks["t1"].ok_attempt()
    assert credited is not None and credited.version.origin == "node-b"


def test_a_task_record_must_hash_to_its_id() -> None:
    from swarm.core.ledger import task_record_problem
    from swarm.core.spec import task_id

    named = TaskRecord(task_id("job", SPEC, "one"), "job", "one", SPEC, stamp=1)
    by_line = TaskRecord(task_id("job", SPEC, None), "job", "12", SPEC, stamp=1)
    assert task_record_problem(named) is None and task_record_problem(by_line) is None
    other = TaskSpec("echo changed", None, SPEC.need)
    for bad in (
        TaskRecord(named.task_id, "job", "one", other, 1),  # the command changed
        TaskRecord(named.task_id, "other job", "one", SPEC, 1),  # moved to another job
        TaskRecord(named.task_id, "job", "renamed", SPEC, 1),  # a chosen name is in the id
    ):
        problem = task_record_problem(bad)
        assert problem is not None and "does not hash to its id" in problem


def test_attempt_stats_count_each_attempt_once_as_it_arrives() -> None:
    ledger, a, b = fresh()
    a(ClaimRecord("t1", 1, stamp=1))
    a(result("t1", 1, Outcome.FAILED))
    a(ClaimRecord("t1", 2, stamp=2))
    ok = result("t1", 2, Outcome.OK)
    a(ok)
    ledger.apply(Version("node-a", 1, 4), ok)  # the same record again: counted once
    b(ClaimRecord("t1", 2, stamp=3))
    b(result("t1", 2, Outcome.OK))  # a second run to the end: a duplicate
    b(ClaimRecord("t1", 3, stamp=4))
    b(result("t1", 3, Outcome.INTERRUPTED, evicted=True))
    stats = ledger.stats
    assert stats.outcomes == {Outcome.FAILED: 1, Outcome.OK: 2, Outcome.INTERRUPTED: 1}
    assert (stats.duplicates, stats.evictions) == (1, 1)
    assert sum(stats.run_counts) == 2


def test_the_status_lists_a_task_that_failed_twice_once_with_its_latest_failure() -> None:
    ledger, a, _ = fresh()  # retries=1: two failed attempts allowed in all
    a(ClaimRecord("t1", 1, stamp=20))
    a(result("t1", 1, Outcome.FAILED))
    a(ClaimRecord("t1", 2, stamp=30))
    a(result("t1", 2, Outcome.TIMEOUT))
    rows = failure_rows(ledger, None)
    assert [(r["task_id"], r["outcome"]) for r in rows] == [("t1", "timeout")]


def test_a_first_claim_result_or_loss_gives_that_task_maps_of_its_own() -> None:
    ledger, a, _ = fresh("t1")
    a(TaskRecord("t2", "job", "two", SPEC, stamp=10))
    a(ClaimRecord("t1", 1, 20, False))
    a(result("t1", 1, Outcome.FAILED))
    a(LostRecord("t1", 1, "node-a"))
    t1, t2 = ledger.tasks["t1"], ledger.tasks["t2"]
    assert list(t1.claims) == [(1, "node-a")] and list(t1.attempts) == [(1, "node-a")]
    assert t1.lost == {(1, "node-a")}
    assert (dict(t2.claims), dict(t2.attempts), t2.lost) == ({}, {}, frozenset())
    assert t2.state is State.PENDING
