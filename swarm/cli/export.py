"""Getting the ledger out as tables: CSV (or JSON Lines) of tasks, attempts and nodes. The
result files themselves are laid out by `results_dir`.

Theory of operation
-------------------
`write_csv` renders the ledger as one row per task, or one row per attempt (plus a `running` row
for each task being run right now), with the csv module so any command text survives quoting.

Reads the ledger, never changes it; the only writes are to the caller's stream.
"""

from __future__ import annotations

import csv
import json
import operator
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TextIO

from swarm.core.clock import wall_ms_of
from swarm.core.ledger import Attempt, Ledger, TaskView
from swarm.core.spec import TaskSpec
from swarm.errors import UserInputError

TASK_COLUMNS: tuple[str, ...] = (
    "task_id",
    "job",
    "name",
    "state",
    "attempts",
    "node",
    "started",
    "ended",
    "wall_s",
    "cpu_s",
    "max_rss_mb",
    "exit_code",
    "outcome",
    "digest",
    "command",
    "cpus",
    "memory_mb",
    "gpus",
    "priority",
    "node_cpus",
    "node_memory_mb",
    "reason",
    "replicas",
)

ATTEMPT_COLUMNS: tuple[str, ...] = (
    "task_id",
    "job",
    "name",
    "attempt",
    "epoch",
    "outcome",
    "node",
    "started",
    "ended",
    "wall_s",
    "cpu_s",
    "max_rss_mb",
    "exit_code",
    "digest",
    "command",
    "node_cpus",
    "node_memory_mb",
    "reason",
)

NODE_COLUMNS: tuple[str, ...] = (
    "node", "attempts", "ok", "failed", "timeout", "interrupted", "wall_s", "cpu_s",
    "node_cpus", "node_memory_mb", "node_gpus", "last_ended",
)  # fmt: skip
_NODE_COUNTS = ("attempts", "ok", "failed", "timeout", "interrupted", "wall_s", "cpu_s")

# Columns that are numbers: JSON Lines gives them as numbers (and an empty cell as null), where
# CSV has only text.
_WHOLE_COLUMNS = frozenset(
    {"attempts", "attempt", "epoch", "exit_code", "gpus", "priority", "replicas", "ok", "failed",
     "timeout", "interrupted", "node_gpus"}
)  # fmt: skip
_REAL_COLUMNS = frozenset(
    {"wall_s", "cpu_s", "max_rss_mb", "cpus", "memory_mb", "node_cpus", "node_memory_mb"}
)

RUNNING = "running"  # the outcome shown for an attempt still in progress
JOBS_LISTED_MAX = 10  # known jobs named in the error for an unknown one

_MIB = 1024 * 1024
# The columns `_attempt_cells` fills, in both tables.
_ATTEMPT_CELLS = (
    "node", "started", "ended", "wall_s", "cpu_s", "max_rss_mb", "exit_code", "outcome",
    "digest", "node_cpus", "node_memory_mb", "reason",
)  # fmt: skip
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- CSV -------------------------------------------------------------------------------------


WHATS = ("tasks", "attempts", "nodes")
FORMATS = ("csv", "jsonl")


def write_csv(
    ledger: Ledger, out: TextIO, *, job: str | None = None, attempts: bool = False
) -> int:
    """Write the tasks (or, with attempts=True, their attempts) as CSV; return the data rows."""
    return write(ledger, out, what="attempts" if attempts else "tasks", job=job)


def write(
    ledger: Ledger, out: TextIO, *, what: str = "tasks", fmt: str = "csv", job: str | None = None
) -> int:
    """Write a table of the ledger (`what`: a row per task, per attempt, or per node that ran
    something) as CSV or JSON Lines (one object per row, the same keys); return the data rows.

    `out` should be opened with newline="" (as the csv module asks), so that newlines inside a
    quoted command are written as they are. Jobs are sorted by name, tasks keep the order their
    job first saw them. UserInputError if `job` is given and unknown.
    """
    columns, rows = _table(ledger, what, job)
    return write_rows(columns, rows, out, fmt)


