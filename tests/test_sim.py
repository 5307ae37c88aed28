"""The simulator's ledger scenario: a safety phase under faults, then a liveness phase that must
converge. Fixed seeds here; `python -m swarm.sim --ledger --seeds 200` runs more."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace

import pytest

from swarm.core import wire
from swarm.core.gossip import MemberState
from swarm.core.ledger import ClaimRecord, TaskRecord
from swarm.core.replication import Intake, Key
from swarm.sim.figures import _SPEC, scenario_ledger
from swarm.sim.replica import InvariantBroken
from swarm.sim.world import Sim, everyone


@pytest.mark.parametrize("seed", range(12))
def test_replicas_stay_safe_under_faults_and_converge_after(seed: int) -> None:
    run = scenario_ledger(seed, n=6)
    assert run.converged_s is not None
    assert run.tasks > 20 and run.done > 5  # the scenario really wrote and finished work


@pytest.mark.parametrize("seed", range(3))
def test_a_larger_swarm_with_faster_drift_converges(seed: int) -> None:
    run = scenario_ledger(seed, n=16, loss=0.3, drift=0.1, safety_s=10)
    assert run.converged_s is not None


def test_a_seed_replays_identically() -> None:
    assert scenario_ledger(7) == scenario_ledger(7)


def test_membership_works_with_drifting_clocks() -> None:
    sim = Sim(6, seed=3, drift=0.1)
    assert len({sim.local_now(i) for i in range(6)}) == 6  # every node has its own clock
    sim.join_all()
    assert sim.run_until_agree(everyone(6), limit_s=10) is not None
    sim.crash(5)
    assert sim.run_until_agree(everyone(6, n0005=MemberState.DEAD), limit_s=20) is not None


def joined(n: int, seed: int, settle_s: float) -> Sim:
    """A simulated swarm of n nodes with ledgers, formed and settled for `settle_s`."""
    sim = Sim(n, seed=seed, ledger=True)
    sim.join_all()
    sim.run_for(settle_s)
    return sim


def test_a_wiped_node_gets_its_earlier_records_back() -> None:
    sim = joined(3, seed=1, settle_s=2)
    assert sim.replicas is not None
    sim.write(1, TaskRecord("t1", "j", "t1", _SPEC, 1))
    sim.write(1, ClaimRecord("t1", 1, 2))
    sim.run_for(1)
    wiped = sim.wipe(1)
    sim.run_for(3)
    replica = sim.replicas[sim.addr(1)]
    assert replica.generation == 2 and wiped.me.incarnation >= 2
    assert replica.ledger.high_seq[("n0001", 1)] == 2  # its first life's records, from peers
    assert "t1" in replica.ledger.tasks


def test_the_checks_catch_a_replica_that_claims_what_it_lacks() -> None:
    sim = Sim(2, seed=0, ledger=True)
    assert sim.replicas is not None
    replica = sim.replicas[sim.addr(0)]
    replica.ledger.high_seq[("n0001", 1)] = 3  # as a wrong intake rule would
    with pytest.raises(InvariantBroken, match="holds only up to 0"):
        replica.take_push(wire.RecordsPush(()), sim.local_now(0), {})


def test_the_checks_catch_watermarks_that_pass_a_record_that_failed_to_be_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ledger scenario fails 5% of the batches it stores and cuts sync streams: an intake
    that let a watermark pass a refused record must be caught."""

    def careless(self: Intake, upto: Mapping[Key, int]) -> Iterator[tuple[Key, int]]:
        for key, seq in upto.items():
            if key != self._me and key not in self._gap and seq > self._high.get(key, 0):
                yield key, seq  # the refused records forgotten

    monkeypatch.setattr(Intake, "watermarks", careless)
    with pytest.raises(InvariantBroken, match="holds only up to"):
        for seed in range(5):
            scenario_ledger(seed)


def test_copies_travel_through_the_codec() -> None:
    """What a replica stores is what came out of the record codec, equal to what was written."""
    sim = joined(2, seed=1, settle_s=1)
    assert sim.replicas is not None
    sim.write(0, TaskRecord("t1", "job", "t1", _SPEC, 1))
    sim.run_for(1)
    (copy,) = sim.replicas[sim.addr(1)].records[("n0000", 1)].values()
    (written,) = sim.truth.values()
    assert copy == written and copy is not written


def test_a_node_nobody_can_connect_to_gets_its_records_out_by_asking() -> None:
    """Node 1's record reaches no one by push, and no one can open a connection to node 1:
    only the reverse phase of its own pulls can deliver it."""
    sim = joined(3, seed=2, settle_s=2)
    assert sim.replicas is not None
    sim.net = replace(sim.net, unreachable=frozenset({sim.addr(1)}))
    sim.write(1, TaskRecord("t1", "j", "t1", _SPEC, 1), fanout=0)
    sim.run_for(3)
    assert all("t1" in replica.ledger.tasks for replica in sim.replicas.values())
