"""A simulated node's copy of the ledger, replicated through the node's LedgerSync.

Theory of operation: a `Replica` holds the records its node has (as decoded bodies and as the
bytes they are stored and sent as) and the `Ledger` they fold into. It takes pushes and sync
answers, and plans the frames that answer a peer's digest, through a `LedgerSync` (core/sync.py),
the object the daemon runs: the same held-back buffer, gap-pull decisions, intake, passed-over
and forged-record rules, and frame budgets. Only the storage differs (a dict instead of SQLite,
a write that fails when the scenario says so), and the checks of signatures and content hashes,
for which simulated nodes (with no keys) use stand-ins. Invariants, checked after every message
taken: a replica never claims (in its digest) a record it lacks and could still get; a stored
record is the one its origin wrote; a done task stays done.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import replace

from swarm.core import wire
from swarm.core.gossip import Member
from swarm.core.ledger import (
    Body,
    Ledger,
    LostRecord,
    ResultRecord,
    State,
    StateChanged,
    TaskRecord,
    Version,
)
from swarm.core.replication import Intake, Key
from swarm.core.sync import (
    SYNC_FRAME_BYTES_MAX,
    Checks,
    LedgerSync,
    RowSlice,
    SliceAsk,
    encode_body,
    plan_slice,
)

FRAME_RECORDS = 64  # records per frame of a simulated sync answer (the daemon's are larger)


class InvariantBroken(AssertionError):
    """A property that must hold after every step did not; the message names the seed."""


def sim_proof(origin: str) -> bytes:
    """A simulated node's signature of its RESULT records (its nodes have no keys)."""
    return b"signed by " + origin.encode()


def _signed(origin: str, body: ResultRecord) -> bool:
    return body.proof == sim_proof(origin)


def _task_problem(body: TaskRecord) -> str | None:
    """The simulator names a task by its id (work.py reads them so): a TASK record whose id is
    not its name is one whose content does not match its id."""
    return None if body.task_id == body.name else f"task {body.task_id} is not named {body.name}"


# The simulator's stand-ins for the daemon's signature and content-hash checks.
SIM_CHECKS = Checks(result_signed=_signed, task_problem=_task_problem)


