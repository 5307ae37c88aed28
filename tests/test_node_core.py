"""The node core's decisions (swarm/core/node.py), driven by hand: inputs with the time in,
effects out, no I/O. Each test plays one adapter's part: it carries out the effects it is
about (a Write versioned and applied, a claim's outcome reported) and checks what comes next."""

from __future__ import annotations

import gc
import random
from dataclasses import replace

import pytest

from swarm.core import gossip, holding
from swarm.core import node as core_node
from swarm.core.effects import (
    Announce,
    CopyResult,
    Effect,
    Leave,
    Log,
    Start,
    Stop,
    Time,
    Write,
)
from swarm.core.ledger import (
    Body,
    CancelRecord,
    ClaimRecord,
    Ledger,
    LostRecord,
    Outcome,
    ReplicaRecord,
    ResultRecord,
    State,
    TaskRecord,
    Version,
)
from swarm.core.node import CoreConfig, NodeCore
from swarm.core.policy import rendezvous_rank
from swarm.core.pressure import Guard
from swarm.core.spec import PyCall, Resources, TaskSpec
from swarm.core.storage import STORAGE_RETRY_S
from swarm.core.sync import LedgerSync

SPEC = TaskSpec(cmd="true", argv=None, need=Resources(1.0, 1 << 20))
CAPACITY = Resources(2.0, 1 << 30)
CONFIG = CoreConfig(
    heartbeat_interval_s=0.25, lease_ttl_s=2.0, claim_stagger_s=0.1, claim_settle_s=0.05
)
EPOCH_MS = 1_700_000_000_000
META = {"capacity": {"cpus": 2.0, "memory_bytes": 1 << 30, "gpus": 0}, "labels": {}}


def sync() -> LedgerSync:
    return LedgerSync(random.Random(0))


def at(seconds: float) -> Time:
    return Time(seconds, EPOCH_MS + int(seconds * 1000))


class Harness:
    """One core, and the bookkeeping of an adapter: each origin's next seq."""

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.seqs: dict[str, int] = {}

    def record(self, t: Time, origin: str, *bodies: Body) -> None:
        """Records of `origin` stored here (ours, or a peer's)."""
        rows = []
        for body in bodies:
            self.seqs[origin] = self.seqs.get(origin, 0) + 1
            rows.append((Version(origin, 1, self.seqs[origin]), body))
        self.core.apply(t, rows, remote=origin != self.core.me)

    def effects(self) -> list[Effect]:
        return self.core.take_effects()

    def write(self, t: Time, effect: Write, ok: bool = True) -> None:
        """Carry out a Write (committed, then applied) and report a claim's outcome."""
        if ok:
            self.record(t, self.core.me, *effect.bodies)
        self.core.written(t, effect, ok, "" if ok else "disk full")

    def tick(self, t: Time) -> list[Effect]:
        self.core.tick(t)
        return self.effects()


def task(name: str) -> TaskRecord:
    return TaskRecord(name, "job", name, SPEC, 1)


def alone(*names: str, **kw: object) -> Harness:
    """A node of no swarm (no gossip address), with these tasks submitted."""
    h = Harness(NodeCore("a", Ledger(), CONFIG, CAPACITY, {}, networked=False, sync=sync(), **kw))  # type: ignore[arg-type]
    h.record(at(0), "sub", *(task(n) for n in names))
    h.core.start(at(0))
    return h


def member(node: str, state: gossip.MemberState = gossip.MemberState.ALIVE) -> gossip.Member:
    return gossip.Member(node, (node, 7946), 1, state, dict(META), 0.0)


def in_swarm(me: str, nodes: list[str], *names: str) -> Harness:
    """Node `me` of a swarm of `nodes` (all alive), in touch with it, these tasks submitted."""
    h = Harness(NodeCore(me, Ledger(), CONFIG, CAPACITY, {}, networked=True, sync=sync()))
    h.core.start(at(0))
    h.core.members_changed(at(0), [], {n: member(n) for n in nodes})
    h.core.caught_up(at(0))
    h.record(at(0), "sub", *(task(n) for n in names))
    h.effects()
    return h


def of(kind: type, effects: list[Effect]) -> list[Effect]:
    return [e for e in effects if isinstance(e, kind)]


def test_a_first_attempt_starts_while_its_claim_is_written() -> None:
    h = alone("t1")
    assert h.core.next_deadline() == -1.0  # a task waits: claim at once
    (start,) = of(Start, h.tick(at(0)))
    assert isinstance(start, Start) and start.write_claim and start.task_id == "t1"
    assert h.core.used == SPEC.need
    h.core.claim_written(at(0.01), "t1", True)
    assert not h.effects()  # nothing more to do: it runs


