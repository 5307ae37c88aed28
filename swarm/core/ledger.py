"""The replicated ledger: records, their merge, and the task states derived from them.

Theory of operation
-------------------
Every record is written by exactly one node (its origin) and carries a `Version(origin, generation,
seq)`; a node's seq grows by one per record it writes within one generation of its state dir. The
ledger is the union of all records seen; each record kind is folded into a per-task aggregate that is
a join-semilattice (sets keyed by (epoch, node), OR of flags, max of counters, min of stamps), so
applying records in any order, any number of times, gives the same aggregates. A task's state is a
pure function of its aggregate (`derive_state`), hence every replica that saw the same records derives
the same states.

Invariants:
- applying a record twice changes nothing (idempotent); order does not matter (commutative);
- a task is `done` as soon as any attempt ended `ok`, whatever else arrives later;
- the running claim of a task is the winner among its claims (highest epoch, then a claim of the
  task's preferred node before a stolen one, then earliest claim stamp, then lowest node id) that
  has been neither released nor answered by a result.

What a record is (its kinds, bodies and plain encoding, and the check that a TASK record hashes to
its id) lives in `ledger_records.py`; its names are re-exported here, where most readers look.

Pure: no I/O, no clock reads. Time arrives as HLC stamps inside records.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from swarm.core.ledger_records import (
    KIND_OF,
    Body,
    CancelRecord,
    ClaimRecord,
    DrainRecord,
    HeartbeatRecord,
    Kind,
    LostRecord,
    Outcome,
    ReplicaRecord,
    ResultRecord,
    RetryRecord,
    TaskRecord,
    Version,
    body_from_plain,
    body_to_plain,
    result_to_plain,
    stamp_of,
    task_record_problem,
)
from swarm.core.spec import LabelValue, Resources, TaskSpec

# The record names are re-exported: most code reads records and their views from one place.
__all__ = [
    "EVICTION_CAP",
    "FAILURES_KEPT_MAX",
    "FINISH_SAMPLES_MAX",
    "INTERRUPTION_CAP",
    "KIND_OF",
    "RUN_TIME_BUCKETS_S",
    "TERMINAL_STATES",
    "Attempt",
    "AttemptStats",
    "Body",
    "CancelRecord",
    "ClaimInfo",
    "ClaimRecord",
    "DrainRecord",
    "HeartbeatRecord",
    "Kind",
    "Ledger",
    "LostRecord",
    "Outcome",
    "ReplicaRecord",
    "ResultRecord",
    "RetryRecord",
    "Shape",
    "State",
    "StateChanged",
    "TaskRecord",
    "TaskView",
    "Version",
    "body_from_plain",
    "body_to_plain",
    "derive_state",
    "result_to_plain",
    "stamp_of",
    "task_record_problem",
]

# How many interrupted attempts (node died, lease lost, drained) a task may have before it is
# failed: interruptions do not use up `retries`, but a task that kills its node must not loop forever.
INTERRUPTION_CAP = 5
# How many evictions under memory pressure (--overcommit) a task may have before it is failed: a
# task that needs more memory than any node has left would otherwise be stopped and re-run forever.
EVICTION_CAP = 5
FINISH_SAMPLES_MAX = 4096  # per job: recent finish times kept for rates and ETAs
FAILURES_KEPT_MAX = 256  # failed attempts kept, newest, for the status view

# What a task needs and the labels it requires: tasks of one shape fit the same nodes.
Shape = tuple[Resources, tuple[tuple[str, LabelValue], ...]]


class State(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({State.DONE, State.FAILED, State.CANCELLED})


@dataclass(slots=True)
class ClaimInfo:
    stamp: int
    released: bool
    stolen: bool = False


@dataclass(slots=True)
class Attempt:
    """One RESULT with the version that wrote it (needed to join two results of one claim)."""

    version: Version
    result: ResultRecord


_NO_CLAIMS: Mapping[tuple[int, str], ClaimInfo] = MappingProxyType({})
_NO_ATTEMPTS: Mapping[tuple[int, str], Attempt] = MappingProxyType({})


@dataclass(slots=True)
class TaskView:
    """Everything known about one task: the join of all records that name it."""

    task_id: str
    job: str = ""
    name: str = ""
    spec: TaskSpec | None = None  # None until the TASK record arrives (others may come first)
    submitted: tuple[int, str] = (0, "")  # (stamp, origin) of the TASK record kept
    # Shared empty maps until a first claim or result: most of a million tasks wait unclaimed,
    # and two empty dicts each would cost 128 bytes a task. Only the ledger writes them.
    claims: Mapping[tuple[int, str], ClaimInfo] = field(default_factory=lambda: _NO_CLAIMS)
    attempts: Mapping[tuple[int, str], Attempt] = field(default_factory=lambda: _NO_ATTEMPTS)
    forgiven_failures: int = 0
    forgiven_interruptions: int = 0
    forgiven_evictions: int = 0
    # A cancel of this task (the latest one's stamp), and a revival of it (the latest RETRY
    # that revives it): the later of the two says whether it is cancelled. A script run again
    # revives the calls a cancel stopped; a cancel after that cancels them again.
    cancelled_at: int = -1
    revived_at: int = -1
    lost: frozenset[tuple[int, str]] = frozenset()  # attempts whose result is gone
    state: State | None = None  # cached derive_state(); None while the spec is unknown

    def next_epoch(self) -> int:
        if not self.claims:
            return 1
        highest = max(epoch for epoch, _ in self.claims)
        return highest + 1

    def claim_order(self, key: tuple[int, str]) -> tuple[int, bool, int, str]:
        """Where the claim (epoch, node) stands among the task's claims, best first: highest
        epoch, then the preferred node's before a stolen one, then the earliest stamp, then
        the lowest node id. A result without a claim (not yet arrived) comes last of its
        epoch."""
        epoch, node = key
        info = self.claims.get(key)
        if info is None:
            return (-epoch, True, 2**63, node)
        return (-epoch, info.stolen, info.stamp, node)

    def winning_claim(self) -> tuple[int, str] | None:
        if not self.claims:
            return None
        return min(self.claims, key=self.claim_order)

    def active_claim(self) -> tuple[int, str] | None:
        key = self.winning_claim()
        if key is None or self.claims[key].released or key in self.attempts:
            return None
        return key

    def ordered_attempts(self) -> list[Attempt]:
        return sorted(self.attempts.values(), key=lambda a: (a.result.epoch, a.result.started_ms))

    def ok_attempt(self) -> Attempt | None:
        """The attempt whose result is the task's: of the successful ones, the one of the highest
        epoch (the fencing token: a node frozen past its lease may still finish the attempt it
        lost, and that result must not win over its successor's), then the epoch's winning
        claim."""
        oks = [
            a
            for a in self.attempts.values()
            if a.result.outcome is Outcome.OK
            and (a.result.epoch, a.version.origin) not in self.lost
        ]
        if not oks:
            return None

        return min(oks, key=lambda a: self.claim_order((a.result.epoch, a.version.origin)))

    def outcome_attempt(self) -> Attempt | None:
        """The attempt that says how the task ended: its credited one, else its latest with a
        result (blobs, or a call's outcome in its record), else its latest (None if it never
        ran)."""
        ordered = self.ordered_attempts()
        return (
            self.ok_attempt()
            or next((a for a in reversed(ordered) if a.result.digest or a.result.value), None)
            or (ordered[-1] if ordered else None)
        )

    def count(self, *outcomes: Outcome) -> int:
        return sum(1 for a in self.attempts.values() if a.result.outcome in outcomes)

    def _claim_winners(self) -> dict[int, str]:
        """epoch -> the node whose claim wins it."""
        winners: dict[int, str] = {}
        for key in self.claims:
            epoch, node = key
            best = winners.get(epoch)
            if best is None or self.claim_order(key) < self.claim_order((epoch, best)):
                winners[epoch] = node
        return winners

    def _won(self, winners: dict[int, str], epoch: int, node: str) -> bool:
        return epoch not in winners or winners[epoch] == node

    def interruptions(self) -> int:
        """Interrupted attempts that held their epoch's winning claim, and winning claims taken
        over under a higher epoch with no result (their node died, froze or was cut off, and
        never came back to say so). An attempt that lost a claim race was never the task's
        attempt: it does not count towards the cap. Evictions have a cap of their own."""
        winners = self._claim_winners()
        count = 0
        for (epoch, node), attempt in self.attempts.items():
            result = attempt.result
            if result.outcome is Outcome.INTERRUPTED and not result.evicted:
                count += self._won(winners, epoch, node)
        top = max(winners, default=0)
        for epoch, node in winners.items():
            if epoch < top and (epoch, node) not in self.attempts:
                count += not self.claims[(epoch, node)].released  # a lost lease
        return count

    def evictions(self) -> int:
        """Attempts their node stopped to free memory (while they held the winning claim)."""
        winners = self._claim_winners()
        return sum(
            self._won(winners, epoch, node)
            for (epoch, node), attempt in self.attempts.items()
            if attempt.result.evicted
        )


def _own_claims(view: TaskView) -> dict[tuple[int, str], ClaimInfo]:
    """The view's claims, as a dict of its own to add to (not the shared empty map)."""
    if not isinstance(view.claims, dict):
        view.claims = {}
    return view.claims


def _own_attempts(view: TaskView) -> dict[tuple[int, str], Attempt]:
    if not isinstance(view.attempts, dict):
        view.attempts = {}
    return view.attempts


def derive_state(view: TaskView, job_cancelled: bool) -> State | None:
    """The task's state as a pure function of its records."""
    if view.spec is None:
        return None
    if not view.claims and not view.attempts:
        # Never claimed (a million waiting tasks): nothing ran, failed or was interrupted, and
        # forgiven counts only lower those, so the rules below come down to this.
        cancelled = view.cancelled_at > view.revived_at or job_cancelled
        return State.CANCELLED if cancelled else State.PENDING
    if view.ok_attempt() is not None:
        return State.DONE
    # A cancel stops what is still to run; a task that already failed stays failed (and can be
    # retried), as a done one stays done.
    failures = view.count(Outcome.FAILED, Outcome.TIMEOUT) - view.forgiven_failures
    interruptions = view.interruptions() - view.forgiven_interruptions
    evictions = view.evictions() - view.forgiven_evictions
    exhausted = (
        failures > view.spec.retries or interruptions > INTERRUPTION_CAP or evictions > EVICTION_CAP
    )
    if exhausted and view.active_claim() is None:
        return State.FAILED
    if view.cancelled_at > view.revived_at or job_cancelled:
        return State.CANCELLED
    if view.active_claim() is not None:
        return State.RUNNING
    return State.FAILED if exhausted else State.PENDING


# Run time buckets (seconds) of the attempts that ended ok: from a spawn's cost to a day.
RUN_TIME_BUCKETS_S = (0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0)


@dataclass(slots=True)
class AttemptStats:
    """Counts over every attempt the ledger holds, kept as they arrive (O(1) each), so that a
    metrics scrape reads them instead of walking a million tasks."""

    outcomes: Counter[Outcome] = field(default_factory=Counter)
    evictions: int = 0
    duplicates: int = 0  # attempts that ended ok for a task that had one already
    run_counts: list[int] = field(default_factory=lambda: [0] * (len(RUN_TIME_BUCKETS_S) + 1))
    run_sum_s: float = 0.0

    def count(self, result: ResultRecord, view: TaskView) -> None:
        """A new attempt's result, before it joins the task's `view`."""
        self.outcomes[result.outcome] += 1
        self.evictions += result.evicted
        if result.outcome is Outcome.OK:
            if any(a.result.outcome is Outcome.OK for a in view.attempts.values()):
                self.duplicates += 1
            bucket = next(
                (i for i, b in enumerate(RUN_TIME_BUCKETS_S) if result.wall_s <= b),
                len(RUN_TIME_BUCKETS_S),
            )
            self.run_counts[bucket] += 1
            self.run_sum_s += result.wall_s


@dataclass(frozen=True, slots=True)
class StateChanged:
    """A task's derived state moved (None = not yet known) as a record was applied."""

    task_id: str
    old: State | None
    new: State | None


class Ledger:
    """All records seen, folded into per-task views, with per-job state counts kept current."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskView] = {}
        self.jobs: dict[str, list[str]] = {}  # job -> task ids, in the order first seen
        self.job_counts: dict[str, Counter[State]] = {}
        self.cancelled_jobs: dict[str, int] = {}  # job -> stamp of its latest cancel
        self.heartbeats: dict[str, int] = {}
        self.holders: dict[str, set[str]] = {}  # blob digest -> nodes holding it
        # blob digest -> node -> the (round, dropped) of its replica records that says
        # (ReplicaRecord), for the few pairs where that is not (0, False): a copy was dropped.
        self.replica_rounds: dict[str, dict[str, tuple[int, bool]]] = {}
        self.high_seq: dict[tuple[str, int], int] = {}  # (origin, generation) -> highest seq seen
        self.running: set[str] = set()  # ids of tasks whose state is running
        # shape -> job -> its pending tasks of that shape, kept as states change: what fits
        # no node is counted from these, never by walking a million pending tasks.
        self.pending_shapes: dict[Shape, Counter[str]] = {}
        self._names: dict[str, str] = {}  # each job and origin name, shared (_shared)
        self._last_submitted: tuple[int, str] = (-1, "")  # shared by the next (_submitted)
        self.finished_ms: dict[str, deque[int]] = {}  # job -> end times of recently finished tasks
        # The latest failed or timed-out attempts (task id, the attempt's key), newest last:
        # what `swarm status` lists under its latest failures.
        self.failures: deque[tuple[str, tuple[int, str]]] = deque(maxlen=FAILURES_KEPT_MAX)
        self.stats = AttemptStats()  # counted as results arrive: what the metrics show
        self.records_applied = 0
        self.drains: dict[str, int] = {}  # node -> stamp of the latest drain asked of it
        # origin -> highest HLC stamp of its records: a restarted node's clock starts above its
        # own, and takes in the others' as it does any peer's (clock.py bounds how far ahead).
        self.max_stamps: dict[str, int] = {}

    # -- applying records --------------------------------------------------------------------

    def load(self, records: Iterable[tuple[Version, Body]]) -> None:
        """apply() each record, with no list of what changed: a ledger read back at a start,
        from whose states (not changes) the node starts. A TASK record of a task not yet
        heard of, each of a million pending tasks, is added with no call to apply()."""
        for version, body in records:
            if isinstance(body, TaskRecord) and body.task_id not in self.tasks:
                self._seen(version, body.stamp)
                self._add_task(version, body)
            else:
                self.apply(version, body)

    def apply(self, version: Version, body: Body) -> list[StateChanged]:
        """Fold one record in. Returns the tasks whose derived state changed."""
        if isinstance(body, TaskRecord):  # most records by far: before the match below
            self._seen(version, body.stamp)
            if body.task_id not in self.tasks:
                return [StateChanged(body.task_id, None, self._add_task(version, body))]
            return self._apply_task(version, body)
        self._seen(version, stamp_of(body))
        match body:
            case ClaimRecord():
                view = self._view(body.task_id)
                info = view.claims.get((body.epoch, version.origin))
                if info is None:
                    _own_claims(view)[(body.epoch, version.origin)] = ClaimInfo(
                        body.stamp, body.released, body.stolen
                    )
                else:
                    info.stamp = min(info.stamp, body.stamp)
                    info.released = info.released or body.released
                    info.stolen = info.stolen or body.stolen
                return self._refresh(view)
            case ResultRecord():
                view = self._view(body.task_id)
                slot = (body.epoch, version.origin)
                held = view.attempts.get(slot)
                if held is None or held.version < version:
                    if held is None:
                        self.stats.count(body, view)  # before it joins: a duplicate is told
                        if body.outcome in (Outcome.FAILED, Outcome.TIMEOUT):
                            self.failures.append((body.task_id, slot))
                    _own_attempts(view)[slot] = Attempt(version, body)
                return self._refresh(view)
            case HeartbeatRecord():
                if body.counter > self.heartbeats.get(version.origin, -1):
                    self.heartbeats[version.origin] = body.counter
                return []
            case ReplicaRecord():
                self._apply_replica(version, body)
                return []
            case CancelRecord():
                return self._apply_cancel(body)
            case DrainRecord():
                self.drains[body.node] = max(self.drains.get(body.node, 0), body.stamp)
                return []
            case LostRecord():
                view = self._view(body.task_id)
                view.lost = view.lost | {(body.epoch, body.node)}
                return self._refresh(view)
            case RetryRecord():
                view = self._view(body.task_id)
                view.forgiven_failures = max(view.forgiven_failures, body.failures)
                view.forgiven_interruptions = max(view.forgiven_interruptions, body.interruptions)
                view.forgiven_evictions = max(view.forgiven_evictions, body.evictions)
                view.revived_at = max(view.revived_at, body.revived)
                return self._refresh(view)
        raise AssertionError(f"unknown record body {body!r}")

    def _apply_replica(self, version: Version, body: ReplicaRecord) -> None:
        """A node holds a digest by the replica record of its highest (round, dropped): the
        same whatever order its records arrive in."""
        node, digest, key = version.origin, body.digest, body.key()
        rounds = self.replica_rounds.get(digest)
        now = self._replica_key(digest, node)
        if now is not None and key <= now:
            return
        if key == (0, False):  # a first hold, as nearly all are: the holders set says it
            self.holders.setdefault(digest, set()).add(node)
            return
        if rounds is None:
            rounds = self.replica_rounds[digest] = {}
        rounds[node] = key
        if body.dropped:
            held = self.holders.get(digest)
            if held is not None:
                held.discard(node)
                if not held:
                    del self.holders[digest]
        else:
            self.holders.setdefault(digest, set()).add(node)

    def _replica_key(self, digest: str, node: str) -> tuple[int, bool] | None:
        """The (round, dropped) that says whether `node` holds `digest`; None: no record yet."""
        key = self.replica_rounds.get(digest, {}).get(node)
        if key is None and node in self.holders.get(digest, ()):
            return (0, False)
        return key

    def replica_record(self, digest: str, node: str, dropped: bool = False) -> ReplicaRecord:
        """The replica record `node` writes to say it holds `digest` (or, `dropped`, that it no
        longer does), of the round that makes it count over its records so far."""
        key = self._replica_key(digest, node)
        if key is None:
            return ReplicaRecord(digest, dropped)
        round_, was_dropped = key
        return ReplicaRecord(digest, dropped, round_ + 1 if was_dropped else round_)

    def result_holders(self, attempt: Attempt) -> set[str]:
        """The nodes that hold an attempt's result: those that said so with a REPLICA, and the
        node that ran it unless it dropped the digest (its copy found damaged) and has not
        held it again since."""
        digest = attempt.result.digest
        if digest is None:
            return set()
        holders = set(self.holders.get(digest, ()))
        origin = attempt.version.origin
        key = self.replica_rounds.get(digest, {}).get(origin)
        if key is None or not key[1]:
            holders.add(origin)
        return holders

    def _seen(self, version: Version, stamp: int | None) -> None:
        """A record is applied: its origin's highest seq and HLC stamp so far."""
        self.records_applied += 1
        key = (version.origin, version.generation)
        if version.seq > self.high_seq.get(key, 0):
            self.high_seq[key] = version.seq
        if stamp is not None and stamp > self.max_stamps.get(version.origin, -1):
            self.max_stamps[version.origin] = stamp

    def _apply_task(self, version: Version, body: TaskRecord) -> list[StateChanged]:
        view = self.tasks[body.task_id]
        submitted = (body.stamp, version.origin)
        if view.spec is None or submitted < view.submitted:
            job = self._shared(body.job)
            if view.spec is None:
                self._add_to_job(job, body.task_id)
            view.job, view.name, view.spec = job, body.name, body.spec
            view.submitted = self._submitted(body.stamp, version.origin)
        return self._refresh(view)

    def _add_task(self, version: Version, body: TaskRecord) -> State:
        """A task first heard of by its TASK record (each of a million, as a ledger loads): made
        whole at once; its state. With no claim, result or cancel of its own yet, derive_state
        comes down to whether a cancel of its job reaches it."""
        job = self._shared(body.job)
        view = TaskView(body.task_id, job, body.name, body.spec)
        view.submitted = self._submitted(body.stamp, version.origin)
        self.tasks[body.task_id] = view
        self._add_to_job(job, body.task_id)
        new = State.CANCELLED if self._job_cancelled(view) else State.PENDING
        view.state = new
        counts = self.job_counts.get(job)
        if counts is None:
            counts = self.job_counts[job] = Counter()
        counts[new] += 1
        if new is State.PENDING:
            self._count_pending(view, 1)
        return new

    def _add_to_job(self, job: str, task_id: str) -> None:
        tasks = self.jobs.get(job)
        if tasks is None:  # (not setdefault: it would make a list for every task)
            tasks = self.jobs[job] = []
        tasks.append(task_id)

    def _submitted(self, stamp: int, origin: str) -> tuple[int, str]:
        """A view's (stamp, origin) of submission: the one of the task before it when equal,
        as it is for every task of a submission (a million share one pair, not a million)."""
        last = self._last_submitted
        if last[0] == stamp and last[1] == origin:
            return last
        self._last_submitted = last = (stamp, self._shared(origin))
        return last

    def _shared(self, text: str) -> str:
        """One string object for each job and node name, not one per task record that names
        it (a decoded record brings copies of its own)."""
        return self._names.setdefault(text, text)

    def _apply_cancel(self, body: CancelRecord) -> list[StateChanged]:
        if body.task_id is not None:
            view = self._view(body.task_id)
            view.cancelled_at = max(view.cancelled_at, body.stamp)
            return self._refresh(view)
        if body.stamp <= self.cancelled_jobs.get(body.job, -1):
            return []
        self.cancelled_jobs[body.job] = body.stamp
        changes: list[StateChanged] = []
        for task_id in self.jobs.get(body.job, []):
            changes.extend(self._refresh(self.tasks[task_id]))
        return changes

    def _view(self, task_id: str) -> TaskView:
        view = self.tasks.get(task_id)
        if view is None:
            view = self.tasks[task_id] = TaskView(task_id)
        return view

    def _job_cancelled(self, view: TaskView) -> bool:
        """Whether a cancel of the task's job reaches it (one after it was submitted, and not
        lifted by a revival of it since)."""
        job_cancel = self.cancelled_jobs.get(view.job, -1)
        return view.submitted[0] <= job_cancel and job_cancel > view.revived_at

    def take_task(self, version: Version, body: TaskRecord) -> TaskView:
        """The task's view with this TASK record joined to what the ledger holds of it, taken
        out of the ledger: a table read one task at a time (a streamed export) holds the task
        at hand, not a million. The ledger's counts are not kept by it."""
        view = self.tasks.pop(body.task_id, None) or TaskView(body.task_id)
        submitted = (body.stamp, version.origin)
        if view.spec is None or submitted < view.submitted:
            view.job, view.name, view.spec, view.submitted = (
                body.job,
                body.name,
                body.spec,
                submitted,
            )
        view.state = derive_state(view, self._job_cancelled(view))
        return view

    def _refresh(self, view: TaskView) -> list[StateChanged]:
        old = view.state
        new = derive_state(view, self._job_cancelled(view))
        if new == old:
            return []
        view.state = new
        counts = self.job_counts.get(view.job)
        if counts is None:  # (not setdefault: a Counter made for every record costs more)
            counts = self.job_counts[view.job] = Counter()
        if old is not None:
            counts[old] -= 1
        if new is not None:
            counts[new] += 1
        if old is State.PENDING or new is State.PENDING:
            self._count_pending(view, 1 if new is State.PENDING else -1)
        if new is State.RUNNING:
            self.running.add(view.task_id)
        else:
            self.running.discard(view.task_id)
        if new in (State.DONE, State.FAILED) and old not in TERMINAL_STATES and view.attempts:
            ended = max(a.result.ended_ms for a in view.attempts.values())
            samples = self.finished_ms.setdefault(view.job, deque(maxlen=FINISH_SAMPLES_MAX))
            samples.append(ended)
        return [StateChanged(view.task_id, old, new)]

    def _count_pending(self, view: TaskView, delta: int) -> None:
        assert view.spec is not None  # a task with a state has its spec
        shape = (view.spec.need, view.spec.requires)
        jobs = self.pending_shapes.get(shape)
        if jobs is None:
            jobs = self.pending_shapes[shape] = Counter()
        jobs[view.job] += delta
        if jobs[view.job] <= 0:
            del jobs[view.job]
            if not jobs:
                del self.pending_shapes[shape]

    # -- reading -----------------------------------------------------------------------------

    def job_tasks(self, job: str) -> list[TaskView]:
        return [self.tasks[t] for t in self.jobs.get(job, [])]

    def job_finished(self, job: str) -> bool:
        """True when the job exists and none of its tasks is pending or running."""
        counts = self.job_counts.get(job)
        if not counts or sum(counts.values()) == 0:
            return False
        return counts[State.PENDING] == 0 and counts[State.RUNNING] == 0

    def fingerprint(self) -> tuple[Any, ...]:
        """A canonical summary of everything derived, for comparing replicas in tests."""
        tasks = tuple(
            sorted(
                (
                    v.task_id,
                    v.name,
                    v.state,
                    tuple(sorted((k, c.stamp, c.released, c.stolen) for k, c in v.claims.items())),
                    tuple(sorted((k, a.version) for k, a in v.attempts.items())),
                    v.forgiven_failures,
                    v.forgiven_interruptions,
                    v.forgiven_evictions,
                    v.cancelled_at,
                    v.revived_at,
                    tuple(sorted(v.lost)),
                )
                for v in self.tasks.values()
            )
        )
        holders = tuple(sorted((d, tuple(sorted(h))) for d, h in self.holders.items()))
        rounds = tuple(
            sorted((d, tuple(sorted(n.items()))) for d, n in self.replica_rounds.items())
        )
        return (
            tasks,
            holders,
            rounds,
            tuple(sorted(self.heartbeats.items())),
            tuple(sorted(self.cancelled_jobs.items())),
            tuple(sorted(self.high_seq.items())),
            tuple(sorted(self.drains.items())),
        )