def write_rows(
    columns: tuple[str, ...], rows: Iterable[dict[str, str]], out: TextIO, fmt: str
) -> int:
    """Write rows as they come, as CSV (with its header) or JSON Lines; return how many."""
    if fmt == "jsonl":
        count = 0
        for row in rows:  # the CSV's cells in its column order, numbers as numbers
            out.write(json.dumps({c: _typed(c, row[c]) for c in columns}, ensure_ascii=False))
            out.write("\n")
            count += 1
        return count
    # csv.writer of the cells picked in one C call: csv.DictWriter spent a third of a
    # million-row export checking and ordering each row's keys in Python.
    writer = csv.writer(out)
    writer.writerow(columns)
    pick = operator.itemgetter(*columns)
    # itemgetter of one column gives the cell itself, which csv would split into characters.
    cells = pick if len(columns) > 1 else lambda row: (pick(row),)
    count = 0
    for row in rows:
        if len(row) != len(columns):  # a key too many (one missing is a KeyError)
            raise ValueError(f"a row of {sorted(row)} for the columns {columns}")
        writer.writerow(cells(row))
        count += 1
    return count


def _typed(column: str, cell: str) -> str | int | float | None:
    """A cell as JSON gives it: a number column's as a number, or null when empty."""
    if column in _WHOLE_COLUMNS or column in _REAL_COLUMNS:
        if not cell:
            return None
        return int(cell) if column in _WHOLE_COLUMNS else float(cell)
    return cell


def _table(
    ledger: Ledger, what: str, job: str | None
) -> tuple[tuple[str, ...], Iterator[dict[str, str]]]:
    jobs = [known_job(ledger, job)] if job is not None else sorted(ledger.jobs)
    if what == "nodes":
        return NODE_COLUMNS, iter(_node_rows(ledger, jobs))
    if what == "attempts":
        return ATTEMPT_COLUMNS, _rows(ledger, jobs, attempts=True)
    return TASK_COLUMNS, _rows(ledger, jobs, attempts=False)


def _rows(ledger: Ledger, jobs: list[str], attempts: bool) -> Iterator[dict[str, str]]:
    views = (view for name in jobs for view in ledger.job_tasks(name))
    return rows_of_views(views, ledger.result_holders, attempts)


def rows_of_views(
    views: Iterable[TaskView], holders: Callable[[Attempt], set[str]], attempts: bool
) -> Iterator[dict[str, str]]:
    """The rows of these tasks, a row per task or (`attempts`) per attempt. `holders`: the
    nodes that hold an attempt's result (Ledger.result_holders)."""
    for view in views:
        if view.spec is None:
            continue  # its TASK record has not arrived: nothing to describe it by
        if attempts:
            yield from _attempt_rows(view, view.spec)
        else:
            yield _task_row(view, view.spec, holders)


def _node_rows(ledger: Ledger, jobs: list[str]) -> list[dict[str, str]]:
    """A row per node that ran an attempt of these jobs: what it ran, how it went, the time it
    took, and its resources (as its latest result gives them), so machines can be compared."""
    nodes: dict[str, dict[str, float]] = {}
    shapes: dict[str, tuple[int, Attempt]] = {}
    for name in jobs:
        for view in ledger.job_tasks(name):
            for attempt in view.attempts.values():
                r = attempt.result
                node = attempt.version.origin
                counts = nodes.setdefault(node, dict.fromkeys(_NODE_COUNTS, 0.0))
                counts["attempts"] += 1
                counts[str(r.outcome)] += 1
                counts["wall_s"] += r.wall_s
                counts["cpu_s"] += r.cpu_s
                if node not in shapes or shapes[node][0] < r.ended_ms:
                    shapes[node] = (r.ended_ms, attempt)
    rows = []
    for node in sorted(nodes):
        counts, latest = nodes[node], shapes[node][1].result
        rows.append(
            {
                "node": node,
                "attempts": str(int(counts["attempts"])),
                **{o: str(int(counts[o])) for o in ("ok", "failed", "timeout", "interrupted")},
                "wall_s": f"{counts['wall_s']:.3f}",
                "cpu_s": f"{counts['cpu_s']:.3f}",
                "node_cpus": _number(latest.node_capacity.cpus),
                "node_memory_mb": _mib(latest.node_capacity.memory_bytes),
                "node_gpus": str(latest.node_capacity.gpus),
                "last_ended": _iso_ms(latest.ended_ms),
            }
        )
    return rows


