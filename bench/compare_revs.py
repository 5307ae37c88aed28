"""swarm's own rate at two or more commits, run side by side: did a change to the per-task path
pay?

    python3 bench/compare_revs.py 0958c3e HEAD             # 3,000 tasks, 6 rounds: about 2 min
    python3 bench/compare_revs.py HEAD~1 HEAD --tasks 2000 --rounds 10
    python3 bench/compare_revs.py HEAD HEAD:--sync,normal  # one commit, two ways of running it

Each commit is taken out of git (`git archive`) into a temporary dir and compiled there, so
every run reads bytecode (the machine may set PYTHONDONTWRITEBYTECODE). A round runs `swarm run
--cpus 2` of N tasks of `true` once from each commit, on a fresh `--data-dir`, in an order that
alternates round by round. Shown per commit: the rate the run prints (the node's start and the
results dir left out), and the CPU the `swarm run` process spent per task (its threads, not its
tasks; its rusage as it exits, read as spawn_paths.py reads it), as the median and every
round's figure.

Why rounds: on a shared 2-core machine one run of the same commit varies by 20% or more from the
next, so a few percent shows only as a median over rounds run side by side. Nothing is deleted
until the end (see README.md: files made soon after thousands were deleted cost much more).
A `REV:ARGS` entry adds arguments to that commit's `swarm run`, separated by commas.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spawn_paths  # a sibling bench, not a package

ROOT = Path(__file__).resolve().parent.parent
CPU = re.compile(r"cpu_s=([\d.]+)")  # what spawn_paths.SWARM_RUN says as the run exits
RUN_TIMEOUT_S = 600


def checkout(rev: str, into: Path) -> None:
    """The tree of `rev` at `into`, compiled."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into / "swarm")], check=True)


def one_run(tree: Path, extra: list[str], tasks_file: Path, data: Path) -> tuple[float, float]:
    """(tasks/s as the run printed it, own CPU seconds)."""
    env = dict(os.environ, PYTHONPATH=str(tree), HOME=str(data.parent))
    argv = [sys.executable, "-c", spawn_paths.SWARM_RUN, "run", str(tasks_file), "--cpus", "2"]
    argv += ["--data-dir", str(data), "--out", f"{data}-out", *extra]
    done = subprocess.run(
        argv,
        env=env,
        cwd=data.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=RUN_TIMEOUT_S,
    )
    text = done.stdout.decode(errors="replace")
    found = spawn_paths.OWN_RATE.search(text)
    cpu = CPU.search(text)
    if done.returncode != 0 or found is None or cpu is None:
        raise SystemExit(f"swarm run failed ({done.returncode}):\n{text[-2000:]}")
    return float(found.group(1).replace(",", "")), float(cpu.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revs", nargs="+", help="commits, each REV or REV:ARGS")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if len(args.revs) < 2:
        parser.error("give two commits or more (or one twice, run two ways)")
    scratch = Path(tempfile.mkdtemp(prefix="swarm-revs-"))
    try:
        entries: list[tuple[str, Path, list[str]]] = []
        trees: dict[str, Path] = {}
        for entry in args.revs:
            rev, _, extra = entry.partition(":")
            if rev not in trees:
                trees[rev] = scratch / f"tree{len(trees)}"
                checkout(rev, trees[rev])
            entries.append((entry, trees[rev], [a for a in extra.split(",") if a]))
        tasks_file = scratch / "tasks.jsonl"
        tasks_file.write_text(
            "".join(json.dumps({"cmd": "true", "name": f"t{i}"}) + "\n" for i in range(args.tasks))
        )
        results: dict[str, list[tuple[float, float]]] = {e: [] for e, _, _ in entries}
        for round_no in range(args.rounds):
            order = entries if round_no % 2 == 0 else entries[::-1]
            for entry, tree, extra in order:
                data = scratch / f"run-{round_no}-{entries.index((entry, tree, extra))}"
                results[entry].append(one_run(tree, extra, tasks_file, data))
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
        print(f"{args.tasks:,} tasks of `true`, swarm run --cpus 2, {args.rounds} rounds")
        print(f"{'commit':<28} {'tasks/s':>8} {'CPU µs/task':>12}  every round (tasks/s)")
        base = statistics.median(r for r, _ in results[entries[0][0]])
        for entry, _, _ in entries:
            rates = [r for r, _ in results[entry]]
            cpu = statistics.median(c for _, c in results[entry]) / args.tasks * 1e6
            rate = statistics.median(rates)
            every = " ".join(f"{r:.0f}" for r in rates)
            print(f"{entry:<28} {rate:>8.0f} {cpu:>12.0f}  {every}  ({rate / base:.2f}x)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
