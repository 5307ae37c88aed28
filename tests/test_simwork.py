"""Work sharing in the simulator (simwork.py): the daemon's claim and lease rules under kills,
freezes, restarts, splits, loss and random mixes of them, with fixed seeds (more seeds:
`python -m swarm.sim --work --seeds 100`)."""

from __future__ import annotations

import math

import pytest

from swarm.core.scheduler import Scheduler
from swarm.sim.replica import InvariantBroken
from swarm.sim.work import LEASE_S, SCENARIOS, SLOTS, TASK_S, WorkSim, scenario_work

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
CUT_OFF = {
    "kill": (SLOTS, SLOTS),
    "restart": (SLOTS, SLOTS),
    "freeze": (SLOTS, SLOTS),
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
    monkeypatch.setattr(WorkSim, "_observe", lambda self, w, version, body: None)
    with pytest.raises(InvariantBroken, match="no later than a stamp"):
        scenario_work(0, "kill")