def test_a_node_claims_nothing_until_writing_in_its_name_is_safe() -> None:
    """A node joining a swarm, before a peer's sync has shown that no other process writes in
    its name: a claim's attempt would start while its claim waits to be written."""
    h = Harness(NodeCore("a", Ledger(), CONFIG, CAPACITY, {}, networked=True, sync=sync()))
    h.core.unwritable(at(0))
    h.record(at(0), "a", task("t1"))  # submitted here: no other node's record yet
    h.core.start(at(0))
    h.core.members_changed(at(0), [], {"a": member("a")})  # no peer known: a swarm of one
    assert not of(Start, h.tick(at(0.1)))
    assert "checking with a peer" in h.core.not_claiming
    h.core.may_write(at(0.2))
    (start,) = of(Start, h.tick(at(0.2)))
    assert isinstance(start, Start) and start.task_id == "t1"


def test_a_claim_that_could_not_be_written_stops_its_attempt_and_pauses_claims() -> None:
    h = alone("t1", "t2")
    h.core.config = CoreConfig(claim_batch_max=1)  # one claim per pass
    (start,) = of(Start, h.tick(at(0)))
    assert isinstance(start, Start)
    h.core.claim_written(at(0.01), start.task_id, False, "disk full")
    (stop,) = of(Stop, h.effects())
    assert stop == Stop(start.task_id, Outcome.INTERRUPTED, "claim not written", grace=False)
    h.core.attempt_closed(at(0.02), start.task_id)
    assert not of(Start, h.tick(at(1.0)))  # paused for STORAGE_RETRY_S
    assert of(Start, h.tick(at(STORAGE_RETRY_S + 0.1)))


def test_a_task_submitted_just_after_a_member_joined_is_ranked_with_it() -> None:
    """The re-rank of the tasks already queued waits a moment (a burst of joins is one), but a
    task queued meanwhile is ranked among the members as they are: a node that met its peers
    a moment ago must not take every new task as if it were alone (each would run it)."""
    names = [f"t{i}" for i in range(40)]
    theirs = [n for n in names if rendezvous_rank(n, "a", [("a", 2.0), ("b", 2.0)]) > 0]
    assert theirs  # some of them rank b first
    h = Harness(NodeCore("a", Ledger(), CONFIG, CAPACITY, {}, networked=True, sync=sync()))
    h.core.start(at(0))
    h.core.members_changed(at(0), [], {"a": member("a")})
    h.core.caught_up(at(0))
    h.core.members_changed(at(1.0), [gossip.MemberJoined("b")], {n: member(n) for n in "ab"})
    h.record(at(1.01), "sub", *(task(n) for n in names))  # before the re-rank is due
    h.core.config = CoreConfig(claim_batch_max=len(names))
    started = {e.task_id for e in of(Start, h.tick(at(1.02))) if isinstance(e, Start)}
    assert started and not started & set(theirs)  # b's wait their stagger first


def test_a_node_says_why_it_claims_nothing_and_when_it_claims_again() -> None:
    h = Harness(NodeCore("b", Ledger(), CONFIG, CAPACITY, {}, networked=True, sync=sync()))
    h.core.start(at(0))
    h.core.members_changed(at(0), [], {"b": member("b")})
    h.record(at(0), "sub", task("t1"))  # a peer's record: not a swarm of one
    before = h.tick(at(0.1))
    assert not of(Start, before)
    assert h.core.not_claiming == "catching up with the swarm first"
    h.core.caught_up(at(0.2))
    after = h.tick(at(0.2))
    assert of(Start, after)
    assert h.core.not_claiming == ""
    said = [e.text for e in of(Log, before + after)]  # type: ignore[attr-defined]
    assert said == [
        "not claiming new tasks: catching up with the swarm first",
        "claiming new tasks again: in touch with the swarm",
    ]


def stolen_task(names: list[str], thief: str) -> str:
    """A task `thief` is second for among `names` (all with the same CPUs)."""
    candidates = [(n, 2.0) for n in names]
    return next(f"t{i}" for i in range(50) if rendezvous_rank(f"t{i}", thief, candidates) == 1)


