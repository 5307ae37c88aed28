"""What the control socket's operations do on the node (control_server.py checks the requests
and shapes the replies): submissions, cancels, retries and drains written as the core's
requests.py decides, joins, key reloads, result fetches, and the status snapshot and members'
rows, with the long poll that waits for the next change."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from swarm.control import EndedTask, LogsReply, WhyReply, ended_task
from swarm.core import requests, snapshot
from swarm.core.ledger import (
    TERMINAL_STATES,
    Attempt,
    Body,
    State,
    TaskView,
    Version,
)
from swarm.core.manifest import parse_manifest
from swarm.core.requests import CheckedTask
from swarm.core.snapshot import NodeRow, Snapshot
from swarm.core.spec import TaskSpec
from swarm.daemon import db
from swarm.daemon.config import parse_addr
from swarm.daemon.executor import AnyAttempt
from swarm.daemon.failures import fill_stderr_tails
from swarm.daemon.net import GossipNet
from swarm.daemon.store import EMPTY_DIGEST
from swarm.daemon.transfer import Copied
from swarm.daemon.watches import Watch
from swarm.errors import CorruptBlobError, SwarmError, UserError
from swarm.pycall import VALUE_FILE

if TYPE_CHECKING:
    from swarm.daemon.node import Node


class Operations:
    """The node as the control server sees it (control_server.NodeControl)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    # -- what it counted --------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.node.node_id

    @property
    def net(self) -> GossipNet | None:
        return self.node.net

    @property
    def forged_records(self) -> int:
        return self.node.core.sync.forged_records

    @property
    def bad_records(self) -> int:
        return self.node.core.sync.bad_records

    @property
    def refused_records(self) -> int:
        return self.node.core.sync.refused_records

    @property
    def refused_tasks(self) -> int:
        return self.node.core.sync.refused_tasks

    @property
    def gap_pulls(self) -> int:
        return self.node.core.sync.gap_pulls

    @property
    def stamps_ahead(self) -> int:
        return self.node.core.stamps_ahead

    # -- requests that write ----------------------------------------------------------------

    def has_job(self, job: str) -> bool:
        return job in self.node.ledger.jobs

    async def add_tasks(
        self, job: str, tasks: list[CheckedTask], rerun_failed: bool = False
    ) -> int:
        """Add a submission's tasks in one commit (requests.submission); how many were new.
        `rerun_failed`: those already in the ledger that failed or were cancelled are queued
        again with them. `tasks` is emptied once their records are made: the checked tasks of
        a million would otherwise be held, unused, while their records are committed and
        applied (the daemon's peak)."""
        node = self.node
        stamp = node.core.clock.now(node.now().wall_ms)
        records: list[Body] = list(requests.submission(node.ledger, job, tasks, stamp))
        added = len(records)
        if rerun_failed:
            records.extend(requests.reruns(node.ledger, (t.task_id for t in tasks), stamp))
        tasks.clear()
        if records:
            await node.append(records)
        return added

    async def put_blob(self, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Store a blob streamed by a client (a Python call's function or arguments) and say,
        with a REPLICA record, that this node holds it: its digest and size."""
        node = self.node
        path = node.store.new_temp_path()
        size = 0
        try:
            with open(path, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    await asyncio.to_thread(out.write, chunk)
            digest, _ = await asyncio.to_thread(node.store.put_file, path, move=True)
        except OSError as exc:  # a full disk, above all: the client hears it, the node goes on
            raise SwarmError(f"cannot store the blob in {node.store.root}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if node.node_id not in node.ledger.holders.get(digest, ()):
            await node.append([node.ledger.replica_record(digest, node.node_id)])
        return digest, size

    async def cancel(self, target: str) -> tuple[Literal["job", "task"], str]:
        """Cancel a job, or the one task whose id starts with `target`: which, and its name."""
        node = self.node
        stamp = node.core.clock.now(node.now().wall_ms)
        kind, name, record = requests.cancellation(node.ledger, target, stamp)
        await node.append([record])
        return kind, name

    async def retry(self, job: str) -> int:
        """Re-queue the failed tasks of a job; how many."""
        records = requests.retries(self.node.ledger, job)
        if records:
            await self.node.append(list(records))
        return len(records)

    async def drain_request(
        self, node_prefix: str | None, grace_s: float | None
    ) -> tuple[str, int | None]:
        """Drain this node or the live member whose id starts with `node_prefix`: its whole id,
        and (if it is this node) how many attempts it has still to finish."""
        node = self.node
        live = [m.node for m in node.membership.live_members()] if node.membership else []
        target = requests.drain_target(node_prefix, node.node_id, live)
        if target == node.node_id:
            node.drain(grace_s)
            return target, len(node.attempts)
        stamp = node.core.clock.now(node.now().wall_ms)
        await node.append([requests.drain_record(target, stamp, grace_s)])
        return target, None

    async def join_peers(self, peers: list[str]) -> list[str]:
        """Join through `peers` (HOST:PORT each); what is wrong, if no seed answers in time."""
        seeds = [parse_addr(p) for p in peers]
        self.node.join(seeds)
        return await self.node.await_seeds(seeds)

    def reload_keys(self) -> str:
        return self.node.reload_keys()

    def stop(self) -> None:
        self.node.stop()

    async def fetch_results(self, job: str) -> dict[str, int]:
        """Make every result file of the job's tasks held here, fetching from their holders."""
        fetched = missing = 0
        async with contextlib.aclosing(self.node.transfer.fetch_results(job)) as copies:
            async for copied in copies:
                await self._say_held(copied)
                fetched, missing = fetched + copied.fetched, missing + copied.missing
        return {"fetched": fetched, "missing": missing}

    async def _say_held(self, copied: Copied) -> None:
        """Once all of a result is held here, say so with a REPLICA record (once)."""
        node = self.node
        if copied.complete and node.node_id not in node.ledger.holders.get(copied.digest, ()):
            await node.append([node.ledger.replica_record(copied.digest, node.node_id)])

    async def read_records(
        self, after: Version | None, rows_max: int, bytes_max: int
    ) -> tuple[list[list[Any]], bool]:
        """A page of the ledger file (read in a thread: it is a query of up to `rows_max`)."""
        path = self.node.state.db_path
        return await asyncio.to_thread(db.read_page, path, after, rows_max, bytes_max)

    async def read_blob(self, digest: str, offset: int, size_max: int) -> tuple[bytes, int]:
        """Up to `size_max` bytes of a held blob from `offset`, and its size; the reader checks
        the whole against its digest."""

        def read() -> tuple[bytes, int]:
            try:
                with open(self.node.store.path(digest), "rb") as blob:
                    blob.seek(offset)
                    return blob.read(size_max), os.fstat(blob.fileno()).st_size
            except FileNotFoundError:
                raise UserError(f"blob {digest[:12]} is not held on this node") from None

        return await asyncio.to_thread(read)

    def unfit(self, specs: list[TaskSpec]) -> dict[str, int]:
        return self.node.core.unfit(specs)

    def why(self, target: str) -> WhyReply:
        """Why the task `target` names is not running (core/why.py)."""
        node = self.node
        view = requests.find_task(node.ledger, target)
        reasons = node.core.why_not_running(view.task_id, time.monotonic())
        state = "" if view.state is None else str(view.state)
        return {
            "ok": True,
            "task_id": view.task_id,
            "job": view.job,
            "name": view.name,
            "state": state,
            "reasons": reasons,
        }

    async def logs(self, target: str, number: int | None, fetch: bool = True) -> LogsReply:
        """A task's latest ended attempt (or its `number`th) with its stdout and stderr made
        held here (`fetch`: those two blobs and the manifest copied from a holder, no more),
        and where a running attempt of it runs."""
        node = self.node
        view = requests.find_task(node.ledger, target)
        ended = [a for a in view.ordered_attempts() if a.result.digest or a.result.value]
        if number is not None:
            ended = [a for a in ended if a.result.attempt == number]
            if not ended:
                raise UserError(f"{view.job}/{view.name} has no ended attempt {number}")
        shown = ended[-1] if ended else None
        stdout = stderr = None
        if shown is not None and shown.result.value and not shown.result.digest:
            stdout = stderr = EMPTY_DIGEST  # a call that printed nothing
        elif shown is not None:
            with contextlib.suppress(SwarmError, OSError):
                stdout, stderr = await self._streams_of(shown, fetch)
        claim = view.active_claim()
        running_on = "" if claim is None else claim[1]
        attempt = node.attempts.get(view.task_id) if running_on == node.node_id else None
        return {
            "ok": True,
            "task_id": view.task_id,
            "job": view.job,
            "name": view.name,
            "state": "" if view.state is None else str(view.state),
            "attempt": 0 if shown is None else shown.result.attempt,
            "node": "" if shown is None else shown.version.origin,
            "outcome": "" if shown is None else str(shown.result.outcome),
            "stdout": stdout,
            "stderr": stderr,
            "running_on": running_on,
            "running_attempt": _running_attempt(view, attempt),
            "run_dir": None if attempt is None else str(attempt.launch.run_dir),
        }

    # -- Python clients: watching calls end -------------------------------------------------

    def watch(self, watch: Watch, task_ids: list[str]) -> list[str]:
        return self.node.watches.add(self.node.ledger, watch, task_ids)

    def unwatch(self, watch: Watch) -> None:
        self.node.watches.close(watch)

    async def ended(self, task_id: str) -> EndedTask | None:
        """How a watched task ended. A Python call's outcome is in its RESULT record, or in a
        blob that is made held here first (copied from the node that holds it), so that the
        client can read it. None if it is not to be told yet: it runs again, or its outcome
        could not be had (look again later)."""
        view = self.node.ledger.tasks[task_id]
        if view.state not in TERMINAL_STATES:
            return None
        attempt = view.outcome_attempt()
        value = None
        if attempt is not None and attempt.result.digest and view.spec and view.spec.call:
            value = await self._value_of(attempt)
            if value is None and view.state is State.DONE:
                return None
        return ended_task(view, value)

    async def _streams_of(self, attempt: Attempt, fetch: bool) -> tuple[str | None, str | None]:
        """The digests of an attempt's stdout and stderr if held here (fetched first, with its
        manifest, from its holders when `fetch`); None for one that is not."""
        node = self.node
        digest = attempt.result.digest
        assert digest is not None
        found = await self._held_streams(attempt, digest, fetch)
        if fetch and None in found:
            await node.transfer.report(attempt.result.task_id, digest)
        return found

    async def _held_streams(
        self, attempt: Attempt, digest: str, fetch: bool
    ) -> tuple[str | None, str | None]:
        node, task = self.node, attempt.result.task_id
        ordered = sorted(node.ledger.result_holders(attempt) - {node.node_id})
        if fetch and not await node.transfer.fetch_blob(digest, ordered, task=task):
            return None, None
        if not node.store.has(digest):
            return None, None
        try:
            manifest = parse_manifest(await asyncio.to_thread(node.store.read_bytes, digest))
        except CorruptBlobError:  # (set aside as it was read)
            return None, None
        found: list[str | None] = []
        for part in (manifest.stdout, manifest.stderr):
            held = node.store.has(part) or (
                fetch and await node.transfer.fetch_blob(part, ordered, task=task)
            )
            found.append(part if held else None)
        return found[0], found[1]

    async def _value_of(self, attempt: Attempt) -> str | None:
        """The digest of a call's outcome blob, held here; None if it cannot be had."""
        node = self.node
        digest = attempt.result.digest
        assert digest is not None
        try:
            if not node.store.has(digest) or attempt.version.origin != node.node_id:
                copied = await node.transfer.copy_result(attempt)
                await self._say_held(copied)
                if not copied.complete:
                    return None
            data = await asyncio.to_thread(node.store.read_bytes, digest)
            return parse_manifest(data).files.get(VALUE_FILE)
        except (SwarmError, OSError):
            return None

    # -- status -----------------------------------------------------------------------------

    @property
    def changes(self) -> int:
        """How many times a task's state has changed: a status long poll waits for the next."""
        return self.node.changes

    async def wait_for_change(self, seen: int, timeout_s: float) -> None:
        """Return at the next change of a task's state after the `seen`th, or after `timeout_s`."""
        if seen != self.node.changes:
            return  # changed since the client looked
        # asyncio.timeout, not wait_for: on Python 3.11, wait_for can swallow a cancel that
        # comes as its wait ends, and a handler must stop when the node does.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.node.progress.wait()

    def node_info(self) -> NodeRow:
        node = self.node
        return {
            "id": node.node_id,
            "state": "alive",
            "pid": os.getpid(),
            "data_dir": str(node.state.root),
            "labels": node.labels,
            "capacity": snapshot.resources_dict(node.capacity),
            "used": snapshot.resources_dict(node.core.used),
            "running": len(node.attempts),
            "started_ms": node.started_ms,
            "not_claiming": node.core.not_claiming,
        }

    def members(self) -> list[NodeRow]:
        node = self.node
        if node.membership is None:
            return [self.node_info()]
        members = node.membership.members.values()
        return snapshot.member_rows(node.ledger, members, self.node_info(), time.monotonic())

    async def snapshot(self, jobs: list[str] | None = None) -> Snapshot:
        node = self.node
        infeasible = node.core.infeasible(time.monotonic(), None if jobs is None else set(jobs))
        now_ms = node.now().wall_ms
        built = snapshot.build(node.ledger, now_ms, self.members(), jobs, infeasible, node.left_out)
        # The failures' stderr lines are read from the task's files: in a thread, off the loop.
        await asyncio.to_thread(fill_stderr_tails, built.get("failures", []), node.store)
        return built


def _running_attempt(view: TaskView, here: AnyAttempt | None) -> int:
    """The number of the attempt a running task is on: this node's, or (run elsewhere) one more
    than the attempts it has records of (0 if it runs not)."""
    if here is not None:
        return here.launch.attempt
    return len(view.attempts) + 1 if view.active_claim() is not None else 0
