"""The daemon: the one asyncio adapter between the node's pure core and the world.

Theory of operation
-------------------
The decisions are the NodeCore's (swarm/core/node.py). This module wires the rooms that do the
I/O (records.py, runner.py, replicator.py, peers.py, transfer.py, memory.py, control_server.py),
gives the core its inputs with the time (`tell`), carries out the effects it returns
(`_carry_out`), and runs the one timer at its next deadline. Its place in the swarm (membership
and the gossip net started, joins, members remembered, the leave) is the gossiper's
(gossiper.py). One `asyncio.TaskGroup` holds everything the node runs: the ledger writer (group
commit), the memory sampler, the transport's loops, and a task per running attempt, copy or
write; the control socket's connections are tracked and closed at shutdown, so nothing outlives
`run()`.

Every change the node makes is a record: it gets the next version, is committed by the writer,
and only then applied, by the core, to the in-memory ledger. On start the node kills orphans of
attempts a killed daemon left running, sweeps partial blobs, loads the ledger, and the core's
first effects close every claim it still held with an `interrupted` result (committed before the
node serves), so those tasks run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import resource
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from swarm import connection, statedir
from swarm.connection import FRAME_BYTES_MAX
from swarm.core import gossip, identity, pressure, snapshot, wire
from swarm.core.effects import (
    Announce,
    CheckDisk,
    CopyResult,
    Leave,
    Log,
    Start,
    Stop,
    Time,
    Write,
)
from swarm.core.ledger import Body, Ledger, StateChanged, Version
from swarm.core.node import CoreConfig, NodeCore
from swarm.core.spec import Resources
from swarm.core.sync import LedgerSync
from swarm.daemon import db, heap, net, peers, resources
from swarm.daemon.clients import RemoteClients
from swarm.daemon.config import NodeConfig
from swarm.daemon.control_server import ControlServer
from swarm.daemon.executor import (
    DISK_FULL_FREE_BYTES,
    AnyAttempt,
    free_bytes,
)
from swarm.daemon.gossiper import Gossiper
from swarm.daemon.loopguard import LoopReports
from swarm.daemon.memory import MEMORY_SAMPLE_S, MemorySampler
from swarm.daemon.operations import Operations
from swarm.daemon.outputs import OutputStore
from swarm.daemon.procs import (
    NODE_DIR_TAG,
    NODE_TAG,
    kill_group,
    kill_orphans,
    node_dir_tag,
)
from swarm.daemon.records import RecordLog
from swarm.daemon.replicator import Replicator
from swarm.daemon.rundirs import RunDirs
from swarm.daemon.runner import AttemptRunner
from swarm.daemon.store import BlobStore
from swarm.daemon.transfer import ResultTransfer
from swarm.daemon.watches import Watches
from swarm.errors import (
    ConfigError,
    IdentityClashError,
    StorageFullError,
    SwarmError,
)
from swarm.statedir import StateDir

log = logging.getLogger("swarm.daemon.node")

RUN_DIRS_SPARE_MAX = 64  # empty run dirs kept for reuse
FDS_WANTED = 65_536  # the soft descriptor limit the daemon raises itself to, if allowed


# What a ledger record takes in the file, at least (about 250 bytes were measured for the TASK,
# CLAIM and RESULT of a shell task): how many records a file holds, told before it is read.
RECORD_BYTES_TYPICAL = 200
LOAD_PROBLEMS_LOGGED_MAX = 20  # unreadable or refused rows of the ledger file logged at start
# Committed rows applied in one go: a million committed together (a submission) are applied a
# slice at a time, so that their (version, body) pairs and the changes they make are not all
# held at once (a tenth of the daemon's peak, at a million).
APPLY_SLICE_ROWS = 10_000
WORKERS_CLOSE_S = 30.0  # the longest the Python workers may take to end as the node exits


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Node:
    def __init__(self, state: StateDir, config: NodeConfig) -> None:
        self.state = state
        self.config = config
        self.capacity = resources.probe(config.cpus, config.memory_bytes, config.gpus)
        if not config.takes_work:  # it offers nothing: no peer ranks a task for it
            self.capacity = Resources(0.0, 0, 0)
        self.labels: dict[str, str | int | float] = {  # the built-in ones are what it is
            **config.labels,
            **resources.builtin_labels(self.capacity),
        }
        self.store = BlobStore(state.blobs)
        self.outputs = OutputStore(self.store)
        self.run_dirs = RunDirs(state.runs, RUN_DIRS_SPARE_MAX)
        self.ledger = Ledger()
        self.writer: db.LedgerWriter | None = None
        guard = None
        if config.overcommit:
            budget = self.capacity.memory_bytes
            memfree = config.memfree_bytes or pressure.default_memfree(budget)
            guard = pressure.Guard(budget, memfree)
        # The node's decisions (swarm/core/node.py); made afresh on the loaded ledger in run().
        self.rng = random.Random()
        self.core = self._new_core("", guard, LedgerSync(self.rng))
        self._base_env = dict(os.environ)
        self._own_rss_kb = resources.own_peak_rss_kb()
        self.runner = AttemptRunner(
            self, self.run_dirs, self.outputs, self._base_env, lambda: self._own_rss_kb
        )
        self.started_ms = self._wall_ms()
        self._stop = asyncio.Event()
        self._fatal: SwarmError | None = None  # why the node stops at once (`clash`)
        # A node of a swarm writes nothing in its name until a peer's sync has shown that no
        # other process writes in it (replicator._clashes), or no peer answered for a lease
        # (may_write); `_unwritable` says why the writes waiting meanwhile were refused. Then the
        # close of the claims its last stop cut off goes first (`first` writes), and every
        # other write once that is done (`_opened`).
        self._writable = asyncio.Event()
        self._opened = asyncio.Event()
        self._unwritable: str | None = None
        self._ready = asyncio.Event()
        self.progress = asyncio.Event()  # set (and replaced) whenever a task's state changes
        self.changes = 0  # how many times it was set: a client's "changes" says what it saw
        self.watches = Watches()  # the tasks Python clients wait on (control op `watch`)
        # Called with each batch of state changes, in the loop: how what hosts the node (`swarm
        # run`) hears that its job is finished. Must be quick and never raise.
        self.change_hooks: list[Callable[[list[StateChanged]], None]] = []
        self._tg: asyncio.TaskGroup | None = None
        self._clients: set[connection.Channel] = set()  # control connections, local and remote
        self._server: asyncio.AbstractServer | None = None  # the control socket's
        self._timer: asyncio.TimerHandle | None = None  # the core's next deadline
        self._carrying = False  # carrying out the core's effects (inputs meanwhile queue theirs)
        self._halted = False
        self._side_tasks: set[asyncio.Task[None]] = set()  # copies, disk checks
        self.node_id = ""
        self.identity: identity.Identity  # loaded in run(), with the ledger it must match
        self.transfer: ResultTransfer  # made in run(), with the ledger whose holders it reads
        self._orphaned: list[tuple[str, int]] = []  # (task, epoch) left running by our last life
        self._stop_reason = "node stopped"
        self.membership: gossip.Membership | None = None
        self.ring = wire.KeyRing()
        self.left_out = snapshot.LeftOut()  # rows of the ledger file not loaded, and why
        self.replicator = Replicator(self, self.rng)
        self.net: net.GossipNet | None = None  # made, with the membership, by the gossiper
        self.gossiper = Gossiper(self)  # the membership room: start, join, members, leave
        self.generation = 0
        self.log = RecordLog()  # versions, signs and commits this node's records

    def _wall_ms(self) -> int:
        """This node's wall clock (skewed only in tests; see NodeConfig.clock_skew_ms)."""
        return wall_ms() + self.config.clock_skew_ms

    def now(self) -> Time:
        return Time(time.monotonic(), self._wall_ms())

    def _new_core(self, node_id: str, guard: pressure.Guard | None, sync: LedgerSync) -> NodeCore:
        config = CoreConfig(
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            lease_ttl_s=self.config.lease_ttl_s,
            claim_stagger_s=self.config.claim_stagger_s,
            claim_settle_s=self.config.claim_settle_s,
            claim_batch_max=self.config.claim_batch_max,
            takes_work=self.config.takes_work,
        )
        networked = self.config.bind is not None
        return NodeCore(
            node_id,
            self.ledger,
            config,
            self.capacity,
            self.labels,
            networked=networked,
            sync=sync,
            guard=guard,
        )

    @property
    def attempts(self) -> dict[str, AnyAttempt]:
        return self.runner.attempts

    # -- driving the core -----------------------------------------------------------------------

    def tell(self, method: Callable[..., object], *args: Any) -> None:
        """Give the core an input (one of its methods, called with the time first), then carry
        out what it asks."""
        method(self.now(), *args)
        self._carry_out()

    def _carry_out(self) -> list[asyncio.Task[bool]]:
        """Carry out the core's effects in order (those of inputs given meanwhile too), then
        re-arm the one timer at its next deadline. Returns the writes started. An effect that
        fails is logged and the others still carried out; the timer is re-armed whatever
        happens, since everything the node does on its own hangs on it."""
        writes: list[asyncio.Task[bool]] = []
        if self._carrying:
            return writes  # the outer call takes them
        self._carrying = True
        try:
            while effects := self.core.take_effects():
                for effect in effects:
                    try:
                        task = self._carry_out_one(effect)
                    except Exception:
                        log.exception("carrying out %s failed inside swarm", type(effect).__name__)
                        continue
                    if task is not None:
                        writes.append(task)
        finally:
            self._carrying = False
            self._arm()
        return writes

    def _carry_out_one(
        self, effect: Write | Start | Stop | CopyResult | CheckDisk | Announce | Leave | Log
    ) -> asyncio.Task[bool] | None:
        assert self._tg is not None
        match effect:
            case Write():
                if self._halted:
                    return None  # the writer has closed: the next life recovers from the ledger
                return self._tg.create_task(self._write(effect))
            case Start():
                self.runner.start(effect)
            case Stop():
                self.runner.stop(effect)
            case CopyResult():
                self.side_task(self._copy(effect))
            case CheckDisk():
                self.side_task(self._check_disk())
            case Announce():
                self.gossiper.announce()
            case Leave():
                self._stop_reason = effect.reason
                self.stop()
            case Log():
                log.log(int(effect.level), "%s", effect.text)
        return None

    def side_task(self, work: Coroutine[Any, Any, None]) -> None:
        """A task the node stops (cancels) when it stops, as it does its loops."""
        assert self._tg is not None
        task = self._tg.create_task(work)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _arm(self) -> None:
        """One timer for the whole core, at its next deadline. Re-armed only when that comes
        sooner than the timer set: one that fires early only ticks for nothing, and re-arms."""
        if self._tg is None or self._halted:
            return
        loop = asyncio.get_running_loop()
        if self._timer is not None and self._timer.when() <= loop.time():
            return  # it fires at the next turn of the loop: nothing can come sooner
        when = self.core.next_deadline()
        if when is None:
            return
        at = loop.time() + max(0.0, when - time.monotonic())
        if self._timer is not None:
            if self._timer.when() <= at:
                return
            self._timer.cancel()
        self._timer = loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.tell(self.core.tick)

    async def _write(self, effect: Write) -> bool:
        """Carry out a Write: commit, apply, gossip; its outcome goes back to the core."""
        ok, why = True, ""
        try:
            await self.append(list(effect.bodies), effect.replaces, first=effect.first)
        except Exception as exc:  # runs in the node's TaskGroup: must never raise
            if not isinstance(exc, SwarmError):
                log.exception("writing %s failed inside swarm", effect.what)
            ok, why = False, str(exc)
            if effect.claim_of is None:
                log.warning("%s not written: %s", effect.what, exc)
        self.tell(self.core.written, effect, ok, why)
        return ok

    async def _copy(self, effect: CopyResult) -> None:
        try:
            if effect.attempt is None:  # a call's input: one blob
                holders = self.ledger.holders.get(effect.digest, set()) | {effect.source}
                complete = await self.transfer.fetch_blob(effect.digest, sorted(holders))
            else:
                complete = (await self.transfer.copy_result(effect.attempt)).complete
        except (SwarmError, OSError) as exc:
            complete = False
            log.warning("could not copy result %s here: %s", effect.digest[:12], exc)
        self.tell(self.core.copied, effect.digest, complete)

    async def _check_disk(self) -> None:
        """Whether the state disk, full when an attempt last ended, has room again: until it
        does, every task claimed would fail on it (and, interrupted, come straight back)."""
        free = await asyncio.to_thread(free_bytes, self.state.runs)
        self.tell(self.core.disk_checked, free >= DISK_FULL_FREE_BYTES, str(self.state.root))

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until `stop()`; then interrupt running attempts, record them, and return."""
        lock = statedir.DaemonLock(self.state)
        conn = None
        try:
            meta = db.read_meta(self.state.db_path)
            self.node_id, self.generation = str(meta["node_id"]), int(meta["generation"])
            self.identity = statedir.load_identity(self.state)
            if self.identity.node_id != self.node_id:
                raise ConfigError(
                    f"{self.state.identity_path} is not the key of node {self.node_id} "
                    "that this ledger belongs to"
                )
            self._base_env[NODE_TAG] = self.node_id
            dir_tag = node_dir_tag(self.state.root)
            self._base_env[NODE_DIR_TAG] = dir_tag
            _raise_fd_limit()
            asyncio.get_running_loop().set_exception_handler(LoopReports())
            self._orphaned = await asyncio.to_thread(
                kill_orphans, self.state.runs, self.node_id, dir_tag
            )
            if self._orphaned:
                log.warning(
                    "killed %d attempt(s) left running by a previous daemon", len(self._orphaned)
                )
            await asyncio.to_thread(self.store.sweep_temp)  # partial blobs of a past life
            # A million tasks load without the collector scanning them; a small ledger loads
            # as it is (a collection and a freeze would only delay the node's start). A load
            # makes no reference cycles, bad rows included: what it made is frozen as it is.
            with heap.bulk(_records_estimate(self.state.db_path), cycle_free=True):
                loaded = await asyncio.to_thread(db.load_ledger, self.state.db_path)
            self.ledger = loaded.ledger
            self.left_out = snapshot.LeftOut.of(loaded.unreadable, loaded.refused)
            self.core.sync.refused_tasks = len(loaded.refused)
            withheld: dict[tuple[str, int], set[int]] = {}
            for v in loaded.refused_versions:
                withheld.setdefault((v.origin, v.generation), set()).add(v.seq)
            self.core.sync.withheld = {key: frozenset(seqs) for key, seqs in withheld.items()}
            for problem in loaded.unreadable[:LOAD_PROBLEMS_LOGGED_MAX]:
                log.warning("skipped an unreadable ledger row: %s", problem)
            for problem in loaded.refused[:LOAD_PROBLEMS_LOGGED_MAX]:
                log.warning("refused a task record of the ledger file: %s", problem)
            self.core = self._new_core(self.node_id, self.core.guard, self.core.sync)
            self.transfer = ResultTransfer(
                self.store,
                self.ledger,
                self.node_id,
                self.gossiper.member,
                self.gossiper.fetch,
                lambda task, digest: self.tell(self.core.damaged, task, digest),
            )
            seq = db.highest_seq(self.state.db_path, self.node_id, self.generation)
            self.log.open(self.node_id, self.generation, seq, self.identity)
            conn, writer = await db.open_writer(self.state.db_path, self.config.sync)
            await db.prune_heartbeats(conn)
            await self._serve(writer)
        finally:
            # Also when a loop failed with a bug: a node that cannot serve exits (for its
            # supervisor to start it again), and nothing left open keeps the process alive.
            # Its Python calls are stopped and its warm workers end (done already after a
            # graceful stop): an embedded node's process may live on after it failed. Its
            # commands' processes are left to the next start's kill_orphans, as ever. Halted
            # first: the core's timer must start nothing meanwhile.
            self._halted = True
            if self._timer is not None:
                self._timer.cancel()
            try:
                await self._close_workers()
            finally:  # (cancelled again meanwhile, the lock and the socket are let go all the same)
                if self._server is not None:  # (closed already after a graceful stop)
                    self._server.close()
                for client in list(self._clients):  # a client waiting on a reply hears EOF
                    client.close()
                if self.net is not None:
                    self.net.close()
                try:
                    await self.replicator.close_reader()
                    if conn is not None:
                        await conn.close()
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        self.state.socket_path.unlink()
                    lock.release()

    def stop(self) -> None:
        self._stop.set()

    def clash(self, why: str) -> None:
        """Stop at once with `why` as the error: another process writes records in this node's
        name (replicator.py). No attempt is recorded and no leave is said, since both would be
        written in that name; the processes of its attempts are killed."""
        if self._fatal is None:
            log.error("%s", why)
            self._fatal = IdentityClashError(why)
            self._refuse_writes(why)
            self._stop.set()

    async def _closed_stale(self, writes: list[asyncio.Task[bool]]) -> None:
        """Once the writes that close the claims of attempts the last stop cut off went
        through, every other write may go; if they failed (the log says why), the node stops:
        a supervisor may start it again. (Refused because the node stopped first, they are
        closed at its next start.)"""
        await self._writable.wait()  # (theirs too: there may be none)
        for write in writes:
            if not await write and self._unwritable is None:
                raise StorageFullError(
                    "the claims of attempts cut off by the last stop could not be closed"
                )
        self._opened.set()

    def may_write(self) -> None:
        """Writing in this node's name is safe from now on (see `_writable`)."""
        if not self._writable.is_set():
            self._writable.set()
            self.tell(self.core.may_write)

    @property
    def writable(self) -> bool:
        return self._writable.is_set()

    def _refuse_writes(self, why: str) -> None:
        """The writes still waiting to be safe fail, with `why`, and so do those to come."""
        if not self._opened.is_set():
            self._unwritable = why
            self._writable.set()
            self._opened.set()

    async def _close_workers(self) -> None:
        """The worker pool's close, on the way out whatever happened; bounded, and never raising
        over the error that brought the node down."""
        try:
            await asyncio.wait_for(self.runner.close(), WORKERS_CLOSE_S)
        except Exception:
            log.exception("closing the Python workers failed")

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def _serve(self, writer: db.LedgerWriter) -> None:
        self.writer = self.log.writer = writer
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self.runner.serve(tg)
            writer_task = tg.create_task(writer.run())
            # The core starts: it queues the pending tasks, and closes the claims of attempts
            # our last life left (written before anything else happens). It makes no
            # reference cycles (tested), so what it made is frozen with no collection after.
            # A node joining a swarm writes and claims nothing until a peer's sync has shown
            # that no other process writes in its name (may_write); a node of no swarm, or
            # its first, has nobody to ask.
            if self.config.bind is not None and self.gossiper.seeds(self.config.bind):
                self.core.unwritable(self.now())
            else:
                self._writable.set()
            with heap.bulk(len(self.ledger.tasks), cycle_free=True):
                self.core.start(self.now(), self._orphaned)
            self._orphaned = []
            # Written before anything else the node writes: a node of a swarm, once a peer's
            # sync has shown it safe (after its gossip starts, below).
            closing: Coroutine[Any, Any, None] | None = None
            if self._writable.is_set():
                await self._closed_stale(self._carry_out())
            else:
                closing = self._closed_stale(self._carry_out())
            ops = Operations(self)
            control_server = ControlServer(ops, self._clients)
            loops = [tg.create_task(self._memory_loop())]
            if self.config.bind is not None:
                # Before the control socket: a command that finds the node answering finds its
                # gossip sockets bound too.
                loops += await self.gossiper.start(
                    tg, self.config.bind, RemoteClients(control_server.serve)
                )
                if closing is not None:
                    loops.append(tg.create_task(closing))
            self.state.prepare_socket_dir()
            with contextlib.suppress(FileNotFoundError):
                self.state.socket_path.unlink()
            old_umask = os.umask(0o177)  # the socket is born 0600: owner only
            try:
                server = await asyncio.start_unix_server(
                    control_server.handle,
                    path=self.state.socket_path,
                    limit=FRAME_BYTES_MAX,
                )
            finally:
                os.umask(old_umask)
            self._server = server
            http = None
            if self.config.http is not None:
                from swarm.daemon.http import HttpApi  # only a node that serves HTTP needs it

                http = HttpApi(self, ops)
                await http.start(*self.config.http)
            self._own_rss_kb = resources.own_peak_rss_kb()  # after loading: close to its peak
            self._ready.set()
            log.info(
                "node %s ready: %s cpus, %.1f GiB, %d gpus, data dir %s",
                self.node_id[:8],
                f"{self.capacity.cpus:g}",
                self.capacity.memory_bytes / 2**30,
                self.capacity.gpus,
                self.state.root,
            )
            await self._stop.wait()
            self._refuse_writes("the node stopped before a peer's sync showed it safe to write")
            if self._fatal is not None:
                for attempt in self.attempts.values():
                    if attempt.pid is not None:
                        kill_group(attempt.pid, signal.SIGKILL)
                raise self._fatal
            self.core.stop()
            log.info("stopping: interrupting %d running attempt(s)", len(self.attempts))
            server.close()
            if http is not None:
                await http.stop()
            for client in list(self._clients):
                client.close()
            self.runner.interrupt_all(self._stop_reason)
            while self.attempts or self.core.slots:
                await asyncio.sleep(0.01)
            # Then leave: the records of the attempts just interrupted go to a peer first.
            await self.gossiper.leave()
            for loop_task in [*loops, *self._side_tasks]:
                loop_task.cancel()
            await self.runner.close()  # the warm workers end
            self._halted = True  # the writer closes: the core's timer fires no more
            if self._timer is not None:
                self._timer.cancel()
            writer.close()
            await writer_task

    def reload_keys(self) -> str:
        """Make the key ring what the state dir says (peers.reload_key_ring)."""
        return peers.reload_key_ring(self.ring, self.state)

    async def await_seeds(self, seeds: list[tuple[str, int]]) -> list[str]:
        return await peers.await_seeds(seeds, lambda: self.membership, lambda: self.stopping)

    def join(self, seeds: list[tuple[str, int]]) -> None:
        peers.join(self.membership, self.net, seeds)

    # -- writing records --------------------------------------------------------------------

    async def append(
        self, bodies: list[Body], replaces: Version | None = None, first: bool = False
    ) -> list[db.Row]:
        """Commit records (records.py), then apply them, then gossip them. StorageFullError:
        nothing applied. Waits, first, until writing in this node's name is safe (`_writable`;
        `first`: a record to be written before any other of this life)."""
        gate = self._writable if first else self._opened
        if not gate.is_set():
            await gate.wait()
        if self._unwritable is not None:
            raise SwarmError(f"not written: {self._unwritable}")
        rows = await self.log.commit(bodies, replaces)
        self.apply_rows(rows)
        self.replicator.spread(rows)
        return rows

    def apply_rows(self, rows: list[db.Row]) -> None:
        """Records stored: the core applies them (and acts on what changed)."""
        for start in range(0, len(rows), APPLY_SLICE_ROWS):
            self._apply_slice(rows[start : start + APPLY_SLICE_ROWS])

    def _apply_slice(self, rows: list[db.Row]) -> None:
        pairs = [(row.version, row.body) for row in rows]
        changes = self.core.apply(self.now(), pairs, remote=rows[0].remote)
        self._carry_out()
        if changes:
            self.watches.changed(changes)
            for hear in self.change_hooks:
                hear(changes)
            self.changes += 1
            self.progress.set()  # wake the long polls, and arm a fresh event for the next ones
            self.progress = asyncio.Event()

    def drain(self, grace_s: float | None) -> None:
        """Finish what runs, claim nothing new, then leave the swarm and stop (core.drain)."""
        if self._tg is not None:
            self.tell(self.core.drain, grace_s)

    async def _memory_loop(self) -> None:
        sampler = MemorySampler(available=self.core.guard is not None)
        while True:
            await asyncio.sleep(MEMORY_SAMPLE_S)
            running = {a.pid: a for a in self.attempts.values() if a.pid is not None}
            sample = await sampler.sample(running.keys())
            self._own_rss_kb = sample.own_peak_rss_kb
            measured: dict[str, int] = {}
            for pid, rss_kb in sample.group_rss_kb.items():
                attempt = running[pid]
                attempt.rss_kb = rss_kb
                attempt.peak_rss_kb = max(attempt.peak_rss_kb, rss_kb)
                measured[attempt.launch.task_id] = rss_kb * 1024
            # Judged as of when the sample began: a victim that exited meanwhile may be in it.
            sampled = Time(sample.sampled_at, self._wall_ms())
            self.core.memory(sampled, measured, sample.available_bytes)
            self._carry_out()


def _records_estimate(db_path: Path) -> int:
    """About how many records the ledger file holds, from its size (a record takes about a
    hundred bytes): enough to tell a large ledger from a small one before it is read."""
    try:
        return db_path.stat().st_size // RECORD_BYTES_TYPICAL
    except OSError:
        return 0


def _raise_fd_limit() -> None:
    """Take the descriptors the machine allows (the soft limit is often 1,024): peers' streams,
    the control socket, the ledger and every attempt's files share them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FDS_WANTED if hard == resource.RLIM_INFINITY else min(hard, FDS_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
