"""What a control request that changes the ledger writes: the records of a submission, a
cancel, a retry and a drain, decided on the node's ledger, or a UserError saying why not.

Pure: the node's adapter commits the records these return (and answers the client with what
they say), so the same decisions hold wherever the request came from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from swarm.core.ledger import (
    TERMINAL_STATES,
    CancelRecord,
    DrainRecord,
    Ledger,
    Outcome,
    RetryRecord,
    State,
    TaskRecord,
    TaskView,
)
from swarm.core.spec import TaskSpec
from swarm.errors import UserError

TASK_PREFIX_MIN = 6  # characters of a task id that name one task in a cancel


@dataclass(frozen=True, slots=True)
class CheckedTask:
    """A submitted task whose id was checked against its content (a client cannot mislabel one)."""

    task_id: str
    name: str
    spec: TaskSpec
    line: int | None  # in the client's file, for messages


def submission(
    ledger: Ledger, job: str, tasks: Iterable[CheckedTask], stamp: int
) -> list[TaskRecord]:
    """The TASK records of a submission: those the ledger lacks, or none at all if a name in it
    is already used in the job by a different task."""
    names = {v.name: v.task_id for v in ledger.job_tasks(job)}
    records: list[TaskRecord] = []
    for task in tasks:
        if task.task_id in ledger.tasks and ledger.tasks[task.task_id].spec:
            continue
        holder = names.get(task.name)
        if holder is not None and holder != task.task_id:
            raise UserError(
                f"line {'?' if task.line is None else task.line}: name {task.name!r} is "
                f"already used in job {job!r} by a different task; nothing was added "
                "(another file under the same job name? give it its own with --job NAME)"
            )
        names[task.name] = task.task_id
        records.append(TaskRecord(task.task_id, job, task.name, task.spec, stamp))
    return records


def cancellation(
    ledger: Ledger, target: str, stamp: int
) -> tuple[Literal["job", "task"], str, CancelRecord]:
    """Cancel a job, or the one task whose id starts with `target`: which, its name, the record."""
    if target in ledger.jobs:
        return "job", target, CancelRecord(target, None, stamp)
    matches = [t for t in ledger.tasks if t.startswith(target)]
    if len(target) < TASK_PREFIX_MIN or len(matches) != 1:
        raise UserError(
            f"{target!r} is neither a job nor a unique task id prefix ({TASK_PREFIX_MIN}+ "
            f"characters); jobs: {', '.join(sorted(ledger.jobs)[:10]) or 'none'}"
        )
    view = ledger.tasks[matches[0]]
    if view.state in TERMINAL_STATES:
        raise UserError(
            f"task {view.job}/{view.name} ({view.task_id[:12]}) has ended ({view.state}): "
            "there is nothing to cancel"
        )
    return "task", view.task_id, CancelRecord(view.job, view.task_id, stamp)


def find_task(ledger: Ledger, target: str) -> TaskView:
    """The task `target` names: JOB/NAME, or a unique prefix of its id (6+ characters).
    UserError saying what it could be, if none or several."""
    job, sep, name = target.partition("/")
    if sep and job in ledger.jobs:
        named = [v for v in ledger.job_tasks(job) if v.name == name]
        if len(named) == 1:
            return named[0]
        if not named:
            raise UserError(f"job {job!r} has no task named {name!r}")
    matches = [t for t in ledger.tasks if t.startswith(target)] if len(target) >= 6 else []
    if len(matches) == 1:
        return ledger.tasks[matches[0]]
    if len(matches) > 1:
        raise UserError(f"{target!r} is the start of {len(matches)} task ids: give more of it")
    raise UserError(
        f"no task {target!r}: name one as JOB/NAME, or by a prefix of its id ({TASK_PREFIX_MIN}+ "
        "characters; see swarm export)"
    )


def retries(ledger: Ledger, job: str) -> list[RetryRecord]:
    """A RETRY record for each failed task of the job (its counts so far are forgiven)."""
    if job not in ledger.jobs:
        raise UserError(f"no job {job!r}")
    return reruns(ledger, (v.task_id for v in ledger.job_tasks(job)))


def reruns(ledger: Ledger, task_ids: Iterable[str], revive_at: int = 0) -> list[RetryRecord]:
    """A RETRY record for each of these tasks that failed (its counts so far are forgiven) and,
    given a stamp to `revive_at`, for each that was cancelled (its cancels are lifted)."""
    records = []
    for task in task_ids:
        v = ledger.tasks.get(task)
        if v is None or v.state not in (State.FAILED, State.CANCELLED):
            continue
        if v.state is State.CANCELLED and not revive_at:
            continue
        failures = v.count(Outcome.FAILED, Outcome.TIMEOUT)
        revived = revive_at if v.state is State.CANCELLED else 0
        records.append(RetryRecord(task, failures, v.interruptions(), v.evictions(), revived))
    return records


def drain_target(prefix: str | None, me: str, live: Iterable[str]) -> str:
    """The node a drain is for: this one, or the live member whose id starts with `prefix`."""
    target = prefix or me
    matches = sorted(n for n in {*live, me} if n.startswith(target))
    if len(matches) != 1:
        what = "no live member" if not matches else f"{len(matches)} members"
        raise UserError(f"{what} with an id starting {target!r} (see swarm members)")
    return matches[0]


def drain_record(node: str, stamp: int, grace_s: float | None) -> DrainRecord:
    return DrainRecord(node, stamp, grace_s)