def test_a_thief_waits_out_its_settle_and_backs_off_when_the_preferred_node_claimed() -> None:
    t = stolen_task(["a", "b"], "b")
    h = in_swarm("b", ["a", "b"], t)
    assert not h.tick(at(0.05))  # a comes first: b waits one stagger
    (claim,) = of(Write, h.tick(at(0.11)))
    assert isinstance(claim, Write) and claim.claim_of == t
    (body,) = claim.bodies
    assert isinstance(body, ClaimRecord) and body.stolen
    h.write(at(0.11), claim)
    assert h.core.next_deadline() == pytest.approx(0.11 + CONFIG.claim_settle_s)
    h.record(at(0.12), "a", ClaimRecord(t, body.epoch, body.stamp - 1))  # a reached for it too
    (release,) = of(Write, h.tick(at(0.17)))
    assert isinstance(release, Write) and not of(Start, [release])
    assert release.bodies == (ClaimRecord(t, body.epoch, body.stamp, stolen=True, released=True),)
    h.write(at(0.17), release)
    assert t not in h.core.slots and h.core.used == Resources(0.0, 0, 0)


def test_a_thief_that_still_wins_after_its_settle_starts() -> None:
    t = stolen_task(["a", "b"], "b")
    h = in_swarm("b", ["a", "b"], t)
    (claim,) = of(Write, h.tick(at(0.11)))
    assert isinstance(claim, Write)
    h.write(at(0.11), claim)
    assert not of(Start, h.tick(at(0.12)))  # settling
    (start,) = of(Start, h.tick(at(0.17)))
    assert isinstance(start, Start) and not start.write_claim  # on disk already


def test_a_winning_claim_of_a_peer_or_a_cancel_stops_our_attempt() -> None:
    h = in_swarm("a", ["a", "b"], "t1", "t2")
    starts = of(Start, h.tick(at(0.2)))  # both t1 and t2 come to a, after at most one stagger
    starts += of(Start, h.tick(at(0.3)))
    assert {s.task_id for s in starts if isinstance(s, Start)} == {"t1", "t2"}
    for s in starts:
        assert isinstance(s, Start)
        h.record(at(0.3), "a", s.claim)
        h.core.claim_written(at(0.3), s.task_id, True)
    epoch = h.core.ledger.tasks["t1"].next_epoch()  # a takeover by b, under a higher epoch
    h.record(at(0.4), "b", ClaimRecord("t1", epoch, EPOCH_MS * 1024))
    assert of(Stop, h.effects()) == [Stop("t1", Outcome.INTERRUPTED, "lost its claim to b")]
    from swarm.core.ledger import CancelRecord

    h.record(at(0.5), "b", CancelRecord("job", "t2", EPOCH_MS * 2048))
    assert of(Stop, h.effects()) == [Stop("t2", Outcome.INTERRUPTED, "cancelled")]


def result(task: str, epoch: int, digest: str | None = None) -> ResultRecord:
    return ResultRecord(
        task, epoch, 1, Outcome.OK, 0, EPOCH_MS, EPOCH_MS, 0.0, 0.0, 0, digest, CAPACITY
    )


def test_a_restart_closes_the_claims_of_its_last_life_and_writes_those_never_written() -> None:
    ledger = Ledger()
    ledger.apply(Version("sub", 1, 1), task("t1"))
    ledger.apply(Version("sub", 1, 2), task("t2"))
    ledger.apply(Version("a", 1, 1), ClaimRecord("t1", 1, EPOCH_MS << 16))
    core = NodeCore("a", ledger, CONFIG, CAPACITY, {}, networked=False, sync=sync())
    core.start(at(100), orphaned=[("t2", 1)])  # t2 ran, but its claim never reached the ledger
    writes = of(Write, core.take_effects())
    assert len(writes) == 1
    bodies = writes[0].bodies  # type: ignore[union-attr]
    claims = [b for b in bodies if isinstance(b, ClaimRecord)]
    results = [b for b in bodies if isinstance(b, ResultRecord)]
    assert claims == [ClaimRecord("t2", 1, claims[0].stamp, stolen=True)]
    assert {(r.task_id, r.epoch, r.outcome, r.reason) for r in results} == {
        ("t1", 1, Outcome.INTERRUPTED, "the node stopped while it ran"),
        ("t2", 1, Outcome.INTERRUPTED, "the node stopped while it ran"),
    }
    assert bodies.index(claims[0]) < min(bodies.index(r) for r in results)  # claim first


