"""Nodes whose wall clocks disagree still order what they do: a node takes in the stamps of its
peers' records (the hybrid logical clock), so a cancel made after a submission covers it however
far behind the cancelling node's clock runs, while a peer whose clock is far ahead drags no
other node's clock with it, not even across a restart. Clocks are skewed with the test-only
`swarm start --profile test --clock-skew-ms`."""

from __future__ import annotations

import time
from functools import partial

import pytest

from swarm.core.clock import MAX_FORWARD_DRIFT_MS

from .conftest import Cli, Daemon, Swarm, wait_for, write_tasks

pytestmark = pytest.mark.integration

NEVER = {"zone": "nowhere"}  # no node here may run these: they stay pending until cancelled
BEHIND_MS = MAX_FORWARD_DRIFT_MS // 2  # well behind, and still within what a clock takes in
AHEAD_MS = 10 * MAX_FORWARD_DRIFT_MS  # far beyond it
PROPAGATE_S = 20.0  # records reach a peer in well under a second on the test profile


def _job(swarm: Swarm, i: int, job: str) -> dict[str, int] | None:
    for row in swarm.nodes[i][0].status()["jobs"]:
        if row["job"] == job:
            return {k: int(v) for k, v in row.items() if isinstance(v, int)}
    return None


def _cancelled(swarm: Swarm, i: int, job: str, count: int) -> bool:
    return (_job(swarm, i, job) or {}).get("cancelled") == count


def test_a_cancel_from_a_node_whose_clock_runs_behind_still_cancels_the_job(
    swarm: Swarm,
) -> None:
    swarm.start(0)
    swarm.start(1, join=0, extra=("--clock-skew-ms", str(-BEHIND_MS)))
    ids = [swarm.node_id(0), swarm.node_id(1)]
    wait_for("both nodes alive", lambda: swarm.states(1) == dict.fromkeys(ids, "alive"))
    cli0, cli1 = swarm.nodes[0][0], swarm.nodes[1][0]
    tasks = [{"name": f"t{i}", "cmd": "true", "requires": NEVER} for i in range(3)]
    cli0.ok("submit", str(write_tasks(cli0.cwd / "j.jsonl", tasks)), "--job", "j")
    wait_for("node 1 to see the job", lambda: (_job(swarm, 1, "j") or {}).get("pending") == 3)

    cli1.ok("cancel", "j")  # stamped by a clock that reads half a minute before node 0's

    for i in (0, 1):
        wait_for(
            f"the job cancelled on node {i}",
            partial(_cancelled, swarm, i, "j", len(tasks)),
            timeout=PROPAGATE_S,
            detail=partial(_job, swarm, i, "j"),
        )
        job = _job(swarm, i, "j")
        assert job is not None and job["pending"] == job["running"] == job["done"] == 0
        assert swarm.members(i)["net"]["stamps_ahead"] == 0


def test_a_peer_far_ahead_does_not_drag_a_nodes_clock_even_after_a_restart(
    swarm: Swarm,
) -> None:
    swarm.start(0, extra=("--label", "zone=here"))
    swarm.start(1, join=0, extra=("--clock-skew-ms", str(AHEAD_MS)))
    ids = [swarm.node_id(0), swarm.node_id(1)]
    wait_for("both nodes alive", lambda: swarm.states(0) == dict.fromkeys(ids, "alive"))
    cli0, cli1 = swarm.nodes[0][0], swarm.nodes[1][0]
    cli1.ok(
        "submit",
        str(write_tasks(cli1.cwd / "far.jsonl", [{"cmd": "true", "requires": NEVER}])),
        "--job",
        "far",
    )  # stamped ten minutes ahead of node 0's clock
    wait_for("node 0 to see the far job", lambda: _job(swarm, 0, "far") is not None)
    assert swarm.members(0)["net"]["stamps_ahead"] >= 1  # counted, not taken in

    # Node 0 restarts with that stamp in its ledger file, and claims a task of its own.
    _, old, port = swarm.nodes[0]
    old.stop()
    args = (*old.args, "--join", f"127.0.0.1:{swarm.nodes[1][2]}")
    swarm.nodes[0] = (cli0, Daemon(cli0, args).start(), port)
    task = {"cmd": "sleep 120", "requires": {"zone": "here"}}
    cli0.ok("submit", str(write_tasks(cli0.cwd / "near.jsonl", [task])), "--job", "near")
    wait_for("node 0 to run it", lambda: len(cli0.status()["running"]) == 1)
    (running,) = cli0.status()["running"]
    ahead_ms = running["started_ms"] - time.time() * 1000  # its claim's stamp, read as time
    assert ahead_ms < MAX_FORWARD_DRIFT_MS, (
        f"node 0's clock was dragged {ahead_ms / 1000:.0f}s ahead"
    )


def test_skewing_a_clock_is_for_tests_only(cli: Cli) -> None:
    done = cli("start", "--clock-skew-ms", "5000")
    assert done.returncode == 2 and "needs --profile test" in done.stderr
    assert not cli.home.exists()  # refused before anything was made
