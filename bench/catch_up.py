"""A node joins a swarm that already holds a large ledger: how long until it has all of it.

Node 0 starts alone and is given N tasks (default 100,000) that ask for a label no node has, so
nothing runs and only replication is measured. Then node 1, with an empty state dir, starts with
`--join` node 0, and we time until its ledger holds all N tasks: that catch-up is streamed over
TCP in bounded frames by anti-entropy. Also printed: the bytes node 1 received, and the peak
memory of both daemons (from /proc, VmHWM).
A benchmark, not a test: it prints figures and exits 0. Run: python3 bench/catch_up.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from swarm_net import ask, free_port, stop_daemons, swarm, total_tasks

LIMIT_S = 600.0


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def received(home: Path) -> int:
    return int(ask(home, "members")["net"]["bytes_received"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="swarm-catch-up-bench-"))
    homes = [root / "home0", root / "home1"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        swarm(homes[0], "init")
        swarm(homes[1], "init", "--key-file", str(homes[0] / "swarm.key"))
        ports = [free_port(), free_port()]

        def start(i: int, *extra: str) -> None:
            cmd = [sys.executable, "-m", "swarm", "start", "--data-dir", str(homes[i]),
                   "--bind", f"127.0.0.1:{ports[i]}", "--cpus", "1", *extra]  # fmt: skip
            log = open(root / f"node{i}.log", "wb")  # noqa: SIM115 - closed with the run
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))

        start(0)
        task_file = root / "big.jsonl"
        with open(task_file, "w") as out:
            for i in range(args.tasks):
                line = {"name": f"t{i}", "cmd": f"echo {i}", "requires": {"bench": "never"}}
                out.write(json.dumps(line) + "\n")
        began = time.monotonic()
        for _ in range(100):
            try:
                swarm(homes[0], "submit", str(task_file))
                break
            except SystemExit:
                time.sleep(0.2)  # the daemon is still starting
        submitted = time.monotonic() - began

        started = time.monotonic()
        start(1, "--join", f"127.0.0.1:{ports[0]}")
        caught_up: float | None = None
        while time.monotonic() - started < LIMIT_S:
            try:
                if total_tasks(homes[1], "big") == args.tasks:
                    caught_up = time.monotonic() - started
                    break
            except SystemExit:
                pass  # not answering yet
            time.sleep(0.25)
        got = received(homes[1])
        peaks = [peak_rss_mib(p.pid) for p in procs]

        print(f"catch-up of a joining node, {args.tasks:,} tasks, 2 real daemons on 127.0.0.1")
        print(f"  submit of {args.tasks:,} tasks on node 0: {submitted:.1f} s")
        if caught_up is None:
            print(f"  node 1 did not hold every task within {LIMIT_S:.0f} s")
        else:
            rate = args.tasks / caught_up
            print(f"  node 1 started and held all of them after {caught_up:.1f} s ({rate:,.0f}/s)")
        print(f"  bytes node 1 received: {got / 1e6:.1f} MB ({got / args.tasks:.0f} per task)")
        print(f"  peak RSS: node 0 {peaks[0]:.0f} MiB, node 1 {peaks[1]:.0f} MiB")
        print(f"command: {' '.join([sys.executable, *sys.argv])}; nproc {os.cpu_count()}")
    finally:
        stop_daemons(procs)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