def test_a_start_makes_no_reference_cycles() -> None:
    """The daemon freezes what a start made with no collection after it (heap.bulk's
    cycle_free): queued tasks, a failed one backing off, stale claims closed. A cycle made
    there would be kept for good."""
    ledger = Ledger()
    for seq, name in enumerate(["t1", "t2", "t3", "t4"], start=1):
        ledger.apply(Version("sub", 1, seq), task(name))
    ledger.apply(Version("a", 1, 1), ClaimRecord("t1", 1, EPOCH_MS << 16))
    ledger.apply(Version("a", 1, 2), ClaimRecord("t3", 1, EPOCH_MS << 16))
    failed = replace(result("t3", 1), outcome=Outcome.FAILED, exit_code=1)
    ledger.apply(Version("a", 1, 3), failed)
    core = NodeCore("a", ledger, CONFIG, CAPACITY, {}, networked=False, sync=sync())
    gc.collect()
    gc.disable()
    try:
        core.start(at(100), orphaned=[("t2", 1)])
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert of(Write, core.take_effects())  # the stale claims were closed


def test_a_drain_leaves_once_its_attempts_ended_and_no_result_is_held_here_alone() -> None:
    h = in_swarm("a", ["a", "b"], "t1")
    (start,) = of(Start, h.tick(at(0.2)) + h.tick(at(0.3)))
    assert isinstance(start, Start)
    h.record(at(0.3), "a", start.claim)
    h.core.claim_written(at(0.3), "t1", True)
    h.core.drain(at(0.4), None)
    assert of(Announce, h.effects()) == [Announce(draining=True)]
    assert not of(Leave, h.tick(at(1.0)))  # t1 runs
    h.core.attempt_ended(at(1.1), "t1")
    h.record(at(1.1), "a", result("t1", start.claim.epoch, "d1"), ReplicaRecord("d1"))
    h.core.attempt_closed(at(1.1), "t1")
    assert not of(Leave, h.tick(at(1.5)))  # its result is held here alone
    h.record(at(1.6), "b", ReplicaRecord("d1"))  # b copied it
    assert of(Leave, h.tick(at(1.8))) == [Leave("the node was drained")]
    assert h.core.next_deadline() is None  # gone: no timer


def test_a_drain_with_a_grace_leaves_when_it_runs_out() -> None:
    h = alone("t1")
    of(Start, h.tick(at(0)))
    h.core.drain(at(1), grace_s=2.0)
    assert not of(Leave, h.tick(at(2.9)))
    assert of(Leave, h.tick(at(3.0)))


def digest_first_for(node: str, nodes: list[str]) -> str:
    return next(f"d{i}" for i in range(200) if holding.Holding.targets(f"d{i}", nodes)[0] == node)


def test_a_result_whose_holder_died_is_copied_by_a_chosen_node_or_declared_lost() -> None:
    h = in_swarm("c", ["a", "b", "c"], "t1", "t2")
    d_copy = digest_first_for("c", ["b", "c"])
    d_lost = next(
        f"e{i}" for i in range(200) if holding.Holding.targets(f"e{i}", ["b", "c"])[0] == "c"
    )
    h.record(at(1), "a", ClaimRecord("t1", 1, 1), result("t1", 1, d_copy))
    h.record(at(1), "a", ClaimRecord("t2", 1, 2), result("t2", 1, d_lost))
    dead = {n: member(n) for n in ["b", "c"]} | {"a": member("a", gossip.MemberState.DEAD)}
    h.core.members_changed(at(1.5), [gossip.MemberDied("a")], dead)
    copies = []
    now = 2.0
    for _ in range(20):  # the debounces, the re-rank, then one copy at a time
        effects = h.tick(at(now))
        copies += of(CopyResult, effects)
        for copy in of(CopyResult, effects):
            assert isinstance(copy, CopyResult)
            h.core.copied(at(now), copy.digest, complete=copy.digest == d_copy)
            for write in of(Write, h.effects()):
                assert isinstance(write, Write)
                if isinstance(write.bodies[0], ReplicaRecord):
                    assert write.bodies == (ReplicaRecord(d_copy),)
                    h.write(at(now), write)
                else:
                    assert write.bodies == (LostRecord("t2", 1, "a"),)
                    h.write(at(now), write)
        now += 0.3
    assert {c.digest for c in copies if isinstance(c, CopyResult)} >= {d_copy, d_lost}
    assert "c" in h.core.ledger.holders[d_copy]
    assert h.core.ledger.tasks["t2"].state is State.PENDING  # runs again


