"""The ledger's replication, carried out: the I/O around the node's LedgerSync (core/sync.py),
which makes every decision.

Theory of operation
-------------------
Fresh records of this node go out at once, in pushes to a few members: what is written in one
turn of the event loop goes together (the claims of one pass share their datagrams). Pushes
from peers are queued and taken a batch at a time, everything that arrived meanwhile together
(one commit for a burst, and no gap seen for a push still being stored); records past a gap are
held back, and the gap starts a pull from their origin. Now and then (anti-entropy) a random
member is asked for what it holds past this node's digest; a peer's such request is answered in
frames read a slice at a time from the ledger file. A record is applied only after it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

import aiosqlite

from swarm import statedir
from swarm.core import gossip, wire
from swarm.core.ledger import Ledger
from swarm.core.node import NodeCore
from swarm.core.replication import Intake, ours_ahead
from swarm.core.sync import SPREAD_WIDE, SYNC_EVERY_GOSSIPS
from swarm.daemon import db
from swarm.daemon.config import NodeConfig
from swarm.daemon.net import GossipNet
from swarm.daemon.records import RecordLog
from swarm.errors import SwarmError

log = logging.getLogger("swarm.daemon.replicator")

# Until a pull has caught this node up once (it claims nothing before), the wait before the next,
# at first: it doubles with each pull, up to the sync interval.
SYNC_FIRST_EVERY_S = 0.05


class Host(Protocol):
    """What the replicator needs of its node."""

    node_id: str
    generation: int
    config: NodeConfig
    ledger: Ledger
    core: NodeCore
    writer: db.LedgerWriter | None
    membership: gossip.Membership | None
    log: RecordLog  # what this node has written: its last seq
    state: statedir.StateDir

    def tell(self, method: Callable[..., object], *args: object) -> None: ...
    def apply_rows(self, rows: list[db.Row]) -> None: ...
    def clash(self, why: str) -> None: ...
    def may_write(self) -> None: ...


class Replicator:
    def __init__(self, node: Host, rng: random.Random) -> None:
        self.node = node
        self.rng = rng
        self.net: GossipNet | None = None
        self.reader: aiosqlite.Connection | None = None  # for answering peers' digests
        self._tg: asyncio.TaskGroup | None = None
        self._outgoing: list[db.Row] = []  # our fresh records, pushed at the end of this turn
        self._taking_pushes = False
        self._met = asyncio.Event()  # set when membership changes (see sync_loop)
        self._frame_at = -1e9  # when a frame of a sync answer last came in (monotonic)

    def serve(self, tg: asyncio.TaskGroup, gossip_net: GossipNet) -> None:
        self._tg, self.net = tg, gossip_net

    async def open_reader(self, path: Path) -> None:
        self.reader = await db.open_reader(path)

    async def close_reader(self) -> None:
        # Its thread would keep the process alive after the node stopped.
        if self.reader is not None:
            reader, self.reader = self.reader, None
            await reader.close()

    # -- our records out ----------------------------------------------------------------

    def spread(self, rows: list[db.Row]) -> None:
        """Send fresh records of ours at once to a few members (anti-entropy catches the rest).
        What is written in one turn of the event loop goes out together."""
        if self.net is None or self.node.membership is None:
            return
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.extend(rows)

    def _flush(self) -> None:
        rows, self._outgoing = self._outgoing, []
        membership = self.node.membership
        if self.net is None or membership is None or not rows:
            return
        peers = [m.addr for m in membership.live_members() if m.node != self.node.node_id]
        # Claims and results are what keeps two nodes off one task: to every member of a small
        # swarm (anti-entropy does the rest in a large one). Heartbeats too: a member that
        # missed one would see a gap in this node's records that no later push fills (the next
        # heartbeat supersedes it), and hold back everything after it until it pulls.
        wide = max(SPREAD_WIDE, self.node.config.gossip.gossip_nodes)
        copies = [
            (r.version.origin, r.version.generation, r.version.seq, db.encode(r.body)) for r in rows
        ]
        fanout, pushes = self.node.core.sync.spread(copies, peers, wide)
        for push in pushes:
            self.net.send_records(fanout, push)

    # -- peers' records in --------------------------------------------------------------

    def on_push(self, push: wire.RecordsPush) -> None:
        if self._tg is None or not self.node.core.sync.queue_push(push):
            return  # too busy: anti-entropy brings them later
        if not self._taking_pushes:
            self._tg.create_task(self._take_pushes())
            self._taking_pushes = True

    async def _take_pushes(self) -> None:
        """Take pushes one batch at a time, everything that arrived meanwhile together."""
        try:
            while records := self.node.core.sync.queued():
                await self._take_push(records)
        finally:
            self._taking_pushes = False

    async def _take_push(self, ordered: tuple[wire.RecordCopy, ...]) -> None:
        """Take pushed records (with those held back, in seq order); then start the pulls that
        the gaps they showed are worth."""
        sync, ledger = self.node.core.sync, self.node.ledger
        intake = self._intake(None)
        await self._take_records(ordered, intake, {})
        membership = self.node.membership
        members = membership.members if membership is not None else {}
        for member in sync.pushed(ordered, intake, ledger.high_seq, time.monotonic(), members):
            assert self._tg is not None  # pushes are taken only while serving
            self._tg.create_task(self.pull(member, done=sync.pull_done))

    def taken_since(self, seconds: float) -> bool:
        """Whether a frame of a sync answer came in within the last `seconds`."""
        return time.monotonic() - self._frame_at < seconds

    def _clashes(self, watermarks: wire.Watermarks) -> bool:
        """Whether a peer's watermarks hold records of this node's life that it never wrote:
        then the node stops (Node.clash) before it writes a record that clashes with them."""
        node = self.node
        seq = ours_ahead((node.node_id, node.generation), node.log.seq, watermarks)
        if seq is None:
            return False
        node.clash(
            f"a peer holds records of this node ({node.node_id[:8]}, generation "
            f"{node.generation}) up to #{seq}, past the last one written here (#{node.log.seq}): "
            "another daemon runs with this node's identity (its state dir was copied), or this "
            "ledger was restored from an older copy. Stopped, so as not to write records that "
            "clash with those. If this state dir is a copy of a running node's, give this "
            "machine a state dir of its own (swarm init --data-dir DIR): a copy cannot run as "
            "that node, with or without its ledger. If no other daemon runs as this node (its "
            f"ledger was restored, or lost its last records in a power cut), move "
            f"{node.state.db_path} aside with its -wal and -shm files: the node starts a new "
            "life and takes its records back from its peers"
        )
        return True

    def _intake(self, asked: wire.Watermarks | None) -> Intake:
        node = self.node
        return node.core.sync.intake(node.ledger.high_seq, (node.node_id, node.generation), asked)

    async def _take_records(
        self, records: tuple[wire.RecordCopy, ...], intake: Intake, upto: wire.Watermarks
    ) -> None:
        """Store and apply the peers' records LedgerSync accepts, then raise the watermarks
        that a sync answer's `upto` allows."""
        sync = self.node.core.sync
        accepted = sync.accept(records, intake)
        self._say()
        rows = [db.Row(a.version, a.body, a.replaces, raw=a.raw, remote=True) for a in accepted]
        try:
            if rows:
                assert self.node.writer is not None
                await self.node.writer.write(rows)
        except SwarmError as exc:
            sync.not_stored(accepted, intake)
            log.warning("could not store records from a peer: %s", exc)
            return
        sync.stored(accepted)
        self.node.apply_rows(rows)
        sync.raise_watermarks(intake, upto, self.node.ledger.high_seq)

    def _say(self) -> None:
        """Log what LedgerSync had to say (each thing once)."""
        for line in self.node.core.sync.take_said():
            log.warning("%s", line)

    # -- anti-entropy -------------------------------------------------------------------

    async def sync_loop(self) -> None:
        """Now and then, pull what a random member has and we lack. Until a pull has caught us
        up once (a node claims nothing before), the first comes as soon as a peer is met and
        the next ones soon after, the wait doubling up to the sync interval: a swarm formed a
        moment ago takes the first job at once, and a peer that never answers in full (its
        TCP port filtered) is asked no more often than any other in the end."""
        membership = self.node.membership
        assert membership is not None
        every_s = self.node.config.gossip.gossip_interval_s * SYNC_EVERY_GOSSIPS
        soon_s = SYNC_FIRST_EVERY_S
        me = self.node.node_id
        while True:
            if self.node.core.caught_up_once:
                await asyncio.sleep(every_s)
            elif all(m.node == me for m in membership.live_members()):
                # Alone so far: a member met wakes the loop, and is asked soon.
                soon_s = SYNC_FIRST_EVERY_S
                self._met.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._met.wait(), every_s)
                continue
            else:
                await asyncio.sleep(min(soon_s, every_s))
                soon_s *= 2
            peers = [m for m in membership.live_members() if m.node != me]
            if peers:
                await self.pull(self.rng.choice(peers))

    def members_changed(self) -> None:
        """Membership said something: a node that met its first peer pulls from it at once."""
        self._met.set()

    async def pull(self, peer: gossip.Member, done: Callable[[str], None] | None = None) -> None:
        """One anti-entropy exchange: what `peer` holds past our digest."""
        assert self.net is not None
        try:
            await self.net.pull(peer.addr, wire.SyncRequest(dict(self.node.ledger.high_seq)))
        except (
            OSError,
            TimeoutError,
            asyncio.IncompleteReadError,
            sqlite3.Error,
            ValueError,
        ) as exc:
            # (A database error, or a reader closed as the node stops, can come from answering
            # the peer's digest: never a reason to stop the node.)
            log.debug("anti-entropy with %s failed: %s", peer.node[:8], exc)
        finally:
            if done is not None:
                done(peer.node)

    def taker(self, digest: wire.Watermarks) -> Callable[[wire.SyncBatch], Awaitable[None]]:
        """How to take the frames of an answer to `digest`, a digest of ours: through one
        intake for all of them (replication.py). Its last frame taken, we have caught up with
        that peer (whichever of us asked)."""
        intake = self._intake(digest)

        async def take(batch: wire.SyncBatch) -> None:
            self._frame_at = time.monotonic()
            await self._take_records(batch.records, intake, batch.upto if batch.done else {})
            if batch.done and not self._clashes(batch.upto):
                self.node.may_write()
                self.node.tell(self.node.core.caught_up)

        return take

    async def answer(self, request: wire.SyncRequest) -> AsyncIterator[wire.SyncBatch]:
        """What we hold past the peer's digest, in bounded frames (LedgerSync plans them; the
        slices are read here). ValueError once the node's leave has closed the ledger's reader:
        an exchange the sync loop began meanwhile ends there, as one cut off does."""
        reader = self.reader
        if reader is None:
            raise ValueError("the node is leaving: its ledger is no longer read for peers")
        if self._clashes(request.digest):
            raise ValueError("another process writes in this node's name: it stops")
        sync, ledger = self.node.core.sync, self.node.ledger
        plan = sync.answer(ledger.high_seq, request.digest, db.SYNC_ROWS_MAX)
        while (ask := plan.next_ask()) is not None:
            part = await db.rows_after(
                reader, *ask.key, ask.after, ask.limit, withheld=ask.withheld, upto=ask.upto
            )
            batch = plan.took(part)
            self._say()
            if batch is not None:
                yield batch
        yield plan.last()
