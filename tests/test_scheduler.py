"""The claim and lease rules one node follows (scheduler.py), on a ledger built by hand."""

from __future__ import annotations

from swarm.core.ledger import INTERRUPTION_CAP, ClaimRecord, Ledger, TaskRecord, Version
from swarm.core.policy import PendingQueue, rendezvous_rank
from swarm.core.scheduler import Peer, Scheduler, isolation, peer_from_meta
from swarm.core.spec import Resources, TaskSpec

SPEC = TaskSpec(cmd="true", argv=None, need=Resources(1.0, 1 << 20))
BIG = Resources(4.0, 1 << 30)
FREE = Resources(2.0, 1 << 30)


def peers(*nodes: str) -> list[Peer]:
    return [Peer(node, BIG, {}) for node in nodes]


def a_task(members: list[Peer], **ranks: int) -> str:
    """The first of t0..t29 for which each named node has the given rank among `members`."""
    candidates = [(p.node, p.capacity.cpus) for p in members]
    return next(
        f"t{i}"
        for i in range(30)
        if all(rendezvous_rank(f"t{i}", node, candidates) == r for node, r in ranks.items())
    )


def ledger_with(tasks: int) -> Ledger:
    ledger = Ledger()
    for i in range(tasks):
        ledger.apply(Version("sub", 1, i + 1), TaskRecord(f"t{i}", "job", f"t{i}", SPEC, i + 1))
    return ledger


def test_a_node_alone_claims_every_task_at_once() -> None:
    ledger = ledger_with(5)
    sched = Scheduler("a", ledger, lease_ttl_s=2.0, claim_stagger_s=1.0)
    for view in ledger.tasks.values():
        sched.enqueue(view, now=0.0)
    picked = sched.pick((), Resources(8, 1 << 30), {}, 10, now=0.0)
    assert sorted(picked) == [f"t{i}" for i in range(5)]


def test_the_preferred_node_claims_at_once_the_others_after_their_stagger() -> None:
    ledger = ledger_with(40)
    members = peers("a", "b", "c")
    sched = Scheduler("b", ledger, lease_ttl_s=2.0, claim_stagger_s=1.0)
    sched.set_members(members)
    for view in ledger.tasks.values():
        sched.enqueue(view, now=100.0)
    candidates = [(p.node, p.capacity.cpus) for p in members]
    ranks = {f"t{i}": rendezvous_rank(f"t{i}", "b", candidates) for i in range(40)}
    lots = Resources(100, 1 << 40)
    first = set(sched.pick((), lots, {}, 100, now=100.0))
    assert first == {t for t, r in ranks.items() if r == 0} and first
    second = set(sched.pick((), lots, {}, 100, now=101.0))
    assert second == {t for t, r in ranks.items() if r == 1}
    assert set(sched.pick((), lots, {}, 100, now=102.0)) == {t for t, r in ranks.items() if r == 2}


def test_a_draining_member_or_one_without_room_is_no_candidate() -> None:
    sched = Scheduler("a", Ledger(), 2.0, 1.0)
    sched.set_members([Peer("a", BIG, {}), Peer("b", BIG, {}, draining=True),
                       Peer("c", Resources(0.5, 1 << 30), {})])  # fmt: skip
    assert sched.candidates_for(SPEC) == [("a", 4.0)]
    assert sched.rank("t0", SPEC) == 0


def test_a_holder_whose_heartbeat_stops_loses_its_tasks_after_the_lease() -> None:
    ledger = ledger_with(1)
    ledger.apply(Version("b", 1, 1), ClaimRecord("t0", 1, 10))
    sched = Scheduler("a", ledger, lease_ttl_s=2.0, claim_stagger_s=1.0)
    sched.leases.heartbeat("b", 1, 5, now=10.0)
    assert not sched.claimable("t0", (), now=11.9)
    assert not sched.requeue_orphans(now=11.9)
    assert sched.requeue_orphans(now=12.1)
    assert not sched.requeue_orphans(now=12.2)  # once per lapse
    assert sched.pick((), FREE, {}, 10, now=12.2) == ["t0"]
    assert not sched.claimable("t0", {"t0"}, now=12.2)  # not a task we already run


def test_a_heartbeat_that_advances_keeps_the_claim_and_death_ends_it_at_once() -> None:
    ledger = ledger_with(1)
    ledger.apply(Version("b", 1, 1), ClaimRecord("t0", 1, 10))
    sched = Scheduler("a", ledger, 2.0, 1.0)
    for t in range(10, 20):
        sched.leases.heartbeat("b", 1, t, now=float(t))
        assert not sched.claimable("t0", (), now=t + 1.5)
    sched.leases.died("b")
    assert sched.claimable("t0", (), now=19.1)


