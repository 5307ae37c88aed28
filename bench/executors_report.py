"""The figures of bench/executors.py: samples per key, what went wrong, and the printed tables.

Every figure is the median and the min-max of its runs; the ratios are paired within a run before
their median is taken (see executors.py). Keys: `tput FAMILY CHUNKSIZE` (calls/s),
`ratio FAMILY CHUNKSIZE PEER`, `cold FAMILY` (+ ` inside`, ` whole`; seconds), `mem FAMILY`
(+ ` node`; MB, 10^6 bytes, as the issue's figures are).
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from executors import Variant
    from executors_proc import ChildRun

GOAL_CALLS_PER_S = 2000.0  # swarm at chunksize 1, the ledger durable
GOAL_RAY_RATIO = 1.5
GOAL_COLD_S = 0.3
GOAL_NODE_MB = 100.0  # the daemon and its two warm workers

out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


@dataclass
class Results:
    samples: dict[str, list[float]] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (what, the output's tail)
    unavailable: dict[str, str] = field(default_factory=dict)  # family -> why

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def get(self, key: str) -> list[float]:
        return self.samples.get(key, [])

    def problem(self, what: str, detail: str = "") -> None:
        self.problems.append((what, detail))
        print(f"  problem: {what}", file=sys.stderr, flush=True)

    def accept(self, family: str, what: str, child: ChildRun, figures: dict[str, Any]) -> bool:
        """Whether the run gave figures; if not, say why (unavailable, or a problem)."""
        if "unavailable" in figures:
            self.unavailable[family] = str(figures["unavailable"])
            print(f"  {family}: not available: {figures['unavailable']}", file=sys.stderr)
            return False
        if child.exit_code == 0 and figures:
            return True
        code = "killed at its timeout" if child.exit_code is None else f"exit {child.exit_code}"
        self.problem(f"{what} ({code}, {child.wall_s:.1f} s)", child.log_tail)
        return False


def spread(values: Sequence[float], fmt: str, unit: str = "") -> tuple[str, str]:
    """(median, min–max) as text; the range is empty for a single run."""
    if not values:
        return "n/a", ""
    median = format(statistics.median(values), fmt) + unit
    if len(values) == 1:
        return median, ""
    return median, f"{format(min(values), fmt)}–{format(max(values), fmt)}{unit}"


def ratio_text(values: Sequence[float]) -> str:
    median, rng = spread(values, ".2f", "x")
    return f"{median} ({rng})" if rng else ("" if median == "n/a" else median)


def table(title: str, columns: list[str]) -> Table:
    grid = Table(title=title, title_justify="left")
    grid.add_column("tool")
    for name in columns:
        grid.add_column(name, justify="right")
    return grid


def throughput_table(res: Results, rows: list[Variant], calls: int) -> Table:
    grid = table(
        f"throughput: {calls:,} calls of inc, results in order",
        ["calls/s", "min–max", "÷ pool, same chunksize", "÷ Ray"],
    )
    for row in rows:
        if row.family in res.unavailable:
            grid.add_row(row.label, "not available", "", "", "")
            continue
        median, rng = spread(res.get(f"tput {row.key}"), ",.0f")
        pool = ratio_text(res.get(f"ratio {row.key} pool"))
        ray = ratio_text(res.get(f"ratio {row.key} ray"))
        grid.add_row(row.label, median, rng, pool, ray)
    return grid


def cold_table(res: Results, families: list[str], labels: dict[str, str]) -> Table:
    grid = table(
        "cold start to the first result: a fresh process imports, starts, runs 1 call",
        ["spawn → result", "min–max", "inside: 1st line →", "whole process"],
    )
    for family in families:
        if family in res.unavailable:
            grid.add_row(labels[family], "not available", "", "", "")
            continue
        median, rng = spread(res.get(f"cold {family}"), ".3f", " s")
        inside = spread(res.get(f"cold {family} inside"), ".3f", " s")[0]
        whole = spread(res.get(f"cold {family} whole"), ".2f", " s")[0]
        grid.add_row(labels[family], median, rng, inside, whole)
    return grid


def memory_table(res: Results, families: list[str], labels: dict[str, str]) -> Table:
    grid = table("peak memory: summed RSS of the tree, every 50 ms", ["MB", "min–max"])
    for family in families:
        if family in res.unavailable:
            grid.add_row(labels[family], "not available", "")
            continue
        extra = {"celery": " + Redis", "swarm-daemon": ": daemon + workers + client"}
        grid.add_row(
            labels[family] + extra.get(family, ""), *spread(res.get(f"mem {family}"), ".0f")
        )
        if family == "swarm-daemon":
            grid.add_row(
                "  the node alone: daemon + its workers",
                *spread(res.get(f"mem {family} node"), ".0f"),
            )
    return grid


def verdict(values: Sequence[float], meets: bool) -> str:
    return "n/a" if not values else ("meets it" if meets else "MISSES it")


def goals(res: Results) -> list[str]:
    lines = []
    for family, name in (("swarm", "embedded, sync full"), ("swarm-daemon", "daemon, --sync full")):
        rate = res.get(f"tput {family} 1")
        if family in res.unavailable or not rate:
            continue
        median = statistics.median(rate)
        lines.append(
            f">= {GOAL_CALLS_PER_S:,.0f} calls/s at chunksize 1, swarm ({name}): "
            f"{verdict(rate, median >= GOAL_CALLS_PER_S)} (median {median:,.0f})"
        )
        ray = res.get(f"ratio {family} 1 ray")
        if ray:
            ray_median = statistics.median(ray)
            lines.append(
                f">= {GOAL_RAY_RATIO}x Ray at chunksize 1, swarm ({name}): "
                f"{verdict(ray, ray_median >= GOAL_RAY_RATIO)} (median {ray_median:.2f}x)"
            )
    cold = res.get("cold swarm")
    if cold:
        median = statistics.median(cold)
        lines.append(
            f"cold start under {GOAL_COLD_S} s, swarm (embedded): "
            f"{verdict(cold, median < GOAL_COLD_S)} (median {median:.3f} s)"
        )
    node = res.get("mem swarm-daemon node")
    if node:
        median = statistics.median(node)
        lines.append(
            f"under {GOAL_NODE_MB:.0f} MB for a node with two warm workers (swarm daemon): "
            f"{verdict(node, median < GOAL_NODE_MB)} (median {median:.0f} MB)"
        )
    return lines


def report(
    res: Results,
    rows: list[Variant],
    families: list[str],
    labels: dict[str, str],
    calls: int,
    runs: int,
    elapsed_s: float,
    loads: list[tuple[float, float, float]],
    versions: list[str],
) -> None:
    out.print()
    out.print(
        f"swarm's SwarmExecutor next to its peers: 2 workers each, {runs} run(s), median and min–max"
    )
    out.print(throughput_table(res, rows, calls))
    out.print(cold_table(res, families, labels))
    out.print(memory_table(res, families, labels))
    for family, why in res.unavailable.items():
        out.print(f"not available: {labels[family]}: {why}", markup=False)
    lines = goals(res)
    if lines:
        out.print("goals (issue 11):")
        for line in lines:
            out.print(f"  {line}")
    out.print(
        "÷ columns: per run (paired), then the median (and min–max); higher is better for swarm."
        "\n  Ray has no chunksize: at chunksize 100, ÷ Ray sets swarm's chunks against its one"
        " task per call."
    )
    out.print(
        "cold start: spawn → result is timed from the parent, 'inside' from the child's first"
        " line;\n  'whole process' runs to its exit (shutdown included). Redis and the swarm"
        " daemon were already up."
    )
    out.print(
        "memory: summed RSS counts a page shared by processes once per process (forked"
        " workers, libraries)."
    )
    out.print(
        "swarm (embedded) is the node SwarmExecutor starts in its own process, with the node's"
        " defaults\n  (ledger sync full; all the CPUs this process may use: "
        f"{len(os.sched_getaffinity(0))} here, the peers have 2 workers)."
    )
    out.print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
    out.print(
        f"machine:  nproc {len(os.sched_getaffinity(0))} (cpu_count {os.cpu_count()}), "
        f"Python {platform.python_version()}, {platform.platform()}"
    )
    first, last = (" ".join(f"{x:.2f}" for x in load) for load in (loads[0], loads[-1]))
    out.print(f"load avg: {first} at start, {last} at end; total {elapsed_s:.0f} s")
    out.print("versions: " + "; ".join(versions))
    if res.problems:
        out.print(f"\n{len(res.problems)} problem(s):")
        shown: set[str] = set()
        for what, detail in res.problems:
            out.print(f"  - {what}", markup=False)
            # Outputs that differ only in ids, addresses and figures are printed once.
            same = re.sub(r"0x[0-9a-f]+|[0-9a-f]{8,}|\d+(\.\d+)?", "#", detail)
            if detail and same in shown:
                out.print("    (its output ends as that of a problem above)")
            elif detail:
                out.print("    " + detail.replace("\n", "\n    "), markup=False)
                shown.add(same)
