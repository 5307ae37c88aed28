"""Work sharing in the simulator: nodes claim, run and finish tasks by the daemon's own rules.

Theory of operation: each simulated node is a `Worker` with the daemon's pure `Scheduler`
(scheduler.py) over its ledger replica (sim.py), its own drifting clock, slots, heartbeats and
membership, and a wall clock set off true time, whose hybrid logical clock takes in the stamp of
every peer's record as the daemon's does (so a node's stamps order after all it has seen:
checked at every claim). A step of a worker does what the daemon's loops do: write a heartbeat when due, feed
the heartbeats and membership changes it has seen to its leases, queue the tasks its replica shows
pending, requeue those whose holder's lease expired, stop an attempt whose claim another beat,
record the attempts that ended, and claim what fits (a task taken from a peer's share only after a
settle, as the daemon does). Attempts take simulated time; a task named `crash...` always fails.

The scenarios kill, freeze, cut off and restart nodes while tasks run, or lose packets, or all of
these at random (`mixed`), checking after every step that the replicas' invariants hold (sim.py),
that a worker runs each task at most once and never goes on with an attempt its own ledger says
it lost; then with faults off, that every task ends (done, or failed for the crashing ones) on
every replica, and that every replica agrees. Duplicate executions are counted.

`python -m swarm.sim --work` runs them over many seeds and prints figures.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

from swarm.core.clock import MAX_FORWARD_DRIFT_MS, HybridClock
from swarm.core.gossip import MemberState
from swarm.core.lease import Leases
from swarm.core.ledger import (
    Body,
    ClaimRecord,
    HeartbeatRecord,
    Outcome,
    ResultRecord,
    State,
    StateChanged,
    TaskRecord,
    Version,
    stamp_of,
)
from swarm.core.scheduler import Peer, Scheduler, isolation
from swarm.core.spec import Resources, TaskSpec
from swarm.core.sync import SPREAD_WIDE
from swarm.daemon.config import TEST
from swarm.sim.replica import InvariantBroken, Replica
from swarm.sim.world import Network, Sim

SLOTS = 2
CAPACITY = Resources(cpus=SLOTS, memory_bytes=1 << 30)
# The test profile's timers, as the chaos tests use.
LEASE_S = TEST.lease_ttl_s
HEARTBEAT_S = TEST.heartbeat_interval_s
STAGGER_S = TEST.claim_stagger_s
SETTLE_S = TEST.claim_settle_s
STEP_S = 0.01
TASK_S = 1.0  # how long each task runs (a little spread around it)
# Each node's wall clock is set this far off true time at most (either way): two of them, even
# after drifting apart for some minutes, stay within what a clock takes in from a peer
# (clock.py), so every stamp a node writes orders after every stamp it has seen (checked).
WALL_SKEW_MS_MAX = MAX_FORWARD_DRIFT_MS // 4
WALL_EPOCH_MS = 1_700_000_000_000  # true time 0 on the wall clocks
SCENARIOS = ("kill", "restart", "freeze", "partition", "loss", "disk", "drain", "mixed")


def _spec(name: str) -> TaskSpec:
    retries = 2 if name.startswith("crash") else 0
    return TaskSpec(cmd="true", argv=None, need=Resources(1, 1 << 20), retries=retries)


@dataclass(slots=True)
class Running:
    claim: ClaimRecord
    ends_at: float  # simulated true time
    settle_at: float | None  # a stolen task starts then, and only if its claim still wins

    @property
    def epoch(self) -> int:
        return self.claim.epoch


@dataclass(slots=True)
class Worker:
    index: int
    node: str
    sched: Scheduler
    running: dict[str, Running] = field(default_factory=dict)
    beat: int = 0
    next_beat: float = 0.0  # local clock
    heard_at: float = 0.0  # local clock: when a peer's records last reached us
    heard: int = 0  # sum of the other origins' high seqs, to notice news
    states: dict[str, MemberState] = field(default_factory=dict)
    members: frozenset[str] = frozenset()
    # Attempts that ended while the disk was full: (task, epoch, outcome), written when it frees.
    unrecorded: list[tuple[str, int, Outcome]] = field(default_factory=list)
    draining: bool = False
    clock: HybridClock = field(default_factory=HybridClock)  # the node's HLC, as the daemon's
    wall_skew_ms: int = 0  # how far its wall clock is set off true time


class WorkSim:
    def __init__(self, seed: int, n: int, loss: float = 0.0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.sim = Sim(
            n, seed, net=Network(loss=loss, delay_min_s=0.0005, delay_max_s=0.01), drift=0.05,
            ledger=True,
        )  # fmt: skip
        self.workers = [self._worker(i) for i in range(n)]
        self.frozen: set[int] = set()
        self.full: set[int] = set()  # nodes whose disk is full: they write nothing
        self.gone: set[int] = set()  # drained: left the swarm for good
        # Per fault: the nodes cut off, the attempts they held (task -> epoch), and the node
        # that must see those taken over; noted when the fault strikes, checked before its end.
        self.lost: dict[str, tuple[set[int], dict[str, int], int]] = {}
        self.sim.join_all()
        self.sim.run_for(2)

    def _worker(self, i: int) -> Worker:
        replica = self._replica(i)
        sched = Scheduler(replica.node, replica.ledger, LEASE_S, STAGGER_S)
        skew_ms = random.Random(f"{self.seed}/wall/{i}").randint(
            -WALL_SKEW_MS_MAX, WALL_SKEW_MS_MAX
        )
        worker = Worker(i, replica.node, sched, wall_skew_ms=skew_ms)
        replica.listeners.append(lambda change: self._changed(worker, change))
        replica.on_record.append(lambda version, body: self._observe(worker, version, body))
        return worker

    def _wall_ms(self, w: Worker) -> int:
        """What the node's wall clock reads: it runs at its own rate, set off by its skew."""
        offset, _ = self.sim.clocks.get(self.sim.addr(w.index), (0.0, 1.0))
        return WALL_EPOCH_MS + int((self.sim.local_now(w.index) - offset) * 1000) + w.wall_skew_ms

    def _observe(self, w: Worker, version: Version, body: Body) -> None:
        """A peer's record stored: its stamp goes into the node's clock, as the daemon does."""
        stamp = stamp_of(body)
        if stamp is not None and version.origin != w.node:
            w.clock.observe(stamp, self._wall_ms(w))

    def _replica(self, i: int) -> Replica:
        assert self.sim.replicas is not None
        return self.sim.replicas[self.sim.addr(i)]

    def _changed(self, worker: Worker, change: StateChanged) -> None:
        if change.new is State.PENDING:
            view = worker.sched.ledger.tasks[change.task_id]
            worker.sched.enqueue(view, self.sim.local_now(worker.index))

    # -- faults ---------------------------------------------------------------------------

    def kill(self, i: int) -> None:
        self.sim.crash(i)
        self.workers[i].running.clear()  # its processes die with it
        self.workers[i].unrecorded.clear()  # and what it had not written yet

    def restart(self, i: int) -> None:
        """Back with its state dir: it closes the claims its last life held (their attempts are
        gone), as the daemon's restart does."""
        self.frozen.discard(i)
        self.sim.restart(i)
        worker = self.workers[i]
        # The clock starts above the node's own stamps and takes in its peers', as the daemon's.
        stamps = dict(worker.sched.ledger.max_stamps)
        worker.clock = HybridClock(stamps.pop(worker.node, 0))
        for stamp in stamps.values():
            worker.clock.observe(stamp, self._wall_ms(worker))
        worker.sched.leases = Leases(worker.node, LEASE_S)  # judged afresh on the new life
        worker.states, worker.members = {}, frozenset()
        ledger = worker.sched.ledger
        for view in list(ledger.tasks.values()):
            for (epoch, node), info in list(view.claims.items()):
                if node == worker.node and not info.released and (epoch, node) not in view.attempts:
                    self._result(i, view.task_id, epoch, Outcome.INTERRUPTED)
        for view in ledger.tasks.values():
            if view.state is State.PENDING:
                worker.sched.enqueue(view, self.sim.local_now(i))

    def freeze(self, i: int) -> None:
        """SIGSTOP: no packets, no timers; its task processes run on."""
        self.sim.crash(i)
        self.frozen.add(i)

    def fill(self, i: int) -> None:
        """Node i's disk fills: no heartbeat, claim or result can be written (its peers' records
        still reach its ledger here, which is kinder than a real full disk)."""
        self.full.add(i)

    def free(self, i: int) -> None:
        self.full.discard(i)

    def drain(self, i: int) -> None:
        """Finish what runs, claim nothing new, then leave and stop (swarm drain)."""
        self.workers[i].draining = True
        for w in self.workers:  # its meta says so at once (the daemon gossips it)
            w.members = frozenset()  # re-ranked at their next step

    def check_drained(self, i: int, observer: int, tasks: dict[str, int]) -> None:
        """What the drained node ran when told to drain, it finished there (unless its claim
        lost a race to another node's: then that node's attempt is the task's)."""
        ledger = self.workers[observer].sched.ledger
        node = self.workers[i].node
        for task, epoch in tasks.items():
            view = ledger.tasks[task]
            attempt = view.attempts.get((epoch, node))
            if attempt is not None and attempt.result.outcome is Outcome.OK:
                continue
            if view.winning_claim() not in (None, (epoch, node)):
                continue  # it lost the claim: stopping was right
            raise InvariantBroken(f"seed {self.seed}: drained {node} did not finish {task}")

    def split(self, sides: tuple[list[int], list[int]]) -> None:
        self.sim.partition(*sides)

    def heal(self) -> None:
        self.sim.heal()

    def thaw(self, i: int) -> None:
        self.frozen.discard(i)
        self.sim.resume(i)

    def note_lost(self, holders: set[int], observer: int, key: str = "") -> None:
        """The attempts `holders` run now are cut off from `observer`'s side."""
        held = {t: a.epoch for i in holders for t, a in self.workers[i].running.items()}
        self.lost[key] = (holders, held, observer)

    def check_taken_over(self, key: str = "") -> None:
        """Nothing stays running forever: no attempt cut off by the fault noted under `key` is
        still running, in the ledger of a node on the other side, under the cut-off node's
        claim: it was taken over, or it ended, or (its claim never crossed) it is pending."""
        holders, held, observer = self.lost.pop(key)
        ledger = self.workers[observer].sched.ledger
        others = {self.workers[i].node for i in holders}
        for task in held:
            active = ledger.tasks[task].active_claim()
            if active is None or active[1] not in others:
                continue
            raise InvariantBroken(
                f"seed {self.seed}: {task}, held by {sorted(others)} when they were lost, "
                f"was not taken over on n{observer:04d}'s side in time"
            )

    # -- running --------------------------------------------------------------------------

    def submit(self, i: int, names: list[str]) -> None:
        for k, name in enumerate(names):
            self.sim.write(i, TaskRecord(name, "sim", name, _spec(name), k + 1))

    def step(self) -> None:
        for worker in self.workers:
            if self.sim.addr(worker.index) not in self.sim.down:
                self._step(worker)
        self.sim.run_for(STEP_S)

    def _step(self, w: Worker) -> None:
        i, sim = w.index, self.sim
        now = sim.local_now(i)
        ledger = w.sched.ledger
        full = i in self.full
        if now >= w.next_beat and not full:
            w.beat += 1
            w.next_beat = now + HEARTBEAT_S
            sim.write(i, HeartbeatRecord(w.beat), SPREAD_WIDE)
        if w.unrecorded and not full:
            for task, epoch, outcome in w.unrecorded:
                self._result(i, task, epoch, outcome)
            w.unrecorded.clear()
        for origin, counter in ledger.heartbeats.items():
            if origin != w.node:
                w.sched.leases.heartbeat(origin, 1, counter, now)
        heard = sum(seq for (origin, _), seq in ledger.high_seq.items() if origin != w.node)
        if heard != w.heard:
            w.heard, w.heard_at = heard, now
        self._membership(w, now)
        w.sched.requeue_orphans(now)
        if w.sched.note_stalled(now):
            w.sched.rerank(now)
        for task, attempt in list(w.running.items()):
            if attempt.settle_at is not None:
                # A stolen task, not started yet: after its settle, it runs only if its claim
                # still wins; else it is released, having run nothing.
                if attempt.settle_at > sim.now:
                    continue
                attempt.settle_at = None
                if ledger.tasks[task].winning_claim() != (attempt.epoch, w.node):
                    del w.running[task]
                    if not full:  # else its lease lapses, as the heartbeats fail too
                        sim.write(i, replace(attempt.claim, released=True), SPREAD_WIDE)
            elif w.sched.lost_to(task, attempt.epoch) is not None:
                del w.running[task]  # it stops its attempt, and says so
                self._ended(w, task, attempt.epoch, Outcome.INTERRUPTED)
            elif attempt.ends_at <= sim.now:
                del w.running[task]
                failed = task.startswith("crash")
                self._ended(w, task, attempt.epoch, Outcome.FAILED if failed else Outcome.OK)
        core = sim.cores[sim.addr(i)]
        if w.draining:
            if not w.running and not w.unrecorded:
                core.leave(now)  # it says goodbye; the next step it is gone
                sim.run_for(0)
                sim.crash(i)
                self.gone.add(i)
            return
        if full:
            return  # it claims nothing while it cannot write
        peers = [m for m in core.members.values() if m.node != w.node]
        if isolation(
            [m.state is MemberState.LEFT for m in peers], True, True, now - w.heard_at, LEASE_S
        ):
            return
        free = Resources(SLOTS - len(w.running), 1 << 30)
        for task in w.sched.pick(w.running, free, {}, SLOTS, now):
            self._claim(w, task, now)
        self._check(w)

    def _membership(self, w: Worker, now: float) -> None:
        core = self.sim.cores[self.sim.addr(w.index)]
        for member in core.members.values():
            before = w.states.get(member.node)
            if member.state != before:
                w.states[member.node] = member.state
                if member.state in (MemberState.DEAD, MemberState.LEFT):
                    w.sched.leases.died(member.node)
                elif member.state is MemberState.ALIVE and before is not None:
                    w.sched.leases.revived(member.node, now)
        live = frozenset(m.node for m in core.live_members())
        if live != w.members:
            w.members = live
            w.sched.set_members(self._peers(live))
            w.sched.rerank(now)

    def _ended(self, w: Worker, task: str, epoch: int, outcome: Outcome) -> None:
        if w.index in self.full:
            w.unrecorded.append((task, epoch, outcome))
        else:
            self._result(w.index, task, epoch, outcome)

    def _peers(self, live: frozenset[str]) -> list[Peer]:
        """The live members as the scheduler sees them (a drain is in their gossiped meta)."""
        draining = {w.node for w in self.workers if w.draining}
        return [Peer(node, CAPACITY, {}, node in draining) for node in sorted(live)]

    def _claim(self, w: Worker, task: str, now: float) -> None:
        view = w.sched.ledger.tasks[task]
        assert view.spec is not None
        seen = max(w.sched.ledger.max_stamps.values(), default=0)
        claim = w.sched.new_claim(view, w.clock.now(self._wall_ms(w)))
        if claim.stamp <= seen:
            raise InvariantBroken(
                f"seed {self.seed}: {w.node} stamped a claim {claim.stamp} no later than a "
                f"stamp {seen} it had seen: clocks {WALL_SKEW_MS_MAX} ms apart break the order"
            )
        epoch, stolen = claim.epoch, claim.stolen
        self.sim.write(w.index, claim, SPREAD_WIDE)
        if view.state is State.RUNNING and w.sched.takeover_exhausts(view):
            self._result(w.index, task, epoch, Outcome.INTERRUPTED)
            return
        settle_at = self.sim.now + SETTLE_S if stolen else None
        duration = TASK_S * self.rng.uniform(0.8, 1.2)
        w.running[task] = Running(
            claim, self.sim.now + (SETTLE_S if stolen else 0) + duration, settle_at
        )

    def _result(self, i: int, task: str, epoch: int, outcome: Outcome) -> None:
        code = {Outcome.OK: 0, Outcome.FAILED: 1}.get(outcome)
        ms = int(self.sim.now * 1000)
        body = ResultRecord(task, epoch, 1, outcome, code, ms, ms, 0.0, 0.0, 0, None, CAPACITY)
        self.sim.write(i, body, SPREAD_WIDE)

    def _check(self, w: Worker) -> None:
        """No attempt runs on past its settle under a claim its own ledger says lost (read from
        the ledger itself, not through the scheduler whose rules are under test)."""
        for task, attempt in w.running.items():
            winner = w.sched.ledger.tasks[task].winning_claim()
            if attempt.settle_at is None and winner != (attempt.epoch, w.node):
                raise InvariantBroken(
                    f"seed {self.seed}: {w.node} runs {task} under a claim its ledger says lost"
                )

    # -- ending ---------------------------------------------------------------------------

    def finish(self, names: list[str], limit_s: float = 120.0) -> float:
        """Faults off, every node back; seconds until every replica has every task ended and
        all agree. Raises InvariantBroken if that does not happen within `limit_s`."""
        self.sim.net = Network()
        self.sim.heal()
        for i in list(self.frozen):
            self.thaw(i)
        self.full.clear()
        for i in range(len(self.workers)):
            if self.sim.addr(i) in self.sim.down and i not in self.gone:
                self.restart(i)
        began = self.sim.now
        while self.sim.now - began < limit_s:
            self.step()
            if self._all_ended(names):
                return self.sim.now - began
        raise InvariantBroken(f"seed {self.seed}: the tasks did not all end within {limit_s} s")

    def _all_ended(self, names: list[str]) -> bool:
        assert self.sim.replicas is not None
        prints = set()
        for i in range(len(self.workers)):
            if i in self.gone:
                continue  # it left with what it had
            replica = self._replica(i)
            for name in names:
                view = replica.ledger.tasks.get(name)
                want = State.FAILED if name.startswith("crash") else State.DONE
                if view is None or view.state is not want:
                    return False
            prints.add(replica.ledger.fingerprint()[0])
        return len(prints) == 1 and not any(w.running for w in self.workers)

    def duplicates(self, names: list[str]) -> int:
        """Attempts beyond one per task that ran (the crashing tasks' retries not counted)."""
        ledger = self._replica(min(set(range(len(self.workers))) - self.gone)).ledger
        ran = sum(len(ledger.tasks[n].attempts) for n in names if not n.startswith("crash"))
        return ran - sum(1 for n in names if not n.startswith("crash"))


