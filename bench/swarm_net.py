"""Five real daemons on this machine: how fast a submission spreads, and what gossip costs.

Measures, with memberlist's LAN timers (the default profile):
  * the time from `swarm submit` of N tasks (default 10,000) on one node until all five nodes'
    ledgers hold all N tasks (the tasks ask for a label no node has, so nothing runs and only
    replication is measured);
  * sealed bytes sent per node per second: idle (a swarm of five, nothing to do) and during the
    spread of that submission.
A benchmark, not a test: it prints figures and exits 0. Run: python3 bench/swarm_net.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from swarm.errors import SwarmError

NODES = 5
IDLE_S = 10.0
SPREAD_LIMIT_S = 300.0


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise SystemExit("no free port")


def swarm(home: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "swarm", *args, "--data-dir", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise SystemExit(f"swarm {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def ask(home: Path, op: str, **fields: Any) -> dict[str, Any]:
    """One request to a node's daemon over its control socket, from this process: polling
    through the CLI would start an interpreter per poll, and its CPU would slow what we measure
    on a 2-core machine."""
    from swarm.connection import Client
    from swarm.statedir import StateDir

    async def call() -> dict[str, Any]:
        client = await Client.connect(StateDir(home))
        try:
            return await client.call(op, **fields)
        finally:
            await client.close()

    try:
        return asyncio.run(call())
    except (SwarmError, OSError) as exc:
        raise SystemExit(f"{op} on {home}: {exc}") from exc


def stop_daemons(procs: list[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """SIGTERM every daemon still running, then wait for each (SIGKILL if it lingers)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def net_bytes(home: Path) -> int:
    reply = ask(home, "members")
    return int(reply["net"]["bytes_sent"])


def total_tasks(home: Path, job: str) -> int:
    snap = ask(home, "status")["snapshot"]
    return sum(int(j["total"]) for j in snap["jobs"] if j["job"] == job)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="swarm-net-bench-"))
    homes = [root / f"home{i}" for i in range(NODES)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        swarm(homes[0], "init")
        for home in homes[1:]:
            swarm(home, "init", "--key-file", str(homes[0] / "swarm.key"))
        ports = [free_port() for _ in homes]
        for i, home in enumerate(homes):
            cmd = [sys.executable, "-m", "swarm", "start", "--data-dir", str(home),
                   "--bind", f"127.0.0.1:{ports[i]}", "--cpus", "1"]  # fmt: skip
            if i:
                cmd += ["--join", f"127.0.0.1:{ports[0]}"]
            log = open(root / f"node{i}.log", "wb")  # noqa: SIM115 - closed with the run
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if all(len(ask(h, "members")["members"]) == NODES for h in homes):
                    break
            except SystemExit:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("the five nodes did not form a swarm in 60 s")

        before = [net_bytes(h) for h in homes]
        time.sleep(IDLE_S)
        idle = [(net_bytes(h) - b) / IDLE_S for h, b in zip(homes, before, strict=True)]

        task_file = root / "spread.jsonl"
        with open(task_file, "w") as out:
            for i in range(args.tasks):
                line = {"name": f"t{i}", "cmd": "true", "requires": {"bench": "never"}}
                out.write(json.dumps(line) + "\n")
        before = [net_bytes(h) for h in homes]
        started = time.monotonic()
        swarm(homes[0], "submit", str(task_file))
        submitted = time.monotonic() - started
        seen_at: dict[int, float] = {0: submitted}
        while len(seen_at) < NODES and time.monotonic() - started < SPREAD_LIMIT_S:
            for i, home in enumerate(homes):
                if i not in seen_at and total_tasks(home, "spread") == args.tasks:
                    seen_at[i] = time.monotonic() - started
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        during = [(net_bytes(h) - b) / elapsed for h, b in zip(homes, before, strict=True)]

        print(f"swarm of {NODES} real daemons on 127.0.0.1, LAN timers, {args.tasks:,} tasks")
        print(f"  submit on node 0 returned after {submitted:.2f} s")
        for i in range(NODES):
            when = f"{seen_at[i]:.2f} s" if i in seen_at else f"not within {SPREAD_LIMIT_S:.0f} s"
            print(f"  node {i}: all tasks in its ledger after {when}")
        print(f"  all five: {max(seen_at.values()):.2f} s" if len(seen_at) == NODES else "")
        print(f"  bytes sent per node per second, idle:   {_spread(idle)}")
        print(f"  bytes sent per node per second, during: {_spread(during)}")
        print(f"command: {' '.join([sys.executable, *sys.argv])}; nproc {os.cpu_count()}")
    finally:
        stop_daemons(procs)
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _spread(values: list[float]) -> str:
    ordered = sorted(values)
    return (
        f"median {ordered[len(ordered) // 2]:,.0f}, min {ordered[0]:,.0f}, max {ordered[-1]:,.0f}"
    )


if __name__ == "__main__":
    sys.exit(main())