class Replica:
    """One node's copy of the ledger: the records it holds, and the Ledger they fold into. It
    takes pushes and sync answers, and serves sync requests, through the node's LedgerSync,
    as the daemon does: only the storage is simulated."""

    def __init__(
        self,
        node: str,
        generation: int,
        truth: dict[Version, Body],
        seed: int,
        rng: random.Random,
        untakeable: set[Version],
    ) -> None:
        self.node = node
        self.generation = generation
        self.ledger = Ledger()
        self.records: dict[Key, dict[int, Body]] = {}
        self.raw: dict[Key, dict[int, bytes]] = {}  # the same records, as stored and sent
        self.contiguous: dict[Key, int] = {}  # seqs 1..n all held (or no peer can take them)
        self.seq = 0
        self.next_sync = 0.0  # on the node's own clock
        self.sync = LedgerSync(rng, SIM_CHECKS)
        self._truth = truth  # every record ever written, by version: what a copy must equal
        self._untakeable = untakeable  # records too large for any peer: never held but here
        self._seed = seed
        self.listeners: list[Callable[[StateChanged], None]] = []  # told of each state change
        # Folds a stored record into the ledger (the node's core does, when there is one):
        # (version, body, remote) -> the state changes.
        self.apply: Callable[[Version, Body, bool], list[StateChanged]] = (
            lambda version, body, remote: self.ledger.apply(version, body)
        )
        self.on_synced: list[Callable[[], None]] = []  # told when a sync answer was all taken

    @property
    def me(self) -> Key:
        return (self.node, self.generation)

    def restarted(self) -> None:
        """The daemon keeps its sync state (held-back records, pulls) in memory: a restart
        starts it afresh, while the ledger stays (it is on disk)."""
        self.sync = LedgerSync(self.sync.rng, SIM_CHECKS)

    def write(self, body: Body) -> wire.RecordCopy:
        if isinstance(body, ResultRecord):
            body = replace(body, proof=sim_proof(self.node))  # a result is its runner's word
        self.seq += 1
        version = Version(self.node, self.generation, self.seq)
        self._truth[version] = body
        raw = encode_body(body)
        if len(raw) > wire.RECORD_BODY_BYTES_MAX:
            self._untakeable.add(version)
        self._store(version, body, raw, remote=False)
        return (self.node, self.generation, self.seq, raw)

    def take_push(
        self,
        push: wire.RecordsPush,
        now: float,
        members: Mapping[str, Member],
        fails: Callable[[], bool] = lambda: False,
    ) -> list[Member]:
        """A push, as the daemon takes it (with the records held back for its origins); returns
        the members to pull from at once, for the gaps it showed."""
        if not self.sync.queue_push(push):
            return []
        ordered = self.sync.queued()
        intake = self.sync.intake(self.ledger.high_seq, self.me, None)
        self._take(ordered, intake, {}, fails)
        pulls = self.sync.pushed(ordered, intake, self.ledger.high_seq, now, members)
        self.check_watermarks()
        return pulls

    def take_answer(
        self,
        frames: tuple[wire.SyncBatch, ...],
        asked: dict[Key, int],
        fails: Callable[[], bool] = lambda: False,
        cut_after: int | None = None,
    ) -> None:
        """A sync answer to the digest `asked`, as the daemon takes it: one Intake for all its
        frames, its watermarks only with the last (`cut_after` frames arrive when the stream is
        cut); each frame is stored whole or, when `fails()`, not at all (the disk said no):
        then its records are refused, and their watermarks stay below them."""
        intake = self.sync.intake(self.ledger.high_seq, self.me, asked)
        for number, batch in enumerate(frames):
            if cut_after is not None and number >= cut_after:
                break  # the stream broke: no watermark moves
            self._take(batch.records, intake, batch.upto if batch.done else {}, fails)
        else:
            for told in self.on_synced:  # its last frame taken: caught up with that peer
                told()
        self.check_watermarks()

    def _take(
        self,
        records: tuple[wire.RecordCopy, ...],
        intake: Intake,
        upto: dict[Key, int],
        fails: Callable[[], bool],
    ) -> None:
        accepted = self.sync.accept(records, intake)
        if accepted and fails():
            self.sync.not_stored(accepted, intake)
            return
        self.sync.stored(accepted)
        for row in accepted:
            self._store(row.version, row.body, row.raw)
        self.sync.raise_watermarks(intake, upto, self.ledger.high_seq)

    def answer(self, digest: dict[Key, int]) -> tuple[wire.SyncBatch, ...]:
        """The frames that answer a peer's digest, planned by LedgerSync as the daemon's are."""
        plan = self.sync.answer(self.ledger.high_seq, digest, FRAME_RECORDS)
        frames = []
        while (ask := plan.next_ask()) is not None:
            batch = plan.took(self._slice(ask))
            if batch is not None:
                frames.append(batch)
        frames.append(plan.last())
        return tuple(frames)

    def _slice(self, ask: SliceAsk) -> RowSlice:
        """The held records past `ask.after`, as db.rows_after reads them from the database."""
        held = self.raw.get(ask.key, {})
        seqs = sorted(s for s in held if ask.after < s <= ask.upto)[: ask.limit]
        last, oversized, passed = plan_slice(
            ((s, len(held[s])) for s in seqs), ask.after, SYNC_FRAME_BYTES_MAX, ask.withheld
        )
        skipped = set(oversized) | set(passed)
        return RowSlice(
            [(s, held[s]) for s in seqs if s <= last and s not in skipped], oversized, passed, last
        )

    def check_watermarks(self) -> None:
        for key, high in self.ledger.high_seq.items():
            if high > self._contiguous(key):
                raise InvariantBroken(
                    f"seed {self._seed}: {self.node} claims {key} up to {high} "
                    f"but holds only up to {self.contiguous.get(key, 0)}"
                )

    def _contiguous(self, key: Key) -> int:
        """How far this replica holds every record of `key` that a peer could give it."""
        held = self.records.get(key, {})
        run = self.contiguous.get(key, 0)
        while run + 1 in held or Version(*key, run + 1) in self._untakeable:
            run += 1
        self.contiguous[key] = run
        return run

    def _store(self, version: Version, body: Body, raw: bytes, remote: bool = True) -> None:
        if self._truth.get(version) != body:
            raise InvariantBroken(f"seed {self._seed}: {self.node} got a wrong copy of {version}")
        key = (version.origin, version.generation)
        held = self.records.setdefault(key, {})
        if version.seq in held:
            return
        held[version.seq] = body
        self.raw.setdefault(key, {})[version.seq] = raw
        self._contiguous(key)
        for change in self.apply(version, body, remote):
            self._check(change, body)
            for listener in self.listeners:
                listener(change)

    def _check(self, change: StateChanged, body: Body) -> None:
        """A done task stays done, unless its result was declared lost with every node that
        held it (holding.py): then it runs again."""
        lost = isinstance(body, LostRecord) and body.task_id == change.task_id
        if change.old is State.DONE and change.new is not State.DONE and not lost:
            raise InvariantBroken(
                f"seed {self._seed}: {self.node} saw done task {change.task_id} become {change.new}"
            )
