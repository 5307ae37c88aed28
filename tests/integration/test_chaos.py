"""Five real daemons lose a node in the middle of a job, in each of the ways nodes are lost.

Every scenario ends the same way (`Chaos.finish`): every task is done on every live node, every
result is readable from a live node (fetched from whichever holds it), and the duplicate
executions are counted and printed (`pytest -s` shows them). The network faults (a partition,
packet loss) are in test_netns.py, since they need network namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import pytest

from swarm.daemon.config import TEST

from .conftest import (
    Cli,
    Swarm,
    drained_attempts,
    export_rows,
    fill,
    running_by_node,
    tmpfs,
    wait_for,
)

pytestmark = pytest.mark.integration

NODES = 5
SLOTS = 2  # --cpus per node: 10 tasks run at once
LEASE_S = TEST.lease_ttl_s  # the nodes run with --profile test


class Chaos:
    def __init__(self, nodes: Swarm, tmp_path: Path, ids: list[str]) -> None:
        self.swarm, self.tmp_path, self.ids = nodes, tmp_path, ids

    def cli(self, i: int) -> Cli:
        return self.swarm.nodes[i][0]

    def live(self) -> list[int]:
        return [
            i
            for i, (_, daemon, _) in enumerate(self.swarm.nodes)
            if daemon.proc is not None and daemon.proc.poll() is None
        ]

    def submit(self, job: str, tasks: list[dict[str, object]], on: int = 0) -> None:
        path = self.cli(on).cwd / f"{job}.jsonl"
        path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
        self.cli(on).ok("submit", str(path))

    def busiest(self, job: str, at_least: int, but: str = "") -> tuple[int, int, set[str]]:
        """Once `at_least` tasks of the job run: the node running the most of them, a node
        that watches it, and the tasks (other than `but`) it runs as that node sees them."""
        counts: dict[str, int] = {}

        def running() -> bool:
            counts.clear()
            counts.update(running_by_node(self.cli(0)))
            return sum(counts.values()) >= at_least

        wait_for(f"{at_least} tasks of {job} to run", running)
        victim = self.ids.index(max(counts, key=lambda node: counts[node]))
        observer = 1 if victim == 0 else 0
        held = {
            r["name"]
            for r in export_rows(self.cli(observer))
            if r["node"] == self.ids[victim] and r["state"] == "running" and r["name"] != but
        }
        return victim, observer, held

    def finish(
        self, job: str, expected: dict[str, str], scenario: str, reader: int | None = None
    ) -> int:
        """Every task of `expected` (name -> stdout) done on every live node and its result
        readable from one (`reader`, else the last); returns the duplicate executions, and
        prints them."""
        live = self.live()
        for i in live:
            wait_for(
                f"node {i} to see every task of {job} done",
                lambda i=i: self.cli(i).job(job)["done"] >= len(expected),
                timeout=90,
            )
        reader = live[-1] if reader is None else reader
        out = self.tmp_path / f"results-{job}"
        self.cli(reader).ok("results", job, "--out", str(out))
        for name, stdout in expected.items():
            assert (out / name / "stdout").read_text() == stdout, f"{name} read from {reader}"
        attempts = [r for r in export_rows(self.cli(reader), "--attempts") if r["job"] == job]
        ran = [r for r in attempts if r["name"] in expected and r["outcome"] != "running"]
        duplicates = len(ran) - len(expected)
        print(f"{scenario}: {duplicates} duplicate executions for {len(expected)} tasks")
        names = [r["name"] for r in ran]
        for r in ran:
            if names.count(r["name"]) > 1:
                print(f"  {r['name']} on {r['node'][:8]}: {r['outcome']} {r['reason']}")
        return duplicates


@pytest.fixture
def chaos(swarm: Swarm, tmp_path: Path) -> Chaos:
    return Chaos(swarm, tmp_path, swarm.form(NODES, cpus=SLOTS))


def echo_tasks(prefix: str, count: int, sleep_s: float) -> tuple[list[dict[str, object]], dict]:
    tasks: list[dict[str, object]] = [
        {"name": f"{prefix}{i}", "cmd": f"sleep {sleep_s}; echo {prefix} {i}"} for i in range(count)
    ]
    return tasks, {f"{prefix}{i}": f"{prefix} {i}\n" for i in range(count)}


def test_sigkill_the_busiest_node_then_restart_it_with_its_state_dir(chaos: Chaos) -> None:
    # Long enough that none of the tasks seen running on the victim ends before the kill, which
    # comes a second or so after they are seen (one that ended and was recorded, but not yet
    # gossiped, would rightly read `ok` on the restarted node).
    tasks, expected = echo_tasks("k", 20, 3.0)
    chaos.submit("kill", tasks)
    victim, observer, held = chaos.busiest("kill", at_least=8)
    chaos.swarm.nodes[victim][1].kill(signal.SIGKILL)
    wait_for(
        "every task done without the victim",
        lambda: chaos.cli(observer).job("kill")["done"] == 20,
        timeout=90,
    )
    rows = {r["name"]: r for r in export_rows(chaos.cli(observer))}
    assert held and all(rows[name]["node"] != chaos.ids[victim] for name in held)

    chaos.swarm.nodes[victim][1].start()  # the same state dir: it catches up, runs nothing again
    duplicates = chaos.finish("kill", expected, "SIGKILL of the busiest node, then restart")
    restarted = [
        r
        for r in export_rows(chaos.cli(victim), "--attempts")
        if r["node"] == chaos.ids[victim] and r["name"] in held
    ]
    assert {(r["outcome"], r["reason"]) for r in restarted} == {
        ("interrupted", "the node stopped while it ran")
    }
    assert duplicates >= len(held)  # at least the attempts the kill cut off


def test_sigstop_a_holder_for_twice_the_lease_then_sigcont(chaos: Chaos) -> None:
    """Its tasks run elsewhere meanwhile; awake, it finds its claims taken over and stops its
    attempts. A task that always crashes fails after its retries, and nothing else is hurt."""
    tasks, expected = echo_tasks("s", 6, 12)  # 10 slots: room to take them over
    tasks.append({"name": "crash", "cmd": "echo doomed >&2; exit 3", "retries": 2})
    chaos.submit("freeze", tasks)
    victim, observer, held = chaos.busiest("freeze", at_least=6, but="crash")
    proc = chaos.swarm.nodes[victim][1].proc
    assert proc is not None
    frozen_at = time.time()
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        time.sleep(2 * LEASE_S)

        def taken_over() -> bool:
            rows = {r["name"]: r for r in export_rows(chaos.cli(observer))}
            return all(rows[name]["node"] != chaos.ids[victim] for name in held)

        wait_for("its tasks to be taken over", taken_over, timeout=10)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    chaos.finish("freeze", expected, "SIGSTOP of a holder for twice the lease")
    woken = [
        r
        for r in export_rows(chaos.cli(victim), "--attempts")
        if r["node"] == chaos.ids[victim] and r["name"] in held
    ]
    # Awake, it stopped as lost the attempts still running; one that ended while it was frozen
    # (a loaded machine may take a while to take over) is recorded, but never credited.
    assert woken and all(
        r["reason"].startswith("lost its claim") or r["outcome"] == "ok" for r in woken
    ), woken
    # No attempt it began before the freeze is credited. Awake, it is a live node again: a held
    # task pending anew (a takeover's claim released) may be claimed by it as the preferred node,
    # whose claim beats a thief's of the same epoch, and its new attempt credited.
    credited = {r["name"]: r for r in export_rows(chaos.cli(observer))}
    for name in held:
        row = credited[name]
        assert row["node"] != chaos.ids[victim] or _when(row["started"]) > frozen_at, row
    crash = [r for r in export_rows(chaos.cli(observer), "--attempts") if r["name"] == "crash"]
    # Its 3 attempts (retries 2) failed, and it failed for good. One of them may have been run
    # twice: started on the frozen node, taken over, and recorded by both when it woke.
    outcomes = [r["outcome"] for r in crash]
    assert set(outcomes) == {"failed"} and 3 <= len(outcomes) <= 4, crash
    assert {r["name"]: r["state"] for r in export_rows(chaos.cli(observer))}["crash"] == "failed"
    (task,) = [r for r in export_rows(chaos.cli(observer)) if r["name"] == "crash"]
    assert task["state"] == "failed"


def test_drain_the_busiest_node_mid_run(chaos: Chaos) -> None:
    tasks, expected = echo_tasks("d", 20, 1.5)
    chaos.submit("drain", tasks)
    victim, observer, held = chaos.busiest("drain", at_least=8)
    chaos.cli(victim).ok("drain", "--wait")
    daemon = chaos.swarm.nodes[victim][1]
    assert daemon.proc is not None and daemon.proc.wait(timeout=10) == 0
    duplicates = chaos.finish("drain", expected, "drain of the busiest node")
    ran = drained_attempts(chaos.cli(observer), chaos.ids[victim], held)
    # What it ran when told to drain, it finished; and nothing it held was lost with it.
    assert ran and all(r["outcome"] == "ok" for r in ran)
    assert duplicates < len(expected)  # races at the end of a job, not a rerun of the job


def test_a_node_whose_disk_fills_stops_claiming_and_the_others_finish_its_work(
    swarm: Swarm, small_disk: Path, tmp_path: Path
) -> None:
    full = 4  # its state dir is a 4 MiB tmpfs
    ids = swarm.form(NODES, cpus=SLOTS, homes={full: small_disk / "home"})
    chaos = Chaos(swarm, tmp_path, ids)
    tasks: list[dict[str, object]] = [
        {"name": f"f{i}", "cmd": f"sleep 1.5; head -c 100000 /dev/zero && echo {i}", "retries": 5}
        for i in range(20)
    ]
    expected = {f"f{i}": "\0" * 100000 + f"{i}\n" for i in range(20)}
    chaos.submit("full", tasks)
    wait_for("the small node to run a task", lambda: running_by_node(chaos.cli(0)).get(ids[full]))
    filler = fill(small_disk, leave_bytes=32 << 10)
    try:
        wait_for("every task done on the others", lambda: chaos.cli(0).job("full")["done"] == 20)
        daemon = swarm.nodes[full][1]
        assert daemon.proc is not None and daemon.proc.poll() is None, "the full node died"
        log = daemon.log.read_text()
        assert "disk full" in log and "not claiming new tasks" in log
        with sqlite3.connect(f"file:{small_disk / 'home' / 'ledger.db'}?mode=ro", uri=True) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()
    finally:
        filler.unlink()
    chaos.finish("full", expected, "a node's disk fills mid-run")


def test_a_result_that_cannot_be_stored_is_handed_back_to_the_swarm(
    swarm: Swarm, tmp_path: Path
) -> None:
    """Node 2's blob store is a 64 KiB tmpfs (its ledger has room): it cannot keep a 100 kB
    result, so it records the attempt as interrupted and a peer runs the task, rather than
    hold it until space comes back."""
    home = tmp_path / "home-small-blobs"
    with tmpfs(home / "blobs", 64 << 10):
        ids = swarm.form(3, cpus=SLOTS, homes={2: home})
        chaos = Chaos(swarm, tmp_path, ids)
        # The tasks are quick: were node 2 still catching up, the others would run them all.
        wait_for("node 2 to claim", lambda: swarm.own_row(2).get("not_claiming") == "")
        tasks = [
            {"name": f"b{i}", "cmd": f"head -c 100000 /dev/zero && echo {i}"} for i in range(12)
        ]
        chaos.submit("blobs", tasks)
        expected = {f"b{i}": "\0" * 100000 + f"{i}\n" for i in range(12)}
        duplicates = chaos.finish("blobs", expected, "a node that cannot store results", reader=0)
        daemon = swarm.nodes[2][1]
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert "handed back to the swarm" in daemon.log.read_text()
        handed = [r for r in export_rows(chaos.cli(0), "--attempts") if r["node"] == ids[2]]
        assert handed and duplicates >= len(handed)
        assert all(r["outcome"] == "interrupted" for r in handed)
        assert all("could not be stored" in r["reason"] for r in handed)
        swarm.stop_all()  # before the unmount


def _when(text: str) -> float:
    """An export's timestamp, in seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
