"""Five real daemons share work: makespan, duplicate executions, and takeover after a SIGKILL.

  * 5 nodes x 2 slots on this machine, N tasks (default 1,000) of `sleep 0.05` submitted on node
    0: makespan / ideal (ideal = N x 0.05 s / 10 slots), from the ledger (first start to last
    end) and from the submit to the last node seeing all done; and duplicate executions (attempts
    beyond one per task; with no faults the aim is 0);
  * seconds from SIGKILL of the node holding tasks to every one of them running elsewhere, with
    the test timers (`--profile test`) and, with --lan, the default timers too;
  * with --faults (root, iproute2, iptables): the same job with each node in a network namespace
    of its own, side by side: no fault, 10% packet loss on every link (iptables statistic) for
    the whole run, and a 2|3 partition for twice the lease, from when a fifth of the tasks are
    done; makespan / ideal and duplicate executions for each.
A benchmark, not a test: it prints figures and exits 0. Run: python3 bench/swarm_share.py
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from swarm_net import ask, free_port, stop_daemons, swarm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from swarm.daemon.config import LAN
from swarm.daemon.procs import kill_orphans
from swarm.statedir import StateDir
from tests.integration.netns import PORT, Hosts, why_not

NODES = 5
SLOTS = 2
TASK_S = 0.05
# Node 0 is asked how the job stands at most this often, each ask waiting up to POLL_WAIT_MS for
# a change: the last finish is seen within the pause (1% of the ideal makespan), where a fixed
# 0.2 s sleep added 0.1 s on average.
POLL_PAUSE_S = 0.05
POLL_WAIT_MS = 1000
SPLIT_S = 2 * LAN.lease_ttl_s  # twice the LAN timers' lease


class Swarm:
    """Five daemons on 127.0.0.1, or each in a network namespace of `hosts`."""

    def __init__(self, root: Path, profile: str, hosts: Hosts | None = None) -> None:
        self.root = root
        self.homes = [root / f"home{i}" for i in range(NODES)]
        self.procs: list[subprocess.Popen[bytes]] = []
        swarm(self.homes[0], "init")
        for home in self.homes[1:]:
            swarm(home, "init", "--key-file", str(self.homes[0] / "swarm.key"))
        if hosts is None:
            addrs = [f"127.0.0.1:{free_port()}" for _ in self.homes]
        else:
            addrs = [f"{hosts.ip(i)}:{PORT}" for i in range(NODES)]
        for i, home in enumerate(self.homes):
            inside = [] if hosts is None else ["ip", "netns", "exec", hosts.names[i]]
            cmd = [*inside, sys.executable, "-m", "swarm", "start", "--data-dir", str(home),
                   "--bind", addrs[i], "--cpus", str(SLOTS), "--profile", profile]  # fmt: skip
            if i:
                cmd += ["--join", addrs[0]]
            log = open(root / f"node{i}.log", "wb")  # noqa: SIM115 - closed with the run
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                views = [ask(h, "members")["members"] for h in self.homes]
                if all(sum(m["state"] == "alive" for m in v) == NODES for v in views):
                    return
            except SystemExit:
                pass
            time.sleep(0.3)
        raise SystemExit("the five nodes did not form a swarm in 60 s")

    def rows(self, i: int, *extra: str) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(swarm(self.homes[i], "export", *extra))))

    def job(self, i: int, name: str) -> dict[str, int]:
        return self.job_after(i, name)[0]

    def job_after(
        self, i: int, name: str, changes: int | None = None
    ) -> tuple[dict[str, int], int | None]:
        """The job's counts on node i: at once, or (given the `changes` of an earlier answer)
        as soon as a task's state changes there, so that the last finish is seen when it
        happens rather than at the next poll."""
        fields: dict[str, object] = {"jobs": [name]}
        if changes is not None:
            fields.update(wait_ms=POLL_WAIT_MS, changes=changes)
        reply = ask(self.homes[i], "status", **fields)
        job = next((j for j in reply["snapshot"]["jobs"] if j["job"] == name), {})
        return job, reply.get("changes")

    def agreed_attempts(self, limit_s: float = 120) -> list[dict[str, str]]:
        """The attempts once every node's ledger holds the same ones (after a partition, each
        side's work reaches the other only after the heal: counting earlier misses it)."""
        deadline = time.monotonic() + limit_s
        while True:
            views = [self.rows(i, "--attempts") for i in range(NODES)]
            keys = [sorted((r["task_id"], r["epoch"], r["node"]) for r in v) for v in views]
            if all(k == keys[0] for k in keys) or time.monotonic() > deadline:
                return views[0]
            time.sleep(1)

    def daemon_cpu_s(self) -> float:
        """CPU seconds the daemons have used so far (user and system, without their tasks)."""
        total = 0
        for proc in self.procs:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        stop_daemons(self.procs)


