"""Persistence of the ledger in one SQLite file per node (WAL, group commit).

Theory of operation: the table `records` holds every record this node has seen, keyed by its version,
with the body as msgpack. Writers hand rows to `LedgerWriter.write()` and wait; one loop commits
whatever has queued up meanwhile in a single transaction (group commit), so a burst of claims and
results costs one commit, not one each, and nobody waits longer than one commit. A record is applied
to the in-memory ledger only after its commit returns: what the node acts on is always on disk.

Durability: WAL with synchronous=FULL by default (a commit survives power loss). `--sync normal`
keeps WAL's guarantee against process death (SIGKILL) and never corrupts the file, but the last
commits may be lost to a power cut; the tasks they recorded then run again. A small batch (a
claim, a result) is committed on the loop's own thread and its WAL synced by a helper process
before it counts as written, with the same guarantee (inline_commits.py); a big one goes through
aiosqlite's thread.

Readers (the CLI's `status --once`, `export`, `results`) open the same file read-only while the
daemon writes; WAL lets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import sqlite3
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiosqlite

from swarm.core import decoding
from swarm.core.ledger import (
    KIND_OF,
    Body,
    Kind,
    Ledger,
    TaskRecord,
    Version,
    task_record_problem,
)
from swarm.core.sync import (
    SYNC_FRAME_BYTES_MAX,
    RowSlice,
    decode_body,
    encode_body,
    plan_slice,
)
from swarm.core.wire import RECORD_BODY_BYTES_MAX
from swarm.daemon.config import SYNC_MODES
from swarm.daemon.inline_commits import (
    INLINE_BYTES_MAX,
    INLINE_ROWS_MAX,
    InlineCommits,
    LedgerSyncError,
)
from swarm.errors import (
    BadRecordError,
    CorruptLedgerError,
    StorageFullError,
    SwarmError,
    shown,
)

log = logging.getLogger("swarm.daemon.db")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    origin TEXT NOT NULL,
    generation INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (origin, generation, seq)
) WITHOUT ROWID;
"""
BATCH_ROWS_MAX = 20_000  # rows in one transaction; a bigger burst is split over several
# A write of more rows (a big submission, a peer's backlog) is encoded a statement at a time as
# it commits, in a transaction of its own: a million records never wait all encoded at once.
ENCODED_AHEAD_ROWS_MAX = 2_000
# Rows in one INSERT statement: 5 variables each, within the 999 SQLite allowed before 3.32
# (Ubuntu 20.04 and RHEL 8 still ship such); the few distinct row counts up to it are compiled
# once each and cached.
STATEMENT_ROWS_MAX = 999 // 5
READ_CHUNK_ROWS = 50_000


@dataclass(frozen=True, slots=True)
class Row:
    version: Version
    body: Body
    replaces: Version | None = None  # an older record (a heartbeat) that this one supersedes
    raw: bytes | None = None  # the body as a peer sent it (already checked): stored as it came
    remote: bool = False  # another node's record: a copy we hold may already be stored


def encode(body: Body) -> bytes:
    """The record codec is pure (core/sync.py): the same bytes are stored and sent."""
    return encode_body(body)


def decode(blob: bytes) -> Body:
    """BadRecordError if the bytes are not a record body."""
    return decode_body(blob)


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


# A row ready for SQLite: (origin, generation, seq, kind, body), and the version it replaces.
_Columns = tuple[str, int, int, int, bytes]
_Encoded = tuple[_Columns, Version | None, bool]


@dataclass(frozen=True, slots=True)
class _Unencoded:
    """A write too long to encode ahead (ENCODED_AHEAD_ROWS_MAX): encoded as it commits."""

    rows: Sequence[Row]

    def __len__(self) -> int:
        return len(self.rows)


_Pending = list[_Encoded] | _Unencoded  # a write waiting in the queue
_DELETE = "DELETE FROM records WHERE origin = ? AND generation = ? AND seq = ?"


