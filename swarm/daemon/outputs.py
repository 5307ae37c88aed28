"""Storing an attempt's outputs: its files into the blob store, and the RESULT that names them.

Theory of operation
-------------------
An attempt that ended leaves files in its run dir: stdout, stderr and the output files its task
declared. `OutputStore.put` moves each into the `BlobStore` (a rename when the file is ours to
move, else a copy; either way fsynced under its sha256), then stores the manifest naming them,
and returns the manifest's digest: that digest is the attempt's result. Every blob is on disk
before the manifest is, and the manifest before the node writes the RESULT that names it.

A store can fail part way (a full disk). The caller then tries again with the same `stored`
map, which remembers what each earlier try already moved: those files are gone from the run
dir, and must not be looked for again.

Most short tasks print nothing. Their manifest is always the same blob, so it is stored once and
its digest kept: such a task costs two stats and no thread. Everything else touches the task's
files and so runs in a thread, never on the event loop.

A Python call that printed nothing and returned (or raised) something small is the exception:
its worker hands its outcome over in its reply (`Finished.inline_value`), which goes in its
RESULT record itself, and it stores no blob at all.

`result_record` turns what the executor reported into the RESULT record; what to do when it
cannot be written (wait, or hand the task back) is the node's decision.
"""

from __future__ import annotations

import asyncio
import os

from swarm.core.ledger import ResultRecord
from swarm.core.manifest import manifest_bytes
from swarm.core.spec import Resources
from swarm.daemon.executor import Finished, Launch
from swarm.daemon.store import EMPTY_DIGEST, BlobStore


class OutputStore:
    """Moves attempts' files into one blob store."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self._silent_manifest: str | None = None  # digest of the manifest of a task with no output

    async def put(self, finished: Finished, stored: dict[str, str]) -> tuple[str, bool]:
        """Move the attempt's files into the store; return its manifest's digest and whether
        the manifest is new here. `stored` remembers what a previous try already moved (and is
        filled in as this one goes). StorageFullError on a full disk; OSError if a file cannot
        be read (say, removed under us)."""
        if finished.stream_bytes is not None:  # as the executor saw them at the end
            out_size, err_size = finished.stream_bytes
        else:
            out_size, err_size = _size(finished.stdout), _size(finished.stderr)
        if not (finished.outputs or out_size or err_size or stored):
            if self._silent_manifest is None:
                digest, new = self.store.put_bytes(manifest_bytes(EMPTY_DIGEST, EMPTY_DIGEST, {}))
                self._silent_manifest = digest
                return digest, new
            return self._silent_manifest, False
        return await asyncio.to_thread(self._put_sync, finished, stored)

    def _put_sync(self, finished: Finished, stored: dict[str, str]) -> tuple[str, bool]:
        wanted = {"stdout": (finished.stdout, True), "stderr": (finished.stderr, True)}
        wanted |= {
            f"file:{rel}": (p, finished.outputs_movable) for rel, p in finished.outputs.items()
        }
        for key, (path, movable) in wanted.items():
            if key not in stored:
                empty = key in ("stdout", "stderr") and not _size(path)
                stored[key] = EMPTY_DIGEST if empty else self.store.put_file(path, move=movable)[0]
        files = {rel: stored[f"file:{rel}"] for rel in finished.outputs}
        return self.store.put_bytes(manifest_bytes(stored["stdout"], stored["stderr"], files))


def result_record(
    launch: Launch,
    finished: Finished,
    digest: str | None,
    reason: str,
    node_capacity: Resources,
    value: bytes = b"",
) -> ResultRecord:
    """The RESULT of an attempt that ran: what the executor measured, and its result's digest
    (None: no result, say when it is handed back unstored; or its `value` inline)."""
    return ResultRecord(
        task_id=launch.task_id,
        epoch=launch.epoch,
        attempt=launch.attempt,
        outcome=finished.outcome,
        exit_code=finished.exit_code,
        started_ms=finished.started_ms,
        ended_ms=finished.ended_ms,
        wall_s=round(finished.wall_s, 6),
        cpu_s=round(finished.cpu_s, 6),
        max_rss_kb=finished.max_rss_kb,
        digest=digest,
        node_capacity=node_capacity,
        reason=reason,
        evicted=finished.evicted,
        value=value,
    )


def _size(path: os.PathLike[str]) -> int:
    """A file's size; 0 if there is no such file."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
