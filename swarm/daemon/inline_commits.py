"""Small ledger commits made on the event loop's own thread, made durable by a helper process.

Theory of operation
-------------------
The node writes a few records for every task it runs (its claim, its result). Committed through
aiosqlite, each batch is a trip to SQLite's thread and back, and that thread takes the GIL from
the loop several times on the way: the loop then sleeps in a futex until it has the GIL back.
Measured on 2 cores with 2 slots of `true`, committing the same batches on the loop instead ran
about 20% more tasks a second (bench/RESULTS.md, stop 23).

So a small batch (`INLINE_ROWS_MAX` rows and `INLINE_BYTES_MAX` bytes at most) is committed
here, on a connection of the loop's own, in WAL mode with synchronous=NORMAL: the commit appends
to the WAL file in tens of microseconds. What synchronous=FULL adds to that is an fdatasync of
the WAL after the commit, and `WalSync` does it before the batch counts as written: the frames of
a transaction whose commit frame is on disk are replayed after a power cut. The fdatasync is done
by a small helper process asked through a pipe, so that no thread of ours needs the GIL to wait
on the disk (a thread for it was measured to give back most of the gain). The helper is started
at the HELPER_AFTER_SYNCS-th sync (a short run never needs it); until it says it is up, and if
it ever dies, the fdatasync runs in a thread instead: slower, as durable.

Unlike FULL, a commit is visible to readers of the file before its sync returns. The node acts
on a record only once it is written: records are applied, gossiped and served to peers (up to
the ledger's high seqs, see `db.rows_after`) after their sync. What reads the file itself (the
CLI's `status --once`, `export`, and the `records` op that serves them to remote clients) may
show a record a moment before it is synced. A failed sync leaves a committed batch that may or
may not survive a power cut: the node stops, and its next start reads the ledger back as the
disk has it (the writer raises `LedgerSyncError` to every writer waiting).

The loop waits on the disk here only when the WAL starts over after a checkpoint (SQLite syncs
its new header, even at NORMAL). This connection never checkpoints on its own
(`wal_autocheckpoint=0`: a checkpoint writes and syncs the database file): the ledger writer
asks for a passive one through aiosqlite, in its thread, every CHECKPOINT_EVERY_COMMITS inline
commits or CHECKPOINT_EVERY_BYTES bytes. Bigger batches (a submission of many tasks, a peer's
backlog) still go through aiosqlite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from swarm.daemon.store import fsync_dir
from swarm.errors import SwarmError

log = logging.getLogger("swarm.daemon.inline_commits")

INLINE_ROWS_MAX = 256  # rows in a batch committed on the loop; a bigger one goes to the thread
INLINE_BYTES_MAX = 256 * 1024  # ... and bytes of records (big specs would hold the loop)
CHECKPOINT_EVERY_COMMITS = 500  # inline commits between two passive checkpoints ...
CHECKPOINT_EVERY_BYTES = 16 * 1024 * 1024  # ... or bytes committed inline, whichever first
BUSY_TIMEOUT_MS = 200  # another connection's write lock is waited for this long, at most
# Syncs done from a thread before the helper is started: a short run (one task is a handful of
# syncs) never pays for starting a Python process it would hardly use.
HELPER_AFTER_SYNCS = 16

# The helper: a byte in asks for an fdatasync of the WAL; a byte out says it is done ("." ok,
# "!" failed, with the errno as text up to the newline). It says "+" once it is up, and exits
# when its pipe closes (the node is gone).
_HELPER = r"""
import os, sys
wal, asks, answers = (int(a) for a in sys.argv[1:4])
os.write(answers, b"+")
while os.read(asks, 1):
    try:
        os.fdatasync(wal)
        os.write(answers, b".")
    except OSError as exc:
        os.write(answers, b"!%d\n" % exc.errno)