def machine_busy() -> tuple[int, int]:
    """The machine's busy and idle CPU ticks since boot (/proc/stat)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks) - idle, idle


def when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def baselines(tasks: int) -> dict[str, float]:
    """Makespan / ideal of GNU parallel and xargs running the same tasks with as many slots on
    this one machine: the floor that process start-up on a busy machine leaves."""
    lines = "".join(f"sleep {TASK_S}\n" for _ in range(tasks))
    slots = str(NODES * SLOTS)
    tools = {
        f"GNU parallel -j {slots}": ["parallel", "--will-cite", "-j", slots],
        f"xargs -P {slots} sh -c": ["xargs", "-P", slots, "-I{}", "sh", "-c", "{}"],
    }
    found: dict[str, float] = {}
    for name, cmd in tools.items():
        if shutil.which(cmd[0]) is None:
            continue
        started = time.monotonic()
        done = subprocess.run(cmd, input=lines, text=True, capture_output=True)
        if done.returncode != 0:  # say, moreutils' `parallel`, which takes other flags
            print(f"{name} failed, left out: {done.stderr.strip()[:200]}")
            continue
        found[name] = (time.monotonic() - started) / (tasks * TASK_S / (NODES * SLOTS))
    return found


def share(tasks: int, hosts: Hosts | None = None, fault: str = "") -> None:
    """Run the job and print its figures; `fault` (with `hosts`): "loss" or "partition"."""
    root = Path(tempfile.mkdtemp(prefix="swarm-share-bench-"))
    if hosts is not None and fault == "loss":
        for i in range(NODES):
            hosts.lossy(i, 0.1)  # before the join: the whole run goes through it
    s = Swarm(root, "lan", hosts)
    try:
        path = root / "share.jsonl"
        path.write_text(
            "".join(
                json.dumps({"name": f"t{i}", "cmd": f"sleep {TASK_S}"}) + "\n" for i in range(tasks)
            )
        )
        started = time.monotonic()
        cpu_before, busy_before = s.daemon_cpu_s(), machine_busy()
        swarm(s.homes[0], "submit", str(path))
        split_s: tuple[float, float] | None = None
        changes: int | None = None
        while time.monotonic() - started < 600:
            job, changes = s.job_after(0, "share", changes)
            done = job.get("done", 0)
            if done >= tasks:
                break
            if hosts is not None and fault == "partition" and not split_s and done >= tasks // 5:
                split_s = partition(hosts, started)
            time.sleep(POLL_PAUSE_S)
        wall = time.monotonic() - started
        gap_pulls = sum(int(ask(h, "members")["net"]["gap_pulls"]) for h in s.homes)
        daemon_cpu = s.daemon_cpu_s() - cpu_before
        busy = [after - before for after, before in zip(machine_busy(), busy_before, strict=True)]
        attempts = s.agreed_attempts()
        ran = [r for r in attempts if r["outcome"] in ("ok", "interrupted", "failed")]
        span = max(when(r["ended"]) for r in ran) - min(when(r["started"]) for r in ran)
        ideal = tasks * TASK_S / (NODES * SLOTS)
        per_node: dict[str, int] = {}
        for r in attempts:
            if r["outcome"] == "ok":
                per_node[r["node"][:8]] = per_node.get(r["node"][:8], 0) + 1
        where = "127.0.0.1" if hosts is None else "network namespaces"
        print(f"{NODES} nodes x {SLOTS} slots, {tasks:,} x sleep {TASK_S}, LAN timers, {where}"
              f"{', ' + FAULTS[fault] if fault else ''}")  # fmt: skip
        if split_s is not None:
            print(f"  split from {split_s[0]:.1f} s to {split_s[1]:.1f} s after the submit")
        print(f"  makespan / ideal: {span / ideal:.2f} in the ledger, {wall / ideal:.2f} "
              f"from submit to all done on node 0 (ideal {ideal:.1f} s)")  # fmt: skip
        task_cpu = sum(float(r["cpu_s"] or 0) for r in ran)
        print(f"  the tasks' own CPU (sh and sleep): {task_cpu / tasks * 1000:.1f} ms per task")
        print(f"  duplicate executions: {len(ran) - tasks} ({len(ran)} attempts for {tasks} tasks)")
        print_duplicates(ran)
        print(f"  daemons' CPU: {daemon_cpu / tasks * 1000:.1f} ms per task; the machine was "
              f"{busy[0] / max(sum(busy), 1):.0%} busy on {os.cpu_count()} cores; "
              f"{gap_pulls} pulls for records a push missed")  # fmt: skip
        print(f"  ok attempts per node: {sorted(per_node.values())}")
    finally:
        s.close()
        shutil.rmtree(root, ignore_errors=True)
        if hosts is not None:
            for i in range(NODES):
                hosts.heal(i)


def print_duplicates(ran: list[dict[str, str]]) -> None:
    """How the attempts beyond one per task ended (all but one ok attempt of each task), most
    common first."""
    by_task: dict[str, list[dict[str, str]]] = {}
    for r in ran:
        by_task.setdefault(r["task_id"], []).append(r)
    why: dict[str, int] = {}
    for rows in by_task.values():
        credited = next((r for r in rows if r["outcome"] == "ok"), rows[0])
        for r in rows:
            if r is not credited:
                # node ids differ from run to run: what happened is what counts
                key = f"{r['outcome']}: {re.sub(r'[0-9a-f]{8,}', 'N', r['reason'])[:70]}"
                why[key] = why.get(key, 0) + 1
    for key, count in sorted(why.items(), key=lambda kv: -kv[1])[:6]:
        print(f"    {count:4d}  {key}")


FAULTS = {"loss": "10% loss on every link", "partition": f"2|3 split for {SPLIT_S:g} s"}


def partition(hosts: Hosts, started: float) -> tuple[float, float]:
    """Split nodes 0-1 from 2-4 for SPLIT_S (twice the LAN lease), then heal."""
    begin = time.monotonic() - started
    hosts.split([0, 1])
    time.sleep(SPLIT_S)
    for i in (0, 1):
        hosts.heal(i)
    return begin, time.monotonic() - started


def faults(tasks: int) -> None:
    reason = why_not()
    if reason is not None:
        print(f"--faults skipped: {reason}")
        return
    hosts = Hosts(NODES)
    try:
        for fault in ("", "loss", "partition"):
            share(tasks, hosts, fault)
    finally:
        hosts.remove()


def takeover(profile: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="swarm-takeover-bench-"))
    s = Swarm(root, profile)
    try:
        path = root / "long.jsonl"
        path.write_text(
            "".join(
                json.dumps({"name": f"t{i}", "cmd": "sleep 600"}) + "\n"
                for i in range(NODES * SLOTS - SLOTS)
            )
        )
        swarm(s.homes[0], "submit", str(path))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = [r for r in s.rows(0) if r["state"] == "running"]
            if len(running) == NODES * SLOTS - SLOTS:
                break
            time.sleep(0.2)
        holders: dict[str, list[str]] = {}
        for r in running:
            holders.setdefault(r["node"], []).append(r["name"])
        own = {}
        for i, h in enumerate(s.homes):
            mine = [m for m in ask(h, "members")["members"] if m.get("pid")]
            own[mine[0]["id"]] = i
        victim_id = max(
            (v for v in holders if v in own and own[v] != 0), key=lambda v: len(holders[v])
        )
        victim = own[victim_id]
        names = set(holders[victim_id])
        killed = time.monotonic()
        s.procs[victim].send_signal(signal.SIGKILL)
        s.procs[victim].wait()
        moved: float | None = None
        while time.monotonic() - killed < 120:
            rows = {r["name"]: r for r in s.rows(0)}
            if all(rows[n]["state"] == "running" and rows[n]["node"] != victim_id for n in names):
                moved = time.monotonic() - killed
                break
            time.sleep(0.1)
        shown = f"{moved:.1f} s" if moved is not None else "not within 120 s"
        print(f"  SIGKILL of a node holding {len(names)} tasks -> all running elsewhere, "
              f"{profile} timers: {shown}")  # fmt: skip
        # The killed node's `sleep 600`s run on as orphans: what its next start would do.
        kill_orphans(StateDir(s.homes[victim]).runs, victim_id)
    finally:
        s.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--lan", action="store_true", help="also time the takeover on LAN timers")
    parser.add_argument(
        "--faults",
        action="store_true",
        help="only the job in network namespaces: no fault, 10%% loss, a 2|3 partition",
    )
    args = parser.parse_args()
    if args.faults:
        faults(args.tasks)
    else:
        for name, ratio in baselines(args.tasks).items():
            print(f"{name}, the same {args.tasks:,} tasks on this machine alone: "
                  f"makespan / ideal {ratio:.2f}")  # fmt: skip
        share(args.tasks)
        takeover("test")
        if args.lan:
            takeover("lan")
    print(f"command: {' '.join([sys.executable, *sys.argv])}; nproc {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