def _task_row(
    view: TaskView, spec: TaskSpec, holders: Callable[[Attempt], set[str]]
) -> dict[str, str]:
    # Never claimed (most of a million waiting tasks): no attempt to show, no claim under way.
    ordered = view.ordered_attempts() if view.attempts else []
    shown = (view.ok_attempt() or ordered[-1]) if ordered else None
    replicas = ""
    if shown is not None and shown.result.digest is not None:
        # The nodes that hold its result: the one that ran it, and those that copied it.
        replicas = str(len(holders(shown)))
    row = {
        "task_id": view.task_id,
        "job": view.job,
        "name": view.name,
        "state": str(view.state) if view.state is not None else "",
        "attempts": str(len(view.attempts)),
        "command": spec.command_text(),
        "cpus": _number(spec.need.cpus),
        "memory_mb": _mib(spec.need.memory_bytes),
        "gpus": str(spec.need.gpus),
        "priority": str(spec.priority),
        "replicas": replicas,
    }
    claim = view.active_claim() if view.claims else None
    if claim is not None:
        # Running: the columns describe the attempt under way (who holds it, since when), not
        # an earlier one that ended.
        row.update(_attempt_cells(None))
        row.update(node=claim[1], started=_iso_ms(wall_ms_of(view.claims[claim].stamp)))
    else:
        row.update(_attempt_cells(shown))
    return row


def _attempt_rows(view: TaskView, spec: TaskSpec) -> list[dict[str, str]]:
    command = spec.command_text()
    base = {"task_id": view.task_id, "job": view.job, "name": view.name, "command": command}
    rows = []
    # Origin as the last key: two nodes may both report an epoch (a split claim), keep it stable.
    ordered = sorted(
        view.attempts.values(),
        key=lambda a: (a.result.epoch, a.result.started_ms, a.version.origin),
    )
    for attempt in ordered:
        row = dict(base)
        row.update(_attempt_cells(attempt))
        row["attempt"] = str(attempt.result.attempt)
        row["epoch"] = str(attempt.result.epoch)
        rows.append(row)
    claim = view.active_claim()
    if claim is not None:
        epoch, node = claim
        row = dict(base)
        row.update(_attempt_cells(None))
        # The attempt number is only known from the RESULT; the claim gives epoch, node, start.
        row.update(
            attempt="",
            epoch=str(epoch),
            outcome=RUNNING,
            node=node,
            started=_iso_ms(wall_ms_of(view.claims[claim].stamp)),
        )
        rows.append(row)
    return rows


def _attempt_cells(attempt: Attempt | None) -> dict[str, str]:
    """The columns both tables take from one attempt; all empty when there is none."""
    if attempt is None:
        return dict.fromkeys(_ATTEMPT_CELLS, "")
    r = attempt.result
    return {
        "node": attempt.version.origin,
        "started": _iso_ms(r.started_ms),
        "ended": _iso_ms(r.ended_ms),
        "wall_s": f"{r.wall_s:.3f}",
        "cpu_s": f"{r.cpu_s:.3f}",
        "max_rss_mb": f"{r.max_rss_kb / 1024:.1f}",
        "exit_code": "" if r.exit_code is None else str(r.exit_code),
        "outcome": str(r.outcome),
        "digest": r.digest or "",
        "node_cpus": _number(r.node_capacity.cpus),
        "node_memory_mb": _mib(r.node_capacity.memory_bytes),
        "reason": r.reason,
    }


def _iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO-8601 UTC, e.g. 2024-05-01T12:00:00.123Z."""
    try:
        # timedelta, not fromtimestamp(ms / 1000): no float rounding of the milliseconds.
        when = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        return ""  # a wildly wrong clock on some node; a blank beats a failed export
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: float) -> str:
    # 2.0 cores reads better as "2"; fractions keep their exact repr.
    value = float(value)  # an int slipped in would lack is_integer() before Python 3.12
    return str(int(value)) if value.is_integer() else repr(value)


def _mib(n_bytes: int) -> str:
    return str(n_bytes // _MIB) if n_bytes % _MIB == 0 else f"{n_bytes / _MIB:.1f}"


def known_job(ledger: Ledger, job: str) -> str:
    if job in ledger.jobs:
        return job
    known = sorted(ledger.jobs)
    if not known:
        raise UserInputError(f"unknown job {job!r}: no jobs are known here")
    listed = ", ".join(repr(j) for j in known[:JOBS_LISTED_MAX])
    more = len(known) - JOBS_LISTED_MAX
    suffix = f" and {more} more" if more > 0 else ""
    raise UserInputError(f"unknown job {job!r}; known jobs: {listed}{suffix}")
