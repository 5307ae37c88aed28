"""The status snapshot: one plain dict (JSON-ready) that `swarm status`, `--json` and `swarm run`'s
progress all read. Built by a pure function from the ledger and what the node knows of itself, so the
daemon and the CLI reading a stopped node's ledger produce the same thing.

Its shape is the TypedDicts of snapshot_rows.py (`Snapshot` and its rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from swarm.core import gossip
from swarm.core.ledger import Ledger, State
from swarm.core.policy import INFEASIBLE_LISTED_MAX, Infeasible
from swarm.core.snapshot_rows import (
    FailureRow,
    JobRow,
    LabelValues,
    NodeRow,
    ResourcesRow,
    RunningRow,
    Snapshot,
)
from swarm.core.spec import Resources

__all__ = [  # the rows are the snapshot's: its readers name them here
    "FailureRow",
    "JobRow",
    "LabelValues",
    "NodeRow",
    "ResourcesRow",
    "RunningRow",
    "Snapshot",
]

RATE_WINDOW_MS = 60_000
RUNNING_LISTED_MAX = 200
FAILURES_LISTED_MAX = 5  # the latest failed attempts the status view lists
REASON_CHARS_MAX = 300  # of the one reason shown for the records left out of the ledger


@dataclass(frozen=True, slots=True)
class LeftOut:
    """Records of the ledger file that the ledger shown leaves out: each kind counted, with the
    first one's reason (the rest are alike, and a million of them must not fill the snapshot)."""

    unreadable: int = 0
    unreadable_reason: str = ""
    refused: int = 0
    refused_reason: str = ""

    @staticmethod
    def of(unreadable: list[str], refused: list[str]) -> LeftOut:
        return LeftOut(
            len(unreadable),
            unreadable[0][:REASON_CHARS_MAX] if unreadable else "",
            len(refused),
            refused[0][:REASON_CHARS_MAX] if refused else "",
        )


def resources_dict(res: Resources) -> ResourcesRow:
    return {"cpus": res.cpus, "memory_bytes": res.memory_bytes, "gpus": res.gpus}


def job_row(ledger: Ledger, job: str, now_ms: int, stuck: int = 0) -> JobRow:
    """Counts per state, the finish rate over the last minute, and an ETA for what can still
    run (`stuck`: pending tasks that fit no live node). A finished job has neither."""
    counts: Mapping[State, int] = ledger.job_counts.get(job, {})
    pending, running = counts.get(State.PENDING, 0), counts.get(State.RUNNING, 0)
    remaining = pending + running - stuck
    rate = finish_rate(ledger, job, now_ms) if remaining > 0 else 0.0
    return {
        "job": job,
        "total": sum(counts.values()),
        "pending": pending,
        "running": running,
        "done": counts.get(State.DONE, 0),
        "failed": counts.get(State.FAILED, 0),
        "cancelled": counts.get(State.CANCELLED, 0),
        "rate_per_s": round(rate, 3),
        "eta_s": round(remaining / rate, 1) if rate > 0 else None,
    }


def finish_rate(ledger: Ledger, job: str, now_ms: int) -> float:
    """Tasks finished per second over the last minute (or since the first finish, if sooner).

    An observation of this node (from the order in which it saw tasks finish), not replicated
    state: two nodes may show slightly different rates and ETAs for the same job."""
    samples = ledger.finished_ms.get(job)
    if not samples:
        return 0.0
    oldest = min(samples)
    if oldest > now_ms - RATE_WINDOW_MS:  # all in the window (a busy job): no walk in Python
        return len(samples) * 1000 / max(now_ms - oldest, 1000)
    # Mostly in finishing order: count back from the newest and stop at the window's edge.
    recent, oldest = 0, now_ms
    for ended in reversed(samples):
        if ended <= now_ms - RATE_WINDOW_MS:
            break
        recent += 1
        oldest = min(oldest, ended)
    if not recent:
        return 0.0
    span_ms = max(now_ms - oldest, 1000)
    return recent * 1000 / span_ms


