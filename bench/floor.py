"""What 0.7x of xargs' rate leaves swarm per task on this machine, next to the least its
guarantees cost.

    python3 bench/floor.py                  # 3,000 tasks, 3 rounds: about 1 min
    python3 bench/floor.py --tasks 5000 --rounds 5

Each round, in this order:
- `xargs -P2` runs N tasks of `sh -c true`: its rate, and the CPU its tasks took (the children's
  user and system time, as the shell reports it).
- The budget: at 0.7x that rate, with every core busy all the time (xargs leaves some idle, so
  this is an upper bound), the CPU per task left beside the tasks' own:
  cores / (0.7 x rate) - the tasks' CPU per task.
- The least each thing swarm guarantees costs, each measured alone, as the user and system CPU
  of the process doing it (the kernel's work for its system calls included):
  - start and reap: the bare asyncio runner of `spawn_paths.py` (posix_spawn in a new process
    group, a pidfd, wait4), N tasks on 2 slots, recording nothing;
  - the attempt's own stdout and stderr: two files opened (made once, then truncated) and
    closed, as a recycled run dir needs;
  - the RESULT's signature: one Ed25519 signature of a 300-byte message;
  - durable before acting: two one-row commits (a CLAIM and a RESULT) in WAL mode with
    synchronous=NORMAL, each followed by an fdatasync of the WAL;
  - the results dir of `swarm run`: a dir and two empty files per task.
- `swarm run --cpus 2` of the same N tasks: the CPU its own process spent per task (start-up and
  the results dir included; its tasks not, nor its sync helper, which makes the fdatasyncs that
  the floor's durable records count).

The floor is the sum of those parts: a daemon that did nothing else (no scheduling, no gossip,
no event loop of its own beyond the bare runner's) would still pay it. Where the floor exceeds
the budget, 0.7x xargs cannot be had on this machine with those guarantees kept.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spawn_paths  # a sibling bench, not a package

GOAL = 0.7
RECORD_BYTES = 300  # about a CLAIM's or a RESULT's encoded size


def xargs_round(count: int) -> tuple[float, float]:
    """(tasks/s, µs of the tasks' CPU per task) of `xargs -P2 sh -c true`."""
    before = os.times()
    rate = spawn_paths.xargs(count)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return rate, cpu / count * 1e6


def cpu_per_task_us(count: int, once: Callable[[int], None]) -> float:
    """This process's CPU (user and system) per call of `once(i)`, i in range(count)."""
    before = os.times()
    for i in range(count):
        once(i)
    after = os.times()
    return ((after.user - before.user) + (after.system - before.system)) / count * 1e6


def own_files(count: int, work: Path) -> float:
    run_dir = work / "run"
    run_dir.mkdir()
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC

    def once(_: int) -> None:
        for name in ("stdout", "stderr"):
            fd = os.open(run_dir / name, flags, 0o644)
            os.fstat(fd)
            os.close(fd)

    return cpu_per_task_us(count, once)


def signature(count: int) -> float:
    key = Ed25519PrivateKey.generate()
    message = os.urandom(RECORD_BYTES)
    return cpu_per_task_us(count, lambda _: key.sign(message))


def durable_records(count: int, work: Path) -> float:
    path = work / "ledger.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY, body BLOB)")
    wal = os.open(f"{path}-wal", os.O_RDONLY)
    body = os.urandom(RECORD_BYTES)

    def once(i: int) -> None:
        for seq in (2 * i, 2 * i + 1):  # its claim, then its result
            db.execute("BEGIN")
            db.execute("INSERT INTO records VALUES (?, ?)", (seq, body))
            db.execute("COMMIT")
            os.fdatasync(wal)

    try:
        return cpu_per_task_us(count, once)
    finally:
        os.close(wal)
        db.close()


def results_dir(count: int, work: Path) -> float:
    out = work / "out"
    out.mkdir()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

    def once(i: int) -> None:
        task_dir = f"{out}/t{i}"
        os.mkdir(task_dir)
        for name in ("stdout", "stderr"):
            os.close(os.open(f"{task_dir}/{name}", flags, 0o666))

    return cpu_per_task_us(count, once)


PARTS = ("start and reap", "stdout, stderr", "signature", "2 durable records", "results dir")


def floor_round(count: int, work: Path) -> dict[str, float]:
    _, start_reap = spawn_paths.bare("in_loop", count)
    return {
        "start and reap": start_reap,
        "stdout, stderr": own_files(count, work),
        "signature": signature(count),
        "2 durable records": durable_records(count, work),
        "results dir": results_dir(count, work),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    scratch = Path(tempfile.mkdtemp(prefix="swarm-floor-"))
    rates, task_cpu, budgets, swarm_cpu, swarm_rates = [], [], [], [], []
    parts: dict[str, list[float]] = {name: [] for name in PARTS}
    try:
        for round_no in range(args.rounds):
            rate, tasks_us = xargs_round(args.tasks)
            rates.append(rate)
            task_cpu.append(tasks_us)
            budgets.append(cores / (GOAL * rate) * 1e6 - tasks_us)
            work = scratch / f"r{round_no}"
            work.mkdir()
            for name, us in floor_round(args.tasks, work).items():
                parts[name].append(us)
            own_rate, own_us = spawn_paths.swarm(args.tasks, work, round_no)
            swarm_rates.append(own_rate)
            swarm_cpu.append(own_us)
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    med = statistics.median
    floor = sum(med(v) for v in parts.values())
    print(f"{args.tasks:,} tasks of `sh -c true` on 2 slots, {cores} cores, {args.rounds} rounds")
    print("(medians; µs of CPU per task, user and system)")
    print(f"{'xargs -P2':<34}{med(rates):>10,.0f} tasks/s, its tasks {med(task_cpu):,.0f} µs")
    print(f"{'budget beside the tasks at 0.7x':<34}{med(budgets):>10,.0f} µs")
    for name, values in parts.items():
        print(f"  {name:<32}{med(values):>10,.0f} µs")
    print(f"{'floor (the sum)':<34}{floor:>10,.0f} µs  ({floor / med(budgets):.1f}x the budget)")
    print(
        f"{'swarm run, its own process':<34}{med(swarm_cpu):>10,.0f} µs  "
        f"(its own rate {med(swarm_rates):,.0f} tasks/s, {med(swarm_rates) / med(rates):.2f}x)"
    )


if __name__ == "__main__":
    main()
