"""Work sharing in the simulator (simwork.py): the daemon's claim and lease rules under kills,
freezes, restarts, splits, loss and random mixes of them, with fixed seeds (more seeds:
`python -m swarm.sim --work --seeds 100`)."""

from __future__ import annotations

import pytest

from swarm.core.scheduler import Scheduler
from swarm.sim.work import SCENARIOS, WorkSim, scenario_work
from swarm.sim.world import InvariantBroken


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("fault", [f for f in SCENARIOS if f != "mixed"])
def test_every_task_ends_everywhere_and_cut_off_ones_are_taken_over(fault: str, seed: int) -> None:
    run = scenario_work(seed, fault)
    assert run.tasks == 60 and run.makespan_s > run.ideal_s
    assert run.duplicates >= 0


@pytest.mark.parametrize("seed", range(10))
def test_random_mixes_of_faults(seed: int) -> None:
    scenario_work(seed, "mixed")


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