def test_a_result_whose_every_copy_is_damaged_is_dropped_by_each_holder_then_lost() -> None:
    """Holders that find their copies damaged drop out; once none is left, the first chosen
    node finds the result lost (though every holder is alive), and the task runs again."""
    nodes = ["a", "b", "c"]
    h = in_swarm("c", nodes, "t1")
    digest = digest_first_for("c", nodes)
    h.record(at(1), "a", ClaimRecord("t1", 1, 1), result("t1", 1, digest), ReplicaRecord(digest))
    h.record(at(1), "b", ReplicaRecord(digest))
    h.record(at(1), "c", ReplicaRecord(digest))
    attempt = h.core.ledger.tasks["t1"].ok_attempt()
    assert attempt is not None and h.core.ledger.result_holders(attempt) == set(nodes)

    h.core.damaged(at(2), "t1", "ff" * 32)  # an earlier attempt's result: not the credited one
    assert not h.effects()
    h.core.damaged(at(2), "t1", digest)
    (drop,) = of(Write, h.effects())
    assert isinstance(drop, Write) and drop.bodies == (ReplicaRecord(digest, dropped=True),)
    h.write(at(2), drop)
    assert h.core.ledger.result_holders(attempt) == {"a", "b"}

    def copy_fails(now: float) -> list[Effect]:
        """Ticks until a copy is asked for (a retry waits 2 s), which fails; what that brings."""
        for _ in range(40):
            (copy,) = of(CopyResult, h.tick(at(now))) or (None,)
            if copy is not None:
                assert isinstance(copy, CopyResult) and copy.digest == digest
                h.core.copied(at(now), digest, complete=False)
                return h.effects()
            now += 0.1
        raise AssertionError("no copy asked for")

    assert not of(Write, copy_fails(2.1))  # a and b may still hold good copies: try later
    h.record(at(3), "a", ReplicaRecord(digest, dropped=True))  # theirs were damaged too
    h.record(at(3), "b", ReplicaRecord(digest, dropped=True))
    assert h.core.ledger.result_holders(attempt) == set()
    (lost,) = of(Write, copy_fails(4.5))
    assert isinstance(lost, Write) and lost.bodies == (LostRecord("t1", 1, "a"),)
    h.write(at(5), lost)
    assert h.core.ledger.tasks["t1"].state is State.PENDING  # runs again
    h.core.damaged(at(6), "t1", digest)  # said again (a late reader): nothing more to drop
    assert not of(Write, h.effects())


def test_a_node_that_dropped_a_damaged_copy_copies_it_again_and_holds_it_a_round_later() -> None:
    nodes = ["a", "b", "c"]
    h = in_swarm("c", nodes, "t1")
    digest = digest_first_for("c", nodes)
    h.record(at(1), "a", ClaimRecord("t1", 1, 1), result("t1", 1, digest), ReplicaRecord(digest))
    h.record(at(1), "c", ReplicaRecord(digest))
    h.core.damaged(at(2), "t1", digest)
    (drop,) = of(Write, h.effects())
    assert isinstance(drop, Write)
    h.write(at(2), drop)
    now = 2.0
    while not of(CopyResult, h.tick(at(now))):
        now += 0.1
        assert now < 5, "no copy asked for"
    h.core.copied(at(now), digest, complete=True)  # a good copy, from a
    (hold,) = of(Write, h.effects())
    assert isinstance(hold, Write) and hold.bodies == (ReplicaRecord(digest, round=1),)
    h.write(at(now), hold)
    attempt = h.core.ledger.tasks["t1"].ok_attempt()
    assert attempt is not None and h.core.ledger.result_holders(attempt) == {"a", "c"}


def test_a_rerank_goes_a_slice_at_a_time_and_the_node_keeps_its_heartbeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(core_node, "RERANK_SLICE", 10)
    names = [f"t{i}" for i in range(100)]
    h = in_swarm("a", ["a"], *names)
    h.core.config = CoreConfig(heartbeat_interval_s=0.25, claim_batch_max=0)  # claim nothing
    h.core.members_changed(at(1), [gossip.MemberJoined("b")], {"a": member("a"), "b": member("b")})

    def tick_and_beat(now: float) -> int:
        """A tick, its heartbeats written: how many."""
        beats = [w for w in of(Write, h.tick(at(now))) if isinstance(w, Write)]
        for write in beats:
            assert write.what == "heartbeat"
            h.write(at(now), write)
        return len(beats)

    tick_and_beat(1.4)
    assert not h.core.sched.reranking  # the debounce
    now, slices, beats = 1.6, 0, 0
    tick_and_beat(now)
    while h.core.sched.reranking:
        assert h.core.next_deadline() == -1.0  # the next slice after a turn of the loop
        now += 0.05  # the loop turns, time goes on
        beats += tick_and_beat(now)
        slices += 1
    assert slices >= 100 // 10
    assert beats >= 2  # 0.5 s of re-ranking at least: its heartbeats went out meanwhile


