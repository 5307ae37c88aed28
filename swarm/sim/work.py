"""Work sharing in the simulator: each simulated node is the daemon's own NodeCore.

Theory of operation: a simulated node is a `NodeCore` (swarm/core/node.py), the very object that
makes the daemon's decisions, over its ledger replica (world.py), with its own drifting clock and
a wall clock set off true time. Only its I/O is simulated: a `Write` is stored in the replica
and pushed to a few members at once, as the daemon sends its fresh records; a `Start` is an
attempt that takes simulated time (a task named `crash...` always fails); a `Stop` ends it; a
`Leave` says goodbye and goes. The core is told what the daemon tells it: every record stored
(its own and its peers'), membership events, a sync answer taken to its end, attempts that ended.
A full disk fails every write of that node (its peers' records still reach it).

The scenarios kill, freeze, cut off and restart nodes while tasks run, or lose packets, or all of
these at random (`mixed`), checking after every step that the replicas' invariants hold (world.py),
that every claim is stamped after every stamp its node has seen, that a node never goes on with an
attempt its own ledger says it lost; then with faults off, that every task ends (done, or failed
for the crashing ones) on every replica, and that every replica agrees. Duplicate executions are
counted.

The scenarios and their figures are in scenarios.py (`python -m swarm.sim --work`).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from functools import partial

from swarm.core import snapshot
from swarm.core.clock import MAX_FORWARD_DRIFT_MS
from swarm.core.effects import (
    Announce,
    CheckDisk,
    CopyResult,
    Effect,
    Leave,
    Log,
    Start,
    Stop,
    Time,
    Write,
)
from swarm.core.holding import REPLICAS
from swarm.core.ledger import (
    Body,
    ClaimRecord,
    Outcome,
    ResultRecord,
    State,
    StateChanged,
    TaskRecord,
    Version,
)
from swarm.core.node import CoreConfig, NodeCore
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
CORE_CONFIG = CoreConfig(
    heartbeat_interval_s=HEARTBEAT_S,
    lease_ttl_s=LEASE_S,
    claim_stagger_s=STAGGER_S,
    claim_settle_s=SETTLE_S,
    claim_batch_max=SLOTS,
)
META = {"capacity": snapshot.resources_dict(CAPACITY), "labels": {}}  # as a daemon gossips it


def _spec(name: str) -> TaskSpec:
    retries = 2 if name.startswith("crash") else 0
    return TaskSpec(cmd="true", argv=None, need=Resources(1, 1 << 20), retries=retries)


@dataclass(slots=True)
class Running:
    claim: ClaimRecord
    ends_at: float  # simulated true time
    number: int  # its number among the task's attempts
    claimed: bool = True  # its claim is on disk (else, as the daemon's, it is never recorded)

    @property
    def epoch(self) -> int:
        return self.claim.epoch


@dataclass(slots=True)
class Worker:
    """One simulated node: its core, and the I/O it is given."""

    index: int
    node: str
    core: NodeCore
    running: dict[str, Running] = field(default_factory=dict)  # started attempts
    # Attempts that ended while the disk was full: (task, claim, outcome), written when it frees.
    unrecorded: list[tuple[str, Running, Outcome]] = field(default_factory=list)
    wall_skew_ms: int = 0  # how far its wall clock is set off true time
    introduced: bool = False  # its core has had its first word from membership


class WorkSim:
    def __init__(self, seed: int, n: int, loss: float = 0.0, results: bool = True) -> None:
        self.seed = seed
        # Attempts leave result files (a digest each), held and copied as the daemon's are;
        # without, only the claim and lease rules are at work (the figures before results were
        # simulated).
        self.results = results
        self.rng = random.Random(seed)
        self.sim = Sim(
            n, seed, net=Network(loss=loss, delay_min_s=0.0005, delay_max_s=0.01), drift=0.05,
            ledger=True, meta=META,
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
        skew_ms = random.Random(f"{self.seed}/wall/{i}").randint(
            -WALL_SKEW_MS_MAX, WALL_SKEW_MS_MAX
        )
        worker = Worker(i, replica.node, self._new_core(replica), wall_skew_ms=skew_ms)
        replica.apply = partial(self._apply, worker)
        replica.on_synced.append(lambda: worker.core.caught_up(self._time(worker)))
        worker.core.start(self._time(worker))
        return worker

    def _new_core(self, replica: Replica) -> NodeCore:
        return NodeCore(
            replica.node,
            replica.ledger,
            CORE_CONFIG,
            CAPACITY,
            {},
            networked=True,
            sync=replica.sync,  # the replica takes and serves records through it
        )

    def _apply(self, w: Worker, version: Version, body: Body, remote: bool) -> list[StateChanged]:
        """A record stored in the node's replica: its core takes it in, as the daemon's does."""
        return w.core.apply(self._time(w), [(version, body)], remote)

    def _time(self, w: Worker) -> Time:
        """What the node's clocks read: its monotonic clock, and its wall clock, which runs at
        the same rate, set off by its skew."""
        local = self.sim.local_now(w.index)
        offset, _ = self.sim.clocks.get(self.sim.addr(w.index), (0.0, 1.0))
        return Time(local, WALL_EPOCH_MS + int((local - offset) * 1000) + w.wall_skew_ms)

    def _replica(self, i: int) -> Replica:
        assert self.sim.replicas is not None
        return self.sim.replicas[self.sim.addr(i)]

    # -- faults ---------------------------------------------------------------------------

    def kill(self, i: int) -> None:
        self.sim.crash(i)
        self.workers[i].running.clear()  # its processes die with it
        self.workers[i].unrecorded.clear()  # and what it had not written yet

    def restart(self, i: int) -> None:
        """Back with its state dir: a new core on the ledger it had, as the daemon's restart."""
        self.frozen.discard(i)
        self.sim.restart(i)
        w = self.workers[i]
        w.running.clear()
        w.unrecorded.clear()
        w.core = self._new_core(self._replica(i))
        w.introduced = False
        w.core.start(self._time(w))
        self._carry_out(w)

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
        w = self.workers[i]
        w.core.drain(self._time(w), None)
        self._carry_out(w)

    def check_drained(self, i: int, observer: int, tasks: dict[str, int]) -> None:
        """What the drained node ran when told to drain, it finished there (unless its claim
        lost a race to another node's: then that node's attempt is the task's)."""
        ledger = self.workers[observer].core.ledger
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
        ledger = self.workers[observer].core.ledger
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
        """One turn of the node's I/O: membership news, attempts that ended, results the disk
        can take again, and the core's timer when due."""
        t = self._time(w)
        membership = self.sim.cores[self.sim.addr(w.index)]
        events, membership.events = membership.events, []
        if events or not w.introduced:
            w.introduced = True
            w.core.members_changed(t, events, membership.members)
        for task, attempt in list(w.running.items()):
            if attempt.ends_at <= self.sim.now:
                failed = task.startswith("crash")
                self._ended(w, task, Outcome.FAILED if failed else Outcome.OK)
        if w.unrecorded and w.index not in self.full:
            for task, attempt, outcome in w.unrecorded:
                self._result(w, task, attempt, outcome)
            w.unrecorded.clear()
        due = w.core.next_deadline()
        if due is not None and due <= t.mono:
            w.core.tick(t)
        self._carry_out(w)
        if w.index not in self.gone:
            self._check(w)

    def _carry_out(self, w: Worker) -> None:
        while effects := w.core.take_effects():
            for effect in effects:
                if self.sim.addr(w.index) in self.sim.down:
                    w.core.take_effects()
                    return  # it left, or died: what it had still to do goes with it
                self._carry_out_one(w, effect)

    def _carry_out_one(self, w: Worker, effect: Effect) -> None:
        t = self._time(w)
        match effect:
            case Write():
                ok = self._write(w, effect.bodies)
                w.core.written(t, effect, ok, "" if ok else "disk full")
            case Start():
                duration = TASK_S * self.rng.uniform(0.8, 1.2)
                attempt = Running(effect.claim, self.sim.now + duration, effect.attempt)
                w.running[effect.task_id] = attempt
                if effect.write_claim:
                    attempt.claimed = self._write(w, (effect.claim,))
                    why = "" if attempt.claimed else "disk full"
                    w.core.claim_written(t, effect.task_id, attempt.claimed, why)
            case Stop():
                if effect.task_id in w.running:
                    self._ended(w, effect.task_id, effect.outcome)
            case CheckDisk():
                w.core.disk_checked(t, w.index not in self.full, "the simulated disk")
            case Announce():
                meta = {**META, "draining": effect.draining}
                self.sim.cores[self.sim.addr(w.index)].update_meta(t.mono, meta)
            case Leave():
                self._check_handed_off(w)
                self.sim.cores[self.sim.addr(w.index)].leave(t.mono)  # it says goodbye
                self.sim.run_for(0)
                self.sim.crash(w.index)
                self.gone.add(w.index)
            case CopyResult():  # copied at once if a node that holds it can be reached
                ledger = w.core.ledger
                if effect.attempt is None:  # a call's input
                    holders = ledger.holders.get(effect.digest, set()) | {effect.source}
                else:
                    holders = ledger.result_holders(effect.attempt)
                holders.discard(w.node)
                w.core.copied(t, effect.digest, any(self._reachable(w, h) for h in holders))
            case Log():
                pass

    def _reachable(self, w: Worker, node: str) -> bool:
        addr = self.sim.addr(int(node.removeprefix("n")))
        return addr not in self.sim.down and self.sim.can_talk(self.sim.addr(w.index), addr)

    def _held_alone(self, w: Worker) -> list[str]:
        """The done tasks whose credited result only `w` holds, as its ledger has it."""
        alone = []
        for view in w.core.ledger.tasks.values():
            attempt = view.ok_attempt() if view.state is State.DONE else None
            if attempt is None or attempt.result.digest is None:
                continue
            if w.core.ledger.result_holders(attempt) <= {w.node}:
                alone.append(view.task_id)
        return alone

    def _check_handed_off(self, w: Worker) -> None:
        """A drained node leaves only once no result is held by it alone (its peers are up and
        can copy them: the hand-off has no reason to time out here)."""
        alone = self._held_alone(w)
        if alone:
            raise InvariantBroken(
                f"seed {self.seed}: drained {w.node} left holding the only copy of {alone[:3]}"
            )

    def _write(self, w: Worker, bodies: tuple[Body, ...]) -> bool:
        """Store the node's records and push them; False (nothing stored) on a full disk."""
        if w.index in self.full:
            return False
        seen = max(w.core.ledger.max_stamps.values(), default=0)
        for body in bodies:
            if isinstance(body, ClaimRecord) and not body.released and body.stamp <= seen:
                raise InvariantBroken(
                    f"seed {self.seed}: {w.node} stamped a claim {body.stamp} no later than a "
                    f"stamp {seen} it had seen: clocks {WALL_SKEW_MS_MAX} ms apart break the order"
                )
            self.sim.write(w.index, body, SPREAD_WIDE)
        return True

    def _ended(self, w: Worker, task: str, outcome: Outcome) -> None:
        """An attempt's process ended: its result is recorded (once the disk takes it)."""
        attempt = w.running.pop(task)
        w.core.attempt_ended(self._time(w), task)
        if not attempt.claimed:  # its claim was never written: nothing of it is
            w.core.attempt_closed(self._time(w), task)
            self._carry_out(w)
        elif w.index in self.full:
            w.unrecorded.append((task, attempt, outcome))
        else:
            self._result(w, task, attempt, outcome)

    def _result(self, w: Worker, task: str, attempt: Running, outcome: Outcome) -> None:
        """The attempt's record, with its result (its files, named by a digest) held here, as
        the daemon writes them: RESULT, then REPLICA."""
        code = {Outcome.OK: 0, Outcome.FAILED: 1}.get(outcome)
        ms = int(self.sim.now * 1000)
        digest = None
        if self.results and outcome in (Outcome.OK, Outcome.FAILED):
            name = f"{task}/{attempt.epoch}/{w.node}"
            digest = hashlib.sha256(name.encode()).hexdigest()
        body = ResultRecord(
            task,
            attempt.epoch,
            attempt.number,
            outcome,
            code,
            ms,
            ms,
            0.0,
            0.0,
            0,
            digest,
            CAPACITY,
        )
        held = None if digest is None else w.core.ledger.replica_record(digest, w.node)
        self._write(w, (body,) if held is None else (body, held))
        w.core.attempt_closed(self._time(w), task)
        self._carry_out(w)

    def _check(self, w: Worker) -> None:
        """No attempt runs on under a claim its own ledger says lost (read from the ledger
        itself, not through the rules under test)."""
        for task, attempt in w.running.items():
            winner = w.core.ledger.tasks[task].winning_claim()
            if winner != (attempt.epoch, w.node):
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
        while not self._all_ended(names):
            if self.sim.now - began >= limit_s:
                raise InvariantBroken(
                    f"seed {self.seed}: the tasks did not all end within {limit_s} s"
                )
            self.step()
        ended = self.sim.now - began
        while not self._replicated(names):
            if self.sim.now - began >= limit_s:
                raise InvariantBroken(
                    f"seed {self.seed}: results were not all held by {REPLICAS} nodes "
                    f"within {limit_s} s"
                )
            self.step()
        return ended

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

    def _replicated(self, names: list[str]) -> bool:
        """Every done task's result is held by min(3, live) of the nodes still in the swarm."""
        live = [w for i, w in enumerate(self.workers) if i not in self.gone]
        ledger = live[0].core.ledger
        nodes = {w.node for w in live}
        want = min(REPLICAS, len(nodes))
        for name in names:
            attempt = ledger.tasks[name].ok_attempt()
            if attempt is None or attempt.result.digest is None:
                continue
            if len(ledger.result_holders(attempt) & nodes) < want:
                return False
        return True

    def duplicates(self, names: list[str]) -> int:
        """Attempts beyond one per task that ran (the crashing tasks' retries not counted)."""
        ledger = self._replica(min(set(range(len(self.workers))) - self.gone)).ledger
        ran = sum(len(ledger.tasks[n].attempts) for n in names if not n.startswith("crash"))
        return ran - sum(1 for n in names if not n.startswith("crash"))