Event = tuple[float, Callable[["WorkSim"], object]]


@dataclass(slots=True)
class WorkRun:
    ended_s: float  # from faults off until every task ended everywhere
    makespan_s: float  # from the submit until every task ended everywhere
    ideal_s: float  # the tasks' run time over every slot
    duplicates: int
    tasks: int


def scenario_work(seed: int, fault: str, n: int = 5, tasks: int = 60) -> WorkRun:
    """`tasks` one-second tasks (and one that always crashes) on `n` nodes of 2 slots, with one
    fault while they run: kill (SIGKILL the busiest node), restart (the same, brought back with
    its state after twice the lease), freeze (SIGSTOP it for twice the lease), partition (a 2|3
    split for three leases), loss (10% for the whole run), disk (the busiest node's disk is full
    for twice the lease), drain (of the busiest node), or mixed (a random series of kills,
    freezes and splits). The tasks cut off by the fault must be taken over before it ends."""
    work = WorkSim(seed, n, loss=0.1 if fault == "loss" else 0.0)
    names = [f"t{k:03d}" for k in range(tasks)] + ["crash0"]
    submitted = work.sim.now
    work.submit(0, names)
    for _ in range(int(1.5 / STEP_S)):
        work.step()
    rng = random.Random(seed * 7 + 1)
    events = _mixed(rng, n) if fault == "mixed" else _plan(work, fault, n)
    elapsed = 0.0
    while events or elapsed < 2 * LEASE_S:
        while events and events[0][0] <= elapsed:
            events.pop(0)[1](work)
        work.step()
        elapsed += STEP_S
    ended = work.finish(names)
    ideal = tasks * TASK_S / (n * SLOTS)
    return WorkRun(ended, work.sim.now - submitted, ideal, work.duplicates(names), tasks)


