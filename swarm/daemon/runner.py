"""The attempt runner: it carries out the core's Start and Stop effects, and follows each
attempt from its process to its record.

Theory of operation
-------------------
A Start takes a run dir and spawns the process at once (executor.py), or, for a Python call,
hands the call to a warm worker (workers.py) once its input blobs are held here (fetched from the
nodes that hold them, or written out of the spec when they travel inline); when the core asks, the
attempt's claim is written meanwhile, and the attempt's result is written only after it. When
the process is gone the core hears of it (its CPUs, memory and GPUs are free for the next task),
then the attempt's files go into the blob store (outputs.py) and its RESULT (with a REPLICA) is
appended. A full disk is waited out, or the attempt handed back to the swarm as interrupted when
a live peer could run it; a bug inside swarm fails the attempt alone, never the node. Last, the
core hears that the attempt is closed, and the run dir is given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from swarm.core.attempts import closing_result
from swarm.core.effects import Start, Stop, Time
from swarm.core.ledger import Body, Ledger, Outcome, TaskView, Version
from swarm.core.node import NodeCore
from swarm.core.spec import TaskSpec
from swarm.core.storage import STORAGE_RETRY_S
from swarm.daemon import db
from swarm.daemon.config import NodeConfig
from swarm.daemon.executor import AnyAttempt, Attempt, Finished, Launch
from swarm.daemon.outputs import OutputStore, result_record
from swarm.daemon.rundirs import RunDirs
from swarm.daemon.store import BlobStore
from swarm.daemon.transfer import ResultTransfer
from swarm.daemon.workers import CallBlobs, WorkerPool
from swarm.errors import StorageFullError, SwarmError
from swarm.statedir import StateDir

log = logging.getLogger("swarm.daemon.runner")

INPUT_FETCH_S = 10.0  # how long a call's inputs are looked for before its attempt gives up
INPUT_FETCH_RETRY_S = 0.5


class Host(Protocol):
    """What the runner needs of its node."""

    node_id: str
    ledger: Ledger
    core: NodeCore
    state: StateDir
    config: NodeConfig
    store: BlobStore
    transfer: ResultTransfer

    @property
    def stopping(self) -> bool: ...
    def now(self) -> Time: ...
    def tell(self, method: Callable[..., object], *args: Any) -> None: ...
    async def append(self, bodies: list[Body], replaces: Version | None = None) -> list[db.Row]: ...


class AttemptRunner:
    def __init__(
        self,
        node: Host,
        run_dirs: RunDirs,
        outputs: OutputStore,
        base_env: dict[str, str],
        own_rss_kb: Callable[[], int],
    ) -> None:
        self.node = node
        self.run_dirs = run_dirs
        self.outputs = outputs
        self.base_env = base_env
        self.own_rss_kb = own_rss_kb
        self.attempts: dict[str, AnyAttempt] = {}  # running, or being recorded
        self._tg: asyncio.TaskGroup | None = None
        self._pool: WorkerPool | None = None  # made at the first Python call

    @property
    def pool(self) -> WorkerPool:
        if self._pool is None:
            cpus = max(1, math.ceil(self.node.core.capacity.cpus))
            self._pool = WorkerPool(self.base_env, self.node.node_id, idle_max=cpus)
        return self._pool

    async def close(self) -> None:
        """The node stops: its warm workers end (after the attempts were interrupted)."""
        if self._pool is not None:
            await self._pool.close()

    def serve(self, tg: asyncio.TaskGroup) -> None:
        """Attempts run in the node's task group from now on."""
        self._tg = tg

    def start(self, start: Start) -> None:
        """Carry out a Start: take a run dir and spawn the process (and write its claim
        meanwhile, if the core asks); a task then follows it to its record."""
        assert self._tg is not None
        node = self.node
        view = node.ledger.tasks[start.task_id]
        spec = view.spec
        assert spec is not None
        if node.stopping:  # nothing starts; a claim already on disk is released
            node.core.start_failed(node.now(), start.task_id, "")
            return
        try:
            run_dir = self.run_dirs.take()
        except OSError as exc:  # a full or broken disk
            why = f"cannot prepare a run dir in {node.state.runs}: {exc}"
            node.core.start_failed(node.now(), start.task_id, why)
            return
        launch = Launch(
            task_id=view.task_id,
            job=view.job,
            name=view.name,
            spec=spec,
            epoch=start.claim.epoch,
            attempt=start.attempt,
            run_dir=run_dir,
            gpu_ids=start.gpu_ids,
        )
        try:
            attempt: AnyAttempt
            if spec.call is not None:
                attempt = self.pool.attempt(launch, partial(self._call_inputs, view, launch))
            else:
                # The kernel counts our peak memory as the floor of the child's: the attempt
                # reads our peak as the child ends, with the last sample as a floor.
                ended = partial(self._ended, start.task_id)
                attempt = Attempt(launch, self.base_env, self.own_rss_kb(), on_exit=ended)
        except OSError as exc:  # the attempt's files could not be made
            why = f"cannot prepare a run dir in {node.state.runs}: {exc}"
            node.core.start_failed(node.now(), start.task_id, why)
            self._tg.create_task(self.run_dirs.give_back(run_dir))
            return
        self.attempts[start.task_id] = attempt
        claimed = self._tg.create_task(self._write_claim(start)) if start.write_claim else None
        self._tg.create_task(self._follow(attempt, launch, claimed))

    async def _call_inputs(self, view: TaskView, launch: Launch) -> CallBlobs | str:
        """A Python call's function and arguments, held here: fetched from the nodes that said
        they hold them (and the node that submitted the call). The arguments may travel in the
        spec instead (the worker takes them from there). A reason, when a blob could not be had."""
        call = launch.spec.call
        assert call is not None
        node = self.node
        paths: dict[str, Path] = {}
        for what, digest in (("function", call.fn), ("arguments", call.args)):
            if not digest:
                continue
            if not await self._fetch_input(view, digest):
                return f"its {what} (blob {digest[:12]}) could not be had from any holder"
            paths[what] = node.store.path(digest)
        return CallBlobs(fn=paths["function"], args=paths.get("arguments"))

    async def _fetch_input(self, view: TaskView, digest: str) -> bool:
        """One input blob held here: tried on its holders (a suspect one too) for a while, since
        a call claimed just after it was submitted may come before the holders' copies, and a
        call that cannot start costs its task an interruption."""
        node = self.node
        deadline = asyncio.get_running_loop().time() + INPUT_FETCH_S
        while True:
            holders = node.ledger.holders.get(digest, set()) | {view.submitted[1]}
            holders.discard(node.node_id)
            if await node.transfer.fetch_blob(digest, sorted(holders), suspects=True):
                return True
            if node.stopping or asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(INPUT_FETCH_RETRY_S)

    def stop(self, stop: Stop) -> None:
        """Carry out a Stop: the attempt ends (after SIGTERM and the kill grace, if asked)."""
        attempt = self.attempts.get(stop.task_id)
        if attempt is None:
            return
        kill_grace_s = self.node.config.kill_grace_s
        if stop.evict:
            attempt.evict(stop.reason, kill_grace_s)
        else:
            attempt.stop(stop.outcome, stop.reason, kill_grace_s if stop.grace else 0.0)

    def interrupt_all(self, reason: str) -> None:
        """The node stops: every attempt is interrupted (and recorded so, if it can be)."""
        for attempt in list(self.attempts.values()):
            attempt.stop(Outcome.INTERRUPTED, reason, self.node.config.kill_grace_s)

    async def _write_claim(self, start: Start) -> bool:
        """The claim of an attempt started while it is written. False if it could not be: the
        core then stops the attempt, and nothing of it will be recorded (the task stays
        pending)."""
        try:
            await self.node.append([start.claim])
            ok, why = True, ""
        except Exception as exc:  # runs in the node's TaskGroup: must never raise
            if not isinstance(exc, SwarmError):
                log.exception("writing the claim of %s failed inside swarm", start.task_id[:12])
            ok, why = False, str(exc)
        self.node.tell(self.node.core.claim_written, start.task_id, ok, why)
        return ok

    async def _follow(
        self, attempt: AnyAttempt, launch: Launch, claimed: asyncio.Task[bool] | None
    ) -> None:
        """One attempt, from its start to its record. Nothing it raises may reach the TaskGroup:
        that would stop the whole node and leave every other attempt unrecorded."""
        node, task = self.node, launch.task_id
        try:
            finished = await self._wait(attempt, launch.spec)
            self._ended(task)  # if the attempt did not say so as its process went
            if claimed is None or await claimed:  # a result only after its claim is on disk
                await self._record(launch, finished)
        except Exception as exc:  # a bug: contain it to this task, and say so in its record
            log.exception("the attempt of %s failed inside swarm", launch.name)
            await self._give_up(attempt, launch, f"swarm error: {type(exc).__name__}: {exc}")
        finally:
            self.attempts.pop(task, None)
            node.tell(node.core.attempt_closed, task)
            await self.run_dirs.give_back(launch.run_dir)  # last: it waits on the task's files

    def _ended(self, task_id: str) -> None:
        """The attempt's process is gone: the core frees its slot (hearing it twice changes
        nothing), and the next task may start while this one's files are looked at and
        recorded."""
        self.node.tell(self.node.core.attempt_ended, task_id)

    async def _wait(self, attempt: AnyAttempt, spec: TaskSpec) -> Finished:
        timer = None
        if spec.timeout_s is not None:
            timer = asyncio.get_running_loop().call_later(
                spec.timeout_s,
                attempt.stop,
                Outcome.TIMEOUT,
                f"timed out after {spec.timeout_s:g}s",
                self.node.config.kill_grace_s,
            )
        try:
            return await attempt.finished()
        finally:
            if timer is not None:
                timer.cancel()

    async def _give_up(self, attempt: AnyAttempt, launch: Launch, reason: str) -> None:
        """Kill what is left of an attempt that swarm itself failed, and record it as failed
        (if its claim is on disk); if even that fails, the restart will close the claim."""
        node = self.node
        attempt.stop(Outcome.FAILED, reason, grace_s=0.0)
        with contextlib.suppress(OSError):
            await attempt.reap()
        if (launch.epoch, node.node_id) not in node.ledger.tasks[launch.task_id].claims:
            return
        record = closing_result(
            node.core.capacity,
            node.now().wall_ms,
            launch.task_id,
            launch.epoch,
            launch.attempt,
            Outcome.FAILED,
            attempt.started_ms,
            reason,
            max_rss_kb=attempt.peak_rss_kb,
        )
        try:
            await node.append([record])
        except SwarmError as exc:
            log.error("could not record that %s failed: %s", launch.name, exc)

    async def _record(self, launch: Launch, finished: Finished) -> None:
        """Store the attempt's files, then write its RESULT (and REPLICA). A full disk is waited
        out (until the node stops: the claim then stays open and the restart re-queues the
        task); files stored before a failure are not stored again, since they have moved."""
        node = self.node
        stored: dict[str, str] = {}
        digest: str | None = None
        reason = finished.reason
        if finished.discarded:
            node.tell(node.core.storage_full, str(node.state.root), reason)
        value = finished.inline_value  # a call's small outcome: then no blob is stored
        while digest is None and not value and not finished.discarded:  # discarded: no files
            try:
                digest, new_manifest = await self.outputs.put(finished, stored)
            except StorageFullError as exc:
                node.tell(
                    node.core.pause_claims, f"cannot store the result of {launch.name}: {exc}"
                )
                if node.stopping or await self._hand_back(launch, finished, str(exc)):
                    return
                await asyncio.sleep(STORAGE_RETRY_S)
            except OSError as exc:  # say, an output file removed under us: the attempt failed
                finished.outcome = Outcome.FAILED
                reason = f"cannot store its outputs: {exc}"
                break
        capacity = node.core.capacity
        bodies: list[Body] = [result_record(launch, finished, digest, reason, capacity, value)]
        if digest is not None and (
            new_manifest or node.node_id not in node.ledger.holders.get(digest, ())
        ):
            bodies.append(node.ledger.replica_record(digest, node.node_id))
        while True:
            try:
                await node.append(bodies)
                return
            except SwarmError as exc:
                why = f"cannot record the result of {launch.name}: {exc}"
                node.tell(node.core.pause_claims, why)
                if node.stopping or await self._hand_back(launch, finished, str(exc)):
                    return
                await asyncio.sleep(STORAGE_RETRY_S)

    async def _hand_back(self, launch: Launch, finished: Finished, why: str) -> bool:
        """A result this node cannot store (its disk is full): if a live peer could run the
        task, record the attempt as interrupted, with no result, so that a peer runs it, rather
        than hold the task until space comes back. Alone, the node keeps the finished attempt
        and waits. False if not handed back."""
        node = self.node
        if not node.core.peer_could_run(launch.spec):
            return False
        reason = f"its result could not be stored on {node.node_id[:8]}: {why}"
        interrupted = replace(finished, outcome=Outcome.INTERRUPTED)  # `finished` may yet be stored
        try:
            record = result_record(launch, interrupted, None, reason, node.core.capacity)
            await node.append([record])
        except SwarmError:
            return False  # our heartbeat will stop too: the lease expires, and peers take it
        log.warning("%s handed back to the swarm: %s", launch.name, reason)
        # Leave it to the peers for a lease period, and claim nothing meanwhile: the next task
        # would likely meet the same full store.
        node.tell(node.core.handed_back, launch.task_id)
        return True