@functools.cache
def _insert_sql(verb: str, count: int) -> str:
    """One INSERT of `count` rows (SQLite caches the compiled statement by its text)."""
    values = ", ".join(["(?, ?, ?, ?, ?)"] * count)
    return f"{verb} INTO records (origin, generation, seq, kind, body) VALUES {values}"


_Statement = tuple[str, list[Any]]


def _inserts(verb: str, rows: Iterable[_Columns]) -> Iterator[_Statement]:
    """The statements that insert `rows`, as few as the bound on a statement's rows allows,
    each made as it is asked for."""
    chunk: list[_Columns] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == STATEMENT_ROWS_MAX:
            yield _insert_sql(verb, len(chunk)), [v for columns in chunk for v in columns]
            chunk = []
    if chunk:
        yield _insert_sql(verb, len(chunk)), [v for columns in chunk for v in columns]


def _statements(rows: list[_Encoded]) -> Iterator[_Statement]:
    """What writes `rows`: our own records (a clash is a bug, never ignored), then peers'
    copies (one we already hold came by two paths: kept once), then the deletes of the records
    they supersede (an older heartbeat would only grow the file)."""
    yield from _inserts("INSERT", (columns for columns, _, remote in rows if not remote))
    yield from _inserts("INSERT OR IGNORE", (columns for columns, _, remote in rows if remote))
    for _, v, _ in rows:
        if v is not None:
            yield _DELETE, [v.origin, v.generation, v.seq]


def _encode_row(row: Row) -> _Encoded:
    """A row for SQLite: its columns, the version it replaces, and whether it is a peer's."""
    v = row.version
    body = row.raw if row.raw is not None else encode(row.body)
    columns = (v.origin, v.generation, v.seq, int(KIND_OF[type(row.body)]), body)
    return columns, row.replaces, row.remote