def _busiest(work: WorkSim) -> int:
    return max(range(len(work.workers)), key=lambda i: (len(work.workers[i].running), -i))


def _plan(work: WorkSim, fault: str, n: int) -> list[Event]:
    victim = _busiest(work)
    observer = 0 if victim else 1
    twice = 2 * LEASE_S
    check = (twice - STEP_S, WorkSim.check_taken_over)
    match fault:
        case "kill" | "restart" | "freeze":
            lose = {"kill": WorkSim.kill, "restart": WorkSim.kill, "freeze": WorkSim.freeze}
            events: list[Event] = [
                (0.0, partial(WorkSim.note_lost, holders={victim}, observer=observer)),
                (0.0, partial(lose[fault], i=victim)),
                check,
            ]
            if fault == "restart":
                events.append((twice, partial(WorkSim.restart, i=victim)))
            elif fault == "freeze":
                events.append((twice, partial(WorkSim.thaw, i=victim)))
            return events
        case "partition":
            # Three leases: the side of two has 4 slots for the 6 tasks the other side held,
            # so taking them all over takes a second round of tasks.
            side, rest, thrice = [0, 1], list(range(2, n)), 3 * LEASE_S
            return [
                (0.0, partial(WorkSim.note_lost, holders=set(side), observer=rest[0], key="a")),
                (0.0, partial(WorkSim.note_lost, holders=set(rest), observer=side[0], key="b")),
                (0.0, partial(WorkSim.split, sides=(side, rest))),
                (thrice - STEP_S, partial(WorkSim.check_taken_over, key="a")),
                (thrice - STEP_S, partial(WorkSim.check_taken_over, key="b")),
                (thrice, WorkSim.heal),
            ]
        case "loss":
            return [(twice, WorkSim.heal)]  # nothing to undo: the loss lasts the whole run
        case "disk":
            return [
                (0.0, partial(WorkSim.note_lost, holders={victim}, observer=observer)),
                (0.0, partial(WorkSim.fill, i=victim)),
                check,
                (twice, partial(WorkSim.free, i=victim)),
            ]
        case "drain":
            running = {t: a.epoch for t, a in work.workers[victim].running.items()}
            check_drained = partial(
                WorkSim.check_drained, i=victim, observer=observer, tasks=running
            )
            return [(0.0, partial(WorkSim.drain, i=victim)), (twice, check_drained)]
    raise ValueError(f"unknown fault {fault!r}")


