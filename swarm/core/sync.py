"""Ledger sync: what a node takes from its peers, holds back, pulls, pushes and serves.

Theory of operation
-------------------
One `LedgerSync` per node makes every decision of ledger replication that is not a rule of
replication.py's `Intake` (which records of one message to take) itself; the daemon and the
simulator carry out what it decides, each with its own I/O, so both run the same rules.

- *Taking* (`accept`): of the records an Intake wants, one too large or undecodable is passed
  over (every peer holds the same bytes: waiting for a better copy would stall its origin), and
  counted once per version; a RESULT its origin did not sign, or a TASK whose id is not its
  content's hash, is refused (the watermark stays below it: a genuine copy may come). Each kind
  of problem is logged once per origin. What is accepted is stored by the caller, then either
  `stored` (heartbeats chain: each replaces the last one stored) or `not_stored` (refused, so
  no watermark passes it); `raise_watermarks` then moves the watermarks a sync answer allows.
- *Pushes*: received pushes wait in a bounded queue (`PUSHES_QUEUED_MAX`) and are taken
  together. A push past a gap (an earlier one lost or reordered) is held back, at most
  `HELD_BACK_MAX` records per (origin, generation), and merged into the next push of that
  origin, so the record that fills the gap releases them in seq order. A gap also starts a
  pull from its origin: one at a time per origin, at most every `GAP_PULL_EVERY_S`, and only
  from a member not dead or gone.
- *Sending* (`spread`): fresh records go to `wide` members picked by the injected random, in
  pushes of at most `PUSH_RECORDS_MAX` records, each halved until its plain body fits one
  sealed datagram (`fits`: sealing adds a fixed header and tag, wire.PACKET_BODY_BYTES_MAX);
  a single record too large for any datagram is left to anti-entropy.
- *Serving* (`answer`): a `SyncAnswer` plans the frames that answer a peer's digest, origin by
  origin in seq order, within `SYNC_RECORDS_MAX` records in all; the caller reads each slice it
  asks for (`plan_slice` decides a slice from the records' sizes) and gets back the frame to
  send, and the closing frame's `upto` watermarks at the end.

Invariants: a watermark never passes a record this node lacks and could still get; every bound
is named; each passed-over version is counted once. Pure: no I/O, no clock (time comes in as
`now`), randomness injected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgpack

from swarm.core import gossip, identity, wire
from swarm.core.ledger import (
    Body,
    HeartbeatRecord,
    ResultRecord,
    TaskRecord,
    Version,
    body_from_plain,
    body_to_plain,
    task_record_problem,
)
from swarm.core.replication import Intake, Key, Watermarks, behind
from swarm.errors import BadRecordError

if TYPE_CHECKING:
    import random


PUSH_RECORDS_MAX = 8  # records in one push datagram (more go in several)
SPREAD_WIDE = 16  # fresh records go at once to this many members (or the gossip fanout, if more)
SYNC_EVERY_GOSSIPS = (
    5  # anti-entropy: a pull from a random live member every this many gossip rounds
)
HELD_BACK_MAX = 256  # pushed records kept per origin while an earlier one is missing
GAP_PULL_EVERY_S = 0.5  # a gap in an origin's pushes starts a pull at most this often
PUSHES_QUEUED_MAX = 256  # pushes waiting to be taken; beyond, they wait for anti-entropy
SYNC_RECORDS_MAX = 100_000  # records in one anti-entropy answer; the next one goes on
# Record bytes in one frame of an anti-entropy answer. With each record at most
# wire.RECORD_BODY_BYTES_MAX, a frame stays well inside what a peer takes (wire.FRAME_BYTES_MAX),
# whatever the records' sizes: a frame that a peer refuses would be sent again and again.
SYNC_FRAME_BYTES_MAX = 2 << 20
PASSED_OVER_KEPT_MAX = 10_000  # versions of passed-over records remembered, to count each once
REFUSALS_LOGGED_MAX = 1024  # (origin, reason) pairs whose refused records were logged
REFUSED_LOGGED_MAX = 1_000  # peers' refused TASK records remembered, so each is logged once


# -- the record codec (the database stores, and peers send, these bytes) -----------------------


def encode_body(body: Body) -> bytes:
    packed: bytes = msgpack.packb(body_to_plain(body), use_bin_type=True)
    return packed


def decode_body(blob: bytes) -> Body:
    """BadRecordError if the bytes are not a record body."""
    return body_from_plain(wire.unpack(blob, BadRecordError, "record body"))


@dataclass(frozen=True, slots=True)
class Checks:
    """How a peer's record is told genuine. The daemon checks signatures and content hashes;
    the simulator, whose nodes have no keys and name their tasks plainly, its stand-ins."""

    result_signed: Callable[[str, ResultRecord], bool] = identity.check_result
    task_problem: Callable[[TaskRecord], str | None] = task_record_problem


@dataclass(frozen=True, slots=True)
class Accepted:
    """A peer's record to store: as decoded, the bytes it came as, and what it supersedes."""

    version: Version
    body: Body
    raw: bytes
    replaces: Version | None = None


