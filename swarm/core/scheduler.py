"""Which tasks one node claims, when, and which of its attempts must stop: the claim and lease
rules, run by the node core (node.py).

Theory of operation
-------------------
Each pending task has an order over the live members that could run it (weighted rendezvous
hashing, policy.py). A node queues the task at once if it comes first in that order, else after a
stagger per member ahead of it (counted from when the task began to wait, however often members
come and go meanwhile), so the preferred node takes it and the others take it only when it
has not (work stealing). A thief's claim is marked stolen and loses to the preferred node's claim
of the same epoch (ledger.py), and a thief starts only after a settle, so that when both reach
for one task at once the thief backs off before it has started anything. A running task whose holder's lease expired (lease.py: its heartbeat
stopped advancing on our clock, or membership declared it dead) is queued again, and claiming it
takes it over under a higher epoch; a node that sees a claim beat its own stops its attempt. A
takeover that would be one interruption past the cap closes the task instead of running it.

Pure: no I/O and no clock reads; the caller passes `now` (its own monotonic seconds) and sets
`members` when membership changes.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from swarm.core.lease import Leases
from swarm.core.ledger import INTERRUPTION_CAP, ClaimRecord, Ledger, State, TaskView
from swarm.core.policy import Labels, PendingQueue, labels_match, rendezvous_rank
from swarm.core.spec import Resources, TaskSpec

Shape = tuple[Resources, Any]


def isolation(
    peers_left: list[bool], others_in_ledger: bool, synced: bool, silent_s: float, ttl_s: float
) -> str | None:
    """Why a node of a swarm must not claim now (None: it may). It claims only while in touch:
    it has caught up with a peer since it started (else it would re-run what others finished
    while it was away), and it has heard from one within a lease period (else it may be cut
    off, with its tasks being taken over on the other side). A node alone (no peer, no peer's
    record), or whose peers all left, claims. `peers_left`: for each other member, whether it
    left."""
    if peers_left and all(peers_left):
        return None  # the others left for good: carry on alone
    if not peers_left and not others_in_ledger:
        return None  # a swarm of one, so far
    if synced and silent_s < ttl_s:
        return None
    if not synced:
        return "catching up with the swarm first"
    return f"no peer heard for {ttl_s:g}s (cut off?)"


@dataclass(frozen=True, slots=True)
class Peer:
    """A live member as the scheduler needs it: what it offers, and whether it takes work."""

    node: str
    capacity: Resources
    labels: Labels
    draining: bool = False


def peer_from_meta(node: str, meta: Mapping[str, Any]) -> Peer | None:
    """A member's gossiped meta as a Peer; None if it says nothing usable of itself."""
    try:
        capacity = meta["capacity"]
        offers = Resources(
            float(capacity["cpus"]), int(capacity["memory_bytes"]), int(capacity["gpus"])
        )
        labels = meta["labels"]
        if not isinstance(labels, Mapping):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return Peer(node, offers, dict(labels), bool(meta.get("draining")))


@dataclass(slots=True)
class _Rerank:
    """A re-rank under way: the fresh queue, and the tasks still to go into it."""

    queue: PendingQueue
    views: Iterator[TaskView]
    settled: list[str] | None = None  # then, the tasks whose wait is looked at again