def build(
    ledger: Ledger,
    now_ms: int,
    nodes: list[NodeRow],
    jobs: list[str] | None = None,
    infeasible: Infeasible | None = None,
    left_out: LeftOut | None = None,
) -> Snapshot:
    names = jobs if jobs is not None else sorted(ledger.job_counts)
    running: list[RunningRow] = []
    for task_id in sorted(ledger.running)[:RUNNING_LISTED_MAX]:
        view = ledger.tasks[task_id]
        if jobs is not None and view.job not in jobs:
            continue
        claim = view.active_claim()
        if claim is None:
            continue
        running.append(
            {
                "task_id": task_id,
                "job": view.job,
                "name": view.name,
                "node": claim[1],
                "epoch": claim[0],
                "started_ms": view.claims[claim].stamp >> 16,
            }
        )
    stuck = infeasible.counts if infeasible is not None else {}
    return {
        "generated_ms": now_ms,
        "nodes": nodes,
        "jobs": [
            job_row(ledger, job, now_ms, stuck.get(job, 0))
            for job in names
            if job in ledger.job_counts
        ],
        "running": running,
        "infeasible": infeasible.listed[:INFEASIBLE_LISTED_MAX] if infeasible else [],
        "infeasible_count": sum(stuck.values()),
        "unreadable_records": left_out.unreadable if left_out else 0,
        "unreadable_reason": left_out.unreadable_reason if left_out else "",
        "refused_tasks": left_out.refused if left_out else 0,
        "refused_reason": left_out.refused_reason if left_out else "",
        "failures": failure_rows(ledger, jobs),
    }


def failure_rows(ledger: Ledger, jobs: list[str] | None) -> list[FailureRow]:
    """The latest failed attempts of these jobs (all if None), newest first, one per task; their
    stderr's last line is left for whoever holds the blobs to fill in (`stderr_tail`)."""
    rows: list[FailureRow] = []
    listed: set[str] = set()
    for task_id, slot in reversed(ledger.failures):
        view = ledger.tasks.get(task_id)
        attempt = None if view is None else view.attempts.get(slot)
        if view is None or attempt is None or (jobs is not None and view.job not in jobs):
            continue
        if task_id in listed:
            continue  # a task that failed again: its latest failure is listed
        listed.add(task_id)
        r = attempt.result
        rows.append(
            {
                "task_id": task_id,
                "job": view.job,
                "name": view.name,
                "node": attempt.version.origin,
                "outcome": str(r.outcome),
                "exit_code": r.exit_code,
                "reason": r.reason,
                "ended_ms": r.ended_ms,
                "digest": r.digest,
                "stderr_tail": "",
            }
        )
        if len(rows) == FAILURES_LISTED_MAX:
            break
    return rows


def member_rows(
    ledger: Ledger, members: Iterable[gossip.Member], me: NodeRow, now: float
) -> list[NodeRow]:
    """`swarm members`: a row per member, this node's own (`me`) with its address; what the
    others run is as the ledger has it (their own figures are not sent around)."""
    held: dict[str, tuple[int, Resources]] = {}
    for task in ledger.running:
        view = ledger.tasks[task]
        claim = view.active_claim()
        if claim is None or view.spec is None:
            continue
        count, used = held.get(claim[1], (0, Resources(0.0, 0)))
        held[claim[1]] = (count + 1, used + view.spec.need)
    out: list[NodeRow] = []
    for m in members:
        if m.node == me["id"]:
            out.append({**me, "address": f"{m.addr[0]}:{m.addr[1]}", "incarnation": m.incarnation})
            continue
        running, used = held.get(m.node, (0, Resources(0.0, 0)))
        out.append(
            {
                "id": m.node,
                "state": str(m.state),
                "address": f"{m.addr[0]}:{m.addr[1]}",
                "incarnation": m.incarnation,
                "labels": m.meta.get("labels", {}),
                "draining": bool(m.meta.get("draining", False)),
                "capacity": m.meta.get("capacity", {}),
                "used": resources_dict(used),
                "running": running,
                "last_change_s": round(now - m.changed_at, 1),
            }
        )
    return sorted(out, key=lambda member: str(member["id"]))