def test_memory_pressure_evicts_the_newest_of_attempts_started_together() -> None:
    guard = Guard(budget=300 << 20, memfree=100 << 20)
    h = alone("t1", "t2", guard=guard)
    starts = [s for s in of(Start, h.tick(at(0))) if isinstance(s, Start)]
    assert [s.task_id for s in starts] == ["t1", "t2"]
    h.core.memory(at(0.5), {"t1": 20 << 20, "t2": 20 << 20}, available=10 << 20)
    (stop,) = of(Stop, h.effects())
    assert isinstance(stop, Stop) and stop.task_id == "t2" and stop.evict


def test_one_timer_the_next_deadline_is_the_earliest_thing_due() -> None:
    h = Harness(
        NodeCore(
            "a",
            Ledger(),
            CoreConfig(heartbeat_interval_s=1.0, lease_ttl_s=2.0),  # leases judged every 0.5 s
            CAPACITY,
            {},
            networked=False,
            sync=sync(),
        )
    )
    h.core.start(at(0))
    h.tick(at(0))
    assert h.core.next_deadline() == pytest.approx(0.5)  # the lease check comes first
    assert not h.tick(at(0.5))
    assert h.core.next_deadline() == pytest.approx(1.0)  # then the heartbeat
    (beat,) = of(Write, h.tick(at(1.0)))
    assert isinstance(beat, Write) and beat.what == "heartbeat" and beat.replaces is None
    assert h.core.next_deadline() == pytest.approx(1.5)
    assert not of(Write, h.tick(at(2.0)))  # the first beat is still being written: one at a time
    h.write(at(2.1), beat)
    (second,) = of(Write, h.tick(at(3.0)))
    assert isinstance(second, Write) and second.replaces == Version("a", 1, 1)


def test_a_drain_that_leaves_in_its_grace_still_releases_a_claim_that_was_settling() -> None:
    t = stolen_task(["a", "b"], "b")
    h = in_swarm("b", ["a", "b"], t)
    (claim,) = of(Write, h.tick(at(0.11)))
    assert isinstance(claim, Write)
    h.write(at(0.11), claim)  # on disk: it settles until 0.16
    h.core.drain(at(0.12), grace_s=0.01)
    assert of(Leave, h.tick(at(0.13)))
    h.core.stop()  # the node stops as it leaves
    assert h.core.next_deadline() == pytest.approx(0.11 + CONFIG.claim_settle_s)
    (release,) = of(Write, h.tick(at(0.16)))
    assert isinstance(release, Write) and release.claim_of == t
    assert isinstance(release.bodies[0], ClaimRecord) and release.bodies[0].released
    h.write(at(0.16), release)
    assert len(h.core.slots) == 0 and h.core.next_deadline() is None


def test_a_stopping_node_starts_no_copy_of_a_result() -> None:
    h = in_swarm("c", ["a", "c"], "t1")
    h.record(at(1), "a", ClaimRecord("t1", 1, 1), result("t1", 1, "d1"), ReplicaRecord("d1"))
    h.core.stop()
    copies = [e for now in (1.5, 2.0, 3.0, 5.0) for e in of(CopyResult, h.tick(at(now)))]
    assert not copies


def call_task(name: str, fn: str, args: str = "") -> TaskRecord:
    """A Python call of the function blob `fn` (and the arguments blob `args`, else inline)."""
    call = PyCall(fn, args, "m.f", "3.11", "" if args else "gAU=")
    return TaskRecord(name, "job", name, TaskSpec(None, None, SPEC.need, call=call), 1)


def hexdigest_first_for(node: str, nodes: list[str], skip: str = "") -> str:
    return next(
        d
        for i in range(400)
        if (d := f"{i:064x}") != skip and holding.Holding.targets(d, nodes)[0] == node
    )


def test_a_calls_inputs_are_copied_to_the_chosen_nodes_once_however_many_calls_share_them() -> None:
    h = in_swarm("c", ["a", "b", "c"])
    fn = hexdigest_first_for("c", ["a", "b", "c"])
    args = hexdigest_first_for("c", ["a", "b", "c"], skip=fn)
    h.record(at(1), "a", ReplicaRecord(fn), ReplicaRecord(args))
    h.record(at(1), "a", *(call_task(f"t{i}", fn, args if i == 0 else "") for i in range(50)))
    copies: list[Effect] = []
    for now in (1.0, 1.3, 1.6, 1.9):
        for copy in of(CopyResult, h.tick(at(now))):
            assert isinstance(copy, CopyResult)
            copies.append(copy)
            h.core.copied(at(now), copy.digest, complete=True)
            (write,) = of(Write, h.effects())
            assert isinstance(write, Write)
            h.write(at(now), write)
    assert copies == [CopyResult(fn, None, "a"), CopyResult(args, None, "a")]
    assert "c" in h.core.ledger.holders[fn] and "c" in h.core.ledger.holders[args]


