"""Held-back pushes, gap pulls, passed-over and forged records, in the simulator: the rules of
LedgerSync (core/sync.py) as a simulated node runs them, which is as the daemon runs them.
Fixed seeds; anti-entropy is switched off where it would hide what a test looks at."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from swarm.core import wire
from swarm.core.ledger import ClaimRecord, ResultRecord, State, TaskRecord
from swarm.core.sync import GAP_PULL_EVERY_S, HELD_BACK_MAX, decode_body, encode_body
from swarm.sim.figures import _SPEC, _ok
from swarm.sim.replica import Replica, sim_proof
from swarm.sim.world import Sim

ORIGIN = ("n0000", 1)  # node 0's records, first generation


def task(name: str, spec_cmd: str = "true") -> TaskRecord:
    return TaskRecord(name, "j", name, replace(_SPEC, cmd=spec_cmd), 1)


def formed(n: int, seed: int, anti_entropy: bool = False) -> Sim:
    """n nodes with ledgers, joined and settled; with no anti-entropy unless asked for, so that
    only pushes and gap pulls move records."""
    sim = Sim(n, seed=seed, ledger=True)
    sim.join_all()
    sim.run_for(2)
    assert sim.replicas is not None
    if not anti_entropy:
        for replica in sim.replicas.values():
            replica.next_sync = math.inf
    return sim


def replica(sim: Sim, i: int) -> Replica:
    assert sim.replicas is not None
    return sim.replicas[sim.addr(i)]


def unreachable(sim: Sim, i: int) -> None:
    """Nobody can open a connection to node i: every gap pull from it fails at once."""
    sim.net = replace(sim.net, unreachable=frozenset({sim.addr(i)}))


def test_records_past_a_lost_push_are_held_back_until_the_gap_fills() -> None:
    sim = formed(3, seed=4)
    unreachable(sim, 0)
    first = sim.write(0, task("t1"), fanout=0)  # its push lost
    later = [sim.write(0, task(name), fanout=0) for name in ("t2", "t3")]
    sim.push(0, 1, *later)
    sim.run_for(0.05)
    taker = replica(sim, 1)
    assert sorted(taker.sync.held_back(ORIGIN)) == [2, 3]
    assert not {"t2", "t3"} & set(taker.ledger.tasks)  # held back, not applied
    assert taker.ledger.high_seq.get(ORIGIN, 0) == 0
    assert taker.sync.gap_pulls == 1  # (it could not connect)
    sim.push(0, 1, first)  # late, alone
    sim.run_for(0.05)
    assert {"t1", "t2", "t3"} <= set(taker.ledger.tasks)
    assert taker.ledger.high_seq[ORIGIN] == 3
    assert not taker.sync.held_back(ORIGIN)


def test_a_gap_pull_fills_a_gap_no_push_will() -> None:
    sim = formed(3, seed=5)
    sim.write(0, task("t1"), fanout=0)  # lost, and never pushed again
    sim.push(0, 1, sim.write(0, task("t2"), fanout=0))
    sim.run_for(0.1)
    taker = replica(sim, 1)
    assert taker.sync.gap_pulls == 1
    assert {"t1", "t2"} <= set(taker.ledger.tasks)
    assert taker.ledger.high_seq[ORIGIN] == 2
    assert "t1" not in replica(sim, 2).ledger.tasks  # no anti-entropy: only the pull brought it


def test_the_held_back_buffer_is_bounded() -> None:
    sim = formed(2, seed=6)
    unreachable(sim, 0)
    copies = [sim.write(0, task(f"t{k}"), fanout=0) for k in range(1, HELD_BACK_MAX + 41)]
    for copy in copies[1:]:
        sim.push(0, 1, copy)
        sim.run_for(0.01)  # longer than any delay: they arrive in order
    taker = replica(sim, 1)
    assert sorted(taker.sync.held_back(ORIGIN)) == list(range(2, HELD_BACK_MAX + 2))
    assert taker.ledger.high_seq.get(ORIGIN, 0) == 0
    sim.push(0, 1, copies[0])
    sim.run_for(0.01)
    # The first record releases those held; the rest is anti-entropy's to bring.
    assert taker.ledger.high_seq[ORIGIN] == HELD_BACK_MAX + 1
    assert not taker.sync.held_back(ORIGIN)


def test_a_gap_pull_starts_at_most_once_per_gap_pull_every_s() -> None:
    sim = formed(2, seed=7)
    unreachable(sim, 0)  # each pull ends at once: only the time between them holds them back
    sim.write(0, task("t0"), fanout=0)
    pushes_s, period_s = 2.0, 0.05
    for k in range(round(pushes_s / period_s)):
        sim.push(0, 1, sim.write(0, task(f"t{k + 1}"), fanout=0))
        sim.run_for(period_s)
    assert replica(sim, 1).sync.gap_pulls == math.ceil(pushes_s / GAP_PULL_EVERY_S)


def test_a_record_too_large_for_any_peer_is_passed_over_counted_once_and_stalls_nothing() -> None:
    sim = formed(3, seed=8, anti_entropy=True)
    sim.write(0, task("big", "x" * (wire.RECORD_BODY_BYTES_MAX + 1)))  # no datagram holds it
    sim.write(0, task("after"), fanout=0)
    sim.run_for(2)
    for i in (1, 2):  # each got the records from node 0's answers, past the big one
        assert "after" in replica(sim, i).ledger.tasks
        assert "big" not in replica(sim, i).ledger.tasks
        assert replica(sim, i).ledger.high_seq[ORIGIN] == 2
    assert replica(sim, 0).sync.refused_records == 1  # passed over in two answers at least


def test_a_forged_result_is_refused_and_the_genuine_copy_taken_later() -> None:
    sim = formed(3, seed=9)
    sim.write(0, task("t1"))
    sim.write(0, ClaimRecord("t1", 1, 2))
    sim.run_for(0.1)
    genuine = sim.write(0, _ok("t1", 1), fanout=0)
    origin, generation, seq, raw = genuine
    signed = decode_body(raw)
    assert isinstance(signed, ResultRecord)
    forged_body = replace(signed, proof=sim_proof("n0002"))
    sim.push(2, 1, (origin, generation, seq, encode_body(forged_body)))
    sim.run_for(0.05)
    taker = replica(sim, 1)
    assert taker.sync.forged_records == 1
    assert taker.ledger.high_seq[ORIGIN] == 2  # below the forged record
    before = taker.ledger.tasks["t1"].state
    assert before is State.RUNNING
    sim.push(0, 1, genuine)
    sim.run_for(0.05)
    assert taker.ledger.high_seq[ORIGIN] == 3
    assert taker.ledger.tasks["t1"].state is State.DONE


@pytest.mark.parametrize("seed", range(3))
def test_held_back_pushes_and_gap_pulls_converge_under_loss(seed: int) -> None:
    """Many pushes lost, no anti-entropy: gap pulls and held-back records alone bring every
    replica every record that was followed by a later one."""
    sim = formed(4, seed=seed)
    sim.net = replace(sim.net, loss=0.3)
    for k in range(40):
        sim.write(k % 4, task(f"t{k}"))
        sim.run_for(0.05)
    sim.net = replace(sim.net, loss=0.0)
    sim.run_for(GAP_PULL_EVERY_S)  # (a pull soon after the last is not started)
    for i in range(4):  # one more record each, pushed: the last gaps show, and are pulled
        sim.write(i, task(f"last{i}"))
    sim.run_for(1)
    names = {f"t{k}" for k in range(40)} | {f"last{i}" for i in range(4)}
    for i in range(4):
        assert set(replica(sim, i).ledger.tasks) == names
