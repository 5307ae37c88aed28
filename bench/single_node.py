"""Single-node benchmark: `swarm run` side by side with `xargs -P` and GNU `parallel`.

What is measured (all with 2 slots, all in one invocation, each figure repeated --runs times with
a fresh temporary swarm data dir per run, reported as median and min-max):

1. Throughput: N tasks that each run `true` (N = --tasks, default 2,000). swarm with
   `--sync full` and `--sync normal`, versus `xargs -P2 -I{} sh -c true` and
   `parallel -j2 sh -c true`, all reading N lines. Reported as tasks/s, including process start
   and, for swarm, writing the results dir: the time a user waits for the command to return.
   The stated goal for swarm is >= 0.7x the throughput of xargs.
2. Makespan / ideal: 200 tasks of `sleep 0.05` on 2 slots, ideal = 200 * 0.05 / 2 = 5.0 s.
   For swarm also the makespan inside its ledger (first `started` to last `ended`), which
   leaves out the node's start-up and the writing of results.
3. Time to first durable result: the earliest `ended` in `swarm export` of a run of
   `sleep 0.2` tasks (`--sync full`) minus the wall clock just before `swarm run` was invoked,
   and the start-up overhead: the wall time of `swarm run` on a one-task `true` file, next to
   the floor of starting a Python interpreter and of xargs running one task.
4. Peak RSS of the `swarm run` process (which hosts the embedded node) in the N-task runs,
   from `os.wait4`'s ru_maxrss. Linux folds reaped descendants into it, but the tasks here
   (`sh`, `true`) are far smaller than the Python process.

Why ratios: the machine is shared and noisy, so absolute numbers drift from one minute to the
next. Every tool is measured in the same invocation, interleaved run by run (the order rotates
each run), and the swarm/xargs ratios are computed per run (paired) before taking the median,
so load that hits both alike cancels out. Compare ratios across machines, not tasks/s.

Run:  python3 bench/single_node.py [--tasks 2000] [--runs 3] [--quick]
This is a benchmark, not a test: it prints figures and exits 0 even if swarm misses its goal.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path

from rich.console import Console
from rich.table import Table

SLOTS = 2
THROUGHPUT_GOAL = 0.7  # swarm tasks/s over xargs tasks/s
MAKESPAN_TASKS = 200
MAKESPAN_SLEEP_S = 0.05
LATENCY_TASKS = 4
LATENCY_SLEEP_S = 0.2
QUICK_TASKS = 300
LOG_TAIL_LINES = 15
APT_TIMEOUT_S = 240.0
TIMEOUT_BASE_S = 60.0  # every child is killed after this plus a per-task allowance
TIMEOUT_PER_TASK_S = 0.1

out = Console(highlight=False, width=None if sys.stdout.isatty() else 110)
log = Console(stderr=True, highlight=False)


# -- running one child ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    wall_s: float
    started_wall: float  # time.time() just before the child was spawned
    exit_code: int | None  # None: killed at its timeout
    maxrss_kib: int
    output: str  # its stdout and stderr, merged

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SWARM_HOME", None)  # every swarm run gets --data-dir; never touch the user's node
    env["COLUMNS"] = "250"  # rich wraps at 80 columns when writing to a file
    env["NO_COLOR"] = "1"
    return env


def run_child(argv: list[str], *, cwd: Path, timeout_s: float, stdin: Path | None) -> Outcome:
    """Run argv to completion (or kill its process group at timeout_s) and reap it with wait4."""
    log_path = cwd / f".bench-output-{time.monotonic_ns()}"
    killed = threading.Event()
    with open(log_path, "wb") as sink, open(stdin or os.devnull, "rb") as source:
        started_wall = time.time()
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            stdin=source,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=child_env(),
            start_new_session=True,  # its own process group, so a timeout kills its tasks too
        )

        def kill() -> None:
            killed.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout_s, kill)
        timer.daemon = True
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall_s = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    output = log_path.read_text(errors="replace")
    log_path.unlink()
    return Outcome(
        wall_s=wall_s,
        started_wall=started_wall,
        exit_code=None if killed.is_set() else proc.returncode,
        maxrss_kib=usage.ru_maxrss,
        output=output,
    )


# Scratch dirs of finished runs, removed when the bench ends (`remove_scratch_dirs`), not after
# each run. On ext4 without a journal (this project's CI machine), the inode allocator passes
# over inodes freed in the last 30 s, reading each one: files created soon after thousands were
# deleted cost O(deleted) each, so removing one run's tree would slow whichever tool ran next
# (swarm, which writes a result dir per task, far more than xargs, which writes nothing).
_finished_scratch: list[Path] = []


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A fresh temporary dir (and so a fresh swarm data dir) for one run, kept until the end."""
    path = Path(tempfile.mkdtemp(prefix="swarm-bench-"))
    try:
        yield path
    finally:
        _finished_scratch.append(path)