def test_an_input_no_holder_can_give_is_tried_again_never_declared_lost() -> None:
    h = in_swarm("c", ["a", "c"])
    fn = hexdigest_first_for("c", ["a", "c"])
    h.record(at(1), "a", call_task("t1", fn))
    tried = 0
    now = 1.0
    for _ in range(30):
        for copy in of(CopyResult, h.tick(at(now))):
            assert isinstance(copy, CopyResult)
            tried += 1
            h.core.copied(at(now), copy.digest, complete=False)
            assert not h.effects()  # no lost record, no log
        now += 0.5
    assert tried >= 2
    assert h.core.ledger.tasks["t1"].state is State.PENDING


def test_a_drain_waits_while_it_alone_holds_the_inputs_of_calls_not_ended() -> None:
    h = in_swarm("a", ["a", "b"])
    fn = hexdigest_first_for("a", ["a", "b"])
    h.record(at(0.5), "a", ReplicaRecord(fn))
    h.record(at(0.5), "a", call_task("t1", fn))
    h.core.config = CoreConfig(claim_batch_max=0)  # it claims nothing: only the inputs count
    h.core.drain(at(1), grace_s=None)
    assert not of(Leave, h.tick(at(1.5)))
    h.record(at(1.6), "b", ReplicaRecord(fn))  # b copied it
    assert of(Leave, h.tick(at(2.0)))


def failing_run(h: Harness, now: float, outcome: Outcome = Outcome.FAILED) -> int:
    """Claim t1 and record its attempt ending with `outcome` at `now`; returns its epoch."""
    effects = h.tick(at(now))
    if not of(Start, effects):  # a later attempt starts once its claim is written
        (claim,) = of(Write, effects)
        assert isinstance(claim, Write)
        h.write(at(now), claim)
        effects = h.effects()
    (start,) = of(Start, effects)
    assert isinstance(start, Start)
    if start.write_claim:
        h.record(at(now), "a", start.claim)
        h.core.claim_written(at(now), "t1", True, "")
    ended = replace(result("t1", start.claim.epoch), outcome=outcome, exit_code=1)
    h.core.attempt_ended(at(now), "t1")
    h.record(at(now), "a", ended)
    h.core.attempt_closed(at(now), "t1")
    h.effects()
    return start.claim.epoch


def claims(effects: list[Effect]) -> list[ClaimRecord]:
    """The claims among effects: those written first, and those of attempts started at once."""
    found = [b for w in of(Write, effects) for b in w.bodies if isinstance(b, ClaimRecord)]  # type: ignore[attr-defined]
    return found + [s.claim for s in of(Start, effects)]  # type: ignore[attr-defined]


def test_a_failed_task_waits_its_retry_backoff_doubling_and_an_interrupted_one_does_not() -> None:
    h = alone("t1")
    failing_run(h, 0.0)
    assert not claims(h.tick(at(0.9)))  # 1 s after the first failure: not claimed yet
    failing_run(h, 1.0)
    assert not claims(h.tick(at(2.9)))  # 2 s after the second
    assert claims(h.tick(at(3.0)))  # claimed again (its claim first: not a first attempt)

    quick = alone("t1")
    failing_run(quick, 0.0, Outcome.INTERRUPTED)
    assert claims(quick.tick(at(0.01)))  # its node stopped it: no failure, no wait


def test_a_node_that_takes_no_work_claims_nothing_and_says_so() -> None:
    h = alone("t1")
    h.core.config = CoreConfig(takes_work=False)
    assert not claims(h.tick(at(0.0)))
    assert h.core.not_claiming == "it takes no work (started with --no-work)"


def test_a_submission_hears_which_tasks_fit_no_live_node_and_why() -> None:
    h = alone()
    big = TaskSpec("true", None, Resources(64.0, 1 << 20))
    eu = TaskSpec("true", None, Resources(1.0, 1 << 20), requires=(("zone", "eu"),))
    said = h.core.unfit([big, big, eu, SPEC])
    assert said == {
        "it needs 64 CPUs, and the most a live node offers is 2": 2,
        "it requires zone=eu: no live node matches (no node has zone)": 1,
    }