def test_an_attempt_beaten_by_a_higher_claim_must_stop() -> None:
    ledger = ledger_with(1)
    ledger.apply(Version("a", 1, 1), ClaimRecord("t0", 1, 10))
    sched = Scheduler("a", ledger, 2.0, 1.0)
    assert sched.lost_to("t0", 1) is None
    ledger.apply(Version("b", 1, 1), ClaimRecord("t0", 2, 20))
    assert sched.lost_to("t0", 1) == (2, "b")


def test_a_takeover_past_the_interruption_cap_closes_the_task() -> None:
    ledger = ledger_with(1)
    sched = Scheduler("a", ledger, 2.0, 1.0)
    for epoch in range(1, INTERRUPTION_CAP + 2):
        ledger.apply(Version(f"n{epoch}", 1, 1), ClaimRecord("t0", epoch, epoch))
    view = ledger.tasks["t0"]
    assert view.interruptions() == INTERRUPTION_CAP
    assert sched.takeover_exhausts(view)


def test_isolation_rules() -> None:
    assert isolation([], False, False, 99.0, 2.0) is None  # alone
    assert isolation([True, True], True, False, 99.0, 2.0) is None  # the others left
    assert isolation([False], True, False, 0.0, 2.0) == "catching up with the swarm first"
    assert isolation([False], True, True, 1.0, 2.0) is None
    assert "cut off" in (isolation([False], True, True, 2.5, 2.0) or "")


def test_peer_meta_that_says_nothing_usable_is_skipped() -> None:
    meta = {"capacity": {"cpus": 2, "memory_bytes": 1 << 30, "gpus": 0}, "labels": {"z": "a"}}
    assert peer_from_meta("a", meta) == Peer("a", Resources(2.0, 1 << 30, 0), {"z": "a"})
    assert peer_from_meta("a", {"capacity": {"cpus": "x"}, "labels": {}}) is None
    assert peer_from_meta("a", {"labels": {}}) is None
    assert peer_from_meta("a", {**meta, "labels": ["not", "a", "map"]}) is None


def test_a_takeover_is_ranked_without_its_holder_and_goes_first() -> None:
    """The holder whose lease expired may still be alive (a full disk, say) and first in the
    task's order: ranked with it, every other node would wait behind all its own tasks."""
    ledger = ledger_with(30)
    members = peers("a", "b", "c")
    # A task for which "c" comes first and "b" second: once c's lease lapses, b comes first.
    task = a_task(members, c=0, b=1)
    ledger.apply(Version("c", 1, 1), ClaimRecord(task, 1, 10))
    sched = Scheduler("b", ledger, lease_ttl_s=2.0, claim_stagger_s=1.0)
    sched.set_members(members)
    for view in ledger.tasks.values():
        if view.task_id != task:
            sched.enqueue(view, now=0.0)
    sched.leases.heartbeat("c", 1, 1, now=0.0)
    assert sched.requeue_orphans(now=2.5)
    assert sched.pick((), FREE, {}, 1, now=2.5) == [task]  # at once, ahead of b's own tasks


def test_a_member_whose_lease_expired_is_left_out_of_every_order_until_it_beats_again() -> None:
    sched = Scheduler("a", Ledger(), lease_ttl_s=2.0, claim_stagger_s=1.0)
    sched.set_members(peers("a", "b", "c"))
    sched.leases.heartbeat("b", 1, 1, now=0.0)
    sched.leases.heartbeat("c", 1, 1, now=0.0)
    assert not sched.note_stalled(now=1.0)
    sched.leases.heartbeat("c", 1, 2, now=1.5)  # c beats on; b has stopped
    assert sched.note_stalled(now=2.5)  # changed: the caller re-ranks
    assert [node for node, _ in sched.candidates_for(SPEC)] == ["a", "c"]
    assert not sched.note_stalled(now=2.6)
    sched.leases.heartbeat("b", 1, 2, now=3.0)
    sched.leases.heartbeat("c", 1, 3, now=3.0)
    assert sched.note_stalled(now=3.1)
    assert [node for node, _ in sched.candidates_for(SPEC)] == ["a", "b", "c"]


def test_a_takeover_goes_first_on_a_node_that_does_not_come_first_for_it_too() -> None:
    queue = PendingQueue()
    for i in range(5):
        queue.push(f"p{i}", SPEC, stamp=100 + i, rank=1)  # stolen ones: newest first
    queue.push("takeover", SPEC, stamp=50, rank=1, first=True)
    assert queue.select(lambda t: True, FREE, {}, 1) == ["takeover"]