def remove_scratch_dirs() -> None:
    while _finished_scratch:
        shutil.rmtree(_finished_scratch.pop(), ignore_errors=True)


# -- the tools --------------------------------------------------------------------------------------


def swarm_argv() -> list[str]:
    exe = shutil.which("swarm")
    return [exe] if exe else [sys.executable, "-m", "swarm"]


def write_task_file(path: Path, cmd: str, count: int) -> None:
    """Distinct names make distinct task ids: identical lines would collapse into one task."""
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(f'{{"cmd": "{cmd}", "name": "t{i}"}}\n')


def write_lines(path: Path, count: int) -> None:
    path.write_text("".join(f"{i}\n" for i in range(count)))


def timeout_for(tasks: int) -> float:
    return TIMEOUT_BASE_S + TIMEOUT_PER_TASK_S * tasks


def run_swarm(work: Path, cmd: str, count: int, sync: str) -> Outcome:
    tasks = work / "tasks.jsonl"
    write_task_file(tasks, cmd, count)
    argv = [
        *swarm_argv(),
        "run",
        str(tasks),
        "--out",
        str(work / "out"),
        "--cpus",
        str(SLOTS),
        "--sync",
        sync,
        "--data-dir",
        str(work / "data"),
    ]
    return run_child(argv, cwd=work, timeout_s=timeout_for(count), stdin=None)


def xargs_argv(cmd: str) -> list[str]:
    return ["xargs", f"-P{SLOTS}", "-I{}", "sh", "-c", cmd]


def parallel_argv(exe: str, cmd: str) -> list[str]:
    # -q keeps `sh -c 'sleep 0.05'` one argument; each input line is appended as $0.
    return [exe, "--will-cite", "-q", f"-j{SLOTS}", "sh", "-c", cmd]


def run_lines_tool(work: Path, argv: list[str], count: int) -> Outcome:
    lines = work / "lines.txt"
    write_lines(lines, count)
    return run_child(argv, cwd=work, timeout_s=timeout_for(count), stdin=lines)


def swarm_export(work: Path) -> list[dict[str, str]]:
    argv = [*swarm_argv(), "export", "--data-dir", str(work / "data")]
    done = subprocess.run(
        argv, cwd=work, env=child_env(), capture_output=True, text=True, timeout=TIMEOUT_BASE_S
    )
    if done.returncode != 0:
        raise RuntimeError(f"swarm export failed ({done.returncode}): {done.stderr[-2000:]}")
    return list(csv.DictReader(io.StringIO(done.stdout)))


def iso_seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


SUMMARY = re.compile(r"([\d,]+) tasks: ([\d,]+) done.*?\(([\d,.]+) tasks/s\)", re.DOTALL)


def swarm_summary(outcome: Outcome) -> tuple[int, int, float] | None:
    """(total, done, swarm's own tasks/s) from the line `swarm run` ends with."""
    match = SUMMARY.search(outcome.output)
    if match is None:
        return None
    total, done, rate = (g.replace(",", "") for g in match.groups())
    return int(total), int(done), float(rate)