"""


class LedgerSyncError(SwarmError):
    """A batch was committed but could not be synced to disk: whether it survives a power cut
    is unknown, so the node stops rather than go on as if it had not been written."""


class InlineCommits:
    """The loop's own connection to the ledger file, for small batches (see the module doc)."""

    def __init__(self, conn: sqlite3.Connection, sync: WalSync | None) -> None:
        self._conn = conn
        self.sync = sync
        self.commits = 0
        self.bytes_since_checkpoint = 0

    @classmethod
    async def open(cls, path: Path, durable: bool) -> InlineCommits:
        """sqlite3.Error or OSError if it cannot be had: then the ledger writer commits every
        batch through aiosqlite, as before. All that may fail is done here, before any commit:
        a batch committed is never then reported as failed for want of a descriptor."""
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":  # (a filesystem where SQLite cannot share a WAL)
                raise sqlite3.OperationalError(f"the ledger is in {mode} mode, not WAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            sync = await WalSync.open(Path(f"{os.path.realpath(path)}-wal")) if durable else None
        except BaseException:
            conn.close()
            raise
        return cls(conn, sync)

    def commit(self, statements: list[tuple[str, list[object]]], size: int) -> None:
        """Commit `statements` (`size` bytes of records) as one transaction, not yet synced.
        sqlite3.Error or OSError if it fails: then nothing of it was committed."""
        conn = self._conn
        if conn.in_transaction:  # a failed batch whose rollback failed too
            conn.rollback()
        if len(statements) == 1:  # one statement is its own transaction
            conn.execute(*statements[0])
        else:
            conn.execute("BEGIN")
            for sql, params in statements:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        self.commits += 1
        self.bytes_since_checkpoint += size

    def checkpoint_due(self) -> bool:
        return (
            self.commits % CHECKPOINT_EVERY_COMMITS == 0
            or self.bytes_since_checkpoint >= CHECKPOINT_EVERY_BYTES
        )

    def rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self._conn.in_transaction:
                self._conn.rollback()

    def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()


class WalSync:
    """fdatasync of the ledger's WAL file, by a helper process (or, failing that, a thread).
    One sync at a time: the ledger writer commits one batch at a time."""

    def __init__(self, wal: Path, fd: int) -> None:
        self._wal = wal
        self._fd = fd
        self._helper: subprocess.Popen[bytes] | None = None
        self._asks = self._answers = -1
        self._up = False
        self._pending: asyncio.Future[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._given_up = False
        self._syncs = 0

    @classmethod
    async def open(cls, wal: Path) -> WalSync:
        """OSError if the WAL cannot be opened. The node's connections keep it from being
        deleted (SQLite removes it with the last connection), so this stays its file."""
        fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # Its name too, once, as SQLite does for a WAL it creates: the file may have been
            # made by a connection that only read.
            await asyncio.to_thread(_sync_file_and_dir, fd, wal.parent)
        except BaseException:
            os.close(fd)
            raise
        return cls(wal, fd)

    async def __call__(self) -> None:
        """Return once everything committed to the WAL so far is on disk; OSError if the
        fdatasync fails."""
        self._syncs += 1
        if self._syncs == HELPER_AFTER_SYNCS and not self._given_up:
            self._start_helper()  # up for a later sync: this one, as those before, from a thread
        if self._helper is not None and self._up:
            answer = await self._ask()
            if answer is not None:
                if answer.startswith(b"!"):
                    code = int(answer[1:].strip() or b"0")
                    raise OSError(code, f"fdatasync of {self._wal}: {os.strerror(code)}")
                return
        await asyncio.to_thread(os.fdatasync, self._fd)

    def _start_helper(self) -> None:
        ends: list[int] = []
        try:
            asks_r, asks_w = os.pipe()
            ends += (asks_r, asks_w)
            answers_r, answers_w = os.pipe()
            ends += (answers_r, answers_w)
            argv = [sys.executable, "-I", "-S", "-c", _HELPER]
            argv += [str(self._fd), str(asks_r), str(answers_w)]
            self._helper = subprocess.Popen(
                argv,
                pass_fds=(self._fd, asks_r, answers_w),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a ^C to the node's group is the node's to handle
            )
        except OSError as exc:
            for fd in ends:
                os.close(fd)
            self._give_up(f"cannot start it: {exc}")
            return
        os.close(asks_r)  # the helper's ends
        os.close(answers_w)
        self._asks, self._answers = asks_w, answers_r
        os.set_blocking(answers_r, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(answers_r, self._on_answer)

    def _on_answer(self) -> None:
        try:
            data = os.read(self._answers, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._give_up("it exited")
            return
        if data.startswith(b"+"):
            self._up = True
            data = data[1:]
            if not data:
                return
        if self._pending is not None and not self._pending.done():
            self._pending.set_result(data)
        self._pending = None

    async def _ask(self) -> bytes | None:
        """The helper's answer to one sync; None if it is gone (the caller syncs itself)."""
        assert self._loop is not None
        try:
            os.write(self._asks, b"s")
        except OSError as exc:
            self._give_up(f"cannot ask it: {exc}")
            return None
        pending: asyncio.Future[bytes] = self._loop.create_future()
        self._pending = pending
        try:
            return await pending
        except ConnectionError:
            return None
        except asyncio.CancelledError:
            # Its answer may still come, and would be taken for the next sync's: that one
            # could then count a commit made after this fdatasync as synced. A thread it is.
            self._given_up = True
            self._stop_helper()
            raise

    def _give_up(self, why: str) -> None:
        """Sync from a thread from now on (the WAL is as durable, the loop a little busier)."""
        if not self._given_up:
            log.warning("the ledger's sync helper is not used (%s): syncing from a thread", why)
        self._given_up = True
        self._up = False
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(ConnectionError(why))
        self._pending = None
        self._stop_helper()

    def _stop_helper(self) -> None:
        if self._loop is not None and self._answers >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._answers)
        for fd in (self._asks, self._answers):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._asks = self._answers = -1
        helper, self._helper = self._helper, None
        if helper is not None:
            with contextlib.suppress(OSError):
                helper.kill()  # it only reads our pipe: nothing of the ledger is lost
            if helper.poll() is None:  # in an fdatasync on a slow disk: reaped off the loop
                threading.Thread(target=helper.wait, daemon=True).start()

    def close(self) -> None:
        """Stop the helper and let go of the WAL file (the ledger writer has closed)."""
        self._given_up = True
        self._stop_helper()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _sync_file_and_dir(fd: int, directory: Path) -> None:
    os.fdatasync(fd)
    fsync_dir(directory)
