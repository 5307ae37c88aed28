"""The daemon: the one asyncio adapter between the pure cores and the world.

Theory of operation
-------------------
One `asyncio.TaskGroup` holds everything the node runs: the ledger writer (group commit), the
scheduler, the heartbeat, and one task per running attempt. The control socket's connections are
tracked and closed at shutdown, so nothing outlives `run()`.

Every change the node makes is a record: it gets the next version, is committed by the writer, and
only then applied to the in-memory ledger. State changes coming out of the ledger drive the rest:
a task that becomes pending is queued for the scheduler; a task that becomes cancelled has its
attempt stopped. The scheduler claims what fits the free capacity (policy.py), starts each attempt
at once, and the claim's commit runs while the process starts; the attempt's result is written only
after its claim is on disk, and its blobs are in the store (fsynced) before its RESULT is written.

On start the node kills orphans of attempts a killed daemon left running, then closes every claim
it still held in the ledger with an `interrupted` result, so those tasks run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import resource
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from swarm import statedir
from swarm.control import FRAME_BYTES_MAX
from swarm.core import gossip, identity, pressure, snapshot, units, wire
from swarm.core.clock import MAX_FORWARD_DRIFT_MS, HybridClock, wall_ms_of
from swarm.core.ledger import (
    EVICTION_CAP,
    INTERRUPTION_CAP,
    Body,
    CancelRecord,
    ClaimRecord,
    DrainRecord,
    HeartbeatRecord,
    Ledger,
    LostRecord,
    Outcome,
    ReplicaRecord,
    ResultRecord,
    RetryRecord,
    State,
    StateChanged,
    TaskRecord,
    TaskView,
    Version,
    stamp_of,
)
from swarm.core.ledger import Attempt as LedgerAttempt
from swarm.core.policy import PendingQueue, rendezvous_top
from swarm.core.replication import Intake
from swarm.core.scheduler import Scheduler, isolation, peer_from_meta
from swarm.core.snapshot import NodeRow, Snapshot
from swarm.core.spec import Resources, TaskSpec
from swarm.core.sync import REFUSALS_LOGGED_MAX, SPREAD_WIDE, LedgerSync
from swarm.daemon import db, net, resources
from swarm.daemon.config import NodeConfig, parse_addr
from swarm.daemon.control_server import CheckedTask, ControlServer
from swarm.daemon.executor import (
    DISK_FULL_FREE_BYTES,
    Attempt,
    Finished,
    Launch,
    free_bytes,
)
from swarm.daemon.loopguard import LoopReports
from swarm.daemon.memory import MEMORY_SAMPLE_S, MemorySampler
from swarm.daemon.outputs import OutputStore, result_record
from swarm.daemon.procs import NODE_TAG, kill_orphans
from swarm.daemon.rundirs import RunDirs
from swarm.daemon.store import EMPTY_DIGEST, BlobStore
from swarm.daemon.transfer import Copied, ResultTransfer
from swarm.errors import (
    ConfigError,
    StorageFullError,
    SwarmError,
    UserError,
    UserInputError,
)
from swarm.statedir import StateDir

log = logging.getLogger("swarm.daemon.node")

STORAGE_RETRY_S = 2.0  # after a full disk: how long before trying to write again
RUN_DIRS_SPARE_MAX = 64  # empty run dirs kept for reuse
RERANK_DEBOUNCE_S = 0.5  # membership changes within this long cause one re-rank
RERANK_SLICE = 2_000  # tasks re-ranked between two turns of the event loop
ISOLATED_RECHECK_S = 0.5  # a node that may not claim looks again this often
REPLICAS = 3  # a result is held by this many nodes (or every live one, if fewer)
REPLICATE_DEBOUNCE_S = 0.2
REPLICATE_RETRY_S = 2.0  # a result no holder could give is tried again after this long
DRAIN_HANDOFF_S = 30.0  # a drained node waits at most this long for its results to be copied
SYNC_EVERY_GOSSIPS = 5  # anti-entropy runs once per this many gossip intervals
FDS_WANTED = 65_536  # the soft descriptor limit the daemon raises itself to, if allowed
LEAVE_SPREAD_S = 0.5  # at most this long for a leave to go out before the sockets close


JOIN_ANSWER_S = 5.0  # a join that no seed has answered in this long is reported (and retried)
JOIN_POLL_S = 0.1  # how often a join looks for the seed among the members meanwhile
RESOLVE_WAIT_S = 5.0  # longest wait for a seed's name to resolve
LOAD_PROBLEMS_LOGGED_MAX = 20  # unreadable or refused rows of the ledger file logged at start


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Node:
    def __init__(self, state: StateDir, config: NodeConfig) -> None:
        self.state = state
        self.config = config
        self.capacity = resources.probe(config.cpus, config.memory_bytes, config.gpus)
        self.labels: dict[str, str | int | float] = {
            **resources.builtin_labels(self.capacity),
            **config.labels,
        }
        self.store = BlobStore(state.blobs)
        self.outputs = OutputStore(self.store)
        self.run_dirs = RunDirs(state.runs, RUN_DIRS_SPARE_MAX)
        self.ledger = Ledger()
        self.writer: db.LedgerWriter | None = None
        self.sched = Scheduler("", self.ledger, config.lease_ttl_s, config.claim_stagger_s)
        self.clock = HybridClock()
        self.used = Resources(0.0, 0, 0)
        self.attempts: dict[str, Attempt] = {}
        self.started_ms = self._wall_ms()
        self._free_gpus = list(range(self.capacity.gpus))
        self._claiming: set[str] = set()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._progress = asyncio.Event()  # set (and replaced) whenever a task's state changes
        self._changes = 0  # how many times it was set: a client's "changes" says what it saw
        self._tg: asyncio.TaskGroup | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._claims_paused_until = 0.0
        self._disk_full = False  # an attempt ended on a full state disk: claim once it has room
        self._base_env = dict(os.environ)
        self._own_rss_kb = resources.own_peak_rss_kb()
        self.guard: pressure.Guard | None = None
        if config.overcommit:
            budget = self.capacity.memory_bytes
            memfree = config.memfree_bytes or pressure.default_memfree(budget)
            self.guard = pressure.Guard(budget, memfree)
        self.node_id = ""
        self.identity: identity.Identity  # loaded in run(), with the ledger it must match
        self.transfer: ResultTransfer  # made in run(), with the ledger whose holders it reads
        self._wake_timer: asyncio.TimerHandle | None = None
        self._orphaned: list[tuple[str, int]] = []  # (task, epoch) left running by our last life
        self._releasing = False
        self.draining = False
        self._synced = False  # caught up with a peer since this life started
        self._heard_at = -1e9  # monotonic time a peer's records last reached us
        self._isolated_logged = False
        self._stop_reason = "node stopped"
        self._life_stamp = 0
        self._replica_todo: dict[str, LedgerAttempt] = {}  # result digest -> its attempt
        self._replica_wake = asyncio.Event()
        self._rerank = asyncio.Event()  # the members changed: rank the pending tasks afresh
        self._rebuilding: PendingQueue | None = None
        self.membership: gossip.Membership | None = None
        self.ring = wire.KeyRing()
        self.rng = random.Random()
        # Every ledger-sync decision and its counters (bad, forged, refused records and
        # tasks, gap pulls); peers' TASK records whose id is not their content's hash, and
        # the ledger file's own, are never applied.
        self.sync = LedgerSync(self.rng)
        self.stamps_ahead = 0  # peers' stamps too far ahead of our clock to take in (clock.py)
        self._refusals_logged: set[tuple[str, str]] = set()  # (origin, reason): said once
        self.left_out = snapshot.LeftOut()  # rows of the ledger file not loaded, and why
        self._taking_pushes = False
        self._outgoing: list[db.Row] = []  # our fresh records, pushed at the end of this turn
        self._reader: aiosqlite.Connection | None = None
        self.net: net.GossipNet | None = None
        self.generation = 0
        self._seq = 0
        self._heartbeat = 0

    def _wall_ms(self) -> int:
        """This node's wall clock (skewed only in tests; see NodeConfig.clock_skew_ms)."""
        return wall_ms() + self.config.clock_skew_ms

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
            _raise_fd_limit()
            asyncio.get_running_loop().set_exception_handler(LoopReports())
            self._orphaned = await asyncio.to_thread(kill_orphans, self.state.runs, self.node_id)
            if self._orphaned:
                log.warning(
                    "killed %d attempt(s) left running by a previous daemon", len(self._orphaned)
                )
            await asyncio.to_thread(self.store.sweep_temp)  # partial blobs of a past life
            loaded = await asyncio.to_thread(db.load_ledger, self.state.db_path)
            self.ledger = loaded.ledger
            self.left_out = snapshot.LeftOut.of(loaded.unreadable, loaded.refused)
            self.sync.refused_tasks = len(loaded.refused)
            withheld: dict[tuple[str, int], set[int]] = {}
            for v in loaded.refused_versions:
                withheld.setdefault((v.origin, v.generation), set()).add(v.seq)
            self.sync.withheld = {key: frozenset(seqs) for key, seqs in withheld.items()}
            for problem in loaded.unreadable[:LOAD_PROBLEMS_LOGGED_MAX]:
                log.warning("skipped an unreadable ledger row: %s", problem)
            for problem in loaded.refused[:LOAD_PROBLEMS_LOGGED_MAX]:
                log.warning("refused a task record of the ledger file: %s", problem)
            self.sched = Scheduler(
                self.node_id, self.ledger, self.config.lease_ttl_s, self.config.claim_stagger_s
            )
            self.transfer = ResultTransfer(
                self.store, self.ledger, self.node_id, self._member, self._fetch
            )
            # Our own stamps are the high-water mark (the clock never goes back, even when the
            # wall clock did); the peers' are taken in like any record from a peer.
            stamps = dict(self.ledger.max_stamps)
            self.clock = HybridClock(stamps.pop(self.node_id, 0))
            for origin, stamp in stamps.items():
                self._observe(origin, stamp)
            self._life_stamp = self.clock.now(self._wall_ms())  # drains asked before this are old
            self._seq = db.highest_seq(self.state.db_path, self.node_id, self.generation)
            self._heartbeat = self.ledger.heartbeats.get(self.node_id, 0)
            for view in self.ledger.tasks.values():
                if view.state is State.PENDING:
                    self._enqueue(view)
            conn, writer = await db.open_writer(self.state.db_path, self.config.sync)
            await db.prune_heartbeats(conn)
            await self._serve(writer)
        finally:
            # Also when a loop failed with a bug: a node that cannot serve exits (for its
            # supervisor to start it again), and nothing left open keeps the process alive.
            if self.net is not None:
                self.net.close()
            await self._close_reader()
            if conn is not None:
                await conn.close()
            with contextlib.suppress(FileNotFoundError):
                self.state.socket_path.unlink()
            lock.release()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def _serve(self, writer: db.LedgerWriter) -> None:
        self.writer = writer
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            writer_task = tg.create_task(writer.run())
            await self._release_stale_claims()
            self.state.prepare_socket_dir()
            with contextlib.suppress(FileNotFoundError):
                self.state.socket_path.unlink()
            old_umask = os.umask(0o177)  # the socket is born 0600: owner only
            try:
                server = await asyncio.start_unix_server(
                    ControlServer(self, self._clients).handle,
                    path=self.state.socket_path,
                    limit=FRAME_BYTES_MAX,
                )
            finally:
                os.umask(old_umask)
            loops = [
                tg.create_task(self._schedule_loop()),
                tg.create_task(self._heartbeat_loop()),
                tg.create_task(self._memory_loop()),
            ]
            if self.config.bind is not None:
                loops += await self._start_gossip(tg, self.config.bind)
            self._own_rss_kb = resources.own_peak_rss_kb()  # after loading: close to its peak
            self._ready.set()
            self._wake.set()
            log.info(
                "node %s ready: %s cpus, %.1f GiB, %d gpus, data dir %s",
                self.node_id[:8],
                f"{self.capacity.cpus:g}",
                self.capacity.memory_bytes / 2**30,
                self.capacity.gpus,
                self.state.root,
            )
            await self._stop.wait()
            log.info("stopping: interrupting %d running attempt(s)", len(self.attempts))
            await self._leave_swarm()
            server.close()
            for client in list(self._clients):
                client.close()
            for loop_task in loops:
                loop_task.cancel()
            for attempt in list(self.attempts.values()):
                attempt.stop(Outcome.INTERRUPTED, self._stop_reason, self.config.kill_grace_s)
            while self.attempts or self._claiming:
                await asyncio.sleep(0.01)
            writer.close()
            await writer_task

    # -- membership -------------------------------------------------------------------------

    async def _start_gossip(
        self, tg: asyncio.TaskGroup, bind: tuple[str, int]
    ) -> list[asyncio.Task[None]]:
        ring = self.ring
        self.reload_keys()
        sender = bytes.fromhex(self.node_id)
        # Nonces never repeat, whatever the clock does: each run seals under a key of its own
        # (the random boot id). The counter starts at the clock so that peers' replay windows,
        # which remember our last run's counters, take this run's envelopes.
        sealer = wire.Sealer(
            sender, ring, counter=time.time_ns() // 1000, boot=os.urandom(wire.BOOT_BYTES)
        )
        self.membership = gossip.Membership(
            self.node_id,
            bind,
            self._meta(),
            self.config.gossip,
            random.Random(),
            time.monotonic(),
            sign=self.identity.sign_alive,
            check=identity.check_alive,
        )
        self._set_members()
        self.net = net.GossipNet(
            self.membership,
            bind,
            sealer,
            wire.Opener(ring, sender),
            self._on_members,
            self._on_records,
            self._serve_sync,
            self._sync_taker,
            lambda: dict(self.ledger.high_seq),
            self.transfer.serve_blob,
        )
        self._reader = await db.open_reader(self.state.db_path)
        loops = await self._listen(tg, bind)
        loops.append(tg.create_task(self._sync_loop()))
        loops.append(tg.create_task(self._lease_loop()))
        loops.append(tg.create_task(self._rerank_loop()))
        loops.append(tg.create_task(self._replicate_loop()))
        if self.config.join:
            loops.append(tg.create_task(self._join_loop(list(self.config.join))))
        log.info("gossip on %s:%d", *bind)
        return loops

    async def _listen(
        self, tg: asyncio.TaskGroup, bind: tuple[str, int]
    ) -> list[asyncio.Task[None]]:
        """Bind the gossip sockets. If they cannot be bound, the node stops at once, saying
        why: nothing half-started (an open reader thread) may keep the process alive."""
        assert self.net is not None
        try:
            return await self.net.start(tg)
        except OSError as exc:
            self.net.close()
            await self._close_reader()
            raise ConfigError(
                f"cannot listen on {bind[0]}:{bind[1]}: {_bind_problem(exc)}"
            ) from exc

    def reload_keys(self) -> str:
        """Make the key ring what the state dir says: every key installed, swarm.key in use.
        The ring object is shared with the sealer and opener, so this takes effect at once."""
        in_use, others = statedir.key_ring_files(self.state)
        wanted = {wire.key_id(k): k for k in [in_use, *others]}
        for kid in [k for k in self.ring.keys if k not in wanted and k != self.ring.in_use]:
            self.ring.remove(kid)
        for key in wanted.values():
            self.ring.install(key)
        self.ring.use(wire.key_id(in_use))
        for kid in [k for k in self.ring.keys if k not in wanted]:
            self.ring.remove(kid)  # the old key in use, now that another one is
        return self.ring.in_use.hex()

    async def _join_loop(self, seeds: list[tuple[str, int]]) -> None:
        """Join through the seeds, again and again until some member is known: a seed may be
        starting at the same moment, or be briefly unreachable (as Serf retries its joins)."""
        assert self.membership is not None and self._tg is not None
        self._tg.create_task(self._tell_join(seeds))
        while True:
            if len(self.membership.members) > 1:
                return
            self.join(seeds)
            await asyncio.sleep(self.config.gossip.reconnect_interval_s)

    async def _tell_join(self, seeds: list[tuple[str, int]]) -> None:
        """Log what is wrong with a join that no seed answers (the join loop goes on)."""
        for problem in await self.await_seeds(seeds):
            log.warning("%s (still trying)", problem)

    async def await_seeds(self, seeds: list[tuple[str, int]]) -> list[str]:
        """Wait up to JOIN_ANSWER_S for a seed to answer, which it has once a live member is at
        its address. The problems, one sentence each; none once a seed has answered."""
        resolved, problems = await _resolve(seeds)
        deadline = time.monotonic() + JOIN_ANSWER_S
        while not self._seed_answered(resolved):
            if not resolved or time.monotonic() >= deadline or self.stopping:
                silent = ", ".join(f"{host}:{port}" for host, port in resolved)
                if silent:
                    problems.append(
                        f"no answer from {silent} after {JOIN_ANSWER_S:g} s: "
                        "is a node running there, with this swarm key?"
                    )
                return problems
            await asyncio.sleep(JOIN_POLL_S)
        return []

    def _seed_answered(self, resolved: dict[tuple[str, int], set[str]]) -> bool:
        if self.membership is None:
            return False
        return any(
            member.addr[1] == port and member.addr[0] in addresses | {host}
            for member in self.membership.live_members()
            if member.node != self.node_id
            for (host, port), addresses in resolved.items()
        )

    def _meta(self) -> dict[str, Any]:
        """What other members learn of this node with its Alive rumour."""
        meta: dict[str, Any] = {
            "capacity": snapshot.resources_dict(self.capacity),
            "labels": dict(self.labels),
        }
        if self.draining:
            meta["draining"] = True
        return meta

    def join(self, peers: list[tuple[str, int]]) -> None:
        if self.membership is None or self.net is None:
            raise UserInputError("this node has no gossip address: start it with --bind HOST:PORT")
        self.membership.join(time.monotonic(), peers)
        self.net.poke()

    def _on_members(self, events: list[gossip.Event]) -> None:
        now = time.monotonic()
        for event in events:
            log.info("member %s: %s", event.member[:8], type(event).__name__.removeprefix("Member"))
            match event:
                case gossip.MemberDied() | gossip.MemberLeft():
                    self.sched.leases.died(event.member)
                case gossip.MemberJoined() | gossip.MemberRecovered():
                    self.sched.leases.revived(event.member, now)
        if any(not isinstance(e, gossip.MemberSuspected) for e in events):
            self._rerank.set()

    async def _leave_swarm(self) -> None:
        """Tell the swarm we go (a graceful leave), and give the rumour a moment to spread."""
        if self.membership is None or self.net is None:
            return
        self.membership.leave(time.monotonic())
        self.net.poke()
        await asyncio.sleep(min(LEAVE_SPREAD_S, 5 * self.config.gossip.gossip_interval_s))
        self.net.close()
        await self._close_reader()

    async def _close_reader(self) -> None:
        # Its thread would keep the process alive after the node stopped.
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.close()

    def members(self) -> list[NodeRow]:
        if self.membership is None:
            return [self.node_info()]
        # What others run, as the ledger has it (their own figures are not sent around).
        held: dict[str, tuple[int, Resources]] = {}
        for task in self.ledger.running:
            view = self.ledger.tasks[task]
            claim = view.active_claim()
            if claim is None or view.spec is None:
                continue
            count, used = held.get(claim[1], (0, Resources(0.0, 0)))
            held[claim[1]] = (count + 1, used + view.spec.need)
        out: list[NodeRow] = []
        for m in self.membership.members.values():
            if m.node == self.node_id:
                me = self.node_info()
                me["address"] = f"{m.addr[0]}:{m.addr[1]}"
                me["incarnation"] = m.incarnation
                out.append(me)
                continue
            running, used = held.get(m.node, (0, Resources(0.0, 0)))
            out.append(
                {
                    "id": m.node,
                    "state": str(m.state),
                    "address": f"{m.addr[0]}:{m.addr[1]}",
                    "incarnation": m.incarnation,
                    "labels": m.meta.get("labels", {}),
                    "draining": bool(m.meta.get("draining", False)),
                    "capacity": m.meta.get("capacity", {}),
                    "used": snapshot.resources_dict(used),
                    "running": running,
                    "last_change_s": round(time.monotonic() - m.changed_at, 1),
                }
            )
        return sorted(out, key=lambda member: str(member["id"]))

    # -- writing records --------------------------------------------------------------------

    def _versioned(self, bodies: list[Body], replaces: Version | None = None) -> list[db.Row]:
        rows = []
        for body in bodies:
            if isinstance(body, ResultRecord):
                body = self.identity.sign_result(body)  # a result is its runner's word
            self._seq += 1
            version = Version(self.node_id, self.generation, self._seq)
            rows.append(db.Row(version, body, replaces))
        return rows

    async def _append(self, bodies: list[Body], replaces: Version | None = None) -> list[db.Row]:
        """Commit records, then apply them, then gossip them. StorageFullError: nothing applied."""
        assert self.writer is not None
        rows = self._versioned(bodies, replaces)
        await self.writer.write(rows)
        self._apply_rows(rows)
        self._spread(rows)
        return rows

    def _apply_rows(self, rows: list[db.Row]) -> None:
        changed = False
        now = time.monotonic()
        if rows and rows[0].remote:
            self._heard_at = now
        for row in rows:
            stamp = stamp_of(row.body) if row.remote else None
            if stamp is not None:  # every peer's record passes here: the clock sees it first
                self._observe(row.version.origin, stamp)
            for change in self.ledger.apply(row.version, row.body):
                self._on_state_changed(change)
                changed = True
            if isinstance(row.body, DrainRecord):
                body = row.body
                if body.node == self.node_id and body.stamp > self._life_stamp:
                    self.drain(body.grace_s)
            if not row.remote:
                continue
            if isinstance(row.body, HeartbeatRecord):
                origin = row.version.origin
                self.sched.leases.heartbeat(origin, row.version.generation, row.body.counter, now)
            elif isinstance(row.body, ClaimRecord):
                if row.version.origin == self.node_id:
                    # Our own claim from before our ledger was wiped, back from a peer: that
                    # attempt is long gone, so close it (once the batch settles).
                    self._release_soon()
                else:
                    self.sched.leases.seen(row.version.origin, now)
                    self._check_claim(row.body.task_id)
        if changed:
            self._changes += 1
            self._progress.set()  # wake the long polls, and arm a fresh event for the next ones
            self._progress = asyncio.Event()

    def _observe(self, origin: str, stamp: int) -> None:
        """Take a peer's stamp into our clock, so that what we stamp after seeing its record
        (a cancel after a submission) orders after it whatever our wall clock says. A stamp too
        far ahead of our wall clock (clock.py's bound) is not adopted: one broken or hostile
        clock must not drag ours, and through ours every node's, into the future. Counted,
        and said once for each origin."""
        if self.clock.observe(stamp, self._wall_ms()):
            return
        self.stamps_ahead += 1
        said = (origin, "clock ahead")
        if said not in self._refusals_logged and len(self._refusals_logged) < REFUSALS_LOGGED_MAX:
            self._refusals_logged.add(said)
            ahead_s = (wall_ms_of(stamp) - self._wall_ms()) / 1000
            log.warning(
                "node %s stamps its records %.0f s ahead of this node's clock (more than %d s): "
                "not taken into this node's clock; is one of the two clocks wrong? (logged once)",
                origin[:8], ahead_s, MAX_FORWARD_DRIFT_MS // 1000,
            )  # fmt: skip

    def _check_claim(self, task: str) -> None:
        """Another node claimed a task we run: if its claim wins, ours stops (the simple rule
        until claims are ranked: the deterministic winner runs, the others stop)."""
        attempt = self.attempts.get(task)
        winner = None if attempt is None else self.sched.lost_to(task, attempt.launch.epoch)
        if attempt is None or winner is None:
            return
        reason = f"lost its claim to {winner[1][:8]}"
        attempt.stop(Outcome.INTERRUPTED, reason, self.config.kill_grace_s)

    # -- replication ------------------------------------------------------------------------
    # The decisions are LedgerSync's (core/sync.py); here they meet the writer, the ledger
    # and the sockets.

    @property
    def bad_records(self) -> int:
        return self.sync.bad_records

    @property
    def forged_records(self) -> int:
        return self.sync.forged_records

    @property
    def refused_records(self) -> int:
        return self.sync.refused_records

    @property
    def refused_tasks(self) -> int:
        return self.sync.refused_tasks

    @property
    def gap_pulls(self) -> int:
        return self.sync.gap_pulls

    def _spread(self, rows: list[db.Row]) -> None:
        """Send fresh records of ours at once to a few members (anti-entropy catches the rest).
        What is written in one turn of the event loop goes out together: the claims of one
        scheduler pass share their datagrams."""
        if self.net is None or self.membership is None:
            return
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush_spread)
        self._outgoing.extend(rows)

    def _flush_spread(self) -> None:
        rows, self._outgoing = self._outgoing, []
        if self.net is None or self.membership is None or not rows:
            return
        peers = [m.addr for m in self.membership.live_members() if m.node != self.node_id]
        # Claims and results are what keeps two nodes off one task: to every member of a small
        # swarm (anti-entropy does the rest in a large one). Heartbeats too: a member that
        # missed one would see a gap in this node's records that no later push fills (the next
        # heartbeat supersedes it), and hold back everything after it until it pulls.
        wide = max(SPREAD_WIDE, self.config.gossip.gossip_nodes)
        copies = [
            (r.version.origin, r.version.generation, r.version.seq, db.encode(r.body)) for r in rows
        ]
        fanout, pushes = self.sync.spread(copies, peers, wide)
        for push in pushes:
            self.net.send_records(fanout, push)

    def _on_records(self, push: wire.RecordsPush) -> None:
        if self._tg is None or not self.sync.queue_push(push):
            return  # too busy: anti-entropy brings them later
        if not self._taking_pushes:
            self._tg.create_task(self._take_pushes())
            self._taking_pushes = True

    async def _take_pushes(self) -> None:
        """Take pushes one batch at a time, everything that arrived meanwhile together (one
        commit for a burst, and no gap seen for a push still being stored)."""
        try:
            while records := self.sync.queued():
                await self._take_push(records)
        finally:
            self._taking_pushes = False

    async def _take_push(self, ordered: tuple[wire.RecordCopy, ...]) -> None:
        """Take pushed records (with those held back, in seq order); then start the pulls that
        the gaps they showed are worth."""
        intake = self._intake(None)
        await self._take_records(ordered, intake, {})
        members = self.membership.members if self.membership is not None else {}
        now = time.monotonic()
        for member in self.sync.pushed(ordered, intake, self.ledger.high_seq, now, members):
            assert self._tg is not None  # pushes are taken only while serving
            self._tg.create_task(self._pull(member, done=self.sync.pull_done))

    def _intake(self, asked: wire.Watermarks | None) -> Intake:
        return self.sync.intake(self.ledger.high_seq, (self.node_id, self.generation), asked)

    async def _take_records(
        self, records: tuple[wire.RecordCopy, ...], intake: Intake, upto: wire.Watermarks
    ) -> None:
        """Store and apply the peers' records LedgerSync accepts, then raise the watermarks
        that a sync answer's `upto` allows."""
        accepted = self.sync.accept(records, intake)
        rows = [db.Row(a.version, a.body, a.replaces, raw=a.raw, remote=True) for a in accepted]
        try:
            if rows:
                assert self.writer is not None
                await self.writer.write(rows)
        except SwarmError as exc:
            self.sync.not_stored(accepted, intake)
            log.warning("could not store records from a peer: %s", exc)
            return
        self.sync.stored(accepted)
        self._apply_rows(rows)
        self.sync.raise_watermarks(intake, upto, self.ledger.high_seq)

    async def fetch_results(self, job: str) -> dict[str, int]:
        """Make every result file of the job's tasks held here, fetching from their holders."""
        fetched = missing = 0
        async with contextlib.aclosing(self.transfer.fetch_results(job)) as copies:
            async for copied in copies:
                await self._say_held(copied)
                fetched, missing = fetched + copied.fetched, missing + copied.missing
        return {"fetched": fetched, "missing": missing}

    async def _say_held(self, copied: Copied) -> None:
        """Once all of a result is held here, say so with a REPLICA record (once)."""
        if copied.complete and self.node_id not in self.ledger.holders.get(copied.digest, ()):
            await self._append([ReplicaRecord(copied.digest)])

    def _member(self, node: str) -> gossip.Member | None:
        """A member as membership sees it (for the transfer); None before the net is up."""
        return None if self.membership is None else self.membership.members.get(node)

    async def _fetch(self, addr: gossip.Addr, digest: str, into: Path) -> bool:
        """The transfer's way to a peer's blob: the gossip net's TCP fetch."""
        assert self.net is not None  # a member is known only once the net is up
        return await self.net.fetch(addr, digest, into)

    # -- result replication -----------------------------------------------------------------

    def _replica_targets(self, digest: str) -> list[str]:
        """The nodes that should hold a result: the first R = min(3, live) of the live members
        (not draining) by rendezvous hashing on its digest."""
        if self.membership is None:
            return [self.node_id]
        nodes = [
            m.node
            for m in self.membership.live_members()
            if m.node == self.node_id or not m.meta.get("draining")
        ]
        return rendezvous_top(digest, nodes, REPLICAS)

    def _want_replicas(self, views: Iterable[TaskView]) -> None:
        """Queue the credited results of these (done) tasks for a replication check."""
        for view in views:
            attempt = view.ok_attempt()
            if attempt is not None and attempt.result.digest is not None:
                self._replica_todo[attempt.result.digest] = attempt
        if self._replica_todo:
            self._replica_wake.set()

    def _holders_gone(self, digest: str, attempt: LedgerAttempt) -> bool:
        """Whether every node known to hold the result is dead or has left (a node not heard
        of in this life may yet come: it is not counted as gone)."""
        assert self.membership is not None
        holders = (self.ledger.holders.get(digest, set()) | {attempt.version.origin}) - {
            self.node_id
        }
        members = self.membership.members
        return all(h in members and members[h].state in gossip.GONE for h in holders)

    async def _replicate_loop(self) -> None:
        """Pull the results this node should hold (as one of their R chosen holders) and does
        not. A holder that dies or leaves changes the chosen set, and so re-replicates."""
        while True:
            await self._replica_wake.wait()
            self._replica_wake.clear()
            await asyncio.sleep(REPLICATE_DEBOUNCE_S)
            todo, self._replica_todo = self._replica_todo, {}
            for i, (digest, attempt) in enumerate(todo.items()):
                if i % RERANK_SLICE == RERANK_SLICE - 1:
                    await asyncio.sleep(0)
                if digest == EMPTY_DIGEST or self.node_id in self.ledger.holders.get(digest, ()):
                    continue
                if self.node_id not in self._replica_targets(digest):
                    continue
                try:
                    copied = await self.transfer.copy_result(attempt)
                    await self._say_held(copied)
                    missing = copied.missing
                except (SwarmError, OSError) as exc:
                    missing = 1
                    log.warning("could not copy result %s here: %s", digest[:12], exc)
                if not missing:
                    continue
                if self._holders_gone(digest, attempt) and (
                    self._replica_targets(digest)[0] == self.node_id
                ):
                    # Every node that held it is dead or gone: the task must run again.
                    task = attempt.result.task_id
                    log.warning("the result of %s is lost with its holders; it runs again", task)
                    lost = LostRecord(task, attempt.result.epoch, attempt.version.origin)
                    await self._append([lost])
                else:
                    self._replica_todo[digest] = attempt  # a holder may come back: try later
            if self._replica_todo:
                await asyncio.sleep(REPLICATE_RETRY_S)
                self._replica_wake.set()

    async def _sync_loop(self) -> None:
        """Anti-entropy: now and then, pull what a random member has and we lack."""
        assert self.net is not None and self.membership is not None
        while True:
            await asyncio.sleep(self.config.gossip.gossip_interval_s * SYNC_EVERY_GOSSIPS)
            peers = [m for m in self.membership.live_members() if m.node != self.node_id]
            if not peers:
                continue
            await self._pull(self.rng.choice(peers))

    async def _pull(self, peer: gossip.Member, done: Callable[[str], None] | None = None) -> None:
        """One anti-entropy exchange: what `peer` holds past our digest."""
        assert self.net is not None
        try:
            await self.net.pull(peer.addr, wire.SyncRequest(dict(self.ledger.high_seq)))
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

    def _sync_taker(self, digest: wire.Watermarks) -> Callable[[wire.SyncBatch], Awaitable[None]]:
        """How to take the frames of an answer to `digest`, a digest of ours: through one
        intake for all of them (replication.py). Its last frame taken, we have caught up with
        that peer (whichever of us asked)."""
        intake = self._intake(digest)

        async def take(batch: wire.SyncBatch) -> None:
            await self._take_records(batch.records, intake, batch.upto if batch.done else {})
            if batch.done:
                self._synced = True
                self._heard_at = time.monotonic()

        return take

    async def _serve_sync(self, request: wire.SyncRequest) -> AsyncIterator[wire.SyncBatch]:
        """What we hold past the peer's digest, in bounded frames (LedgerSync plans them; the
        slices are read here)."""
        assert self._reader is not None
        answer = self.sync.answer(self.ledger.high_seq, request.digest, db.SYNC_ROWS_MAX)
        while (ask := answer.next_ask()) is not None:
            part = await db.rows_after(
                self._reader, *ask.key, ask.after, ask.limit, withheld=ask.withheld
            )
            batch = answer.took(part)
            if batch is not None:
                yield batch
        yield answer.last()

    def _on_state_changed(self, change: StateChanged) -> None:
        view = self.ledger.tasks[change.task_id]
        if change.new is State.PENDING:
            self._enqueue(view)
            self._wake.set()
            return
        self.sched.since.pop(change.task_id, None)  # claimed or ended: it waits no more
        if change.new is State.DONE and self.membership is not None:
            self._want_replicas([view])
        elif change.new is State.CANCELLED:
            attempt = self.attempts.get(change.task_id)
            if attempt is not None:
                attempt.stop(Outcome.INTERRUPTED, "cancelled", self.config.kill_grace_s)

    async def _release_stale_claims(self) -> None:
        """Close the claims this node held when it last stopped: those attempts are gone. An
        attempt found still running whose claim never reached the ledger (the daemon died first,
        perhaps because of it) gets its claim written now, so that it is closed too: a task that
        kills its node must count those deaths."""
        now = self._wall_ms()
        unwritten: list[Body] = []
        for task, epoch in self._orphaned:
            view = self.ledger.tasks.get(task)
            if view is not None and epoch > 0 and (epoch, self.node_id) not in view.claims:
                # Stolen: it is only there to be closed, and must never beat a live claim
                # (a peer may have taken the task under this epoch meanwhile).
                unwritten.append(ClaimRecord(task, epoch, self.clock.now(now), stolen=True))
        self._orphaned = []
        if unwritten:
            await self._append(unwritten)
        bodies: list[Body] = []
        for view in self.ledger.tasks.values():
            for (epoch, node), info in view.claims.items():
                if node != self.node_id or info.released or (epoch, node) in view.attempts:
                    continue
                running = self.attempts.get(view.task_id)
                if view.task_id in self._claiming or (
                    running is not None and running.launch.epoch == epoch
                ):
                    continue  # ours, and under way now
                bodies.append(
                    self._closing_result(
                        view.task_id,
                        epoch,
                        len(view.attempts) + 1,
                        Outcome.INTERRUPTED,
                        wall_ms_of(info.stamp),
                        "the node stopped while it ran",
                        ended_ms=now,
                        wall_s=0.0,  # unknown: the node was down for part of that span
                    )
                )
        if bodies:
            log.warning("%d attempt(s) were cut off when the node stopped; re-queued", len(bodies))
            await self._append(bodies)

    # -- draining ---------------------------------------------------------------------------

    def drain(self, grace_s: float | None) -> None:
        """Finish what runs, claim nothing new, then leave the swarm and stop. After `grace_s`
        (if given) what still runs is interrupted, and runs elsewhere."""
        if self.draining or self._tg is None:
            return
        self.draining = True
        log.warning(
            "draining: %d attempt(s) to finish%s, then leaving",
            len(self.attempts),
            "" if grace_s is None else f" within {grace_s:g}s",
        )
        if self.membership is not None:
            self.membership.update_meta(time.monotonic(), self._meta())  # peers rank us out
        self._tg.create_task(self._drain_loop(grace_s))

    async def _drain_loop(self, grace_s: float | None) -> None:
        deadline = None if grace_s is None else time.monotonic() + grace_s
        while self.attempts or self._claiming:
            if deadline is not None and time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        # Hand off: wait (a while) until no result is held here alone, so that leaving loses
        # nothing the others would have to run again.
        handoff_end = time.monotonic() + DRAIN_HANDOFF_S
        while self._sole_holdings() and time.monotonic() < handoff_end:
            if deadline is not None and time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
        self._stop_reason = "the node was drained"
        self.stop()

    def _sole_holdings(self) -> int:
        """How many done tasks' results only this node holds (with live peers to take them)."""
        if self.membership is None or len(self.membership.live_members()) < 2:
            return 0
        count = 0
        for task in self.ledger.tasks.values():
            attempt = task.ok_attempt() if task.state is State.DONE else None
            if attempt is None or attempt.result.digest in (None, EMPTY_DIGEST):
                continue
            holders = self.ledger.holders.get(attempt.result.digest, set())
            if (holders | {attempt.version.origin}) <= {self.node_id}:
                count += 1
        return count

    def _release_soon(self) -> None:
        if self._releasing or self._tg is None:
            return
        self._releasing = True

        async def release() -> None:
            await asyncio.sleep(0.1)
            self._releasing = False
            try:
                await self._release_stale_claims()
            except SwarmError as exc:
                log.warning("could not close the claims of an earlier life: %s", exc)

        self._tg.create_task(release())

    # -- scheduling -------------------------------------------------------------------------

    def _is_pending(self, task: str) -> bool:
        """Whether this node may claim the task: pending, or held by a node whose lease expired."""
        if task in self.attempts or task in self._claiming:
            return False
        return self.sched.claimable(task, (), time.monotonic())

    def _may_claim(self) -> bool:
        """Whether this node may claim now (scheduler.isolation); says why not, once."""
        if self.membership is None:
            return True
        peers = [m for m in self.membership.members.values() if m.node != self.node_id]
        why = isolation(
            [m.state is gossip.MemberState.LEFT for m in peers],
            any(origin != self.node_id for origin, _ in self.ledger.high_seq),
            self._synced,
            time.monotonic() - self._heard_at,
            self.config.lease_ttl_s,
        )
        if why is None:
            self._isolated_logged = False
            return True
        if not self._isolated_logged:
            self._isolated_logged = True
            log.warning("not claiming new tasks: %s", why)
        return False

    def _enqueue(
        self, view: TaskView, at_once: bool = False, into: PendingQueue | None = None
    ) -> None:
        """Queue a task for claiming (scheduler.py), into the queue being rebuilt too."""
        now = time.monotonic()
        if into is not None:
            self.sched.enqueue(view, now, at_once, into=into)
            return
        self.sched.enqueue(view, now, at_once)
        if self._rebuilding is not None:
            self.sched.enqueue(view, now, at_once, into=self._rebuilding)

    def _set_members(self) -> None:
        """Tell the scheduler who is live, and what each offers (from their gossiped meta)."""
        if self.membership is None:
            return
        peers = (peer_from_meta(m.node, m.meta) for m in self.membership.live_members())
        self.sched.set_members(p for p in peers if p is not None)

    async def _rerank_loop(self) -> None:
        """The members changed: rank every pending task afresh, into a new queue built a slice
        at a time (100,000 tasks over 200 members is seconds of hashing: the loop must go on
        answering probes and writing heartbeats meanwhile)."""
        while True:
            await self._rerank.wait()
            await asyncio.sleep(RERANK_DEBOUNCE_S)  # a burst of joins is one re-rank
            self._rerank.clear()
            # The chosen holders of results move with the members too.
            self._want_replicas(
                self.ledger.tasks[t]
                for j in self.ledger.jobs
                for t in self.ledger.jobs[j]
                if self.ledger.tasks[t].state is State.DONE
            )
            self._set_members()
            fresh = PendingQueue()
            self._rebuilding = fresh  # tasks queued meanwhile go in both
            try:
                for i, view in enumerate(list(self.ledger.tasks.values())):
                    if view.state is State.PENDING:
                        self._enqueue(view, into=fresh)
                    if i % RERANK_SLICE == RERANK_SLICE - 1:
                        await asyncio.sleep(0)
            finally:
                self._rebuilding = None
            self.sched.queue = fresh
            self.sched.orphans.clear()
            self._requeue_orphans()
            waiting = list(self.sched.since)
            for start in range(0, len(waiting), RERANK_SLICE):
                self.sched.forget_settled(waiting[start : start + RERANK_SLICE])
                await asyncio.sleep(0)
            self._wake.set()

    def _wake_at(self, when: float | None) -> None:
        """Run the scheduler again at `when` (monotonic), when a waiting task becomes ready."""
        if when is None:
            return
        loop = asyncio.get_running_loop()
        if self._wake_timer is not None and self._wake_timer.when() > loop.time():
            if self._wake_timer.when() <= when - time.monotonic() + loop.time() + 0.001:
                return  # an earlier wake is already set, and will set the next one
            self._wake_timer.cancel()
        delay = max(0.0, when - time.monotonic())
        self._wake_timer = loop.call_at(loop.time() + delay, self._wake.set)

    def _requeue_orphans(self) -> None:
        """Queue the running tasks of nodes whose lease expired: claiming one takes it over
        with a higher epoch (the holder, should it come back, then stops)."""
        if self.sched.requeue_orphans(time.monotonic()):
            self._wake.set()

    async def _lease_loop(self) -> None:
        """Judge other nodes' leases now and then (a stopped heartbeat expires no event)."""
        while True:
            await asyncio.sleep(min(self.config.heartbeat_interval_s, self.config.lease_ttl_s / 4))
            self._requeue_orphans()
            if self.sched.note_stalled(time.monotonic()):
                self._rerank.set()  # a member stopped (or went back to) heartbeating

    async def _schedule_loop(self) -> None:
        assert self._tg is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.draining:
                continue  # claims nothing new; _drain_loop stops the node when all has ended
            if not self._may_claim():
                self._wake_at(time.monotonic() + ISOLATED_RECHECK_S)
                continue
            if self._disk_full and not await self._disk_has_room():
                self._wake_at(time.monotonic() + STORAGE_RETRY_S)
                continue
            pause = self._claims_paused_until - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            free = self.capacity - self.used
            if self.guard is not None:  # memory goes by what the attempts are measured to use
                free = replace(free, memory_bytes=self.guard.headroom(self._memory_in_use()))
            now = time.monotonic()
            busy = self.attempts.keys() | self._claiming
            picks = self.sched.pick(busy, free, self.labels, self.config.claim_batch_max, now)
            self._wake_at(self.sched.queue.next_ready())
            for task in picks:
                view = self.ledger.tasks[task]
                assert view.spec is not None
                self.used = self.used + view.spec.need
                gpu_ids = tuple(self._free_gpus[: view.spec.need.gpus])
                del self._free_gpus[: view.spec.need.gpus]
                self._claiming.add(task)
                self._tg.create_task(self._run_attempt(view, gpu_ids))
            if len(picks) == self.config.claim_batch_max:
                self._wake.set()  # the batch was full: more may fit, after a turn of the loop

    async def _disk_has_room(self) -> bool:
        """Whether the state disk, full when an attempt last ended, has room again: until it
        does, every task claimed would fail on it (and, interrupted, come straight back)."""
        free = await asyncio.to_thread(free_bytes, self.state.runs)
        if free < DISK_FULL_FREE_BYTES:
            return False
        self._disk_full = False
        log.info("the disk of %s has room again: claiming tasks", self.state.root)
        return True

    async def _heartbeat_loop(self) -> None:
        previous: Version | None = None
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            self._heartbeat += 1
            try:
                (row,) = await self._append([HeartbeatRecord(self._heartbeat)], previous)
                previous = row.version
            except SwarmError as exc:  # a full or failing disk: the next beat tries again
                log.warning("heartbeat not written: %s", exc)

    async def _memory_loop(self) -> None:
        sampler = MemorySampler(available=self.guard is not None)
        while True:
            await asyncio.sleep(MEMORY_SAMPLE_S)
            running = {a.pid: a for a in self.attempts.values() if a.pid is not None}
            sample = await sampler.sample(running.keys())
            self._own_rss_kb = sample.own_peak_rss_kb
            for pid, rss_kb in sample.group_rss_kb.items():
                attempt = running[pid]
                attempt.rss_kb = rss_kb
                attempt.peak_rss_kb = max(attempt.peak_rss_kb, rss_kb)
            if self.guard is not None:
                if sample.available_bytes is not None:  # unknown: the node's budget still counts
                    self.guard.available = sample.available_bytes
                self._evict_if_short(sample.sampled_at)
                self._wake.set()  # memory may have been freed: admit by the new figures

    def _memory_in_use(self) -> list[pressure.Running]:
        """Every attempt of this node, as memory pressure sees it (claimed ones not yet started
        count for their declared memory)."""
        now = time.monotonic()
        running = []
        for task in self._claiming | self.attempts.keys():
            spec = self.ledger.tasks[task].spec
            assert spec is not None
            attempt = self.attempts.get(task)
            if attempt is not None and attempt.exited:
                continue  # being recorded: it uses nothing, and cannot be evicted
            measured = None if attempt is None or attempt.rss_kb is None else attempt.rss_kb * 1024
            started = now if attempt is None else attempt.started_at
            running.append(pressure.Running(task, started, spec.need.memory_bytes, measured))
        return running

    def _evict_if_short(self, sampled_at: float) -> None:
        """Under --overcommit: stop the newest attempt if too little memory is left."""
        assert self.guard is not None
        running = self._memory_in_use()
        chosen = self.guard.choose(running, sampled_at)
        attempt = None if chosen is None else self.attempts.get(chosen.task_id)
        if chosen is None or attempt is None:
            return
        view = self.ledger.tasks[chosen.task_id]
        mib = units.format_bytes
        reason = (
            f"evicted under memory pressure: {mib(max(self.guard.left(running), 0))} left, "
            f"below half of --memfree {mib(self.guard.memfree)}; it used "
            f"{mib(chosen.measured or 0)} and declared {mib(chosen.declared)}"
        )
        if view.evictions() + 1 - view.forgiven_evictions > EVICTION_CAP:
            reason += f"; evicted more than {EVICTION_CAP} times, so failed: declare what it needs"
        log.warning("%s: %s", view.name, reason)
        attempt.evict(reason, self.config.kill_grace_s)
        self.sched.hold(chosen.task_id, sampled_at + self.config.lease_ttl_s)

    def _attempt_ended(self, task: str) -> None:
        """An attempt's process is gone: if memory pressure evicted it, the wait for it is
        over, and the task stays with the others for a lease period from now."""
        now = time.monotonic()
        if self.guard is not None and self.guard.ended(task, now):
            self.sched.hold(task, now + self.config.lease_ttl_s)

    # -- one attempt ------------------------------------------------------------------------

    async def _run_attempt(self, view: TaskView, gpu_ids: tuple[int, ...]) -> None:
        """One attempt, start to record. Nothing it raises may reach the TaskGroup: that would
        stop the whole node and leave every other attempt unrecorded."""
        spec = view.spec
        assert spec is not None
        run_dir: Path | None = None
        attempt: Attempt | None = None
        launch: Launch | None = None
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.used = self.used - spec.need
                self._free_gpus.extend(gpu_ids)
                self._wake.set()

        try:
            run_dir = self.run_dirs.take()
            claim = self.sched.new_claim(view, self.clock.now(self._wall_ms()))
            epoch = claim.epoch
            launch = Launch(
                task_id=view.task_id,
                job=view.job,
                name=view.name,
                spec=spec,
                epoch=epoch,
                attempt=len(view.attempts) + 1,
                run_dir=run_dir,
                gpu_ids=gpu_ids,
            )
            if view.state is State.RUNNING and self.sched.takeover_exhausts(view):
                await self._fail_unrun(launch, claim)
                return
            stolen = claim.stolen
            # A first attempt starts while its claim is written (a short task should not wait
            # for an fsync). A stolen task, or one tried before (it may be what killed its
            # last node), starts only once its claim is on disk.
            committed = stolen or bool(view.claims)
            if committed and not await self._settle(claim, stolen):
                return
            started = self._start(launch, claim, committed=committed)
            if started is None:
                return
            attempt, claimed = started
            finished = await self._wait(attempt, spec)
            release()  # the process is gone: the next task may start while this one is recorded
            self._attempt_ended(view.task_id)
            if await claimed:  # a result is written only after its claim is on disk
                await self._record(launch, finished)
        except Exception as exc:
            if isinstance(exc, OSError) and attempt is None:
                # The run dir or the attempt's files could not be made: a full or broken disk.
                self._pause_claims(f"cannot prepare a run dir in {self.state.runs}: {exc}")
            else:  # a bug: contain it to this task, and say so in its record
                log.exception("the attempt of %s failed inside swarm", view.name)
                if attempt is not None and launch is not None:
                    reason = f"swarm error: {type(exc).__name__}: {exc}"
                    await self._give_up(attempt, launch, reason)
        finally:
            self.attempts.pop(view.task_id, None)
            self._claiming.discard(view.task_id)
            self._attempt_ended(view.task_id)  # again, should it have ended by an error
            if view.state is State.PENDING:
                # Its claim never made it to disk (or it ended without a result): it was taken
                # off the queue when chosen, so it must go back on, or it would wait forever.
                self._enqueue(view, at_once=True)
            release()
            if run_dir is not None:  # last: it waits on the task's files (in a thread)
                await self.run_dirs.give_back(run_dir)

    async def _wait(self, attempt: Attempt, spec: TaskSpec) -> Finished:
        timer = None
        if spec.timeout_s is not None:
            timer = asyncio.get_running_loop().call_later(
                spec.timeout_s,
                attempt.stop,
                Outcome.TIMEOUT,
                f"timed out after {spec.timeout_s:g}s",
                self.config.kill_grace_s,
            )
        try:
            return await attempt.finished()
        finally:
            if timer is not None:
                timer.cancel()

    async def _give_up(self, attempt: Attempt, launch: Launch, reason: str) -> None:
        """Kill what is left of an attempt that swarm itself failed, and record it as failed
        (if its claim is on disk); if even that fails, the restart will close the claim."""
        attempt.stop(Outcome.FAILED, reason, grace_s=0.0)
        with contextlib.suppress(OSError):
            await attempt.reap()
        if (launch.epoch, self.node_id) not in self.ledger.tasks[launch.task_id].claims:
            return
        record = self._closing_result(
            launch.task_id,
            launch.epoch,
            launch.attempt,
            Outcome.FAILED,
            attempt.started_ms,
            reason,
            max_rss_kb=attempt.peak_rss_kb,
        )
        try:
            await self._append([record])
        except SwarmError as exc:
            log.error("could not record that %s failed: %s", launch.name, exc)

    def _start(
        self, launch: Launch, claim: ClaimRecord, committed: bool = False
    ) -> tuple[Attempt, asyncio.Task[bool]] | None:
        """Spawn the process and commit its claim meanwhile (off the task's critical path: a
        commit's fsync may take longer than a short task). None if the node is stopping."""
        if self._stop.is_set():
            return None
        attempt = Attempt(launch, self._base_env, self._own_rss_kb)
        self.attempts[launch.task_id] = attempt
        self._claiming.discard(launch.task_id)
        assert self._tg is not None
        if committed:
            return attempt, self._tg.create_task(_done(True))
        return attempt, self._tg.create_task(self._commit_claim(attempt, claim))

    def _closing_result(
        self,
        task: str,
        epoch: int,
        attempt: int,
        outcome: Outcome,
        started_ms: int,
        reason: str,
        ended_ms: int | None = None,
        max_rss_kb: int = 0,
        wall_s: float | None = None,
    ) -> ResultRecord:
        """The record that closes an attempt with no process outcome to report (cut off by a
        stop, failed inside swarm, or never run): no exit code, no CPU time, no result."""
        ended_ms = self._wall_ms() if ended_ms is None else ended_ms
        return ResultRecord(
            task_id=task,
            epoch=epoch,
            attempt=attempt,
            outcome=outcome,
            exit_code=None,
            started_ms=started_ms,
            ended_ms=ended_ms,
            wall_s=max(0.0, (ended_ms - started_ms) / 1000) if wall_s is None else wall_s,
            cpu_s=0.0,
            max_rss_kb=max_rss_kb,
            digest=None,
            node_capacity=self.capacity,
            reason=reason,
        )

    async def _fail_unrun(self, launch: Launch, claim: ClaimRecord) -> None:
        """Close the task without running it: our claim, and an interruption that exceeds the cap."""
        reason = (
            f"interrupted more than {INTERRUPTION_CAP} times: the nodes running it died or "
            "lost their leases"
        )
        now = self._wall_ms()
        result = self._closing_result(
            launch.task_id, launch.epoch, launch.attempt, Outcome.INTERRUPTED, now, reason
        )
        log.warning("%s: %s", launch.name, reason)
        try:
            await self._append([claim, result])
        except SwarmError as exc:
            self._pause_claims(str(exc))

    async def _settle(self, claim: ClaimRecord, stolen: bool) -> bool:
        """Claim the task before it starts. A stolen one (a peer is preferred for it) runs only
        if no better claim shows up within a short settle, since its preferred node or another
        thief may have reached for it at the same moment. A claim we do not follow is
        released."""
        try:
            await self._append([claim])
            if stolen:
                await asyncio.sleep(self.config.claim_settle_s)
            view = self.ledger.tasks[claim.task_id]
            if view.winning_claim() == (claim.epoch, self.node_id) and view.state is State.RUNNING:
                return True
            await self._append([replace(claim, released=True)])
        except SwarmError as exc:
            self._pause_claims(str(exc))
        return False

    async def _commit_claim(self, attempt: Attempt, claim: ClaimRecord) -> bool:
        """False if the claim could not be written: the attempt is then stopped, and nothing
        of it will be recorded (the task stays pending)."""
        try:
            await self._append([claim])
        except Exception as exc:  # runs in the node's TaskGroup: must never raise
            if not isinstance(exc, SwarmError):
                log.exception("writing the claim of %s failed inside swarm", claim.task_id[:12])
            attempt.stop(Outcome.INTERRUPTED, "claim not written", grace_s=0.0)
            self._pause_claims(str(exc))
            return False
        if self.ledger.tasks[claim.task_id].state is State.CANCELLED:
            attempt.stop(Outcome.INTERRUPTED, "cancelled", self.config.kill_grace_s)
        return True

    def _pause_claims(self, why: str) -> None:
        log.error("not claiming new tasks for %.0fs: %s", STORAGE_RETRY_S, why)
        self._claims_paused_until = time.monotonic() + STORAGE_RETRY_S

    async def _record(self, launch: Launch, finished: Finished) -> None:
        """Store the attempt's files, then write its RESULT (and REPLICA). A full disk is waited
        out (until the node stops: the claim then stays open and the restart re-queues the
        task); files stored before a failure are not stored again, since they have moved."""
        stored: dict[str, str] = {}
        digest: str | None = None
        reason = finished.reason
        if finished.discarded:
            self._disk_full = True
            log.error(
                "disk full: not claiming new tasks until %s has room (%s)", self.state.root, reason
            )
        while digest is None and not finished.discarded:  # discarded: a full disk, no files
            try:
                digest, new_manifest = await self.outputs.put(finished, stored)
            except StorageFullError as exc:
                self._pause_claims(f"cannot store the result of {launch.name}: {exc}")
                if self._stop.is_set() or await self._hand_back(launch, finished, str(exc)):
                    return
                await asyncio.sleep(STORAGE_RETRY_S)
            except OSError as exc:  # say, an output file removed under us: the attempt failed
                finished.outcome = Outcome.FAILED
                reason = f"cannot store its outputs: {exc}"
                break
        bodies: list[Body] = [result_record(launch, finished, digest, reason, self.capacity)]
        if digest is not None and (
            new_manifest or self.node_id not in self.ledger.holders.get(digest, ())
        ):
            bodies.append(ReplicaRecord(digest))
        while True:
            try:
                await self._append(bodies)
                return
            except SwarmError as exc:
                self._pause_claims(f"cannot record the result of {launch.name}: {exc}")
                if self._stop.is_set() or await self._hand_back(launch, finished, str(exc)):
                    return
                await asyncio.sleep(STORAGE_RETRY_S)

    async def _hand_back(self, launch: Launch, finished: Finished, why: str) -> bool:
        """A result this node cannot store (its disk is full): if a live peer could run the
        task, record the attempt as interrupted, with no result, so that a peer runs it, rather
        than hold the task until space comes back. Alone, the node keeps the finished attempt
        and waits. False if not handed back."""
        if self.membership is None:
            return False
        if not any(node != self.node_id for node, _ in self.sched.candidates_for(launch.spec)):
            return False
        reason = f"its result could not be stored on {self.node_id[:8]}: {why}"
        interrupted = replace(finished, outcome=Outcome.INTERRUPTED)  # `finished` may yet be stored
        try:
            await self._append([result_record(launch, interrupted, None, reason, self.capacity)])
        except SwarmError:
            return False  # our heartbeat will stop too: the lease expires, and peers take it
        log.warning("%s handed back to the swarm: %s", launch.name, reason)
        # Leave it to the peers for a lease period, and claim nothing meanwhile: the next task
        # would likely meet the same full store.
        self.sched.hold(launch.task_id, time.monotonic() + self.config.lease_ttl_s)
        self._claims_paused_until = time.monotonic() + self.config.lease_ttl_s
        return True

    # -- what the control server asks of the node (control_server.NodeControl) --------------

    def has_job(self, job: str) -> bool:
        return job in self.ledger.jobs

    async def add_tasks(self, job: str, tasks: list[CheckedTask]) -> int:
        """Add a submission's tasks in one commit, or none if a name in it is taken; how many
        were new (a task the ledger holds already is not added again)."""
        names = {v.name: v.task_id for v in self.ledger.job_tasks(job)}
        stamp = self.clock.now(self._wall_ms())
        bodies: list[Body] = []
        for task in tasks:
            if task.task_id in self.ledger.tasks and self.ledger.tasks[task.task_id].spec:
                continue
            holder = names.get(task.name)
            if holder is not None and holder != task.task_id:
                raise UserError(
                    f"line {'?' if task.line is None else task.line}: name {task.name!r} is "
                    f"already used in job {job!r} by a different task; nothing was added "
                    "(another file under the same job name? give it its own with --job NAME)"
                )
            names[task.name] = task.task_id
            bodies.append(TaskRecord(task.task_id, job, task.name, task.spec, stamp))
        if bodies:
            await self._append(bodies)
        return len(bodies)

    async def cancel(self, target: str) -> tuple[Literal["job", "task"], str]:
        """Cancel a job, or the one task whose id starts with `target`: which, and its name."""
        if target in self.ledger.jobs:
            await self._append([CancelRecord(target, None, self.clock.now(self._wall_ms()))])
            return "job", target
        matches = [t for t in self.ledger.tasks if t.startswith(target)] if len(target) >= 6 else []
        if len(matches) != 1:
            raise UserError(
                f"{target!r} is neither a job nor a unique task id prefix (6+ characters); "
                f"jobs: {', '.join(sorted(self.ledger.jobs)[:10]) or 'none'}"
            )
        view = self.ledger.tasks[matches[0]]
        await self._append([CancelRecord(view.job, view.task_id, self.clock.now(self._wall_ms()))])
        return "task", view.task_id

    async def retry(self, job: str) -> int:
        """Re-queue the failed tasks of a job; how many."""
        if job not in self.ledger.jobs:
            raise UserError(f"no job {job!r}")
        bodies: list[Body] = [
            RetryRecord(
                v.task_id,
                v.count(Outcome.FAILED, Outcome.TIMEOUT),
                v.interruptions(),
                v.evictions(),
            )
            for v in self.ledger.job_tasks(job)
            if v.state is State.FAILED
        ]
        if bodies:
            await self._append(bodies)
        return len(bodies)

    async def drain_request(
        self, node_prefix: str | None, grace_s: float | None
    ) -> tuple[str, int | None]:
        """Drain this node or the live member whose id starts with `node_prefix`: its whole id,
        and (if it is this node) how many attempts it has still to finish."""
        target = node_prefix or self.node_id
        known = {m.node for m in self.membership.live_members()} if self.membership else set()
        matches = sorted(n for n in known | {self.node_id} if n.startswith(target))
        if len(matches) != 1:
            what = "no live member" if not matches else f"{len(matches)} members"
            raise UserError(f"{what} with an id starting {target!r} (see swarm members)")
        node = matches[0]
        if node == self.node_id:
            self.drain(grace_s)
            return node, len(self.attempts)
        stamp = self.clock.now(self._wall_ms())
        await self._append([DrainRecord(node, stamp, grace_s)])
        return node, None

    async def join_peers(self, peers: list[str]) -> list[str]:
        """Join through `peers` (HOST:PORT each); what is wrong, if no seed answers in time."""
        seeds = [parse_addr(p) for p in peers]
        self.join(seeds)
        return await self.await_seeds(seeds)

    @property
    def changes(self) -> int:
        """How many times a task's state has changed: a status long poll waits for the next."""
        return self._changes

    async def wait_for_change(self, seen: int, timeout_s: float) -> None:
        """Return at the next change of a task's state after the `seen`th, or after `timeout_s`."""
        if seen != self._changes:
            return  # changed since the client looked
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._progress.wait(), timeout_s)

    # -- status -----------------------------------------------------------------------------

    def node_info(self) -> NodeRow:
        return {
            "id": self.node_id,
            "state": "alive",
            "pid": os.getpid(),
            "data_dir": str(self.state.root),
            "labels": self.labels,
            "capacity": snapshot.resources_dict(self.capacity),
            "used": snapshot.resources_dict(self.used),
            "running": len(self.attempts),
            "started_ms": self.started_ms,
        }

    def snapshot(self, jobs: list[str] | None = None) -> Snapshot:
        infeasible = self.sched.queue.infeasible(self.capacity, self.labels, self._is_pending)
        if jobs is not None:
            infeasible = [t for t in infeasible if self.ledger.tasks[t].job in jobs]
        return snapshot.build(
            self.ledger, self._wall_ms(), self.members(), jobs, infeasible, self.left_out
        )