@dataclass(frozen=True, slots=True)
class RowSlice:
    """One frame's worth of an origin's records, in seq order."""

    rows: list[tuple[int, bytes]]  # (seq, body)
    oversized: list[int]  # seqs of records larger than any peer takes: passed over, not sent
    withheld: list[int]  # seqs this node refused itself (on load): not sent
    last: int  # the highest seq this slice covers; `after` when there was nothing past it


def plan_slice(
    sizes: Iterable[tuple[int, int]], after: int, bytes_max: int, withheld: Iterable[int]
) -> tuple[int, list[int], list[int]]:
    """From (seq, body size) in seq order past `after`: the last seq one frame covers (at most
    `bytes_max` bytes of bodies, one record at least), and the seqs in it that are oversized and
    withheld (neither is sent)."""
    skip = set(withheld)
    last, total, oversized, passed = after, 0, [], []
    for seq, size in sizes:
        if seq in skip:
            passed.append(seq)
        elif size > wire.RECORD_BODY_BYTES_MAX:
            oversized.append(seq)
        elif total + size > bytes_max and total > 0:
            break
        else:
            total += size
        last = seq
    return last, oversized, passed


def fits(push: wire.RecordsPush) -> bool:
    """Whether a push fits one sealed datagram (the seal adds a fixed header and tag)."""
    return len(wire.encode(wire.ledger_message_to_plain(push))) <= wire.PACKET_BODY_BYTES_MAX


def fitting(copies: tuple[wire.RecordCopy, ...]) -> list[wire.RecordsPush]:
    """`copies` in as few pushes as hold them: halved until each fits one datagram; a single
    record too large for any is left out (to anti-entropy)."""
    push = wire.RecordsPush(copies)
    if fits(push):
        return [push]
    if len(copies) <= 1:
        return []
    half = len(copies) // 2
    return fitting(copies[:half]) + fitting(copies[half:])


@dataclass(frozen=True, slots=True)
class SliceAsk:
    """A slice of stored records the answer needs next: past `after`, at most `limit` of them,
    none past `upto` (the ledger's high seq as the answer began: a record still being written
    may be in the file already, and is not served before it is written)."""

    key: Key
    after: int
    limit: int
    withheld: frozenset[int]
    upto: int


