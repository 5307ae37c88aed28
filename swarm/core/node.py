"""The node's decisions, pure: what to claim and when, which attempts start and stop, when a
lease expired, what a restart closes, when a drain may leave, and which results to copy here.

Theory of operation
-------------------
`NodeCore` is driven as aioquic's connection is: its adapter (the daemon, node.py in
swarm/daemon, or a simulated node in swarm/sim) gives it inputs with the `Time` (records
applied to the ledger, membership changes, a claim written, an attempt ended, a memory sample),
calls `tick` when `next_deadline()` comes, and after each call carries out `take_effects()`:
write records, start or stop an attempt, copy a result, leave. So one timer drives the node, and
the simulator runs the very decisions the daemon does, on a virtual clock.

A task the ledger shows pending is queued by the scheduler's rules (scheduler.py: rendezvous
order, stagger, holds). The claim pass and the way of each claim to the close of its attempt (the
settle of a stolen claim, the release of one that lost, the claims a restart closes, a claim of
another node that beats ours) are the `Claimer`'s (claiming.py), a part this core owns and feeds;
the core stops an attempt its task's cancel reaches, and frees its slot when its process is gone.

Members' heartbeats and deaths feed the leases; every so often the leases are judged, and the
tasks of a node whose lease expired are queued for takeover. When the members change, every
pending task is ranked afresh, into a new queue built a slice at a time across ticks (a re-rank
of 100,000 tasks must not stop the node answering probes). Results (holding.py) and a drain's
hand-off follow the members too.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from functools import partial

from swarm.core import gossip, why
from swarm.core.attempts import Phase, Slots
from swarm.core.claiming import Claimer
from swarm.core.clock import HybridClock, StampIntake
from swarm.core.drain import Drain
from swarm.core.effects import (
    Announce,
    CheckDisk,
    Effect,
    Leave,
    Level,
    Log,
    Stop,
    Time,
    Write,
)
from swarm.core.holding import Holding
from swarm.core.ledger import (
    EVICTION_CAP,
    TERMINAL_STATES,
    Body,
    ClaimRecord,
    DrainRecord,
    HeartbeatRecord,
    Ledger,
    Outcome,
    ResultRecord,
    State,
    StateChanged,
    TaskView,
    Version,
    stamp_of,
)
from swarm.core.members import Members
from swarm.core.policy import Infeasible, infeasible_counts
from swarm.core.pressure import Guard, eviction_reason
from swarm.core.scheduler import Peer, Scheduler
from swarm.core.spec import Resources, TaskSpec
from swarm.core.storage import STORAGE_RETRY_S, Storage
from swarm.core.sync import LedgerSync

RERANK_DEBOUNCE_S = 0.5  # membership changes within this long cause one re-rank
RERANK_SLICE = 2_000  # tasks re-ranked in one tick
RELEASE_DEBOUNCE_S = 0.1  # our own old claims coming back from peers: closed once they settle


@dataclass(frozen=True, slots=True)
class CoreConfig:
    heartbeat_interval_s: float = 1.0
    # Another node's claims expire when its heartbeat has not advanced for this long (or at once
    # when membership declares it dead); see lease.py.
    lease_ttl_s: float = 10.0
    claim_stagger_s: float = 1.0  # see policy.py
    claim_settle_s: float = 0.05  # a thief waits this long after its claim before it starts
    claim_batch_max: int = 256  # claims made in one pass
    takes_work: bool = True  # False: a node that claims nothing (swarm start --no-work)


class NodeCore:
    def __init__(
        self,
        me: str,
        ledger: Ledger,
        config: CoreConfig,
        capacity: Resources,
        labels: Mapping[str, str | int | float],
        *,
        networked: bool,
        sync: LedgerSync,
        guard: Guard | None = None,
    ) -> None:
        self.me = me
        self.ledger = ledger
        self.capacity = capacity
        self.labels = dict(labels)
        self.networked = networked
        self.guard = guard
        # The ledger-sync decisions (what to take of a push or a sync answer, what to hold
        # back, when to pull, how to split a push and plan an answer): the adapter's transport
        # and store ask it (sync.py); its counters outlive the core of one life.
        self.sync = sync
        self.sched = Scheduler(me, ledger, config.lease_ttl_s, config.claim_stagger_s)
        # Our own stamps are the high-water mark (the clock never goes back, even when the wall
        # clock did); the peers' are taken in like any record from a peer (see `start`).
        stamps = dict(ledger.max_stamps)
        self.clock = HybridClock(stamps.pop(me, 0))
        self._peer_stamps = stamps
        self.life_stamp = 0  # drains stamped before this life began are old news
        self.slots = Slots(capacity)
        self.members = Members(me, networked)
        self.holding = Holding(me, ledger)
        self.drain_state = Drain()
        self.stamps = StampIntake(self.clock)  # peers' stamps, into our clock
        self._effects: list[Effect] = []
        # task -> the failed attempt (epoch, node) its retry backoff was last held for; dropped
        # when the task ends.
        self._backed_off: dict[str, tuple[int, str]] = {}
        self.storage = Storage()
        # The claim pass and the way of each claim to the close of its attempt (claiming.py).
        self.claims = Claimer(
            me, ledger, config, capacity, self.labels,
            sched=self.sched, slots=self.slots, clock=self.clock, members=self.members,
            storage=self.storage, drain=self.drain_state, guard=guard, emit=self._emit,
        )  # fmt: skip
        self._beat = ledger.heartbeats.get(me, 0)
        self._beat_in_flight = False  # one heartbeat write at a time: a slow disk queues none
        self._last_beat: Version | None = None
        self._next_beat = 0.0
        self._next_lease_check = 0.0
        self._rerank_due: float | None = None
        self._release_due: float | None = None

    # -- inputs -----------------------------------------------------------------------------

    def start(self, t: Time, orphaned: Iterable[tuple[str, int]] = ()) -> None:
        """The node starts on its loaded ledger. `orphaned`: (task, epoch) of the attempts its
        last life left running (killed since), whose claims may never have reached the ledger."""
        for origin, stamp in self._peer_stamps.items():
            self._observe(origin, stamp, t)
        self.life_stamp = self.clock.now(t.wall_ms)
        self._next_beat = t.mono + self.config.heartbeat_interval_s
        self._next_lease_check = t.mono + self._lease_check_every()
        for view in self.ledger.tasks.values():
            if view.state is State.PENDING:
                if view.attempts:  # pending after a failure: its backoff, waited again from now
                    self._back_off(t, view)
                self.sched.enqueue(view, t.mono)
        self.claims.release_stale(t, list(orphaned))
        self.claims.wake = True

    def apply(
        self, t: Time, rows: Iterable[tuple[Version, Body]], remote: bool
    ) -> list[StateChanged]:
        """Records stored: fold them into the ledger and act on what changed. `remote`: they
        came from a peer (our own records too, when a peer gives back what a wiped ledger lost)."""
        changes: list[StateChanged] = []
        if remote:
            self.members.heard_at = t.mono
        for version, body in rows:
            stamp = stamp_of(body) if remote else None
            if stamp is not None:  # every peer's record passes here: the clock sees it first
                self._observe(version.origin, stamp, t)
            for change in self.ledger.apply(version, body):
                changes.append(change)
                self._on_state_changed(t, change)
            if isinstance(body, ResultRecord) and self.networked:
                # A done task's credited result may change with a later result (a duplicate
                # run, met after a partition healed): its holders are looked at again.
                view = self.ledger.tasks.get(body.task_id)
                if view is not None and view.state is State.DONE:
                    self.holding.want([view], t.mono)
            if (
                isinstance(body, DrainRecord)
                and body.node == self.me
                and body.stamp > self.life_stamp  # asked in an earlier life: done with
            ):
                self.drain(t, body.grace_s)
            if not remote:
                if isinstance(body, HeartbeatRecord):
                    self._last_beat = version
                elif isinstance(body, ClaimRecord) and not body.released:
                    self.claims.check_lost(body.task_id)  # a peer's may have been here before it
                continue
            if isinstance(body, HeartbeatRecord):
                self.sched.leases.heartbeat(
                    version.origin, version.generation, body.counter, t.mono
                )
            elif isinstance(body, ClaimRecord):
                if version.origin == self.me:
                    # Our own claim from before our ledger was wiped, back from a peer: that
                    # attempt is long gone, so close it (once the batch settles).
                    if self._release_due is None:
                        self._release_due = t.mono + RELEASE_DEBOUNCE_S
                else:
                    self.sched.leases.seen(version.origin, t.mono)
                    self.claims.check_lost(body.task_id)
        return changes

    def members_changed(
        self, t: Time, events: Iterable[gossip.Event], members: Mapping[str, gossip.Member]
    ) -> None:
        """Membership said something (`events`); `members` is every member it knows, by node."""
        self.members.known = members
        if self.sched.members is None:
            self._set_members()  # the first word from membership: ourselves, at least
        rerank = False
        for event in events:
            match event:
                case gossip.MemberDied() | gossip.MemberLeft():
                    self.sched.leases.died(event.member)
                case gossip.MemberJoined() | gossip.MemberRecovered():
                    self.sched.leases.revived(event.member, t.mono)
            rerank = rerank or not isinstance(event, gossip.MemberSuspected)
        if rerank:
            # Tasks queued from now on are ranked among the members as they are (a job submitted
            # just after a swarm formed would otherwise be ranked by each node as if it were
            # alone, and run on several); those already queued are ranked afresh a little later.
            self._set_members()
            self.rerank_soon(t)

    def rerank_soon(self, t: Time) -> None:
        """Rank every pending task afresh a little later (a burst of joins is one re-rank)."""
        if self._rerank_due is None:  # (one under way now is followed by this one)
            self._rerank_due = t.mono + RERANK_DEBOUNCE_S

    def unwritable(self, t: Time) -> None:
        """Writing in this node's name is not safe yet (a node joining a swarm, until a peer's
        sync has shown that no other process writes in it): claim nothing till `may_write`."""
        self.members.writable = False

    def may_write(self, t: Time) -> None:
        """Writing in this node's name is safe from now on."""
        self.members.writable = True
        self.claims.wake = True

    def caught_up(self, t: Time) -> None:
        """The last frame of a sync answer was taken: we are in touch with the swarm."""
        self.members.synced = True
        self.members.heard_at = t.mono
        self.claims.wake = True

    def written(self, t: Time, write: Write, ok: bool, why: str = "") -> None:
        """The outcome of a Write effect (the adapter reports every one)."""
        if write.claim_of is not None:
            self.claim_written(t, write.claim_of, ok, why)
        elif any(isinstance(body, HeartbeatRecord) for body in write.bodies):
            self._beat_in_flight = False
        elif self.holding.dropping:  # (rare: a copy of a result found damaged here)
            self.holding.written(write.bodies, t.mono)

    def claim_written(self, t: Time, task: str, ok: bool, why: str = "") -> None:
        """The outcome of a Write with `claim_of=task`, or of a Start's claim."""
        self.claims.written(t, task, ok, why)

    def start_failed(self, t: Time, task: str, why: str) -> None:
        """The adapter could not start an attempt (its run dir could not be made)."""
        self.claims.start_failed(t, task, why)

    def attempt_ended(self, t: Time, task: str) -> None:
        """An attempt's process is gone: its resources are free for the next task while it is
        recorded. If memory pressure evicted it, the task stays with the others for a lease."""
        slot = self.slots.get(task)
        if slot is not None:
            slot.phase = Phase.ENDED
            self.claims.free(slot)
        if self.guard is not None and self.guard.ended(task, t.mono):
            self.sched.hold(task, t.mono + self.config.lease_ttl_s)
        if (
            self.claims.wake
            and self._alone()
            and not self.sched.reranking
            and not self.drain_state.left
        ):
            # A node alone starts its next task now, ahead of the ended one's recording, not
            # at the tick the next turn of the loop brings (which, during a re-rank, first
            # ranks a slice of the queue afresh: then the tick's pass it is). A node of a swarm
            # waits for that turn, which first takes the records its peers sent meanwhile: a
            # claim on a view a turn older is likelier to meet a peer's claim of the same task.
            self.claims.claim_pass(t)

    def _alone(self) -> bool:
        members = self.sched.members
        return members is None or all(peer.node == self.me for peer in members)

    def attempt_closed(self, t: Time, task: str) -> None:
        """An attempt is over (recorded, or given up): its slot goes."""
        self.attempt_ended(t, task)
        self.claims.close(t, task)

    def pause_claims(self, t: Time, why: str, for_s: float = STORAGE_RETRY_S) -> None:
        """A write failed (a full or failing disk): claim nothing for a while."""
        self.claims.pause(t, why, for_s)

    def storage_full(self, t: Time, where: str, why: str) -> None:
        """An attempt ended on a full state disk: claim nothing until it has room."""
        if self.storage.filled(t.mono):
            full = f"disk full: not claiming new tasks until {where} has room ({why})"
            self._log(Level.ERROR, full)

    def disk_checked(self, t: Time, has_room: bool, where: str) -> None:
        if self.storage.checked(t.mono, has_room):
            self._log(Level.INFO, f"the disk of {where} has room again: claiming tasks")
            self.claims.wake = True

    def handed_back(self, t: Time, task: str) -> None:
        """A result this node could not store was recorded as interrupted for a peer to run:
        leave the task to the peers, and claim nothing, for a lease period."""
        self.sched.hold(task, t.mono + self.config.lease_ttl_s)
        self.pause_claims(t, "", self.config.lease_ttl_s)

    def memory(self, t: Time, rss_bytes: Mapping[str, int], available: int | None) -> None:
        """A memory sample, taken at `t`: each attempt's measured use, and what the machine has
        available (None: unknown)."""
        for task, used in rss_bytes.items():
            slot = self.slots.get(task)
            if slot is not None:
                slot.rss_bytes = used
        if self.guard is None:
            return
        if available is not None:
            self.guard.available = available
        self._evict_if_short(t)
        self.claims.wake = True  # memory may have been freed: admit by the new figures

    def drain(self, t: Time, grace_s: float | None) -> None:
        """Finish what runs, claim nothing new, then leave the swarm and stop (drain.py)."""
        if not self.drain_state.begin(t.mono, grace_s):
            return
        within = "" if grace_s is None else f" within {grace_s:g}s"
        self._log(
            Level.WARNING,
            f"draining: {len(self.slots)} attempt(s) to finish{within}, then leaving",
        )
        self._emit(Announce(draining=True))  # peers rank us out

    @property
    def draining(self) -> bool:
        return self.drain_state.active

    @property
    def config(self) -> CoreConfig:
        return self.claims.config  # one copy: a new config reaches the claim pass too

    @config.setter
    def config(self, config: CoreConfig) -> None:
        self.claims.config = config

    @property
    def used(self) -> Resources:
        return self.slots.used

    @property
    def stopping(self) -> bool:
        return self.claims.stopping

    @property
    def caught_up_once(self) -> bool:
        """Whether an exchange with a peer has brought us up to date since this life began:
        until then, a node of a swarm claims nothing (scheduler.isolation)."""
        return self.members.synced

    @property
    def not_claiming(self) -> str:
        """Why the last claim pass claimed nothing new ("": it could)."""
        return self.claims.not_claiming

    def stop(self) -> None:
        """The node stops: it starts nothing more, and releases the claims it has not acted on
        yet (at their settle, or once written)."""
        self.claims.stopping = True

    def copied(self, t: Time, digest: str, complete: bool) -> None:
        """The outcome of a CopyResult."""
        for effect in self.holding.copied(
            digest, complete, self._replica_targets, self.members.all_gone
        ):
            self._emit(effect)

    def damaged(self, t: Time, task: str, digest: str) -> None:
        """The copy of the result `digest` of the task, held here, was found damaged (corrupt,
        or part of it gone)."""
        view = self.ledger.tasks.get(task)
        if view is not None:
            for effect in self.holding.damaged(view, digest, t.mono):
                self._emit(effect)

    # -- the timer --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `tick` is next due (monotonic seconds; at once if in the past)."""
        if self.drain_state.left:  # gone: only claims still settling are to be released
            return min(self.slots.settle_times(), default=None)
        if self.claims.wake or self.sched.reranking:
            return -1.0
        # Asked after every input the node gives the core: a running minimum, no lists.
        due = min(self.claims.wake_at, self._next_beat, self._next_lease_check)
        maybe = (
            self._rerank_due,
            self._release_due,
            None if self.stopping else self.holding.next_deadline(),
            self.drain_state.next_deadline(),
            self.storage.next_deadline(),
        )
        for at in maybe:
            if at is not None and at < due:
                due = at
        for at in self.slots.settle_times():
            if at < due:
                due = at
        return due

    def tick(self, t: Time) -> None:
        """Do what is due at `t`."""
        now = t.mono
        if self.drain_state.left:
            self.claims.settle_due(t)  # (they release: the node stops)
            return
        if now >= self._next_beat:
            self._heartbeat(t)
        if now >= self._next_lease_check:
            self._next_lease_check = now + self._lease_check_every()
            self._judge_leases(t)
        rerank_due = self._rerank_due is not None and now >= self._rerank_due
        if rerank_due and not self.sched.reranking:
            self._rerank_due = None
            self._begin_rerank(t)
        if self.sched.reranking and self.sched.rerank_slice(t.mono, RERANK_SLICE):
            self.claims.wake = True
        if self._release_due is not None and now >= self._release_due:
            self._release_due = None
            self.claims.release_stale(t, [])
        self.claims.settle_due(t)
        if self.storage.check_now(now):
            self._emit(CheckDisk())
        if self.claims.wake or now >= self.claims.wake_at:
            self.claims.claim_pass(t)
        if not self.stopping:  # no copy is started as the node goes
            for effect in self.holding.tick(now, self._replica_targets):
                self._emit(effect)
        sole = partial(self.holding.sole_holdings, self.members.live_peers())
        if self.drain_state.step(now, bool(self.slots), sole):
            self._emit(Leave("the node was drained"))

    def take_effects(self) -> list[Effect]:
        effects, self._effects = self._effects, []
        return effects

    # -- queries ----------------------------------------------------------------------------

    def is_pending(self, task: str, now: float) -> bool:
        """Whether this node may claim the task: pending, or held by a node whose lease expired."""
        return self.sched.claimable(task, self.slots, now)

    def infeasible(self, now: float, jobs: Container[str] | None = None) -> Infeasible:
        """Pending tasks (of `jobs`, or all) this node could never run, even when idle: counted
        per job as records apply, and the first few of them listed."""
        counts = infeasible_counts(self.ledger.pending_shapes, self.capacity, self.labels)
        if jobs is not None:
            counts = {job: n for job, n in counts.items() if job in jobs}
        if not counts:
            return Infeasible({}, [])  # nothing to look for in the queue

        def listed(task: str) -> bool:
            return self.is_pending(task, now) and (
                jobs is None or self.ledger.tasks[task].job in jobs
            )

        return Infeasible(counts, self.sched.queue.infeasible(self.capacity, self.labels, listed))

    def why_not_running(self, task_id: str, now: float) -> list[str]:
        """Why a task is not running, as this node sees it (core/why.py)."""
        peers = self._live_peers()
        swarm = why.Swarm(self.me, peers, self.sched.holds, self.sched.leases, self.not_claiming)
        return why.explain(self.ledger.tasks[task_id], swarm, now)

    def unfit(self, specs: Iterable[TaskSpec]) -> dict[str, int]:
        """For tasks no live member could run now: each reason, with how many tasks it holds
        back (a submission is warned at once, not left pending for good unnoticed)."""
        peers = self._live_peers()
        said: dict[str, int] = {}
        known: dict[tuple[object, object], str] = {}
        for spec in specs:
            shape = (spec.need, spec.requires)
            if shape not in known:
                known[shape] = why.unmet_need(spec, peers)
            if known[shape]:
                said[known[shape]] = said.get(known[shape], 0) + 1
        return said

    def _live_peers(self) -> list[Peer]:
        """The live members as gossip describes them, this node among them (also before its
        membership has told it of itself)."""
        peers = list(self.members.peers() or [])
        if not any(p.node == self.me for p in peers):
            peers.append(Peer(self.me, self.capacity, dict(self.labels), self.draining))
        return peers

    def peer_could_run(self, spec: TaskSpec) -> bool:
        """Whether a live member other than this node could run a task of this shape."""
        return self.networked and any(n != self.me for n, _ in self.sched.candidates_for(spec))

    # -- records ----------------------------------------------------------------------------

    def _emit(self, effect: Effect) -> None:
        self._effects.append(effect)

    def _log(self, level: Level, text: str) -> None:
        self._emit(Log(level, text))

    def _observe(self, origin: str, stamp: int, t: Time) -> None:
        said = self.stamps.take(origin, stamp, t.wall_ms)
        if said is not None:
            self._log(Level.WARNING, said)

    @property
    def stamps_ahead(self) -> int:
        return self.stamps.refused

    def _on_state_changed(self, t: Time, change: StateChanged) -> None:
        view = self.ledger.tasks[change.task_id]
        if change.new is State.PENDING:
            if change.old is State.RUNNING:
                self._back_off(t, view)
            elif change.old in (State.FAILED, State.CANCELLED):  # retried or revived by hand
                self.sched.release_hold(view.task_id)
            self.sched.enqueue(view, t.mono)
            self.claims.wake = True
            if change.old is None and self.networked:  # a new task: a call's inputs are held
                self.holding.want_inputs([view], t.mono)
            return
        self.sched.since.pop(change.task_id, None)  # claimed or ended: it waits no more
        if change.new in TERMINAL_STATES:
            self._backed_off.pop(change.task_id, None)
            self.sched.release_hold(change.task_id)
        if change.new is State.DONE and self.networked:
            self.holding.want([view], t.mono)
        elif change.new is State.CANCELLED:
            slot = self.slots.get(change.task_id)
            if slot is not None and slot.phase is Phase.RUNNING:
                self._emit(Stop(change.task_id, Outcome.INTERRUPTED, "cancelled"))

    def _back_off(self, t: Time, view: TaskView) -> None:
        """A task pending again after a failed attempt waits its retry backoff (spec), on each
        node's own clock, before anyone claims it: a task that fails at once is not run again
        at once. One pending again for another reason (its node died) is not held."""
        last = view.ordered_attempts()[-1:] if view.attempts else []
        if view.spec is None or not last:
            return
        if last[0].result.outcome not in (Outcome.FAILED, Outcome.TIMEOUT):
            return
        failed = (last[0].result.epoch, last[0].version.origin)
        if self._backed_off.get(view.task_id) == failed:
            return  # pending again for another reason (a claim released): held once per failure
        self._backed_off[view.task_id] = failed
        failures = view.count(Outcome.FAILED, Outcome.TIMEOUT) - view.forgiven_failures
        wait_s = view.spec.retry_wait_s(failures)
        if wait_s > 0:
            self.sched.hold(view.task_id, t.mono + wait_s)

    def _heartbeat(self, t: Time) -> None:
        self._next_beat = t.mono + self.config.heartbeat_interval_s
        if self._beat_in_flight:
            return  # the last one is still being written: this one would only wait behind it
        self._beat_in_flight = True
        self._beat += 1
        body = HeartbeatRecord(self._beat)
        self._emit(Write((body,), "heartbeat", replaces=self._last_beat))

    # -- queueing and re-ranking ------------------------------------------------------------

    def _set_members(self) -> None:
        """Tell the scheduler who is live, and what each offers (from their gossiped meta)."""
        self.sched.set_members(self.members.peers())

    def _begin_rerank(self, t: Time) -> None:
        # The chosen holders of results move with the members too.
        self.holding.want((v for v in self.ledger.tasks.values() if v.state is State.DONE), t.mono)
        self.holding.want_inputs(
            (v for v in self.ledger.tasks.values() if v.spec is not None and v.spec.call), t.mono
        )
        self._set_members()
        self.sched.begin_rerank()

    # -- leases -----------------------------------------------------------------------------

    def _lease_check_every(self) -> float:
        return min(self.config.heartbeat_interval_s, self.config.lease_ttl_s / 4)

    def _judge_leases(self, t: Time) -> None:
        """Queue the running tasks of nodes whose lease expired (a stopped heartbeat expires
        no event); a member that stopped (or went back to) heartbeating changes the ranks."""
        if self.sched.requeue_orphans(t.mono):
            self.claims.wake = True
        if self.sched.note_stalled(t.mono):
            self.rerank_soon(t)

    # -- memory -----------------------------------------------------------------------------

    def _evict_if_short(self, t: Time) -> None:
        """Under --overcommit: stop the newest attempt if too little memory is left."""
        assert self.guard is not None
        running = self.slots.memory_in_use(t.mono)
        chosen = self.guard.choose(running, t.mono)
        if chosen is None:
            return
        view = self.ledger.tasks[chosen.task_id]
        over_cap = view.evictions() + 1 - view.forgiven_evictions > EVICTION_CAP
        reason = eviction_reason(self.guard, running, chosen, over_cap)
        self._log(Level.WARNING, f"{view.name}: {reason}")
        self._emit(Stop(chosen.task_id, Outcome.INTERRUPTED, reason, evict=True))
        self.sched.hold(chosen.task_id, t.mono + self.config.lease_ttl_s)

    # -- draining and results ---------------------------------------------------------------

    def _replica_targets(self, digest: str) -> list[str]:
        nodes = self.members.result_holders()
        return [self.me] if nodes is None else self.holding.targets(digest, nodes)
