"""Which results (and call inputs) a node should hold, and when one is lost: the replication
decisions.

Theory of operation: a done task's credited result is held by R = min(3, live) nodes, the first
R of the live members (not draining) by rendezvous hashing on its digest. A node queues the
results of tasks that become done, and all of them again when the members change (the chosen
set moves with them); after a short debounce it goes through the queue, and for each result it
should hold and does not, asks its adapter to copy it here (one copy at a time). A copy that
comes back whole is announced with a REPLICA record; one that no holder could give is tried again
later, unless every node known to hold it is dead or gone: then the first chosen node records the
result as lost, and the task runs again. A node that finds its copy damaged (corrupt, or part of it
gone) and cannot mend it from another holder says so (`damaged`) with a dropped REPLICA, and looks
at the result again: so when every copy turns out bad, the holders drop out one by one, none is
left, and the result is lost like one whose holders died. A drained node leaves only once no result is held by it
alone (`sole_holdings`).

The inputs of a Python call that has not ended (its pickled function and arguments, spec.PyCall)
are held the same way, by the R nodes chosen on their digests, so that the calls survive the loss
of the node that submitted them. An input is one blob, copied from the nodes that said they hold it
(and the task's submitter); one that no holder could give is tried again later, never declared
lost: the call's attempts then fail to fetch it, and its interruption cap ends it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from swarm.core.effects import CopyResult, Effect, Level, Log, Write
from swarm.core.ledger import (
    TERMINAL_STATES,
    Attempt,
    Ledger,
    LostRecord,
    ReplicaRecord,
    State,
    TaskView,
)
from swarm.core.policy import rendezvous_top

REPLICAS = 3  # a result is held by this many nodes (or every live one, if fewer)
REPLICATE_DEBOUNCE_S = 0.2
REPLICATE_RETRY_S = 2.0  # a result no holder could give is tried again after this long
SCAN_SLICE = 2_000  # queued results looked at in one tick
EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()  # the empty blob: every node holds it

Targets = Callable[[str], list[str]]  # digest -> the nodes that should hold it, in order
AllGone = Callable[[Iterable[str]], bool]  # whether every one of these nodes is dead or gone
# What a queued digest is: a result (its attempt), or a call's input (the node that submitted it).
Source = Attempt | str


def call_inputs(view: TaskView) -> tuple[str, ...]:
    """The input blobs of a task that is a Python call (none for a command)."""
    call = view.spec.call if view.spec is not None else None
    if call is None:
        return ()
    return (call.fn,) if call.args == "" else (call.fn, call.args)


class Holding:
    def __init__(self, me: str, ledger: Ledger) -> None:
        self.me = me
        self.ledger = ledger
        self._todo: dict[str, Source] = {}  # digest -> what it is
        self._due: float | None = None
        self._batch: list[tuple[str, Source]] = []  # being gone through
        self._retry: dict[str, Source] = {}
        self._copying: tuple[str, Source] | None = None
        self.dropping: dict[str, TaskView] = {}  # digest -> its task, while its drop is written

    def want(self, views: Iterable[TaskView], now: float) -> None:
        """Queue the credited results of these (done) tasks for a look."""
        for view in views:
            attempt = view.ok_attempt()
            if attempt is not None and attempt.result.digest is not None:
                self._todo[attempt.result.digest] = attempt
        self._soon(now)

    def want_inputs(self, views: Iterable[TaskView], now: float) -> None:
        """Queue the inputs of these Python calls (those not ended) for a look."""
        for view in views:
            if view.state not in TERMINAL_STATES:
                for digest in call_inputs(view):
                    self._todo.setdefault(digest, view.submitted[1])
        self._soon(now)

    def _soon(self, now: float) -> None:
        if self._todo and self._due is None:
            self._due = now + REPLICATE_DEBOUNCE_S

    @staticmethod
    def targets(digest: str, nodes: list[str]) -> list[str]:
        return rendezvous_top(digest, nodes, REPLICAS)

    def next_deadline(self) -> float | None:
        if self._copying is not None:
            return None  # `copied` goes on
        if self._batch:
            return -1.0
        return self._due

    def tick(self, now: float, targets: Targets) -> list[Effect]:
        if self._copying is not None:
            return []
        if not self._batch and self._due is not None and now >= self._due:
            self._batch, self._todo, self._due = list(self._todo.items()), {}, None
            self._batch.reverse()  # popped from the end: in the order queued
        for _ in range(min(SCAN_SLICE, len(self._batch))):
            digest, source = self._batch.pop()
            if digest == EMPTY_DIGEST or self.me in self._holders(digest, source):
                continue
            if self.me not in targets(digest):
                continue
            self._copying = (digest, source)
            if isinstance(source, str):
                return [CopyResult(digest, None, source)]
            return [CopyResult(digest, source)]
        if not self._batch and self._retry:
            for digest, attempt in self._retry.items():
                self._todo.setdefault(digest, attempt)
            self._retry = {}
            self._due = now + REPLICATE_RETRY_S
        return []

    def copied(
        self, digest: str, complete: bool, targets: Targets, all_gone: AllGone
    ) -> list[Effect]:
        """A copy asked for came back: whole (`complete`), or not."""
        if self._copying is None or self._copying[0] != digest:
            return []
        _, attempt = self._copying
        self._copying = None
        holders = self.ledger.holders.get(digest, set())
        if complete:
            if self.me in holders:
                return []
            # Looked at once more later: should the record not be written (a full disk), the
            # copy is made and announced again.
            self._retry[digest] = attempt
            return [Write((self.ledger.replica_record(digest, self.me),), "a replica record")]
        if isinstance(attempt, str):
            self._retry[digest] = attempt  # an input is never declared lost: see the top
            return []
        others = self.ledger.result_holders(attempt) - {self.me}
        if all_gone(others) and targets(digest)[0] == self.me:
            # Every node that held it is dead or gone: the task must run again.
            task = attempt.result.task_id
            lost = LostRecord(task, attempt.result.epoch, attempt.version.origin)
            text = f"the result of {task} is lost with its holders; it runs again"
            return [Log(Level.WARNING, text), Write((lost,), "a lost-result record")]
        self._retry[digest] = attempt  # a holder may come back: try later
        return []

    def damaged(self, view: TaskView, digest: str, now: float) -> list[Effect]:
        """This node found its copy of the result `digest` damaged (corrupt, or a part gone):
        if that is the task's credited result and this node a holder, it says it no longer is;
        then it looks at the result again, to copy it whole from another holder, or find it
        lost. (The result of an earlier attempt, damaged, changes nothing.)"""
        attempt = view.ok_attempt()
        if attempt is None or attempt.result.digest != digest or digest == EMPTY_DIGEST:
            return []
        if self.me not in self.ledger.result_holders(attempt):
            self.want([view], now)
            return []
        self.dropping[digest] = view  # looked at again once the drop is applied (`written`)
        text = f"the copy of the result of {view.task_id} held here is damaged; dropped"
        drop = self.ledger.replica_record(digest, self.me, dropped=True)
        return [Log(Level.WARNING, text), Write((drop,), "a dropped replica record")]

    def written(self, bodies: Iterable[object], now: float) -> None:
        """A Write went through (or failed): the results whose drop it carried are looked at
        again, now that the ledger no longer counts this node among their holders. (A drop
        that could not be written, the disk full, leaves the node a holder: the next read of
        the damaged copy finds it again, since what was corrupt was set aside.)"""
        for body in bodies:
            if isinstance(body, ReplicaRecord) and body.dropped:
                view = self.dropping.pop(body.digest, None)
                if view is not None:
                    self.want([view], now)

    def _holders(self, digest: str, source: Source) -> set[str]:
        if isinstance(source, str):  # a call's input
            return self.ledger.holders.get(digest, set())
        return self.ledger.result_holders(source)

    def sole_holdings(self, live_peers: int) -> int:
        """How many done tasks' results only this node holds (with live peers to take them)."""
        if live_peers < 1:
            return 0
        count = 0
        for task in self.ledger.tasks.values():
            for digest in call_inputs(task) if task.state not in TERMINAL_STATES else ():
                holders = self.ledger.holders.get(digest, set())
                if (holders | {task.submitted[1]}) <= {self.me}:
                    count += 1
            attempt = task.ok_attempt() if task.state is State.DONE else None
            if attempt is None or attempt.result.digest in (None, EMPTY_DIGEST):
                continue
            if self.ledger.result_holders(attempt) <= {self.me}:
                count += 1
        return count