def _mixed(rng: random.Random, n: int) -> list[Event]:
    """A random series of faults, each undone a while later (every node is back at the end); a
    node is not hit again before its last fault is undone, and splits do not overlap. A kill or
    freeze that lasts two leases with no split meanwhile must see its tasks taken over (by a
    node spared until then)."""
    events: list[Event] = []
    checks: list[tuple[float, float, int, Event, Event]] = []  # window, victim, note, check
    splits: list[tuple[float, float]] = []
    faults: list[tuple[float, float, int]] = []  # kills and freezes: begin, end, node
    at = 0.0
    free_at = [0.0] * n  # when each node is over its last fault
    for k in range(rng.randint(2, 5)):
        span = rng.uniform(0.5, 3 * LEASE_S)
        kind = rng.choice(("kill", "freeze", "partition"))
        idle = [j for j in range(n) if free_at[j] <= at]
        busy_split = any(begin <= at < end for begin, end in splits)
        if (kind == "partition" and busy_split) or len(idle) < 2:
            at += rng.uniform(0.3, 2.0)
            continue
        victim = rng.choice(idle)
        if kind == "partition":
            side = rng.sample(range(n), rng.randint(1, n // 2))
            rest = [j for j in range(n) if j not in side]
            events += [(at, partial(WorkSim.split, sides=(side, rest))),
                       (at + span, WorkSim.heal)]  # fmt: skip
            splits.append((at, at + span))
        else:
            lose, back = (
                (WorkSim.kill, WorkSim.restart)
                if kind == "kill"
                else (WorkSim.freeze, WorkSim.thaw)
            )
            events += [(at, partial(lose, i=victim)), (at + span, partial(back, i=victim))]
            free_at[victim] = at + span
            faults.append((at, at + span, victim))
            if span > 2 * LEASE_S:
                observer = rng.choice([j for j in idle if j != victim])
                due = at + 2 * LEASE_S
                free_at[observer] = max(free_at[observer], due)
                note = partial(WorkSim.note_lost, holders={victim}, observer=observer, key=str(k))
                check = partial(WorkSim.check_taken_over, key=str(k))
                # Noted just before the fault strikes (a kill forgets what the node ran).
                checks.append((at, due, victim, (at - 1e-6, note), (due, check)))
        at += rng.uniform(0.3, 2.0)
    for begin, end, victim, noted, checked in checks:
        # Judged only where nothing else cut capacity meanwhile: a split, or another node lost
        # (the takeovers would then wait for slots, which is no fault of the rules).
        others = [(b, e) for b, e, node in faults if node != victim]
        if not any(b < end and begin < e for b, e in splits + others):
            events += [noted, checked]
    return sorted(events, key=lambda e: e[0])


def print_work_figures(seeds: int) -> int:
    """Every scenario over `seeds` seeds; exit status 1 if any invariant broke."""
    print("Work sharing under faults, 5 simulated nodes x 2 slots, 60 one-second tasks and one")
    print("that always crashes, test timers (lease 2 s), clocks drifting 5%:")
    print(f"{'scenario':>10} {'seeds':>6} {'broken':>7} {'duplicates (median, max)':>25}"
          f" {'makespan / ideal (median, max)':>31}")  # fmt: skip
    broken_total = 0
    for fault in SCENARIOS:
        runs: list[WorkRun] = []
        broken = 0
        for seed in range(seeds):
            try:
                runs.append(scenario_work(seed, fault))
            except InvariantBroken as exc:
                broken += 1
                print(f"  {fault}: {exc}")
        broken_total += broken
        if not runs:
            print(f"{fault:>10} {seeds:>6} {broken:>7}")
            continue
        dups = sorted(r.duplicates for r in runs)
        spans = sorted(r.makespan_s / r.ideal_s for r in runs)
        print(f"{fault:>10} {seeds:>6} {broken:>7} {dups[len(dups) // 2]:>18}, {dups[-1]:>4}"
              f" {spans[len(spans) // 2]:>24.2f}, {spans[-1]:.2f}")  # fmt: skip
    return 1 if broken_total else 0
