"""Nodes on separate network "hosts" (namespaces joined by veth pairs on a bridge), with faults
made by iptables inside those namespaces: a node cut off and healed (the swarm merges again), and
a result whose every holder dies (the task runs again).

Needs root, iproute2 and iptables (CI has them); elsewhere it skips and says why. Traffic stays
inside the namespaces this test makes, on addresses it gives them (10.99.0.0/24).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from swarm import connection, statedir

from .conftest import START_TIMEOUT_S
from .conftest import wait_for as wait_until
from .netns import PORT, Hosts, why_not

pytestmark = pytest.mark.integration


def make_hosts(count: int) -> Iterator[Hosts]:
    reason = why_not()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the multi-host test, but: {reason}")
        print(f"SKIPPED netns test: {reason}")
        pytest.skip(reason)
    h = Hosts(count)
    try:
        yield h
    finally:
        h.remove()


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    yield from make_hosts(3)


@pytest.fixture
def five_hosts() -> Iterator[Hosts]:
    yield from make_hosts(5)


class NetSwarm:
    """swarm daemons, one per namespace, driven through the CLI."""

    def __init__(self, hosts: Hosts, tmp_path: Path) -> None:
        self.hosts = hosts
        self.tmp_path = tmp_path
        self.homes = [tmp_path / f"home{i}" for i in range(len(hosts.names))]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.logs: list[Any] = []
        self.cli(0, "init")
        for i in range(1, len(self.homes)):
            self.cli(i, "init", "--key-file", str(self.homes[0] / "swarm.key"))

    def addr(self, i: int) -> str:
        return f"{self.hosts.ip(i)}:{PORT}"

    def cli(self, i: int, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "swarm", *args, "--data-dir", str(self.homes[i])],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self, i: int, join: int | None, *extra: str) -> None:
        args = ["--bind", self.addr(i), "--profile", "test", "--cpus", "1", *extra]
        if join is not None:
            args += ["--join", self.addr(join)]
        log = open(self.tmp_path / f"node{i}.log", "ab")  # noqa: SIM115 - closed in stop_all
        self.logs.append(log)
        self.procs[i] = subprocess.Popen(
            ["ip", "netns", "exec", self.hosts.names[i], sys.executable, "-m", "swarm",
             "start", "--data-dir", str(self.homes[i]), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def form(self, count: int) -> None:
        """Start `count` nodes, each joined to the first; wait until each sees all alive."""
        for i in range(count):
            self.start(i, join=0 if i else None)
        self.wait_started()
        self.wait_for(
            f"the {count} to form a swarm",
            lambda: all(
                list(self.states(i).values()).count("alive") == count for i in range(count)
            ),
        )

    def wait_started(self) -> None:
        """Every node started so far answers on its control socket (or it failed: say so)."""
        for i, proc in self.procs.items():
            wait_until(f"node {i} to start", self._started(i), START_TIMEOUT_S)
            assert proc.poll() is None, (self.tmp_path / f"node{i}.log").read_text()

    def _started(self, i: int) -> Callable[[], bool]:
        proc, state = self.procs[i], statedir.StateDir(self.homes[i])
        return lambda: proc.poll() is not None or asyncio.run(connection.is_running(state))

    def states(self, i: int) -> dict[str, str]:
        reply: dict[str, Any] = json.loads(self.cli(i, "members", "--json"))
        return {m["address"]: m["state"] for m in reply["members"]}

    def job(self, i: int, name: str) -> dict[str, Any]:
        jobs = json.loads(self.cli(i, "status", "--json"))["jobs"]
        return next((j for j in jobs if j["job"] == name), {})

    def rows(self, i: int) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(self.cli(i, "export"))))

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 45.0) -> None:
        live = sorted(i for i, p in self.procs.items() if p.poll() is None)
        wait_until(what, check, timeout, 0.3, lambda: [self.states(i) for i in live])

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()


def test_a_partition_is_seen_on_both_sides_and_heals(hosts: Hosts, tmp_path: Path) -> None:
    swarm = NetSwarm(hosts, tmp_path)
    try:
        for i in range(3):
            swarm.start(i, join=0 if i else None)
        addrs = [swarm.addr(i) for i in range(3)]
        everyone_alive = dict.fromkeys(addrs, "alive")
        swarm.wait_started()
        swarm.wait_for(
            "the swarm to form", lambda: all(swarm.states(i) == everyone_alive for i in range(3))
        )

        hosts.cut_off(2)
        swarm.wait_for(
            "both sides to declare the other dead",
            lambda: (
                swarm.states(0)[addrs[2]] == "dead"
                and swarm.states(1)[addrs[2]] == "dead"
                and swarm.states(2)[addrs[0]] == "dead"
                and swarm.states(2)[addrs[1]] == "dead"
            ),
        )
        tasks = tmp_path / "during.jsonl"
        tasks.write_text(json.dumps({"cmd": "echo written during the partition"}) + "\n")
        swarm.cli(0, "submit", str(tasks), "--wait")

        hosts.heal(2)
        swarm.wait_for(
            "the swarm to merge again",
            lambda: all(swarm.states(i) == everyone_alive for i in range(3)),
        )
        swarm.wait_for(
            "the cut-off node to catch up on the ledger",
            lambda: swarm.job(2, "during").get("done") == 1,
        )
    finally:
        swarm.stop_all()


def test_a_task_runs_again_when_every_holder_of_its_result_is_gone(
    hosts: Hosts, tmp_path: Path
) -> None:
    """Node 0 runs the tasks (only it has zone=a), but node 1 cannot reach it over TCP, so it
    cannot copy the results; then node 0 dies. Node 1 sees the results are lost and the tasks
    pending again; node 2 (zone=a too) joins and runs them again; their results are readable."""
    swarm = NetSwarm(hosts, tmp_path)
    try:
        swarm.start(0, None, "--label", "zone=a")
        swarm.start(1, 0, "--label", "zone=b")
        addrs = [swarm.addr(i) for i in range(3)]
        swarm.wait_started()
        swarm.wait_for("the two to form a swarm", lambda: len(swarm.states(1)) == 2)
        warm = tmp_path / "warm.jsonl"
        warm.write_text(json.dumps({"cmd": "true", "requires": {"zone": "a"}}) + "\n")
        swarm.cli(1, "submit", str(warm))
        swarm.wait_for(  # node 1 is caught up with node 0, and copies its results
            "a first result to reach node 1", lambda: swarm.rows(1)[0]["replicas"] == "2"
        )
        # From now on node 1 hears node 0's fresh records (UDP pushes) but cannot open a
        # connection to it: it cannot copy node 0's results.
        hosts.block_tcp(1, 0)
        tasks = tmp_path / "zoned.jsonl"
        tasks.write_text(
            "".join(
                json.dumps({"name": f"z{i}", "cmd": f"echo zone {i}", "requires": {"zone": "a"}})
                + "\n"
                for i in range(2)
            )
        )
        swarm.cli(1, "submit", str(tasks))
        swarm.wait_for("node 1 to see them done", lambda: swarm.job(1, "zoned").get("done") == 2)
        zoned = [r for r in swarm.rows(1) if r["job"] == "zoned"]
        assert {r["replicas"] for r in zoned} == {"1"}  # only node 0 holds them
        swarm.procs[0].kill()
        swarm.procs[0].wait()
        swarm.wait_for("node 1 to declare node 0 dead", lambda: swarm.states(1)[addrs[0]] == "dead")
        swarm.wait_for(
            "the lost results to put the tasks back to pending",
            lambda: swarm.job(1, "zoned").get("pending") == 2,
        )
        swarm.start(2, 1, "--label", "zone=a")
        swarm.wait_for(
            "the tasks to run again on node 2", lambda: swarm.job(1, "zoned").get("done") == 2
        )
        out = tmp_path / "out"
        swarm.cli(1, "results", "zoned", "--out", str(out))
        assert (out / "z1" / "stdout").read_text() == "zone 1\n"
    finally:
        swarm.stop_all()


def test_a_node_nobody_can_connect_to_still_gets_its_records_out(
    hosts: Hosts, tmp_path: Path
) -> None:
    """Node 0 cannot open connections to node 1 (its SYNs are dropped), and node 1 was cut off
    when a job was submitted on it, so no push of those records reached node 0. Node 0 still
    learns them: when node 1 pulls from node 0, it sends back on that stream what node 0 lacks
    (the reverse phase of anti-entropy)."""
    swarm = NetSwarm(hosts, tmp_path)
    try:
        swarm.form(2)
        addrs = [swarm.addr(i) for i in range(2)]
        hosts.block_tcp(0, 1)
        hosts.cut_off(1)
        swarm.wait_for("node 1 to declare node 0 dead", lambda: swarm.states(1)[addrs[0]] == "dead")
        tasks = tmp_path / "cut.jsonl"
        tasks.write_text("".join(json.dumps({"cmd": f"echo {i}"}) + "\n" for i in range(3)))
        swarm.cli(1, "submit", str(tasks))
        hosts.heal(1)  # node 0's filter of its own connections to node 1 stays
        swarm.wait_for(
            "node 0 to learn the job it cannot pull",
            lambda: swarm.job(0, "cut").get("total") == 3,
        )
        swarm.wait_for("the job to end on node 0", lambda: swarm.job(0, "cut").get("done") == 3)
    finally:
        swarm.stop_all()


def test_work_goes_on_through_a_two_three_partition_and_every_task_ends_done(
    five_hosts: Hosts, tmp_path: Path
) -> None:
    """A 2|3 split for over twice the lease, while tasks run: each side takes over what the
    other held, so some tasks run twice (counted); after the heal every node agrees every task
    is done, and every result is readable."""
    swarm = NetSwarm(five_hosts, tmp_path)
    try:
        swarm.form(5)
        tasks = tmp_path / "split.jsonl"
        tasks.write_text(
            "".join(
                json.dumps({"name": f"s{i}", "cmd": f"sleep 1; echo {i}"}) + "\n" for i in range(15)
            )
        )
        swarm.cli(0, "submit", str(tasks))
        swarm.wait_for("tasks to run", lambda: swarm.job(0, "split").get("running", 0) >= 3)
        five_hosts.split([0, 1])
        time.sleep(5)  # more than twice the test profile's 2 s lease
        for i in (0, 1):
            five_hosts.heal(i)
        for i in range(5):
            swarm.wait_for(
                f"node {i} to see every task done",
                lambda i=i: swarm.job(i, "split").get("done") == 15,
                timeout=90,
            )
        attempts = list(csv.DictReader(io.StringIO(swarm.cli(0, "export", "--attempts"))))
        print(f"partition 2|3: {len(attempts) - 15} extra attempts for 15 tasks")
        out = tmp_path / "out"
        swarm.cli(3, "results", "split", "--out", str(out))
        for i in range(15):
            assert (out / f"s{i}" / "stdout").read_text() == f"{i}\n"
    finally:
        swarm.stop_all()


def test_ten_percent_loss_on_every_link_declares_no_one_dead_and_the_work_gets_done(
    hosts: Hosts, tmp_path: Path
) -> None:
    swarm = NetSwarm(hosts, tmp_path)
    try:
        for i in range(3):
            hosts.lossy(i, 0.1)  # from the start: joining goes through it too
        swarm.form(3)
        tasks = tmp_path / "lossy.jsonl"
        tasks.write_text(
            "".join(
                json.dumps({"name": f"l{i}", "cmd": f"sleep 0.2; echo {i}"}) + "\n"
                for i in range(30)
            )
        )
        swarm.cli(0, "submit", str(tasks))
        for i in range(3):
            swarm.wait_for(
                f"node {i} to see every task done",
                lambda i=i: swarm.job(i, "lossy").get("done") == 30,
                timeout=90,
            )
        logs = "".join((tmp_path / f"node{i}.log").read_text() for i in range(3))
        assert ": Died" not in logs, "a live node was declared dead under 10% loss"
        attempts = list(csv.DictReader(io.StringIO(swarm.cli(0, "export", "--attempts"))))
        print(f"10% loss: {len(attempts) - 30} extra attempts for 30 tasks")
    finally:
        swarm.stop_all()
