"""Work sharing in the simulator (swarm/sim/work.py): the daemon's own NodeCore on each simulated
node, under kills, freezes, restarts, splits, loss, full disks, drains and random mixes of them,
with fixed seeds (more seeds: `python -m swarm.sim --work --seeds 100`). Each `the_checks_catch`
test breaks one rule and shows that the simulator's checks then fail."""

from __future__ import annotations

import math

import pytest

from swarm.core import claiming
from swarm.core.attempts import Slot
from swarm.core.claiming import Claimer
from swarm.core.clock import StampIntake
from swarm.core.effects import Start, Time
from swarm.core.holding import Holding
from swarm.core.node import NodeCore
from swarm.core.scheduler import Scheduler
from swarm.sim.replica import InvariantBroken
from swarm.sim.scenarios import SCENARIOS, scenario_work
from swarm.sim.work import LEASE_S, SLOTS, STEP_S, TASK_S, WorkSim

# Claim races (two nodes claim a task before either sees the other's claim; the loser's attempt is
# counted) in a run of 60 tasks on 5 nodes: at most this many in 60 seeds of `loss` and `drain`.
RACES_MAX = 3
TASKS = 60
NODES = 5
# A 2|3 split for three leases: the side of two runs, in that time, tasks of at least 0.8 s that
# the other side runs too, and each side held its slots' tasks when it came (and when it went).
SPLIT_S = 3 * LEASE_S
SIDE_SLOTS = 2 * SLOTS
SPLIT_RERUNS_MAX = SIDE_SLOTS * math.ceil(SPLIT_S / (0.8 * TASK_S)) + 2 * SIDE_SLOTS
# The attempts each fault cuts off, which must run again: (fewest, most), races aside. A lost
# node held all its slots (the busiest, mid-job); a drained one finishes what it runs; in a
# split, each side runs again what the other held (every slot), and what the smaller one ran.
# A node lost (or frozen past its lease) also takes with it the results only it held: those of
# the attempts it finished just before, not yet copied to their other holders (one round of its
# slots at most), which run again.
CUT_OFF = {
    "kill": (SLOTS, 2 * SLOTS),
    "restart": (SLOTS, 2 * SLOTS),
    "freeze": (SLOTS, 2 * SLOTS),
    "disk": (SLOTS, SLOTS),
    "drain": (0, 0),
    "loss": (0, 0),
    "partition": (NODES * SLOTS, SPLIT_RERUNS_MAX),
}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("fault", [f for f in SCENARIOS if f != "mixed"])
def test_every_task_ends_everywhere_and_cut_off_ones_are_taken_over(fault: str, seed: int) -> None:
    run = scenario_work(seed, fault)
    assert run.tasks == TASKS and run.makespan_s > run.ideal_s
    fewest, most = CUT_OFF[fault]
    assert fewest <= run.duplicates <= most + RACES_MAX, (fault, seed, run)


@pytest.mark.parametrize("seed", range(10))
def test_random_mixes_of_faults(seed: int) -> None:
    """Every task ends everywhere (checked inside), and the faults cost reruns of what they cut
    off, never a rerun of the whole job."""
    run = scenario_work(seed, "mixed")
    assert run.tasks == TASKS and run.makespan_s > run.ideal_s
    assert run.duplicates < TASKS, (seed, run)


def test_a_seed_replays_identically() -> None:
    assert scenario_work(4, "mixed") == scenario_work(4, "mixed")


def test_the_checks_catch_a_lease_that_never_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without expiry the dead node's tasks would only run again when it came back: the
    takeover check must say so while it is still gone."""
    monkeypatch.setattr(Scheduler, "holder_expired", lambda self, view, now: False)
    with pytest.raises(InvariantBroken, match="was not taken over"):
        scenario_work(0, "kill")


def test_the_checks_catch_a_node_that_runs_on_after_losing_its_claim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Scheduler, "lost_to", lambda self, task, epoch: None)
    with pytest.raises(InvariantBroken, match="says lost"):
        scenario_work(0, "partition")


def test_the_checks_catch_a_node_that_does_not_take_in_its_peers_stamps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The nodes' wall clocks are set apart (up to WALL_SKEW_MS_MAX either way): a node that
    did not observe the stamps of its peers' records, as the daemon did before, would stamp a
    takeover claim before the claim it saw."""
    monkeypatch.setattr(StampIntake, "take", lambda self, origin, stamp, physical_ms: None)
    with pytest.raises(InvariantBroken, match="no later than a stamp"):
        scenario_work(0, "kill")


def test_the_checks_catch_a_thief_that_does_not_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stolen claim starts only if it still wins after its settle: a thief that started
    anyway would run on under a claim its own ledger says lost."""

    def start_anyway(self: Claimer, t: Time, task: str, slot: Slot) -> None:
        self.slots.start(slot, t.mono)
        self._emit(Start(task, slot.claim, slot.attempt, slot.gpu_ids, write_claim=False))

    monkeypatch.setattr(Claimer, "_settled", start_anyway)
    with pytest.raises(InvariantBroken, match="says lost"):
        for seed in range(5):
            scenario_work(seed, "partition")


def restarted_at_once(seed: int) -> None:
    """A node killed while it runs tasks and started again before its peers have declared it
    dead: they see its heartbeat go on, so only the node itself can close its old claims."""
    work = WorkSim(seed, 5)
    names = [f"t{k:03d}" for k in range(30)]
    work.submit(0, names)
    for _ in range(150):
        work.step()
    victim = max(range(5), key=lambda i: len(work.workers[i].running))
    assert work.workers[victim].running
    work.kill(victim)
    work.step()
    work.restart(victim)
    work.finish(names, limit_s=30)


@pytest.mark.parametrize("seed", range(3))
def test_a_node_restarted_at_once_closes_the_claims_of_its_last_life(seed: int) -> None:
    restarted_at_once(seed)


def test_the_checks_catch_a_restart_that_leaves_its_old_claims_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(claiming, "stale_claims", lambda *args: ([], []))
    with pytest.raises(InvariantBroken, match="did not all end"):
        restarted_at_once(0)


def test_the_checks_catch_a_drain_that_leaves_before_its_results_are_copied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Holding, "sole_holdings", lambda self, live_peers: 0)
    monkeypatch.setattr(Holding, "tick", lambda self, now, targets: [])  # no copies
    with pytest.raises(InvariantBroken, match="left holding the only copy"):
        scenario_work(0, "drain")


def holder_dies(seed: int) -> bool:
    """Every task done and its result held by three nodes; then one of them dies for good.
    Whether, a while later, every result is held by three of the four left."""
    work = WorkSim(seed, 5)
    names = [f"t{k:03d}" for k in range(20)]
    work.submit(0, names)
    work.finish(names, limit_s=60)
    work.kill(1)
    work.gone.add(1)  # not brought back
    for _ in range(int(10 / STEP_S)):
        work.step()
    return work._replicated(names)


@pytest.mark.parametrize("seed", range(3))
def test_results_are_copied_again_when_a_node_that_held_them_dies(seed: int) -> None:
    assert holder_dies(seed)


def test_the_checks_catch_results_that_are_not_copied_again_after_a_holder_dies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When members change, the chosen holders of every result move with them: a node that
    did not look at the done tasks again would leave the dead node's share with two copies."""

    def rerank_only(self: NodeCore, t: Time) -> None:
        self._set_members()
        self.sched.begin_rerank()

    monkeypatch.setattr(NodeCore, "_begin_rerank", rerank_only)
    assert not holder_dies(0)