def test_a_held_task_waits_until_its_hold_is_over_and_the_hold_is_then_forgotten() -> None:
    """An evicted task, or one whose result could not be stored, is left to the others."""
    ledger = ledger_with(2)
    sched = Scheduler("a", ledger, lease_ttl_s=2.0, claim_stagger_s=1.0)
    sched.hold("t0", until=62.0)
    for view in ledger.tasks.values():
        sched.enqueue(view, now=53.0)
    assert sched.pick((), FREE, {}, 10, now=53.0) == ["t1"]  # the other is not held
    assert sched.pick((), FREE, {}, 10, now=61.9) == []
    assert sched.pick((), FREE, {}, 10, now=62.0) == ["t0"]
    sched.enqueue(ledger.tasks["t0"], now=62.5)
    assert "t0" not in sched.holds  # over, and forgotten


def test_a_claim_is_stolen_unless_we_come_first_without_a_lapsed_holder() -> None:
    ledger = ledger_with(30)
    members = peers("a", "b", "c")
    sched = Scheduler("b", ledger, lease_ttl_s=2.0, claim_stagger_s=1.0)
    sched.set_members(members)
    ours, theirs = a_task(members, b=0), a_task(members, c=0)
    claim = sched.new_claim(ledger.tasks[ours], stamp=5)
    assert (claim.task_id, claim.epoch, claim.stamp, claim.stolen) == (ours, 1, 5, False)
    assert sched.new_claim(ledger.tasks[theirs], stamp=5).stolen
    # "c" held `second` and its lease lapsed: "b", first without it, takes it over unstolen.
    second = a_task(members, c=0, b=1)
    ledger.apply(Version("c", 1, 1), ClaimRecord(second, 1, 10))
    takeover = sched.new_claim(ledger.tasks[second], stamp=20)
    assert (takeover.epoch, takeover.stolen) == (2, False)
    # A node that is no candidate yet (its meta has not spread) never claims ahead of one.
    stranger = Scheduler("z", ledger, lease_ttl_s=2.0, claim_stagger_s=1.0)
    stranger.set_members(members)
    assert stranger.new_claim(ledger.tasks[ours], stamp=5).stolen


def test_a_rerank_does_not_start_a_tasks_stagger_over() -> None:
    """Members come and go while a task waits for its turn: it stays due when it was due."""
    ledger = ledger_with(30)
    members = peers("a", "b", "c")
    after = peers("a", "b", "c", "d")
    candidates = [(p.node, p.capacity.cpus) for p in members]
    task = next(
        f"t{i}"
        for i in range(30)
        if rendezvous_rank(f"t{i}", "b", candidates) == 2
        and rendezvous_rank(f"t{i}", "b", [(p.node, p.capacity.cpus) for p in after]) >= 2
    )
    sched = Scheduler("b", ledger, lease_ttl_s=2.0, claim_stagger_s=1.0)
    sched.set_members(members)
    sched.enqueue(ledger.tasks[task], now=0.0)
    sched.set_members(after)  # a join: ranks are computed afresh ...
    sched.begin_rerank()
    while not sched.rerank_slice(now=1.5, size=7):  # a slice at a time, as the node core does
        pass
    due = float(sched.rank(task, SPEC))  # ... but from when the task first waited: not 3.5+
    lots = Resources(100, 1 << 40)
    assert task not in sched.pick((), lots, {}, 100, now=due - 0.01)
    assert task in sched.pick((), lots, {}, 100, now=due)
    assert task not in sched.since  # picked: its wait is over


def test_a_task_that_becomes_pending_during_a_rerank_is_in_the_queue_swapped_in() -> None:
    """A re-rank builds its fresh queue a slice at a time; a task queued meanwhile goes into
    both queues, so the swap does not lose it (nor queue it twice once swapped)."""
    ledger = ledger_with(30)
    sched = Scheduler("a", ledger, lease_ttl_s=2.0, claim_stagger_s=1.0)
    sched.begin_rerank()
    assert not sched.rerank_slice(now=0.0, size=10)  # 10 of the 30 ranked
    late = TaskRecord("late", "job", "late", SPEC, 99)
    ledger.apply(Version("sub", 1, 99), late)
    sched.enqueue(ledger.tasks["late"], now=0.0)
    while not sched.rerank_slice(now=0.0, size=10):
        pass
    picked = sched.pick((), Resources(100, 1 << 40), {}, 100, now=0.0)
    assert "late" in picked and len(picked) == len(set(picked)) == 31
