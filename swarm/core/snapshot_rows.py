"""The status snapshot's shape: the TypedDicts (`Snapshot` and its rows) that `swarm status --json`
prints and both sides of the control protocol read, checked by mypy. Their keys are part of the
`--json` contract: add, never rename. Apart from snapshot.py, which builds them from a ledger, so
that a client reading a reply needs none of the ledger's code.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

# A node's label values, as `--label` and the built-in labels give them.
LabelValues = dict[str, str | int | float]


class ResourcesRow(TypedDict):
    cpus: float
    memory_bytes: int
    gpus: int


class NodeRow(TypedDict):
    """A node as the snapshot and `swarm members` show it. This node (or a stopped one read from
    its ledger file) has `pid` and `data_dir`; a peer has what gossip says of it instead."""

    id: str
    state: str  # alive, suspect, dead, left; "stopped" for a ledger read with no daemon
    labels: LabelValues
    capacity: ResourcesRow
    used: ResourcesRow
    running: int  # attempts running there
    pid: NotRequired[int | None]
    data_dir: NotRequired[str]
    started_ms: NotRequired[int]
    address: NotRequired[str]  # HOST:PORT, for a node that gossips
    incarnation: NotRequired[int]
    draining: NotRequired[bool]
    last_change_s: NotRequired[float]  # since its state last changed, as this node saw it
    not_claiming: NotRequired[str]  # the node's own row: why it claims no new task ("": it does)


class JobRow(TypedDict):
    job: str
    total: int
    pending: int
    running: int
    done: int
    failed: int
    cancelled: int
    rate_per_s: float  # tasks finished per second over the last minute
    eta_s: float | None  # None: finished, or nothing finishes yet


class RunningRow(TypedDict):
    task_id: str
    job: str
    name: str
    node: str
    epoch: int
    started_ms: int


class FailureRow(TypedDict):
    """A recent failed (or timed-out) attempt, for the status view."""

    task_id: str
    job: str
    name: str
    node: str
    outcome: str  # failed, or timeout
    exit_code: int | None
    reason: str
    ended_ms: int
    digest: str | None  # its result (stdout, stderr), if it left one
    stderr_tail: str  # the last line of its stderr, when its blob is held where this was made


class Snapshot(TypedDict):
    generated_ms: int
    nodes: list[NodeRow]
    jobs: list[JobRow]
    running: list[RunningRow]  # the first RUNNING_LISTED_MAX of them
    infeasible: list[str]  # task ids: the first INFEASIBLE_LISTED_MAX of them
    infeasible_count: int  # pending tasks that fit no live node
    unreadable_records: int  # ledger rows that did not decode: their tasks are not shown
    unreadable_reason: str  # why the first of them could not be read ("" if none)
    refused_tasks: int  # TASK records that do not hash to their id: not applied
    failures: NotRequired[list[FailureRow]]  # the latest failed attempts, newest first
    refused_reason: str  # the first of them, and why