class LedgerSync:
    """One node's ledger-sync decisions and the state they need (see the module doc)."""

    def __init__(self, rng: random.Random, checks: Checks | None = None) -> None:
        self.rng = rng
        self.checks = checks or Checks()
        self.bad_records = 0  # peers' records that did not decode: passed over
        self.forged_records = 0  # peers' RESULT records not signed by their origin: refused
        self.refused_records = 0  # records passed over: too large, or undecodable
        self.refused_tasks = 0  # TASK records whose id is not their content's hash
        self.gap_pulls = 0  # pulls started because a push showed we missed records
        self.said: list[str] = []  # warnings for the adapter to log (take_said), each once
        # Seqs of our own ledger file's records refused on load, per (origin, generation):
        # never served, or every peer would refuse them and stall that origin.
        self.withheld: dict[Key, frozenset[int]] = {}
        self._passed_over: set[tuple[str, int, int]] = set()  # a bounded number
        self._refusals_logged: set[tuple[str, str]] = set()  # (origin, reason): said once
        self._refused_logged: set[Version] = set()
        self._withheld_logged: set[Key] = set()
        self._heartbeats: dict[Key, Version] = {}  # peers' last stored heartbeats
        # Pushed records past a gap, per (origin, generation): seq -> record as sent.
        self._held_back: dict[Key, dict[int, bytes]] = {}
        self._pulling: set[str] = set()  # origins being pulled from after a gap in a push
        self._pulled_at: dict[str, float] = {}
        self._pushes: list[wire.RecordsPush] = []  # received, waiting to be taken

    # -- taking records ----------------------------------------------------------------------

    @staticmethod
    def intake(high_seq: Mapping[Key, int], me: Key, asked: Watermarks | None) -> Intake:
        """The intake of one message: a push (`asked` None) or the answer to our digest."""
        return Intake(high_seq, me, asked)

    def accept(self, records: Iterable[wire.RecordCopy], intake: Intake) -> list[Accepted]:
        """Of `records`, those to store, decoded; the others passed over or refused."""
        out: list[Accepted] = []
        beats: dict[Key, Version] = {}
        for origin, generation, seq, raw in records:
            if not intake.wants(origin, generation, seq):
                continue
            key = (origin, generation)
            body = self._checked(key, seq, raw, intake)
            if body is None:
                continue
            intake.took(key, seq)
            version = Version(origin, generation, seq)
            previous = None
            if isinstance(body, HeartbeatRecord):
                previous = beats.get(key, self._heartbeats.get(key))
                beats[key] = version
            out.append(Accepted(version, body, raw, previous))
        return out

    def _checked(self, key: Key, seq: int, raw: bytes, intake: Intake) -> Body | None:
        """The record's body if it may be stored; else None, having passed over or refused it."""
        # Every peer holds the same bytes of a record, so waiting for a better copy of one that
        # is too large or does not decode (a newer version's) would stall its origin here for
        # good: count it, say so once, and pass over it.
        if len(raw) > wire.RECORD_BODY_BYTES_MAX:
            self.passed_over(key, seq, "too large", f"{len(raw)} bytes")
            intake.took(key, seq)
            return None
        try:
            body = decode_body(raw)
        except BadRecordError as exc:
            self.bad_records += 1
            self.passed_over(key, seq, "undecodable", str(exc))
            intake.took(key, seq)
            return None
        if isinstance(body, ResultRecord) and not self.checks.result_signed(key[0], body):
            self.forged_records += 1  # not its origin's word: a genuine copy may come
            intake.refuse(key, seq)
            return None
        if isinstance(body, TaskRecord) and self._refuse_task(Version(*key, seq), body):
            intake.refuse(key, seq)  # forged as a result can be: a genuine copy may come
            return None
        return body

    def stored(self, accepted: Iterable[Accepted]) -> None:
        """The accepted records are stored: their heartbeats are the ones later ones replace."""
        for row in accepted:
            if isinstance(row.body, HeartbeatRecord):
                self._heartbeats[(row.version.origin, row.version.generation)] = row.version

    @staticmethod
    def not_stored(accepted: Iterable[Accepted], intake: Intake) -> None:
        """Storing them failed: nothing of this message may count as held."""
        for row in accepted:  # in seq order per origin: the first of each is the one to hold at
            intake.refuse((row.version.origin, row.version.generation), row.version.seq)

    @staticmethod
    def raise_watermarks(intake: Intake, upto: Watermarks, high_seq: dict[Key, int]) -> None:
        """Once the accepted records are applied: what a sync answer's `upto` lets us raise."""
        for key, seq in list(intake.watermarks(upto)):
            high_seq[key] = seq

    def passed_over(self, key: Key, seq: int, reason: str, detail: str = "") -> None:
        """A record passed over: counted once (a record too large to send is passed over each
        time a peer asks), and logged once for each origin and reason."""
        version = (key[0], key[1], seq)
        if version in self._passed_over:
            return
        if len(self._passed_over) < PASSED_OVER_KEPT_MAX:
            self._passed_over.add(version)
        self.refused_records += 1
        said = (key[0], reason)
        if said not in self._refusals_logged and len(self._refusals_logged) < REFUSALS_LOGGED_MAX:
            self._refusals_logged.add(said)
            detail = f" ({detail})" if detail else ""
            self.said.append(
                f"record {key[0][:8]}/{key[1]}/{seq} passed over: {reason}{detail} "
                "(logged once for this origin)"
            )

    def _refuse_task(self, version: Version, body: TaskRecord) -> bool:
        """Whether a peer's TASK record must be refused: its id is not its content's hash."""
        problem = self.checks.task_problem(body)
        if problem is None:
            return False
        if version not in self._refused_logged:
            self.refused_tasks += 1
            if len(self._refused_logged) < REFUSED_LOGGED_MAX:
                self._refused_logged.add(version)
                self.said.append(f"refused a task record of {version} from a peer: {problem}")
        return True

    # -- pushes ------------------------------------------------------------------------------

    def queue_push(self, push: wire.RecordsPush) -> bool:
        """Keep a received push to take; False when too many wait (anti-entropy brings it)."""
        if len(self._pushes) >= PUSHES_QUEUED_MAX:
            return False
        self._pushes.append(push)
        return True

    def queued(self) -> tuple[wire.RecordCopy, ...]:
        """Every queued push's records, taken together (a push taken while an earlier one is
        still being stored would look like a gap), merged with those held back for their
        origins and in seq order; empty when none waits."""
        pushes, self._pushes = self._pushes, []
        return self.with_held_back(tuple(copy for push in pushes for copy in push.records))

    def with_held_back(self, records: Iterable[wire.RecordCopy]) -> tuple[wire.RecordCopy, ...]:
        """Pushed records and those held back for their origins, in seq order."""
        merged: dict[tuple[str, int, int], bytes] = {}
        for origin, generation, seq, raw in records:
            merged[(origin, generation, seq)] = raw
        for key in {(origin, generation) for origin, generation, _ in merged}:
            for seq, raw in self._held_back.pop(key, {}).items():
                merged.setdefault((*key, seq), raw)
        return tuple((*version, raw) for version, raw in sorted(merged.items()))

    def pushed(
        self,
        ordered: Iterable[wire.RecordCopy],
        intake: Intake,
        high_seq: Mapping[Key, int],
        now: float,
        members: Mapping[str, gossip.Member],
    ) -> list[gossip.Member]:
        """After a push was taken: hold back the records past a gap, and return the members to
        pull from now, their gaps being worth a pull (`pull_done` when each ends)."""
        for origin, generation, seq, raw in ordered:
            if seq > high_seq.get((origin, generation), 0) + 1:
                held = self._held_back.setdefault((origin, generation), {})
                if len(held) < HELD_BACK_MAX:
                    held[seq] = raw
        pulls = []
        for origin, _ in sorted(intake.gaps):
            # We missed some of its records (a lost or dropped push): fetch them now, not at
            # the next anti-entropy round, since a missed claim means a duplicate run.
            if (
                origin in self._pulling
                or now - self._pulled_at.get(origin, -1e9) < GAP_PULL_EVERY_S
            ):
                continue
            member = members.get(origin)
            if member is not None and member.state not in gossip.GONE:
                self._pulling.add(origin)
                self._pulled_at[origin] = now
                self.gap_pulls += 1
                pulls.append(member)
        return pulls

    def pull_done(self, origin: str) -> None:
        self._pulling.discard(origin)

    def held_back(self, key: Key) -> Mapping[int, bytes]:
        """The records of `key` held back now (seq -> body), to look at."""
        return self._held_back.get(key, {})

    # -- sending -----------------------------------------------------------------------------

    def spread(
        self, copies: Sequence[wire.RecordCopy], peers: Sequence[gossip.Addr], wide: int
    ) -> tuple[list[gossip.Addr], list[wire.RecordsPush]]:
        """Fresh records of ours: the members they go to at once, and the pushes (datagrams),
        each to every one of them. Anti-entropy catches the rest."""
        if not copies or not peers:
            return [], []
        fanout = self.rng.sample(list(peers), min(wide, len(peers)))
        pushes: list[wire.RecordsPush] = []
        for start in range(0, len(copies), PUSH_RECORDS_MAX):
            pushes += fitting(tuple(copies[start : start + PUSH_RECORDS_MAX]))
        return fanout, pushes

    # -- serving -----------------------------------------------------------------------------

    def answer(
        self, high_seq: Mapping[Key, int], digest: Watermarks, frame_rows_max: int
    ) -> SyncAnswer:
        return SyncAnswer(self, high_seq, digest, frame_rows_max)

    def take_said(self) -> list[str]:
        said, self.said = self.said, []
        return said

    def withheld_served(self, key: Key) -> None:
        if key not in self._withheld_logged:
            self._withheld_logged.add(key)
            count = len(self.withheld.get(key, ()))
            self.said.append(
                f"not serving to peers the {count} record(s) of {key[0][:8]}/{key[1]} refused "
                "on load"
            )