def find_parallel(install: bool) -> str | None:
    exe = shutil.which("parallel")
    if exe or not install or not shutil.which("apt-get") or os.geteuid() != 0:
        return exe
    log.print("GNU parallel is missing: apt-get install -y parallel ...")
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(
            ["apt-get", "install", "-y", "parallel"],
            capture_output=True,
            timeout=APT_TIMEOUT_S,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    exe = shutil.which("parallel")
    if exe is None:
        return None
    # moreutils ships a different `parallel` that would not understand the same flags.
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    return exe if "GNU parallel" in version.stdout else None


# -- collecting samples -------------------------------------------------------------------------------


@dataclass
class Results:
    samples: dict[str, list[float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def get(self, key: str) -> list[float]:
        return self.samples.get(key, [])

    def problem(self, what: str, outcome: Outcome | None = None, detail: str = "") -> None:
        text = what
        if outcome is not None:
            code = "killed at timeout" if outcome.exit_code is None else f"exit {outcome.exit_code}"
            text += f" ({code}, {outcome.wall_s:.1f} s)"
        if detail:
            text += f": {detail}"
        if outcome is not None and (not outcome.ok or detail):
            text += "\n    " + outcome.tail().replace("\n", "\n    ")
        self.problems.append(text)
        log.print(f"  [yellow]problem:[/] {text}")


def run_steps(
    res: Results, what: str, steps: list[tuple[str, Callable[[], None]]], run: int
) -> None:
    """Run the steps, rotated by the run number so no tool always goes first; a step that
    raises is reported as a problem and the others still run."""
    shift = run % len(steps)
    for name, step in steps[shift:] + steps[:shift]:
        try:
            step()
        except Exception as exc:
            res.problem(f"{what}, {name}, run {run}", detail=f"{type(exc).__name__}: {exc}")


def bench_throughput(res: Results, n: int, run: int, parallel: str | None) -> None:
    tps: dict[str, float] = {}

    def swarm(sync: str) -> None:
        with scratch_dir() as work:
            outcome = run_swarm(work, "true", n, sync)
        key = f"swarm {sync}"
        summary = swarm_summary(outcome)
        if not outcome.ok:
            res.problem(f"throughput, {key}, run {run}", outcome)
            return
        if summary is None or summary[1] != n:
            res.problem(f"throughput, {key}, run {run}", outcome, f"summary {summary}, {n} sent")
            return
        tps[key] = n / outcome.wall_s
        res.add(f"tput {key}", tps[key])
        res.add(f"tput {key} self", summary[2])
        res.add(f"rss {key}", outcome.maxrss_kib / 1024)
        log.print(f"  {key}: {outcome.wall_s:.2f} s, {tps[key]:.0f} tasks/s")

    def lines_tool(key: str, argv: list[str]) -> None:
        with scratch_dir() as work:
            outcome = run_lines_tool(work, argv, n)
        if not outcome.ok:
            res.problem(f"throughput, {key}, run {run}", outcome)
            return
        tps[key] = n / outcome.wall_s
        res.add(f"tput {key}", tps[key])
        res.add(f"rss {key}", outcome.maxrss_kib / 1024)
        log.print(f"  {key}: {outcome.wall_s:.2f} s, {tps[key]:.0f} tasks/s")

    steps: list[tuple[str, Callable[[], None]]] = [
        ("swarm full", lambda: swarm("full")),
        ("swarm normal", lambda: swarm("normal")),
        ("xargs", lambda: lines_tool("xargs", xargs_argv("true"))),
    ]
    if parallel is not None:
        steps.append(("parallel", lambda: lines_tool("parallel", parallel_argv(parallel, "true"))))
    run_steps(res, "throughput", steps, run)
    with scratch_dir() as work:
        floor = run_child(["true"], cwd=work, timeout_s=TIMEOUT_BASE_S, stdin=None)
    res.add("rss floor", floor.maxrss_kib / 1024)
    if "xargs" in tps:
        for key in ("swarm full", "swarm normal", "parallel"):
            if key in tps:
                res.add(f"tput {key} ratio", tps[key] / tps["xargs"])


def bench_makespan(res: Results, run: int, parallel: str | None) -> None:
    ideal = MAKESPAN_TASKS * MAKESPAN_SLEEP_S / SLOTS
    cmd = f"sleep {MAKESPAN_SLEEP_S}"
    walls: dict[str, float] = {}

    def swarm() -> None:
        with scratch_dir() as work:
            outcome = run_swarm(work, cmd, MAKESPAN_TASKS, "full")
            if not outcome.ok:
                res.problem(f"makespan, swarm, run {run}", outcome)
                return
            rows = swarm_export(work)
        walls["swarm full"] = outcome.wall_s
        res.add("span swarm full", outcome.wall_s / ideal)
        starts = [iso_seconds(r["started"]) for r in rows if r["started"]]
        ends = [iso_seconds(r["ended"]) for r in rows if r["ended"]]
        if starts and ends:
            res.add("span swarm ledger", (max(ends) - min(starts)) / ideal)
        log.print(f"  swarm: {outcome.wall_s:.2f} s")

    def lines_tool(key: str, argv: list[str]) -> None:
        with scratch_dir() as work:
            outcome = run_lines_tool(work, argv, MAKESPAN_TASKS)
        if not outcome.ok:
            res.problem(f"makespan, {key}, run {run}", outcome)
            return
        walls[key] = outcome.wall_s
        res.add(f"span {key}", outcome.wall_s / ideal)
        log.print(f"  {key}: {outcome.wall_s:.2f} s")

    steps: list[tuple[str, Callable[[], None]]] = [
        ("swarm", swarm),
        ("xargs", lambda: lines_tool("xargs", xargs_argv(cmd))),
    ]
    if parallel is not None:
        steps.append(("parallel", lambda: lines_tool("parallel", parallel_argv(parallel, cmd))))
    run_steps(res, "makespan", steps, run)
    if "xargs" in walls:
        for key in ("swarm full", "parallel"):
            if key in walls:
                res.add(f"span {key} ratio", walls[key] / walls["xargs"])


def bench_startup(res: Results, run: int) -> None:
    cmd = f"sleep {LATENCY_SLEEP_S}"
    with scratch_dir() as work:
        outcome = run_swarm(work, cmd, LATENCY_TASKS, "full")
        rows = swarm_export(work) if outcome.ok else []
    ends = [iso_seconds(r["ended"]) for r in rows if r["ended"]]
    if not outcome.ok or not ends:
        res.problem(f"first result, run {run}", outcome, "no ended timestamp" if outcome.ok else "")
    else:
        first = min(ends) - outcome.started_wall
        res.add("first result", first)
        res.add("first result overhead", first - LATENCY_SLEEP_S)
        log.print(f"  first durable result after {first:.3f} s")

    with scratch_dir() as work:
        outcome = run_swarm(work, "true", 1, "full")
    floor = run_child([sys.executable, "-c", "pass"], cwd=Path.cwd(), timeout_s=60, stdin=None)
    imports = run_child(
        [sys.executable, "-c", "import swarm.cli.main"], cwd=Path.cwd(), timeout_s=60, stdin=None
    )
    with scratch_dir() as work:
        xargs_one = run_lines_tool(work, xargs_argv("true"), 1)
    res.add("startup python", floor.wall_s)
    res.add("startup import", imports.wall_s)
    res.add("startup xargs", xargs_one.wall_s)
    if not outcome.ok:
        res.problem(f"startup, run {run}", outcome)
        return
    res.add("startup swarm", outcome.wall_s)
    res.add("startup ratio python", outcome.wall_s / floor.wall_s)
    log.print(f"  swarm run of 1 task: {outcome.wall_s:.3f} s")


# -- report -------------------------------------------------------------------------------------------


def spread(values: list[float], fmt: str, unit: str = "") -> tuple[str, str]:
    """(median, min–max) as text; the range is empty for a single run."""
    if not values:
        return "n/a", ""
    median = format(statistics.median(values), fmt) + unit
    if len(values) == 1:
        return median, ""
    return median, f"{format(min(values), fmt)}–{format(max(values), fmt)}{unit}"


class Report:
    def __init__(self, res: Results, title: str) -> None:
        self.res = res
        self.table = Table(title=title, title_justify="left")
        self.table.add_column("measure")
        self.table.add_column("tool")
        for name in ("median", "min–max", "÷ xargs: median", "min–max"):
            self.table.add_column(name, justify="right")
        self.measure: list[str] = []  # one line of the section's label per row

    def section(self, measure: str) -> None:
        if self.table.row_count:
            self.table.add_section()
        self.measure = measure.split("\n")

    def label(self) -> str:
        return self.measure.pop(0) if self.measure else ""

    def row(self, tool: str, key: str, fmt: str, unit: str, ratio: str | None = None) -> None:
        median, rng = spread(self.res.get(key), fmt, unit)
        rmed, rrng = spread(self.res.get(ratio), ".2f", "x") if ratio else ("", "")
        self.table.add_row(self.label(), tool, median, rng, rmed, rrng)

    def text(self, tool: str, value: str) -> None:
        self.table.add_row(self.label(), tool, value, "", "", "")


def report(
    res: Results, n: int, runs: int, parallel: str | None, elapsed_s: float, loads: list[str]
) -> None:
    ideal = MAKESPAN_TASKS * MAKESPAN_SLEEP_S / SLOTS
    rep = Report(res, f"swarm single node vs xargs / GNU parallel: {SLOTS} slots, {runs} run(s)")

    rep.section(f"throughput\n{n:,} × true")
    rep.row("swarm --sync full", "tput swarm full", ",.0f", "/s", "tput swarm full ratio")
    rep.row("swarm --sync normal", "tput swarm normal", ",.0f", "/s", "tput swarm normal ratio")
    rep.row("xargs -P2", "tput xargs", ",.0f", "/s")
    if parallel:
        rep.row("parallel -j2", "tput parallel", ",.0f", "/s", "tput parallel ratio")
    else:
        rep.text("parallel -j2", "not installed")
    rep.row("(swarm's own: full)", "tput swarm full self", ",.0f", "/s")
    rep.row("(swarm's own: normal)", "tput swarm normal self", ",.0f", "/s")

    rep.section(
        f"makespan / ideal\n{MAKESPAN_TASKS} × sleep {MAKESPAN_SLEEP_S}\nideal {ideal:.1f} s"
    )
    rep.row("swarm --sync full", "span swarm full", ".2f", "x", "span swarm full ratio")
    rep.row("(swarm's ledger span)", "span swarm ledger", ".2f", "x")
    rep.row("xargs -P2", "span xargs", ".2f", "x")
    if parallel:
        rep.row("parallel -j2", "span parallel", ".2f", "x", "span parallel ratio")

    rep.section(f"first durable result\n{LATENCY_TASKS} × sleep {LATENCY_SLEEP_S}, full")
    rep.row("swarm: invoke → 1st ended", "first result", ".3f", " s")
    rep.row(f"(minus the {LATENCY_SLEEP_S} s sleep)", "first result overhead", ".3f", " s")

    rep.section("startup\n1 × true")
    rep.row("swarm run", "startup swarm", ".3f", " s")
    rep.row("(÷ python3 -c pass)", "startup ratio python", ".1f", "x")
    rep.row("python3 -c pass", "startup python", ".3f", " s")
    rep.row("python3 -c 'import swarm.cli.main'", "startup import", ".3f", " s")
    rep.row("xargs -P2", "startup xargs", ".3f", " s")

    rep.section(f"peak RSS\nru_maxrss, {n:,} tasks")
    rep.row("swarm run --sync full", "rss swarm full", ".1f", " MiB")
    rep.row("swarm run --sync normal", "rss swarm normal", ".1f", " MiB")
    rep.row("xargs -P2", "rss xargs", ".1f", " MiB")
    if parallel:
        rep.row("parallel -j2", "rss parallel", ".1f", " MiB")
    rep.row("(floor: true, same spawn)", "rss floor", ".1f", " MiB")

    out.print()
    out.print(rep.table)
    ratios = res.get("tput swarm full ratio")
    if ratios:
        median = statistics.median(ratios)
        verdict = "meets" if median >= THROUGHPUT_GOAL else "MISSES"
        out.print(
            f"goal: swarm (--sync full) >= {THROUGHPUT_GOAL}x the throughput of xargs: "
            f"{verdict} it (median {median:.2f}x)"
        )
    out.print(
        "÷ xargs is per run (paired): for throughput higher is better, for makespan lower is."
    )
    out.print(
        "RSS floor: a child's ru_maxrss starts at the RSS of the process that spawned it (this "
        "bench);\n  a figure at the floor means that tool's own peak is at most that."
    )
    out.print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
    out.print(
        f"machine:  nproc {len(os.sched_getaffinity(0))} (cpu_count {os.cpu_count()}), "
        f"Python {platform.python_version()}, {platform.platform()}"
    )
    out.print(f"load avg: {loads[0]} at start, {loads[-1]} at end; total {elapsed_s:.0f} s")
    out.print("tools:    swarm run FILE --out DIR --cpus 2 --sync full|normal --data-dir FRESH_TMP")
    out.print("          xargs -P2 -I{} sh -c CMD  < N lines")
    out.print("          parallel --will-cite -q -j2 sh -c CMD  < N lines")
    if res.problems:
        out.print(f"\n{len(res.problems)} problem(s):")
        for text in res.problems:
            out.print(f"  - {text}", markup=False)


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, help="tasks in the throughput runs (default 2000)")
    parser.add_argument("--runs", type=int, help="repetitions of every measurement (default 3)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TASKS} tasks, 1 run")
    parser.add_argument(
        "--no-install", action="store_true", help="do not apt-get install GNU parallel if missing"
    )
    args = parser.parse_args(argv)
    n = args.tasks or (QUICK_TASKS if args.quick else 2000)
    runs = args.runs or (1 if args.quick else 3)
    if n < 1 or runs < 1:
        parser.error("--tasks and --runs must be at least 1")

    started = time.monotonic()
    loads = [load_avg()]
    parallel = find_parallel(install=not args.no_install)
    res = Results()
    try:
        for run in range(1, runs + 1):
            log.print(f"[bold]run {run}/{runs}[/]: throughput, {n:,} tasks")
            bench_throughput(res, n, run, parallel)
            log.print(f"[bold]run {run}/{runs}[/]: makespan, {MAKESPAN_TASKS} × sleep")
            bench_makespan(res, run, parallel)
            log.print(f"[bold]run {run}/{runs}[/]: first result and startup")
            run_steps(
                res, "first result and startup", [("swarm", partial(bench_startup, res, run))], run
            )
    finally:
        remove_scratch_dirs()
    loads.append(load_avg())
    report(res, n, runs, parallel, time.monotonic() - started, loads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