def _raise_fd_limit() -> None:
    """Take the descriptors the machine allows (the soft limit is often 1,024): peers' streams,
    the control socket, the ledger and every attempt's files share them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FDS_WANTED if hard == resource.RLIM_INFINITY else min(hard, FDS_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _resolve(
    seeds: list[tuple[str, int]],
) -> tuple[dict[tuple[str, int], set[str]], list[str]]:
    """The IP addresses of each seed, and a sentence for each seed whose name does not resolve."""
    loop = asyncio.get_running_loop()
    found: dict[tuple[str, int], set[str]] = {}
    problems: list[str] = []
    for host, port in seeds:
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), RESOLVE_WAIT_S
            )
        except (OSError, TimeoutError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else None
            problems.append(
                f"{host}:{port} does not resolve ({why or 'no answer from the resolver'}): "
                "check the name"
            )
            continue
        found[(host, port)] = {str(info[4][0]) for info in infos}
    return found, problems


def _bind_problem(exc: OSError) -> str:
    """Why an address could not be bound, in words."""
    if exc.errno == errno.EADDRINUSE:
        return (
            "the address is in use (another swarm node, or another program?); choose another port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this machine's"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve ({exc.strerror})"
    return exc.strerror or str(exc)


async def _done(value: bool) -> bool:
    return value