def test_a_peers_failure_holds_the_task_here_too_once_per_failure() -> None:
    """The failed attempt ran on b: a (which had it queued from before) waits out the backoff
    as well; a claim of b released later does not start the wait over."""
    h = in_swarm("a", ["a", "b"], "t1")
    h.record(at(0.0), "b", ClaimRecord("t1", 1, EPOCH_MS << 16))
    failed = replace(result("t1", 1), outcome=Outcome.FAILED, exit_code=1)
    h.record(at(0.1), "b", failed)  # pending again: held until 1.1 (retry_backoff 1 s)
    assert not claims(h.tick(at(0.2)))
    assert h.core.sched.holds == {"t1": pytest.approx(1.1)}
    h.record(at(0.5), "b", ClaimRecord("t1", 2, (EPOCH_MS + 500) << 16))
    h.record(at(0.6), "b", ClaimRecord("t1", 2, (EPOCH_MS + 500) << 16, released=True))
    assert h.core.sched.holds == {"t1": pytest.approx(1.1)}  # not held again
    assert claims(h.tick(at(1.2)) + h.tick(at(2.5)))  # the hold is over: claimed (after a stagger)


def test_a_restarted_node_waits_a_failed_tasks_backoff_again() -> None:
    ledger = Ledger()
    ledger.apply(Version("sub", 1, 1), task("t1"))
    ledger.apply(Version("a", 1, 1), ClaimRecord("t1", 1, EPOCH_MS << 16))
    failed = replace(result("t1", 1), outcome=Outcome.FAILED, exit_code=1)
    ledger.apply(Version("a", 1, 2), failed)  # it failed in the last life: pending, retries left
    core = NodeCore("a", ledger, CONFIG, CAPACITY, {}, networked=False, sync=sync())
    h = Harness(core)
    core.start(at(50.0))
    assert not claims(h.tick(at(50.5)))  # its backoff (1 s) counts from the start
    assert claims(h.tick(at(51.0)))


def test_tasks_that_fit_no_node_are_counted_per_job_and_a_few_listed() -> None:
    big = replace(SPEC, need=Resources(8.0, 1 << 20))
    h = alone("small")
    h.record(at(1), "sub", *(TaskRecord(f"b{n}", "huge", f"b{n}", big, 1) for n in range(150)))
    h.record(at(1), "sub", TaskRecord("b-other", "other", "b", big, 1))
    found = h.core.infeasible(1.0)
    assert found.counts == {"huge": 150, "other": 1}
    assert len(found.listed) == 100 and set(found.listed) <= {
        "b-other",
        *(f"b{n}" for n in range(150)),
    }
    only = h.core.infeasible(1.0, {"other"})
    assert (only.counts, only.listed) == ({"other": 1}, ["b-other"])
    h.record(at(2), "sub", CancelRecord("huge", None, 5))  # no longer pending: not counted
    assert h.core.infeasible(2.0).counts == {"other": 1}


ONE_SLOT = Resources(1.0, 1 << 30)


def _ran_first(h: Harness) -> Start:
    """The first task started and its claim on disk; the effects taken."""
    (first,) = of(Start, h.tick(at(0.1)))
    assert isinstance(first, Start)
    h.record(at(0.1), h.core.me, first.claim)
    h.core.claim_written(at(0.1), first.task_id, True)
    h.effects()
    return first


def test_a_node_alone_starts_its_next_task_as_the_slot_frees() -> None:
    """In the same input that freed the slot, ahead of the ended attempt's recording: not at
    the tick the adapter's next turn brings."""
    h = Harness(NodeCore("a", Ledger(), CONFIG, ONE_SLOT, {}, networked=False, sync=sync()))
    h.record(at(0), "sub", task("t1"), task("t2"))
    h.core.start(at(0))
    first = _ran_first(h)
    h.core.attempt_ended(at(0.2), first.task_id)
    (then,) = of(Start, h.effects())
    assert isinstance(then, Start) and then.task_id != first.task_id


def test_a_node_of_a_swarm_starts_its_next_task_at_its_tick() -> None:
    """After the records its peers sent meanwhile, which the adapter takes first."""
    h = Harness(NodeCore("a", Ledger(), CONFIG, ONE_SLOT, {}, networked=True, sync=sync()))
    h.core.start(at(0))
    h.core.members_changed(at(0), [], {n: member(n) for n in ("a", "b")})
    h.core.caught_up(at(0))
    weights = [("a", 2.0), ("b", 2.0)]
    ours = [n for n in (f"t{i}" for i in range(64)) if rendezvous_rank(n, "a", weights) == 0]
    h.record(at(0), "sub", *(task(n) for n in ours[:2]))
    h.effects()
    first = _ran_first(h)
    h.core.attempt_ended(at(0.2), first.task_id)
    assert of(Start, h.effects()) == []
    (then,) = of(Start, h.tick(at(0.2)))
    assert isinstance(then, Start) and then.task_id == ours[1] != first.task_id