class LedgerWriter:
    """Group commit: many writers, one committing loop. Owned by the node's TaskGroup."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, sync: str = "full") -> None:
        self._conn = conn
        self._path = path
        self._durable = sync == "full"
        # Small batches are committed on the loop's own thread (inline_commits.py); opened at
        # the first, and None from then on if it could not be.
        self._inline: InlineCommits | None = None
        self._inline_tried = False
        self._checkpoint_due = False
        self._queue: deque[tuple[_Pending, asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self.commits = 0
        self.rows_written = 0

    async def write(self, rows: list[Row]) -> None:
        """Return once `rows` are committed; raise StorageFullError on a full disk.

        Rows are encoded here, before they join a batch: a record that cannot be encoded fails
        its own writer only, never the others committed with it. A write of more than
        ENCODED_AHEAD_ROWS_MAX rows is committed alone, and encoded as it commits."""
        if self._closing:  # nothing would ever commit it
            raise SwarmError("the ledger is closed: the node is stopping")
        pending: _Pending
        if len(rows) > ENCODED_AHEAD_ROWS_MAX:
            pending = _Unencoded(rows)
        else:
            try:
                pending = [_encode_row(r) for r in rows]
            except (ValueError, TypeError, OverflowError) as exc:
                raise SwarmError(f"cannot encode a ledger record: {exc}") from exc
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((pending, future))
        self._wake.set()
        await future

    async def run(self) -> None:
        """Commit until `close()` is called and the queue is empty."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    await self._commit_batch()
                if self._closing:
                    return
        finally:
            if self._inline is not None:
                self._inline.close()
                self._inline = None

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    async def _commit_batch(self) -> None:
        batch: list[tuple[_Pending, asyncio.Future[None]]] = []
        count = 0
        while self._queue and (not batch or self._joins(batch[0][0], count)):
            item = self._queue.popleft()
            batch.append(item)
            count += len(item[0])
        first = batch[0][0]
        error: SwarmError
        try:
            if isinstance(first, _Unencoded):  # alone in its batch (see _joins)
                await self._commit_unencoded(first.rows)
            else:
                await self._commit([r for item in batch for r in cast(list[_Encoded], item[0])])
        except (sqlite3.Error, OSError) as exc:
            await self._rollback()
            full = _is_disk_full(exc)
            if full:
                await self._truncate_wal()
            error = (
                StorageFullError(
                    f"disk full: cannot write the ledger {self._path}; nothing of it was kept"
                )
                if full
                else SwarmError(f"cannot write the ledger {self._path}: {exc}")
            )
        except (ValueError, TypeError, OverflowError) as exc:  # only a write encoded as it commits
            await self._rollback()
            error = SwarmError(f"cannot encode a ledger record: {exc}")
        except LedgerSyncError as exc:  # committed, maybe not on disk: the node stops
            self._closing = True
            waiting = batch + list(self._queue)  # those queued meanwhile are never committed
            self._queue.clear()
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            raise
        else:
            self.commits += 1
            self.rows_written += count
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
            if self._checkpoint_due:  # after its writers are told: they need not wait for it
                self._checkpoint_due = False
                await self._checkpoint()
            return
        for _, future in batch:
            if not future.done():
                future.set_exception(error)

    def _joins(self, first: _Pending, count: int) -> bool:
        """Whether the next write joins a batch of `count` rows that began with `first`: within
        the bound, and a write encoded as it commits never shares its batch."""
        if isinstance(first, _Unencoded):
            return False
        pending = self._queue[0][0]
        return not isinstance(pending, _Unencoded) and count + len(pending) <= BATCH_ROWS_MAX

    async def _commit(self, rows: list[_Encoded]) -> None:
        await self._no_open_transaction()
        statements = list(_statements(rows))
        size = sum(len(columns[4]) for columns, _, _ in rows)
        inline = await self._inline_for(len(rows), size)
        if inline is not None:
            inline.commit(statements, size)
            if inline.sync is not None:
                try:
                    await inline.sync()  # as durable as synchronous=FULL, before it counts
                except (OSError, RuntimeError) as exc:  # (RuntimeError: no thread to be had)
                    raise LedgerSyncError(
                        f"cannot sync the ledger {self._path} to disk ({exc}); the node stops, "
                        "and its next start reads the ledger back as the disk has it"
                    ) from exc
            self._checkpoint_due = inline.checkpoint_due()
            return
        if len(statements) == 1:  # the common case: one statement is its own transaction
            await self._conn.execute(*statements[0])
            return
        await self._conn.execute("BEGIN")
        for sql, params in statements:
            await self._conn.execute(sql, params)
        await self._conn.execute("COMMIT")

    async def _inline_for(self, rows: int, size: int) -> InlineCommits | None:
        """The loop's own connection, for a batch small enough to commit on the loop."""
        if rows > INLINE_ROWS_MAX or size > INLINE_BYTES_MAX:
            return None
        if not self._inline_tried:
            self._inline_tried = True
            try:
                self._inline = await InlineCommits.open(self._path, self._durable)
            except (sqlite3.Error, OSError, RuntimeError) as exc:  # (Runtime: no thread)
                log.warning("committing every batch through SQLite's thread: %s", exc)
        return self._inline

    async def _checkpoint(self) -> None:
        """Copy the WAL's pages into the ledger file (the loop's connection never does: see
        inline_commits.py). Passive: it waits on no one, and a failure only leaves the WAL
        longer until the next."""
        try:
            if self._inline is not None:
                self._inline.bytes_since_checkpoint = 0
            cursor = await self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            await cursor.close()
        except (sqlite3.Error, ValueError) as exc:  # (ValueError: aiosqlite's, closed)
            log.warning("could not checkpoint the WAL of %s: %s", self._path, exc)

    async def _commit_unencoded(self, rows: Sequence[Row]) -> None:
        """One transaction, its rows encoded ENCODED_AHEAD_ROWS_MAX at a time as it goes."""
        await self._no_open_transaction()
        await self._conn.execute("BEGIN")
        for start in range(0, len(rows), ENCODED_AHEAD_ROWS_MAX):
            part = [_encode_row(r) for r in rows[start : start + ENCODED_AHEAD_ROWS_MAX]]
            for sql, params in _statements(part):
                await self._conn.execute(sql, params)
        await self._conn.execute("COMMIT")

    async def _no_open_transaction(self) -> None:
        if self._conn.in_transaction:
            # A failed batch whose rollback failed too left its transaction open: a statement
            # run now would join it, uncommitted. Roll it back first, or fail this batch too.
            await self._conn.rollback()

    async def _truncate_wal(self) -> None:
        """Give back the space a refused write took: a rolled-back batch leaves the WAL file
        as long as it grew (SQLite reuses it, never shrinks it), and on a full disk those are
        the bytes everything else is waiting for. A busy checkpoint (a reader still on an old
        snapshot) truncates nothing; the next refused write tries again."""
        try:
            cursor = await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            busy = await cursor.fetchone()
            await cursor.close()
        except sqlite3.Error as exc:
            log.warning("could not truncate the WAL of %s after a full disk: %s", self._path, exc)
            return
        if busy is not None and busy[0]:
            log.warning("could not truncate the WAL of %s after a full disk: busy", self._path)

    async def _rollback(self) -> None:
        if self._inline is not None:
            self._inline.rollback()
        # If even this fails, the next batch tries again before it writes (see `_commit`), and
        # fails too, saying so, as long as it cannot.
        with contextlib.suppress(sqlite3.Error):
            await self._conn.rollback()


