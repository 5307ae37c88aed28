"""Result transfer: serving the blobs this node holds, and copying results here from peers.

Theory of operation
-------------------
A result is a manifest blob naming the blobs of its stdout, stderr and output files, all held in
the node's `BlobStore` under their sha256. A peer asks for one blob at a time over the gossip
net's TCP streams (`net.fetch`); `serve_blob` answers with the blob in chunks, or says it is
missing. Nothing that arrives is trusted: a fetched blob goes to a temp file, is stored under the
digest of what was actually received, and is kept only if that is the digest asked for. What is
served is hashed as it is read: a copy found corrupt is set aside, the peer is told it is missing,
and the result it is part of is reported damaged (`damaged`, with the task the peer named).

`copy_result` makes a whole result held here (its manifest, then every blob it names), trying
its holders in a fixed order and skipping any that is not alive. It only moves bytes: it returns
what it fetched and what no holder could give, and the node decides what to record (a REPLICA
once all of it is here) and what to try again. A blob already held costs one stat, so copying a
result twice is cheap and harmless. A result this node is a holder of, yet could not make whole
(a copy read corrupt and set aside, say, and no other holder with a good one) is reported damaged.

Blob reads and writes go to a thread; the event loop only moves chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from swarm.core import gossip, wire
from swarm.core.ledger import Attempt, Ledger, TaskView
from swarm.core.manifest import parse_manifest
from swarm.daemon.store import EMPTY_DIGEST, BlobStore
from swarm.errors import CorruptBlobError, MissingBlobError, SwarmError

log = logging.getLogger("swarm.daemon.transfer")

# Looks up a member by node id (None: not known, or no network); gives its address and state.
MemberLookup = Callable[[str], gossip.Member | None]
# Copies the blob `digest` from the peer at `addr` into the file `into`; False if it lacks it.
# The last argument names the task whose result the blob is part of (None: not a result's).
Fetch = Callable[[gossip.Addr, str, Path, str | None], Awaitable[bool]]
# Told a task, and its credited result (a manifest digest) whose copy here was found damaged:
# holding.py drops it.
Damaged = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Copied:
    """What copying one result here did."""

    digest: str  # the result's manifest
    fetched: int  # blobs copied from a holder (those already here are not counted)
    missing: int  # blobs no holder could give (1 if even the manifest could not be had)

    @property
    def complete(self) -> bool:
        """All of the result is held here now."""
        return not self.missing


class ResultTransfer:
    """Serves this node's blobs to peers and copies results here from their holders."""

    def __init__(
        self,
        store: BlobStore,
        ledger: Ledger,
        node_id: str,
        member: MemberLookup,
        fetch: Fetch,
        damaged: Damaged = lambda task, digest: None,
    ) -> None:
        self.store = store
        self.ledger = ledger  # read for its holders: who said, with a REPLICA, it holds a blob
        self.node_id = node_id
        self.member = member
        self.fetch = fetch
        self.damaged = damaged

    async def serve_blob(self, request: wire.FetchRequest) -> AsyncIterator[wire.BlobChunk]:
        """A blob we hold, in chunks, hashed as they are read: a copy that turns out corrupt
        ends with a missing chunk (the fetcher drops what it got) and is set aside."""
        if request.digest == EMPTY_DIGEST:
            yield wire.BlobChunk(b"", True)
            return
        if not self.store.has(request.digest):
            if request.task is not None:
                await self.report(request.task, request.digest)  # a part gone from a result?
            yield wire.BlobChunk(b"", True, missing=True)
            return
        read = hashlib.sha256()
        with open(self.store.path(request.digest), "rb") as blob:
            while True:
                data = await asyncio.to_thread(blob.read, wire.BLOB_CHUNK_BYTES)
                read.update(data)
                last = len(data) < wire.BLOB_CHUNK_BYTES
                if last and read.hexdigest() != request.digest:
                    stat = os.fstat(blob.fileno())
                    error = await asyncio.to_thread(self.store.quarantine, request.digest, stat)
                    log.warning("a blob asked for by a peer is corrupt here: %s", error)
                    if request.task is not None:
                        await self.report(request.task, request.digest)
                    yield wire.BlobChunk(b"", True, missing=True)
                    return
                yield wire.BlobChunk(data, last)
                if last:
                    return

    async def fetch_blob(
        self, digest: str, holders: list[str], suspects: bool = False, task: str | None = None
    ) -> bool:
        """Copy a blob here from one of `holders`, verified; True if it is held here now.
        Holders not alive are skipped (`suspects`: only those dead or gone). `task`: the task
        whose result the blob is part of, named to the holders (serve_blob)."""
        if self.store.has(digest):
            return True
        reachable = {gossip.MemberState.ALIVE}
        if suspects:
            reachable.add(gossip.MemberState.SUSPECT)
        for node in holders:
            member = self.member(node)
            if member is None or member.state not in reachable:
                continue
            if node != self.node_id and await self._fetch_from(member, digest, task):
                return True
        return False

    async def _fetch_from(self, member: gossip.Member, digest: str, task: str | None) -> bool:
        """One holder's copy of the blob, kept only if it is what was asked for."""
        into = self.store.new_temp_path()
        try:
            if await self.fetch(member.addr, digest, into, task):
                got, _ = await asyncio.to_thread(self.store.put_file, into, move=True)
                if got == digest:
                    return True
                log.warning("a blob from %s did not match its digest; dropped", member.node[:8])
                self.discard(got)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, SwarmError) as exc:
            log.debug("fetching %s from %s failed: %s", digest[:12], member.node[:8], exc)
        finally:
            with contextlib.suppress(FileNotFoundError):
                into.unlink()
        return False

    def discard(self, digest: str) -> None:
        """Forget a blob stored by mistake (it did not match what was asked for)."""
        with contextlib.suppress(OSError, ValueError):
            self.store.path(digest).unlink()

    async def copy_result(self, attempt: Attempt) -> Copied:
        """Make an attempt's result (its manifest and every blob it names) held here, fetched
        and verified from its holders (those the ledger knows, and the attempt's own node)."""
        digest = attempt.result.digest
        assert digest is not None
        copied = await self._copy_result(attempt, digest)
        if not copied.complete:
            await self.report(attempt.result.task_id, digest)
        return copied

    async def _copy_result(self, attempt: Attempt, digest: str) -> Copied:
        task = attempt.result.task_id
        holders = sorted(self.ledger.result_holders(attempt) - {self.node_id})
        fetched = missing = 0
        manifest = None
        for _ in range(2):  # a copy here found corrupt is set aside as it is read: fetch anew
            had = self.store.has(digest)
            if not await self.fetch_blob(digest, holders, task=task):
                return Copied(digest, fetched, 1)
            fetched += 0 if had else 1
            try:
                manifest = parse_manifest(await asyncio.to_thread(self.store.read_bytes, digest))
                break
            except CorruptBlobError:
                continue
        if manifest is None:
            return Copied(digest, fetched, 1)
        for part in (manifest.stdout, manifest.stderr, *manifest.files.values()):
            had_part = self.store.has(part)
            if await self.fetch_blob(part, holders, task=task):
                fetched += 0 if had_part else 1
            else:
                missing += 1
        return Copied(digest, fetched, missing)

    async def report(self, task: str, missing: str) -> None:
        """The blob `missing` is not whole here (gone, or just set aside as corrupt): if it is
        the task's credited result, or a part of it, and this node holds that result, the
        result is checked through, and reported damaged if it is. Only what this node finds
        counts, never what a peer's request suggests."""
        view = self.ledger.tasks.get(task)
        attempt = None if view is None else view.ok_attempt()
        if attempt is None or attempt.result.digest is None:
            return
        if self.node_id not in self.ledger.result_holders(attempt):
            return
        result = attempt.result.digest
        if await asyncio.to_thread(self._damaged, result, missing):
            self.damaged(task, result)

    def _damaged(self, result: str, missing: str) -> bool:
        """Whether the result `result` held here is damaged, if `missing` is it or one of its
        parts. Then every part is verified, so that what else is rotten is set aside now (a
        rerun making the same blob would otherwise keep the rotten copy of it)."""
        try:
            manifest = parse_manifest(self.store.read_bytes(result))
        except (MissingBlobError, CorruptBlobError):
            return True  # the manifest itself: gone, or rotten (set aside as it was read)
        parts = (manifest.stdout, manifest.stderr, *manifest.files.values())
        if missing not in (result, *parts):
            return False
        damaged = False
        for part in parts:
            try:
                damaged = not self.store.verify(part) or damaged
            except MissingBlobError:
                damaged = True
        return damaged

    async def fetch_results(self, job: str) -> AsyncGenerator[Copied, None]:
        """Copy here the result of each of the job's tasks that has one, one after another."""
        for view in self.ledger.job_tasks(job):
            attempt = result_attempt(view)
            if attempt is not None:
                yield await self.copy_result(attempt)


def result_attempt(view: TaskView) -> Attempt | None:
    """The attempt whose result a user fetches: the task's credited one, else its latest with a
    result (a failed task's output tells why it failed). None if that result has no blobs (a
    Python call's outcome in its record: there is nothing to copy)."""
    attempt = view.ok_attempt() or next(
        (a for a in reversed(view.ordered_attempts()) if a.result.digest), None
    )
    return None if attempt is None or attempt.result.digest is None else attempt
