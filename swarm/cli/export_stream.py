"""`swarm export` of this machine's ledger file, streamed: a row is written as its task is read.

Theory of operation
-------------------
A task's row needs every record that names it, and its TASK record holds the spec, which is
most of the bytes. So the file is read twice, never whole: first every record but the TASK
records (claims, results, copies, cancels: few while most tasks wait, and small) is folded
into a ledger; then the TASK records come in export order (by job name, each job's in stored
order; SQLite sorts them in its own temporary store) a page at a time, and each is joined to
what the ledger holds of its task (`Ledger.take_task`), which the task's row is written from
and then let go. Memory holds the non-TASK records and one page, not a million specs.

The rows are those `export.write` makes of the whole ledger, in the same order: a TASK record
that does not hash to its id is left out (and counted), and a task submitted by two nodes (a
TASK record from each) takes the record the ledger keeps (`Ledger._apply_task`); the few such
tasks are found by a query first and their records joined before the stream starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from swarm.cli import export
from swarm.core.ledger import Ledger, TaskRecord, TaskView, task_record_problem
from swarm.daemon import db
from swarm.errors import UserInputError


def write(
    path: Path,
    out: TextIO,
    *,
    what: str = "tasks",
    fmt: str = "csv",
    job: str | None = None,
    page_rows: int = db.READ_CHUNK_ROWS,
) -> tuple[int, db.Loaded]:
    """Write the table `what` ("tasks" or "attempts") of the ledger file at `path` as
    export.write would of the loaded ledger; return the rows written and what of the file
    was left out (only known at the end). UserInputError for an unknown `job`."""
    check_job(path, job)
    left_out = db.Loaded(Ledger(), [], [], set())
    views = _views(path, job, left_out, page_rows)
    columns = export.ATTEMPT_COLUMNS if what == "attempts" else export.TASK_COLUMNS
    rows = export.rows_of_views(views, left_out.ledger.result_holders, what == "attempts")
    return export.write_rows(columns, rows, out, fmt), left_out


def check_job(path: Path, job: str | None) -> None:
    """UserInputError, naming the known jobs, if `job` is given and no TASK record names it."""
    if job is not None and not db.has_job(path, job):
        known = db.job_names(path)
        raise UserInputError(f"no job {job!r}; jobs: {', '.join(known) or 'none'}")


def _views(path: Path, job: str | None, left_out: db.Loaded, page_rows: int) -> Iterator[TaskView]:
    """The views of the tasks with a TASK record, in export order, each once."""
    ledger = left_out.ledger
    db.add_rows(left_out, db.rows_but_tasks(path, left_out.unreadable))
    twice = db.tasks_stored_twice(path)
    if twice:  # joined now: the record the ledger keeps may come after the task's first
        db.add_rows(left_out, db.task_rows_of(path, twice, left_out.unreadable))
    written: set[str] = set()  # of the tasks stored twice, those written
    for row in db.task_rows(path, job, left_out.unreadable, page_rows):
        body = row.body
        if not isinstance(body, TaskRecord):  # a hand edit gave it TASK's kind: as loading does
            ledger.apply(row.version, body)
            continue
        if body.task_id in twice:  # joined already (and checked): written at its first
            if row.version in left_out.refused_versions or body.task_id in written:
                continue
            written.add(body.task_id)
            yield ledger.tasks[body.task_id]
            continue
        problem = task_record_problem(body)
        if problem is not None:
            left_out.refused.append(f"{row.version}: {problem}")
            left_out.refused_versions.add(row.version)
            continue
        yield ledger.take_task(row.version, body)
