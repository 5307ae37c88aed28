"""The claims of one node, from the pass that makes them to the close of their attempts.

Theory of operation
-------------------
`Claimer` is owned by `NodeCore` (node.py), which calls it from its inputs and its tick; it
shares the core's ledger, scheduler, slots, clock, membership and storage view, and sends its
effects through the core's outbox. A claim pass takes what fits the free capacity (measured
memory, under --overcommit) while the node is in touch with the swarm and may claim (not
stopping, draining, isolated, on a full disk or after a failed write); `not_claiming` says why
it claimed nothing, and `wake`/`wake_at` when to pass again. A task's first attempt starts
while its claim is written; a stolen task, or one tried before, starts only once its claim is
on disk, and a stolen one only after a settle if its claim still wins (else the claim is
released). Each claim holds a `Slot` (attempts.py) until its attempt is closed; a task whose
claim never reached the disk goes back on the queue at once. A running attempt whose claim
another node's beats is stopped, and the claims a node held when it last stopped are closed
when it starts again (attempts.stale_claims).

Invariant: a slot is taken only by `_claim` and dropped only by `close`, so the capacity in use
is what the open claims need. Pure: time comes in as `Time`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from swarm.core.attempts import Phase, Slot, Slots, closing_result, stale_claims
from swarm.core.clock import HybridClock
from swarm.core.drain import Drain
from swarm.core.effects import Effect, Level, Log, Start, Stop, Time, Write
from swarm.core.ledger import INTERRUPTION_CAP, Ledger, Outcome, State
from swarm.core.members import Members
from swarm.core.pressure import Guard
from swarm.core.scheduler import Scheduler
from swarm.core.spec import Resources
from swarm.core.storage import STORAGE_RETRY_S, Storage

if TYPE_CHECKING:
    from swarm.core.node import CoreConfig

ISOLATED_RECHECK_S = 0.5  # a node that may not claim looks again this often


class Claimer:
    """What this node claims, and each claim's way from the pass to the close of its slot."""

    def __init__(
        self,
        me: str,
        ledger: Ledger,
        config: CoreConfig,
        capacity: Resources,
        labels: Mapping[str, str | int | float],
        *,
        sched: Scheduler,
        slots: Slots,
        clock: HybridClock,
        members: Members,
        storage: Storage,
        drain: Drain,
        guard: Guard | None,
        emit: Callable[[Effect], None],
    ) -> None:
        self.me = me
        self.ledger = ledger
        self.config = config
        self.capacity = capacity
        self.labels = labels
        self.sched = sched
        self.slots = slots
        self.clock = clock
        self.members = members
        self.storage = storage
        self.drain = drain
        self.guard = guard
        self._emit = emit
        self.stopping = False
        self.wake = False  # claim at the next tick
        self.wake_at = float("inf")
        self.not_claiming = "starting"  # why the last claim pass claimed nothing new ("": it could)

    def _log(self, level: Level, text: str) -> None:
        self._emit(Log(level, text))

    def written(self, t: Time, task: str, ok: bool, why: str = "") -> None:
        """The outcome of a Write with `claim_of=task`, or of a Start's claim."""
        slot = self.slots.get(task)
        if slot is None:
            return
        if not ok:
            self.pause(t, why)
            if slot.phase is Phase.RUNNING:
                self._emit(Stop(task, Outcome.INTERRUPTED, "claim not written", grace=False))
            else:
                self.close(t, task)
            return
        if slot.phase is Phase.RELEASING:
            self.close(t, task)
        elif slot.phase is Phase.CLAIMING:
            slot.claim_on_disk = True
            if slot.claim.stolen:
                slot.phase = Phase.SETTLING
                slot.settle_at = t.mono + self.config.claim_settle_s
            else:
                self._settled(t, task, slot)
        elif slot.phase in (Phase.RUNNING, Phase.ENDED):
            slot.claim_on_disk = True
            if slot.phase is Phase.RUNNING and self.ledger.tasks[task].state is State.CANCELLED:
                self._emit(Stop(task, Outcome.INTERRUPTED, "cancelled"))

    def start_failed(self, t: Time, task: str, why: str) -> None:
        """The adapter could not start an attempt (its run dir could not be made)."""
        self.pause(t, why)
        slot = self.slots.get(task)
        if slot is None:
            return
        if slot.claim_on_disk:
            self.release(slot, task)
        else:
            self.close(t, task)

    def pause(self, t: Time, why: str, for_s: float = STORAGE_RETRY_S) -> None:
        """A write failed (a full or failing disk): claim nothing for a while."""
        if why:
            self._log(Level.ERROR, f"not claiming new tasks for {for_s:.0f}s: {why}")
        self.storage.pause(t.mono, for_s)

    def settle_due(self, t: Time) -> None:
        for task, slot in self.slots.items():
            if slot.settle_at is not None and t.mono >= slot.settle_at:
                slot.settle_at = None
                self._settled(t, task, slot)

    def _may_claim(self, t: Time) -> str:
        """Why this node may not claim now ("" if it may: it is in touch with the swarm);
        logs the change when it stops or starts claiming."""
        others = any(origin != self.me for origin, _ in self.ledger.high_seq)
        was = self.members.isolated
        why, news = self.members.isolation(t.mono, others, self.config.lease_ttl_s)
        if news:
            self._log(Level.WARNING, f"not claiming new tasks: {why}")
        elif was and why is None:
            self._log(Level.INFO, "claiming new tasks again: in touch with the swarm")
        return why or ""

    def _why_not_claiming(self, t: Time) -> tuple[str, float]:
        """Why this node claims nothing new now ("" if it may), as `swarm status` shows it, and
        when to look again (inf: an input wakes it: the end of a drain, a disk check)."""
        if self.stopping or self.drain.active:
            return ("stopping" if self.stopping else "draining"), float("inf")
        if not self.config.takes_work:
            return "it takes no work (started with --no-work)", float("inf")
        why = self._may_claim(t)
        if why:
            return why, t.mono + ISOLATED_RECHECK_S
        if self.storage.full:
            return "its disk is full", float("inf")
        if t.mono < self.storage.paused_until:
            return "a ledger write failed: pausing", self.storage.paused_until
        return "", float("inf")

    def claim_pass(self, t: Time) -> None:
        self.wake = False
        self.not_claiming, self.wake_at = self._why_not_claiming(t)
        if self.not_claiming:
            return
        free = self.capacity - self.slots.used
        if self.guard is not None:  # memory goes by what the attempts are measured to use
            free = replace(free, memory_bytes=self.guard.headroom(self.slots.memory_in_use(t.mono)))
        limit = self.config.claim_batch_max
        picks = self.sched.pick(self.slots, free, self.labels, limit, t.mono)
        ready = self.sched.queue.next_ready()
        self.wake_at = float("inf") if ready is None else ready
        for task in picks:
            self._claim(t, task)
        if len(picks) == limit:
            self.wake = True  # the batch was full: more may fit

    def _claim(self, t: Time, task: str) -> None:
        view = self.ledger.tasks[task]
        spec = view.spec
        assert spec is not None
        claim = self.sched.new_claim(view, self.clock.now(t.wall_ms))
        number = len(view.attempts) + 1
        slot = self.slots.take(task, claim, number, spec.need, t.mono)
        if view.state is State.RUNNING and self.sched.takeover_exhausts(view):
            # Close the task without running it: our claim, and an interruption over the cap.
            reason = (
                f"interrupted more than {INTERRUPTION_CAP} times: the nodes running it died or "
                "lost their leases"
            )
            self._log(Level.WARNING, f"{view.name}: {reason}")
            result = closing_result(
                self.capacity, t.wall_ms, task, claim.epoch, number, Outcome.INTERRUPTED,
                t.wall_ms, reason,
            )  # fmt: skip
            slot.phase = Phase.RELEASING
            closed = Write(
                (claim, result), "the claim and result of a task closed unrun", claim_of=task
            )
            self._emit(closed)
            return
        # A first attempt starts while its claim is written (a short task should not wait for
        # an fsync). A stolen task, or one tried before (it may be what killed its last
        # node), starts only once its claim is on disk.
        if claim.stolen or view.claims:
            self._emit(Write((claim,), "a claim", claim_of=task))
            return
        self.slots.start(slot, t.mono)
        self._emit(Start(task, claim, number, slot.gpu_ids, write_claim=True))

    def _settled(self, t: Time, task: str, slot: Slot) -> None:
        """A claim on disk (after its settle, if stolen): start if it still wins, else release
        it (the preferred node, or another thief, reached for the task at the same moment)."""
        view = self.ledger.tasks[task]
        wins = view.winning_claim() == (slot.claim.epoch, self.me)
        if wins and view.state is State.RUNNING and not self.stopping:
            self.slots.start(slot, t.mono)
            self._emit(Start(task, slot.claim, slot.attempt, slot.gpu_ids, write_claim=False))
        else:
            self.release(slot, task)

    def release(self, slot: Slot, task: str) -> None:
        slot.phase = Phase.RELEASING
        released = replace(slot.claim, released=True)
        self._emit(Write((released,), "the release of a claim", claim_of=task))

    def free(self, slot: Slot) -> None:
        if self.slots.free(slot):
            self.wake = True

    def close(self, t: Time, task: str) -> None:
        if self.slots.pop(task) is None:
            return
        view = self.ledger.tasks.get(task)
        if view is not None and view.state is State.PENDING:
            # Its claim never made it to disk (or it ended without a result): it was taken off
            # the queue when chosen, so it must go back on, or it would wait forever.
            self.sched.enqueue(view, t.mono, at_once=True)
        self.wake = True

    def check_lost(self, task: str) -> None:
        """Another node claimed a task we run: if its claim wins, ours stops."""
        slot = self.slots.get(task)
        if slot is None or slot.phase is not Phase.RUNNING:
            return
        winner = self.sched.lost_to(task, slot.claim.epoch)
        if winner is not None:
            self._emit(Stop(task, Outcome.INTERRUPTED, f"lost its claim to {winner[1][:8]}"))

    def release_stale(self, t: Time, orphaned: list[tuple[str, int]]) -> None:
        """Close the claims this node held when it last stopped (attempts.stale_claims)."""
        claims, results = stale_claims(
            self.ledger,
            self.me,
            self.slots,
            orphaned,
            lambda: self.clock.now(t.wall_ms),
            t.wall_ms,
            self.capacity,
        )
        if results:
            cut_off = f"{len(results)} attempt(s) were cut off when the node stopped; re-queued"
            self._log(Level.WARNING, cut_off)
        if claims or results:
            what = "the claims of attempts cut off by a stop"
            self._emit(Write((*claims, *results), what, first=True))
