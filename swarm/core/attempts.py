"""This node's attempts as the core sees them: each holds a `Slot` from its claim until the
adapter closes it (recorded), and the resources it needs while its process may run.

A slot goes CLAIMING (its claim being written) -> SETTLING (a stolen claim on disk, waiting out
the settle) -> RUNNING -> ENDED (the process gone, the result being recorded), or to RELEASING (a
claim given up, or a task closed unrun) from the first two. A task's first attempt goes straight
to RUNNING, its claim written while it starts. Also here: the records that close an attempt with
no process outcome (cut off by a stop, failed inside swarm, or never run), and the choice of what
a restart closes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from swarm.core.clock import wall_ms_of
from swarm.core.ledger import ClaimRecord, Ledger, Outcome, ResultRecord
from swarm.core.pressure import Running
from swarm.core.spec import Resources


class Phase(enum.Enum):
    CLAIMING = "claiming"  # its claim is being written; nothing runs yet
    SETTLING = "settling"  # a stolen claim on disk, waiting out the settle
    RUNNING = "running"  # the process runs (its claim on disk, or being written)
    ENDED = "ended"  # the process is gone; its result is being recorded
    RELEASING = "releasing"  # a claim we do not follow, or a task closed unrun: being written


@dataclass(slots=True)
class Slot:
    """One attempt of this node, from its claim until the adapter closes it."""

    claim: ClaimRecord
    attempt: int  # its number among the task's attempts, 1 for the first
    need: Resources
    gpu_ids: tuple[int, ...]
    phase: Phase
    started_at: float  # monotonic: when it was claimed, then when it started
    settle_at: float | None = None
    claim_on_disk: bool = False
    holds_resources: bool = True
    rss_bytes: int | None = None  # last measured


class Slots:
    """The slots by task, and the resources (CPUs, memory, GPU ids) they hold."""

    def __init__(self, capacity: Resources) -> None:
        self._by_task: dict[str, Slot] = {}
        self.used = Resources(0.0, 0, 0)
        self._free_gpus = list(range(capacity.gpus))
        self._last_start = -1e18

    def __contains__(self, task: object) -> bool:
        return task in self._by_task

    def __len__(self) -> int:
        return len(self._by_task)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_task)

    def get(self, task: str) -> Slot | None:
        return self._by_task.get(task)

    def items(self) -> list[tuple[str, Slot]]:
        return list(self._by_task.items())

    def settle_times(self) -> Iterator[float]:
        return (s.settle_at for s in self._by_task.values() if s.settle_at is not None)

    def take(
        self, task: str, claim: ClaimRecord, attempt: int, need: Resources, now: float
    ) -> Slot:
        """A slot for a claim just made: its resources are held from now."""
        gpu_ids = tuple(self._free_gpus[: need.gpus])
        del self._free_gpus[: need.gpus]
        self.used = self.used + need
        slot = Slot(claim, attempt, need, gpu_ids, Phase.CLAIMING, now)
        self._by_task[task] = slot
        return slot

    def start(self, slot: Slot, now: float) -> None:
        """The attempt starts: at `now`, a microsecond after the one started before it in the
        same instant, so that "the newest" (memory pressure evicts it first) is well defined."""
        slot.phase = Phase.RUNNING
        self._last_start = slot.started_at = max(now, self._last_start + 1e-6)

    def free(self, slot: Slot) -> bool:
        """Its process is gone (or never ran): its resources are free. True if they were held."""
        if not slot.holds_resources:
            return False
        slot.holds_resources = False
        self.used = self.used - slot.need
        self._free_gpus.extend(slot.gpu_ids)
        return True

    def pop(self, task: str) -> Slot | None:
        slot = self._by_task.pop(task, None)
        if slot is not None:
            self.free(slot)
        return slot

    def memory_in_use(self, now: float) -> list[Running]:
        """Every attempt, as memory pressure sees it: claimed ones not yet started count for
        their declared memory; ended ones use nothing, and cannot be evicted."""
        return [
            Running(
                task,
                slot.started_at if slot.phase is Phase.RUNNING else now,
                slot.need.memory_bytes,
                slot.rss_bytes if slot.phase is Phase.RUNNING else None,
            )
            for task, slot in self._by_task.items()
            if slot.phase is not Phase.ENDED
        ]


def closing_result(
    capacity: Resources,
    now_ms: int,
    task: str,
    epoch: int,
    attempt: int,
    outcome: Outcome,
    started_ms: int,
    reason: str,
    ended_ms: int | None = None,
    max_rss_kb: int = 0,
    wall_s: float | None = None,
) -> ResultRecord:
    """The record that closes an attempt with no process outcome to report (cut off by a stop,
    failed inside swarm, or never run): no exit code, no CPU time, no result."""
    ended_ms = now_ms if ended_ms is None else ended_ms
    return ResultRecord(
        task_id=task,
        epoch=epoch,
        attempt=attempt,
        outcome=outcome,
        exit_code=None,
        started_ms=started_ms,
        ended_ms=ended_ms,
        wall_s=max(0.0, (ended_ms - started_ms) / 1000) if wall_s is None else wall_s,
        cpu_s=0.0,
        max_rss_kb=max_rss_kb,
        digest=None,
        node_capacity=capacity,
        reason=reason,
    )


def stale_claims(
    ledger: Ledger,
    me: str,
    slots: Slots,
    orphaned: list[tuple[str, int]],
    stamp: Callable[[], int],
    now_ms: int,
    capacity: Resources,
) -> tuple[list[ClaimRecord], list[ResultRecord]]:
    """What closes the claims this node held when it last stopped (those attempts are gone):
    an interrupted result for each claim of ours with no attempt and no slot under way. An
    attempt found still running (`orphaned`: (task, epoch), killed since) whose claim never
    reached the ledger (the daemon died first, perhaps because of it) gets its claim written
    first, so that it is closed too: a task that kills its node must count those deaths."""
    claims: list[ClaimRecord] = []
    unwritten: dict[str, dict[int, int]] = {}  # task -> epoch -> the claim's stamp
    for task, epoch in orphaned:
        view = ledger.tasks.get(task)
        if view is not None and epoch > 0 and (epoch, me) not in view.claims:
            # Stolen: it is only there to be closed, and must never beat a live claim (a peer
            # may have taken the task under this epoch meanwhile).
            claim = ClaimRecord(task, epoch, stamp(), stolen=True)
            claims.append(claim)
            unwritten.setdefault(task, {})[epoch] = claim.stamp
    results: list[ResultRecord] = []
    for view in ledger.tasks.values():
        if not view.claims and view.task_id not in unwritten:
            continue  # never claimed (most of a million waiting tasks): nothing to close
        ours = {
            epoch: info.stamp
            for (epoch, node), info in view.claims.items()
            if node == me and not info.released and (epoch, node) not in view.attempts
        }
        ours.update(unwritten.get(view.task_id, {}))
        slot = slots.get(view.task_id)
        for epoch, claimed in ours.items():
            if slot is not None and (
                slot.claim.epoch == epoch or slot.phase not in (Phase.RUNNING, Phase.ENDED)
            ):
                continue  # ours, and under way now
            results.append(
                closing_result(
                    capacity,
                    now_ms,
                    view.task_id,
                    epoch,
                    len(view.attempts) + 1,
                    Outcome.INTERRUPTED,
                    wall_ms_of(claimed),
                    "the node stopped while it ran",
                    wall_s=0.0,  # unknown: the node was down for part of that span
                )
            )
    return claims, results