@dataclass(slots=True)
class Scheduler:
    me: str
    ledger: Ledger
    lease_ttl_s: float
    claim_stagger_s: float
    queue: PendingQueue = field(default_factory=PendingQueue)
    # The live members (None: a node alone, with no membership): set it when they change.
    members: list[Peer] | None = None
    # Running tasks whose holder's lease expired, queued for takeover: task -> that claim.
    orphans: dict[str, tuple[int, str]] = field(default_factory=dict)
    leases: Leases = field(init=False)
    # Members alive in the membership whose lease expired (a full disk, a stuck daemon): left
    # out of every task's order, so that their share is not left to wait behind others' own.
    stalled: frozenset[str] = frozenset()
    # Tasks this node leaves to the others for a while (it evicted one, or could not store its
    # result): task -> monotonic time it may claim it again.
    holds: dict[str, float] = field(default_factory=dict)
    # When each task became claimable here in its current spell (pending, or orphaned by a
    # lapse), with the epoch a claim would take then (a new spell takes a new epoch): its
    # stagger counts from then, so that a re-rank (members come and go) does not start the
    # wait over. task -> (epoch, monotonic time).
    since: dict[str, tuple[int, float]] = field(default_factory=dict)
    lease_expiries: int = 0  # running tasks queued for takeover after their holder's lease lapsed
    _candidates: dict[Shape, list[tuple[str, float]]] = field(default_factory=dict)
    _rerank: _Rerank | None = None  # a re-rank under way
    _last_spell: tuple[int, float] = (0, 0.0)  # the `since` entry made last, to share

    def __post_init__(self) -> None:
        self.leases = Leases(self.me, self.lease_ttl_s)

    def set_members(self, members: Iterable[Peer] | None) -> None:
        self.members = None if members is None else list(members)
        self._candidates.clear()

    def note_stalled(self, now: float) -> bool:
        """Look again at which members' leases expired; True if that changed (then re-rank)."""
        stalled = frozenset(
            peer.node for peer in self.members or [] if self.leases.expired(peer.node, now)
        )
        if stalled == self.stalled:
            return False
        self.stalled = stalled
        self._candidates.clear()
        return True

    # -- ranking ---------------------------------------------------------------------------

    def candidates_for(self, spec: TaskSpec) -> list[tuple[str, float]]:
        """The live members that could run a task of this shape, with their CPUs."""
        shape = (spec.need, spec.requires)
        cached = self._candidates.get(shape)
        if cached is not None:
            return cached
        found = [
            (peer.node, peer.capacity.cpus)
            for peer in self.members or []
            if not peer.draining
            and peer.node not in self.stalled
            and spec.need.fits_in(peer.capacity)
            and labels_match(spec.requires, peer.labels)
        ]
        self._candidates[shape] = found
        return found

    def rank(self, task: str, spec: TaskSpec, without: str | None = None) -> int:
        """Our place among the live members that could run the task (0: we come first), leaving
        out `without` (a holder whose lease expired: alive, maybe, but not claiming)."""
        if self.members is None:
            return 0
        candidates = [c for c in self.candidates_for(spec) if c[0] != without]
        if not any(node == self.me for node, _ in candidates):
            return 0  # it does not fit here: select() leaves it, and `infeasible` reports it
        return rendezvous_rank(task, self.me, candidates)

    def enqueue(
        self,
        view: TaskView,
        now: float,
        at_once: bool = False,
        into: PendingQueue | None = None,
        takeover: str | None = None,
    ) -> None:
        """Queue a task for claiming: at once if we come first for it (or `at_once`), else
        after a stagger per member ahead of us; never while it is held. A takeover (from the
        node `takeover`, whose lease expired) is ranked without that node, and goes ahead of the
        pending tasks of its priority and rank: it was started before any of them."""
        spec, task = view.spec, view.task_id
        if spec is None:
            return
        rank = 0 if at_once else self.rank(task, spec, without=takeover)
        epoch = view.next_epoch()
        spell = self.since.get(task)
        if spell is None or spell[0] != epoch:
            spell = self._last_spell
            if spell != (epoch, now):  # tasks queued together share one (a million, at a start)
                spell = self._last_spell = (epoch, now)
            self.since[task] = spell
        ready_at = spell[1] + rank * self.claim_stagger_s if rank else 0.0
        if self.holds:  # (none, mostly: a million are queued at a start)
            ready_at = max(ready_at, self._held_until(task, now))
        first = takeover is not None
        if into is not None:
            into.push(task, spec, view.submitted[0], rank, ready_at, first)
            return
        self.queue.push(task, spec, view.submitted[0], rank, ready_at, first)
        for queue in self._rebuilding():
            queue.push(task, spec, view.submitted[0], rank, ready_at, first)

    def _rebuilding(self) -> list[PendingQueue]:
        job = self._rerank
        return [job.queue] if job is not None and job.settled is None else []  # not swapped in

    def hold(self, task: str, until: float) -> None:
        """Leave `task` to the others until `until` (monotonic): queued, it waits till then."""
        self.holds[task] = max(self.holds.get(task, until), until)

    def release_hold(self, task: str) -> None:
        """Forget a hold: the task was retried or revived by hand, or has ended."""
        self.holds.pop(task, None)

    def _held_until(self, task: str, now: float) -> float:
        until = self.holds.get(task, 0.0)
        if until and until <= now:
            del self.holds[task]  # over, and forgotten
            return 0.0
        return until

    # -- leases ----------------------------------------------------------------------------

    def holder_expired(self, view: TaskView, now: float) -> bool:
        held = view.active_claim()
        if held is None:
            return False
        self.leases.seen(held[1], now)  # a holder known only from the ledger: its lease runs now
        return self.leases.expired(held[1], now)

    def claimable(self, task: str, busy: Container[str], now: float) -> bool:
        """Whether we may claim the task: pending, or held by a node whose lease expired (and
        not one we run or are claiming)."""
        view = self.ledger.tasks.get(task)
        if view is None or task in busy:
            return False
        if self._held_until(task, now) > now:
            return False  # an older queue entry of it, from before the hold: the hold's comes later
        if view.state is State.PENDING:
            return True
        return view.state is State.RUNNING and self.holder_expired(view, now)

    def requeue_orphans(self, now: float) -> bool:
        """Queue the running tasks of nodes whose lease expired (each once per lapse). True if
        any was queued."""
        found = False
        queued, self.orphans = self.orphans, {}
        for task in list(self.ledger.running):
            view = self.ledger.tasks[task]
            held = view.active_claim()
            if held is None or view.spec is None or not self.holder_expired(view, now):
                continue
            self.orphans[task] = held
            if queued.get(task) != held:  # not yet queued for this holder's lapse
                self.enqueue(view, now, takeover=held[1])
                self.lease_expiries += 1
                found = True
        return found

    def begin_rerank(self) -> None:
        """The members changed: rank every pending task afresh, into a new queue built a slice
        at a time (`rerank_slice`; 100,000 tasks over 200 members is seconds of hashing, and the
        node must go on answering probes meanwhile). Tasks queued meanwhile go in both queues."""
        self._rerank = _Rerank(PendingQueue(), iter(list(self.ledger.tasks.values())))

    @property
    def reranking(self) -> bool:
        return self._rerank is not None

    def rerank_slice(self, now: float, size: int) -> bool:
        """One slice of the re-rank under way: `size` tasks ranked into the fresh queue, or, once
        all are in, the swap (the orphans queued afresh too) and a slice of forgetting the waits
        that are over. True when the re-rank is done."""
        job = self._rerank
        assert job is not None
        if job.settled is None:
            for _ in range(size):
                view = next(job.views, None)
                if view is None:
                    break
                if view.state is State.PENDING:
                    self.enqueue(view, now, into=job.queue)
            else:
                return False
            self.queue = job.queue
            self.orphans.clear()
            self.requeue_orphans(now)
            job.settled = list(self.since)
            return False
        part, job.settled = job.settled[:size], job.settled[size:]
        self.forget_settled(part)
        if job.settled:
            return False
        self._rerank = None
        return True

    def forget_settled(self, tasks: Iterable[str] | None = None) -> None:
        """Drop the `since` of tasks no longer waiting to be claimed (claimed, done, or
        claimed again under a higher epoch): run after a re-rank, which queues afresh every
        task that still waits. `tasks`: only these (the daemon goes a slice at a time)."""
        for task in list(self.since if tasks is None else tasks):
            spell = self.since.get(task)
            if spell is None:
                continue
            view = self.ledger.tasks.get(task)
            if (
                view is None
                or view.next_epoch() != spell[0]
                or not (view.state is State.PENDING or task in self.orphans)
            ):
                del self.since[task]

    def pick(
        self, busy: Container[str], free: Resources, labels: Labels, limit: int, now: float
    ) -> list[str]:
        """The tasks to claim now, best first, that fit in `free` (their wait is over)."""
        chosen = self.queue.select(lambda t: self.claimable(t, busy, now), free, labels, limit, now)
        for task in chosen:
            self.since.pop(task, None)
        return chosen

    # -- attempts --------------------------------------------------------------------------

    def new_claim(self, view: TaskView, stamp: int) -> ClaimRecord:
        """Our claim of a task we picked, under the next epoch; stolen if a live member comes
        before us for it (a takeover is ranked without the holder whose lease expired), or if
        we are not among its candidates ourselves (our meta has not spread yet, say)."""
        assert view.spec is not None
        holder = view.active_claim() if view.state is State.RUNNING else None
        without = None if holder is None else holder[1]
        stolen = self.rank(view.task_id, view.spec, without) > 0 or (
            self.members is not None
            and all(node != self.me for node, _ in self.candidates_for(view.spec))
        )
        return ClaimRecord(view.task_id, view.next_epoch(), stamp, stolen=stolen)

    def takeover_exhausts(self, view: TaskView) -> bool:
        """Whether taking over this task would be one interruption too many: a task whose
        nodes keep dying must end, not move on to the next node."""
        lost = view.interruptions() + 1 - view.forgiven_interruptions
        return lost > INTERRUPTION_CAP

    def lost_to(self, task: str, epoch: int) -> tuple[int, str] | None:
        """The claim that beats our attempt of `task` under `epoch`, if one does: that attempt
        must stop."""
        view = self.ledger.tasks.get(task)
        winner = None if view is None else view.winning_claim()
        if winner is None or winner == (epoch, self.me):
            return None
        return winner
