"""Command start-up: `swarm --help`, `swarm status --once` and a one-task `swarm run`, with and
without compiled bytecode, next to `python3 -c pass` and a ProcessPoolExecutor one-liner that
runs the same task.

    python3 bench/startup.py            # 7 runs of each: about 30 s
    python3 bench/startup.py --runs 15

The package is copied twice into a temporary dir: once compiled (`compileall`, as `pip install`
leaves it) and once with no bytecode at all, run with PYTHONDONTWRITEBYTECODE=1 so that every
start compiles every module it imports again (this environment sets that variable). The
commands run interleaved, in a rotating order, and the medians are shown, with each figure's
ratio to the ProcessPoolExecutor one-liner. `status --once` asks a daemon the bench starts (from
the compiled copy) and stops. Goals (issue 13): `--help` and `status --once` under 0.15 s, a
one-task `run` under 0.25 s.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOALS_S = {"swarm --help": 0.15, "swarm status --once": 0.15, "swarm run (1 task)": 0.25}
ONE_LINER = (
    "import concurrent.futures as cf, subprocess\n"
    "with cf.ProcessPoolExecutor(1) as ex:\n"
    "    ex.submit(subprocess.run, ['echo', 'hi'], capture_output=True).result()"
)


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    # Run from the package copy's parent: `python -m` puts the working dir first on sys.path,
    # and from a checkout it would import the checkout, not the copy.
    done = subprocess.run(argv, env=env, cwd=env["PYTHONPATH"], capture_output=True, timeout=60)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr.decode()}")
    return wall


def copy_package(into: Path, compiled: bool) -> Path:
    root = into / ("compiled" if compiled else "source")
    shutil.copytree(REPO / "swarm", root / "swarm", ignore=shutil.ignore_patterns("__pycache__"))
    if compiled:
        compileall.compile_dir(root / "swarm", quiet=1)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="swarm-startup-"))
    daemon: subprocess.Popen[bytes] | None = None
    try:
        roots = {True: copy_package(work, True), False: copy_package(work, False)}
        envs = {}
        for compiled, root in roots.items():
            env = {**os.environ, "PYTHONPATH": str(root), "SWARM_HOME": str(work / "home")}
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            if not compiled:
                env["PYTHONDONTWRITEBYTECODE"] = "1"
            envs[compiled] = env
        tasks = work / "one.jsonl"
        tasks.write_text('{"cmd": "echo hi"}\n')
        swarm = [sys.executable, "-m", "swarm"]
        daemon_env = envs[True]
        daemon = subprocess.Popen(
            [*swarm, "start"],
            env=daemon_env,
            cwd=daemon_env["PYTHONPATH"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while subprocess.run(
            [*swarm, "status", "--once"],
            env=daemon_env,
            cwd=daemon_env["PYTHONPATH"],
            capture_output=True,
        ).returncode:
            if time.monotonic() > deadline:
                raise SystemExit("the daemon did not start")
            time.sleep(0.1)
        runs = 0

        def run_dir() -> str:
            nonlocal runs
            runs += 1
            return str(work / f"run{runs}")

        commands = {
            "python3 -c pass": lambda env: timed([sys.executable, "-c", "pass"], env),
            "ProcessPoolExecutor one-liner": lambda env: timed(
                [sys.executable, "-c", ONE_LINER], env
            ),
            "swarm --help": lambda env: timed([*swarm, "--help"], env),
            "swarm status --once": lambda env: timed([*swarm, "status", "--once"], env),
            "swarm run (1 task)": lambda env: timed(
                [*swarm, "run", str(tasks), "--data-dir", (d := run_dir()), "--out", d + "-out"],
                env,
            ),
        }
        walls: dict[tuple[str, bool], list[float]] = {}
        keys = [(name, compiled) for name in commands for compiled in (True, False)]
        for run in range(args.runs):
            for name, compiled in keys[run % len(keys) :] + keys[: run % len(keys)]:
                walls.setdefault((name, compiled), []).append(commands[name](envs[compiled]))
        base = {
            c: statistics.median(walls[("ProcessPoolExecutor one-liner", c)]) for c in (True, False)
        }
        print(
            f"start-up, median of {args.runs} runs (min-max); ÷ the ProcessPoolExecutor one-liner"
        )
        print(f"{'command':32} {'with bytecode':>26} {'no bytecode (recompiled)':>28}  goal")
        for name in commands:
            cells = []
            for compiled in (True, False):
                got = walls[(name, compiled)]
                med = statistics.median(got)
                cells.append(
                    f"{med:.3f} s ({min(got):.2f}-{max(got):.2f}) {med / base[compiled]:.1f}x"
                )
            goal = GOALS_S.get(name)
            print(
                f"{name:32} {cells[0]:>26} {cells[1]:>28}  {'' if goal is None else f'< {goal} s'}"
            )
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