@dataclass(slots=True)
class SyncAnswer:
    """The frames that answer one digest: what we hold past it, origin by origin in seq order,
    `SYNC_RECORDS_MAX` records at most (the peer asks again for the rest). The caller asks
    `next_ask()` which slice to read, hands it to `took()` (a frame to send, or None), and sends
    `last()` when `next_ask()` says no more."""

    sync: LedgerSync
    high_seq: Mapping[Key, int]
    digest: Watermarks
    frame_rows_max: int
    budget: int = SYNC_RECORDS_MAX
    upto: Watermarks = field(default_factory=dict)
    _todo: list[tuple[Key, int]] = field(default_factory=list)
    _current: tuple[Key, int, int] | None = None  # (key, after, its high seq when begun)

    def __post_init__(self) -> None:
        self._todo = list(behind(self.high_seq, self.digest))[::-1]

    def next_ask(self) -> SliceAsk | None:
        if self.budget <= 0:
            return None
        if self._current is None:
            if not self._todo:
                return None
            key, after = self._todo.pop()
            self._current = (key, after, self.high_seq[key])
        key, after, high = self._current
        limit = min(self.frame_rows_max, self.budget)
        return SliceAsk(key, after, limit, self.sync.withheld.get(key, frozenset()), high)

    def took(self, part: RowSlice) -> wire.SyncBatch | None:
        assert self._current is not None, "took() without next_ask()"
        key, after, high = self._current
        if part.last == after:
            self.upto[key] = high  # all of it: gaps are records that no longer exist
            self._current = None
            return None
        for seq in part.oversized:
            # No peer would take it: sending it would only get the frame refused.
            self.sync.passed_over(key, seq, "too large for any peer to take; not sent")
        if part.withheld:
            self.sync.withheld_served(key)
        self.budget -= len(part.rows) + len(part.oversized) + len(part.withheld)
        self._current = (key, part.last, high)
        self.upto[key] = part.last
        if not part.rows:
            return None
        return wire.SyncBatch(tuple((key[0], key[1], s, b) for s, b in part.rows), False, {})

    def last(self) -> wire.SyncBatch:
        return wire.SyncBatch((), True, self.upto)