async def open_writer(path: Path, sync: str = "full") -> tuple[aiosqlite.Connection, LedgerWriter]:
    """The node's one writing connection. In autocommit mode: a batch that is one statement
    commits in one trip to SQLite's thread; a longer one opens its transaction itself."""
    assert sync in SYNC_MODES
    # Opened once here first: when aiosqlite's own open fails, its thread answers the stop it
    # then asks for on a loop that may be closed by then (a thread's unhandled error).
    try:
        sqlite3.connect(path).close()
    except sqlite3.Error as exc:
        raise ledger_error(path, exc) from exc
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute(f"PRAGMA synchronous={sync.upper()}")
        await conn.executescript(SCHEMA)
        await conn.commit()
    except sqlite3.Error as exc:
        await conn.close()
        raise ledger_error(path, exc) from exc
    return conn, LedgerWriter(conn, path, sync)


def create(path: Path, meta: dict[str, int | str]) -> None:
    """Create the database of a new state dir (synchronously: `swarm init` runs no event loop)."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        conn.executemany(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", list(meta.items())
        )
    conn.close()


async def prune_heartbeats(conn: aiosqlite.Connection) -> None:
    """Keep only the newest stored heartbeat of each node (older ones are left by restarts)."""
    await conn.execute(
        "DELETE FROM records WHERE kind = ? AND seq < "
        "(SELECT MAX(r.seq) FROM records r WHERE r.origin = records.origin"
        " AND r.generation = records.generation AND r.kind = ?)",
        (int(Kind.HEARTBEAT), int(Kind.HEARTBEAT)),
    )
    await conn.commit()


SYNC_ROWS_MAX = 2_000  # rows in one frame of an anti-entropy answer


async def rows_after(
    conn: aiosqlite.Connection,
    origin: str,
    generation: int,
    after: int,
    limit: int,
    bytes_max: int = SYNC_FRAME_BYTES_MAX,
    withheld: Collection[int] = frozenset(),
    upto: int | None = None,
) -> RowSlice:
    """The stored records of (origin, generation) past `after`: at most `limit` of them and
    `bytes_max` bytes of bodies (one record at least), passing over the seqs in `withheld`, none
    past `upto` (committed but perhaps not yet synced: see inline_commits.py). The sizes are
    read first, so a body that is not sent is never loaded."""
    cap = (1 << 63) - 1 if upto is None else upto
    cursor = await conn.execute(
        "SELECT seq, length(body) FROM records WHERE origin = ? AND generation = ? AND seq > ?"
        " AND seq <= ? ORDER BY seq LIMIT ?",
        (origin, generation, after, cap, limit),
    )
    sizes = await cursor.fetchall()
    await cursor.close()
    last, oversized, passed = plan_slice(
        ((int(seq), int(size)) for seq, size in sizes), after, bytes_max, withheld
    )
    if last == after:
        return RowSlice([], [], [], after)
    cursor = await conn.execute(
        "SELECT seq, body FROM records WHERE origin = ? AND generation = ? AND seq > ?"
        " AND seq <= ? AND length(body) <= ? ORDER BY seq",
        (origin, generation, after, last, RECORD_BODY_BYTES_MAX),
    )
    rows = await cursor.fetchall()
    await cursor.close()
    sent = [(int(seq), bytes(body)) for seq, body in rows if seq not in withheld]
    return RowSlice(sent, oversized, passed, last)


async def open_reader(path: Path) -> aiosqlite.Connection:
    """A read-only connection: what it reads is committed, never a batch still being written."""
    return await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)


def highest_seq(path: Path, origin: str, generation: int) -> int:
    """The highest seq stored for (origin, generation), whether or not its row decodes."""
    with _read_only(path) as conn:
        row = conn.execute(
            "SELECT MAX(seq) FROM records WHERE origin = ? AND generation = ?",
            (origin, generation),
        ).fetchone()
    return int(row[0] or 0)


def read_meta(path: Path) -> dict[str, int | str]:
    with _read_only(path) as conn:
        return {str(k): v for k, v in conn.execute("SELECT key, value FROM meta")}


def iter_rows(path: Path, bad: list[str] | None = None) -> Iterator[Row]:
    """Every stored record. Undecodable rows are skipped and described in `bad`."""
    for chunk in _stored_chunks(path):
        yield from rows_of(chunk, bad)


def _stored_chunks(path: Path) -> Iterator[list[Any]]:
    """Every stored row, (origin, generation, seq, body), READ_CHUNK_ROWS at a time."""
    with _read_only(path) as conn:
        cursor = conn.execute("SELECT origin, generation, seq, body FROM records")
        while chunk := cursor.fetchmany(READ_CHUNK_ROWS):
            yield chunk


def rows_of(stored: Iterable[Sequence[Any]], bad: list[str] | None = None) -> Iterator[Row]:
    """Records as stored, (origin, generation, seq, body) each, decoded; undecodable ones are
    skipped and described in `bad`."""
    for origin, generation, seq, blob in stored:
        version = Version(origin, generation, seq)
        try:
            yield Row(_checked_version(version), decode(blob))
        except BadRecordError as exc:
            if bad is not None:
                bad.append(f"{shown(version)}: {exc}")


def read_page(
    path: Path, after: Version | None, rows_max: int, bytes_max: int
) -> tuple[list[list[Any]], bool]:
    """Stored records in version order from just past `after`, as (origin, generation, seq,
    body), at most `rows_max` of them and about `bytes_max` of bodies; and whether the page
    reached the last record. Rows whose version a hand edit has mistyped or made negative are
    left out, so that the last row of a page is always a version to go on from."""
    where = (
        "typeof(origin) = 'text' AND typeof(generation) = 'integer' AND typeof(seq) = 'integer'"
        " AND generation >= 0 AND seq >= 0"
    )
    query = f"SELECT origin, generation, seq, body FROM records WHERE {where}"
    params: tuple[Any, ...] = ()
    if after is not None:
        query += " AND (origin, generation, seq) > (?, ?, ?)"
        params = (after.origin, after.generation, after.seq)
    query += " ORDER BY origin, generation, seq LIMIT ?"
    page: list[list[Any]] = []
    size = 0
    with _read_only(path) as conn:
        for origin, generation, seq, body in conn.execute(query, (*params, rows_max + 1)):
            if len(page) == rows_max or (page and size + len(body) > bytes_max):
                return page, False
            page.append([origin, generation, seq, body if isinstance(body, bytes) else b""])
            size += len(page[-1][3])
    return page, True


# -- a table read one task at a time (a streamed export) --------------------------------------


def _task_field(blob: Any, index: int) -> str | None:
    """A field of a TASK record's stored body (1: its id, 2: its job), for SQLite to sort and
    group by; None for anything else (SQLite must never see an exception from it)."""
    try:
        raw = decoding.unpack(blob, BadRecordError, "record body")
    except BadRecordError:
        return None
    if isinstance(raw, list) and len(raw) > index and raw[0] == Kind.TASK:
        value = raw[index]
        return value if isinstance(value, str) else None
    return None


def _task_reader(path: Path) -> _read_only:
    reader = _read_only(path)
    reader.conn.create_function("swarm_task", 1, lambda b: _task_field(b, 1), deterministic=True)
    reader.conn.create_function("swarm_job", 1, lambda b: _task_field(b, 2), deterministic=True)
    return reader


def rows_but_tasks(path: Path, bad: list[str]) -> Iterator[Row]:
    """Every stored record but the TASK records: claims, results, copies, cancels..."""
    with _read_only(path) as conn:
        cursor = conn.execute(
            "SELECT origin, generation, seq, body FROM records WHERE kind != ?", (int(Kind.TASK),)
        )
        while chunk := cursor.fetchmany(READ_CHUNK_ROWS):
            yield from rows_of(chunk, bad)


def task_rows(
    path: Path, job: str | None, bad: list[str], page_rows: int = READ_CHUNK_ROWS
) -> Iterator[Row]:
    """The TASK records (of `job`, or all) by job name, each job's in the order stored: the
    order of an export. SQLite sorts them, in its own temporary store, so a million are never
    held here: they are read a page of `page_rows` at a time."""
    where, params = "kind = ?", (int(Kind.TASK),) + (() if job is None else (job,))
    if job is not None:
        where += " AND swarm_job(body) = ?"
    with _task_reader(path) as conn:
        cursor = conn.execute(
            f"SELECT origin, generation, seq, body FROM records WHERE {where}"
            " ORDER BY swarm_job(body), origin, generation, seq",
            params,
        )
        while chunk := cursor.fetchmany(page_rows):
            yield from rows_of(chunk, bad)


def tasks_stored_twice(path: Path) -> set[str]:
    """The ids of tasks with more than one TASK record (submitted by two nodes): few."""
    with _task_reader(path) as conn:
        return {
            str(task)
            for (task,) in conn.execute(
                "SELECT swarm_task(body) AS t FROM records WHERE kind = ?"
                " GROUP BY t HAVING count(*) > 1",
                (int(Kind.TASK),),
            )
            if task is not None
        }


def task_rows_of(path: Path, tasks: Collection[str], bad: list[str]) -> Iterator[Row]:
    """Every TASK record of these tasks."""
    with _task_reader(path) as conn:
        conn.create_function("swarm_wanted", 1, lambda b: _task_field(b, 1) in tasks)
        cursor = conn.execute(
            "SELECT origin, generation, seq, body FROM records WHERE kind = ? AND swarm_wanted(body)",
            (int(Kind.TASK),),
        )
        yield from rows_of(cursor.fetchall(), bad)


def job_names(path: Path) -> list[str]:
    """The jobs the stored TASK records name, sorted."""
    with _task_reader(path) as conn:
        rows = conn.execute(
            "SELECT DISTINCT swarm_job(body) AS j FROM records WHERE kind = ? AND j IS NOT NULL"
            " ORDER BY j",
            (int(Kind.TASK),),
        )
        return [str(job) for (job,) in rows]


def has_job(path: Path, job: str) -> bool:
    with _task_reader(path) as conn:
        found = conn.execute(
            "SELECT 1 FROM records WHERE kind = ? AND swarm_job(body) = ? LIMIT 1",
            (int(Kind.TASK), job),
        ).fetchone()
    return found is not None


def _checked_version(version: Version) -> Version:
    """SQLite keeps whatever type a value had, whatever its column says: a row written by
    hand may have text for a seq, which the ledger could not compare with the others."""
    origin, generation, seq = version.origin, version.generation, version.seq
    if not (
        isinstance(origin, str)
        and isinstance(generation, int)
        and generation >= 0
        and isinstance(seq, int)
        and seq >= 0
    ):
        raise BadRecordError("its version is not a node id and two counters")
    return version


@dataclass(frozen=True, slots=True)
class Loaded:
    """A ledger as read from its file, and what of the file was left out of it."""

    ledger: Ledger
    unreadable: list[str]  # rows that did not decode: the tasks they describe are not shown
    refused: list[str]  # TASK records that do not hash to their id (edited on disk): not applied
    # Their versions: never served to peers either, since each peer would refuse them too, and
    # a refused record holds its origin's watermark below it there (replication.py).
    refused_versions: set[Version]


def load_ledger(path: Path) -> Loaded:
    """The ledger as stored in `path`; rows that cannot be read or trusted are left out, and
    described in the answer."""
    loaded = Loaded(Ledger(), [], [], set())
    for chunk in _stored_chunks(path):
        loaded.ledger.load(_stored_records(chunk, loaded))
    return loaded


def _stored_records(
    stored: Iterable[Sequence[Any]], loaded: Loaded
) -> Iterator[tuple[Version, Body]]:
    """Stored rows, (origin, generation, seq, body) each, as the (version, body) pairs the
    ledger loads (a million at a start: no Row each), as rows_of() and _trusted() would leave
    and describe them, in one pass."""
    for origin, generation, seq, blob in stored:
        version = Version(origin, generation, seq)
        try:
            _checked_version(version)
            body = decode(blob)
        except BadRecordError as exc:
            loaded.unreadable.append(f"{shown(version)}: {exc}")
            continue
        if type(body) is TaskRecord:
            problem = task_record_problem(body)
            if problem is not None:
                _refuse(loaded, version, problem)
                continue
        yield version, body


def load_rows(rows: Iterable[Row], unreadable: list[str]) -> Loaded:
    """A ledger of `rows` (from a file, or pages of another node's): TASK records that do not
    hash to their id are left out, and described in the answer, as `unreadable` describes the
    rows that did not decode."""
    loaded = Loaded(Ledger(), unreadable, [], set())
    add_rows(loaded, rows)
    return loaded


def add_rows(loaded: Loaded, rows: Iterable[Row]) -> None:
    """Apply more rows to a loaded ledger, as load_rows does."""
    _add_records(loaded, ((row.version, row.body) for row in rows))


def _add_records(loaded: Loaded, records: Iterable[tuple[Version, Body]]) -> None:
    loaded.ledger.load(_trusted(loaded, records))


def _trusted(
    loaded: Loaded, records: Iterable[tuple[Version, Body]]
) -> Iterator[tuple[Version, Body]]:
    """The records but the TASK records that do not hash to their id: those are described."""
    for version, body in records:
        if isinstance(body, TaskRecord):
            problem = task_record_problem(body)
            if problem is not None:
                _refuse(loaded, version, problem)
                continue
        yield version, body


def _refuse(loaded: Loaded, version: Version, problem: str) -> None:
    loaded.refused.append(f"{version}: {problem}")
    loaded.refused_versions.add(version)


def ledger_error(path: Path, exc: sqlite3.Error) -> SwarmError:
    """One sentence for a ledger file SQLite cannot read, saying what to do about it."""
    if path.exists() and not path.is_file():
        return CorruptLedgerError(
            f"the ledger {path} is not a file (a directory, say): move it aside and start the "
            "node again; it starts empty and catches up from its peers"
        )
    corrupt = not isinstance(exc, sqlite3.OperationalError) or "no such table" in str(exc)
    if not corrupt:
        return SwarmError(f"cannot read the ledger {path}: {exc}")
    return CorruptLedgerError(
        f"the ledger {path} is corrupt ({exc}): move it aside, with its -wal and -shm files, "
        "and start the node again; it starts empty and catches up from its peers "
        "(with no peers, the tasks and results it recorded are lost)"
    )


class _read_only:
    """A read-only connection, closed on exit (sqlite3's own context manager only commits)."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise SwarmError(f"no ledger at {path}: run `swarm init` or `swarm start` first")
        self._path = path
        try:
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise ledger_error(path, exc) from exc

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, kind: object, exc: BaseException | None, trace: object) -> None:
        self.conn.close()
        if isinstance(exc, sqlite3.Error):
            raise ledger_error(self._path, exc) from exc
