"""The SQLite ledger file: what a node reads back, whatever it finds there."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest

from swarm.core.ledger import HeartbeatRecord, Kind, ReplicaRecord, TaskRecord, Version
from swarm.core.spec import Resources, TaskSpec, task_id
from swarm.core.sync import RowSlice
from swarm.daemon import db
from swarm.errors import CorruptLedgerError, SwarmError


def make(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    db.create(path, {"node_id": "me", "generation": 1})
    return path


def test_the_next_seq_counts_rows_that_no_longer_decode(tmp_path: Path) -> None:
    path = make(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?)",
            [("me", 1, seq, 99, b"\xc1 from a newer version") for seq in range(1, 6)],
        )
    conn.close()
    loaded = db.load_ledger(path)
    assert len(loaded.unreadable) == 5 and loaded.ledger.records_applied == 0
    assert db.highest_seq(path, "me", 1) == 5  # so new records start at 6, not over these


def test_writing_a_clashing_version_fails_loudly(tmp_path: Path) -> None:
    path = make(tmp_path)

    async def go() -> None:
        conn, writer = await db.open_writer(path)
        task = asyncio.create_task(writer.run())
        row = db.Row(Version("me", 1, 1), ReplicaRecord("ab" * 32))
        await writer.write([row])
        with pytest.raises(SwarmError, match="cannot write the ledger"):
            await writer.write([row])
        writer.close()
        await task
        await conn.close()

    asyncio.run(go())


@pytest.mark.parametrize("count", [db.STATEMENT_ROWS_MAX * 2 + 3, db.ENCODED_AHEAD_ROWS_MAX + 7])
def test_a_batch_is_all_or_nothing_across_its_statements(tmp_path: Path, count: int) -> None:
    """A batch longer than one INSERT may hold, or mixing our records with peers' copies and a
    replaced heartbeat, commits whole; one whose last row clashes leaves nothing of itself. So
    does a write long enough to be encoded as it commits."""
    path = make(tmp_path)

    def replica(seq: int, origin: str = "me") -> db.Row:
        return db.Row(Version(origin, 1, seq), ReplicaRecord(f"{seq:064x}"))

    async def go() -> None:
        conn, writer = await db.open_writer(path)
        task = asyncio.create_task(writer.run())
        beat = Version("me", 1, 1)
        await writer.write([db.Row(beat, HeartbeatRecord(1))])
        mixed = [replica(seq) for seq in range(2, count + 2)]
        mixed += [db.Row(Version("me", 1, count + 2), HeartbeatRecord(2), replaces=beat)]
        copies = [replica(seq, "peer") for seq in (1, 2)]
        copies = [db.Row(r.version, r.body, remote=True) for r in copies]
        await writer.write(mixed + copies + copies[:1])  # a copy that came twice is kept once
        clashing = [replica(seq) for seq in range(count + 3, count * 2 + 3)] + [replica(2)]
        with pytest.raises(SwarmError, match="cannot write the ledger"):
            await writer.write(clashing)
        writer.close()
        await task
        await conn.close()

    asyncio.run(go())
    with sqlite3.connect(path) as conn:
        mine = [r[0] for r in conn.execute("SELECT seq FROM records WHERE origin = 'me'")]
        peers = conn.execute("SELECT count(*) FROM records WHERE origin = 'peer'").fetchone()[0]
    conn.close()
    assert sorted(mine) == list(range(2, count + 3))  # the old heartbeat gone, no clashing row
    assert peers == 2


def test_a_batch_is_committed_when_it_says_so_even_after_a_rollback_failed(
    tmp_path: Path,
) -> None:
    """A write that returns is on disk: when a failed batch's rollback failed too (its
    transaction left open), the next batch must not slip into that transaction uncommitted."""
    path = make(tmp_path)

    def replica(seq: int) -> db.Row:
        return db.Row(Version("me", 1, seq), ReplicaRecord(f"{seq:064x}"))

    async def go() -> None:
        conn, writer = await db.open_writer(path)
        task = asyncio.create_task(writer.run())
        await writer.write([replica(1)])
        real_rollback = conn.rollback
        failed: list[bool] = []

        async def rollback_fails_once() -> None:
            if not failed:
                failed.append(True)
                raise sqlite3.OperationalError("disk I/O error")
            await real_rollback()

        conn.rollback = rollback_fails_once  # type: ignore[method-assign]
        clashing = [replica(seq) for seq in range(2, db.STATEMENT_ROWS_MAX + 3)] + [replica(1)]
        with pytest.raises(SwarmError, match="cannot write the ledger"):
            await writer.write(clashing)  # two INSERTs: an explicit transaction
        assert failed
        await writer.write([replica(1_000)])  # one INSERT
        with sqlite3.connect(path) as other:
            seqs = [r[0] for r in other.execute("SELECT seq FROM records ORDER BY seq")]
        other.close()
        assert seqs == [1, 1_000]
        writer.close()
        await task
        await conn.close()

    asyncio.run(go())


def test_a_big_batch_fits_the_variables_an_older_sqlite_allows(tmp_path: Path) -> None:
    """SQLite before 3.32 (Ubuntu 20.04 ships 3.31, RHEL 8 3.26) allows 999 variables in one
    statement, not 32,766: a batch of a few hundred rows must still commit there."""
    path = make(tmp_path)

    async def go() -> None:
        conn, writer = await db.open_writer(path)
        await conn._execute(conn._conn.setlimit, sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        task = asyncio.create_task(writer.run())
        await writer.write(
            [db.Row(Version("me", 1, s), ReplicaRecord(f"{s:064x}")) for s in range(1, 301)]
        )
        writer.close()
        await task
        await conn.close()

    asyncio.run(go())
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == 300
    conn.close()


def test_a_write_after_the_writer_closed_fails_instead_of_waiting_forever(
    tmp_path: Path,
) -> None:
    """A node that stops closes its writer; a write that comes after (a copy that ended as the
    node went) must fail at once: nothing would ever commit it, and its task would hold the
    node's task group open for good."""
    path = make(tmp_path)

    async def go() -> None:
        conn, writer = await db.open_writer(path)
        task = asyncio.create_task(writer.run())
        writer.close()
        await task
        row = db.Row(Version("me", 1, 1), ReplicaRecord("ab" * 32))
        with pytest.raises(SwarmError, match="the ledger is closed"):
            await asyncio.wait_for(writer.write([row]), 5)
        await conn.close()

    asyncio.run(go())


def test_a_heartbeat_replaces_the_one_before_it(tmp_path: Path) -> None:
    path = make(tmp_path)

    async def go() -> None:
        conn, writer = await db.open_writer(path)
        task = asyncio.create_task(writer.run())
        first = Version("me", 1, 1)
        await writer.write([db.Row(first, HeartbeatRecord(1))])
        await writer.write([db.Row(Version("me", 1, 2), HeartbeatRecord(2), replaces=first)])
        writer.close()
        await task
        await conn.close()

    asyncio.run(go())
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT seq FROM records WHERE kind = ?", (int(Kind.HEARTBEAT),))
        assert [r[0] for r in rows] == [2]
    conn.close()


def test_a_record_that_cannot_be_encoded_fails_only_its_writer(tmp_path: Path) -> None:
    path = make(tmp_path)

    async def go() -> None:
        conn, writer = await db.open_writer(path)
        task = asyncio.create_task(writer.run())
        bad = db.Row(Version("me", 1, 1), HeartbeatRecord(2**70))  # too big for msgpack
        good = db.Row(Version("me", 1, 2), HeartbeatRecord(1))
        results = await asyncio.gather(
            writer.write([bad]), writer.write([good]), return_exceptions=True
        )
        assert isinstance(results[0], SwarmError) and results[1] is None
        writer.close()
        await task
        await conn.close()

    asyncio.run(go())
    assert db.load_ledger(path).ledger.heartbeats == {"me": 1}


def test_a_long_write_with_a_record_that_cannot_be_encoded_fails_only_itself(
    tmp_path: Path,
) -> None:
    """A write encoded as it commits finds its bad record after its first statements ran:
    nothing of it is kept, and the writes queued with it commit."""
    path = make(tmp_path)
    count = db.ENCODED_AHEAD_ROWS_MAX * 2

    def beat(seq: int, counter: int = 1) -> db.Row:
        return db.Row(Version("me", 1, seq), HeartbeatRecord(counter))

    async def go() -> None:
        conn, writer = await db.open_writer(path)
        task = asyncio.create_task(writer.run())
        long = [beat(seq) for seq in range(1, count)] + [beat(count, 2**70)]  # too big to encode
        results = await asyncio.gather(
            writer.write(long), writer.write([beat(count + 1, 5)]), return_exceptions=True
        )
        assert isinstance(results[0], SwarmError) and "cannot encode" in str(results[0])
        assert results[1] is None
        await writer.write([beat(seq) for seq in range(count + 2, count * 2 + 2)])  # long, good
        writer.close()
        await task
        await conn.close()

    asyncio.run(go())
    with sqlite3.connect(path) as conn:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM records ORDER BY seq")]
    conn.close()
    assert seqs == list(range(count + 1, count * 2 + 2))


def every_slice(path: Path, limit: int, **options: Any) -> list[RowSlice]:
    """The slices that serve every record of origin "o", generation 1, one after another."""

    async def go() -> list[RowSlice]:
        reader = await db.open_reader(path)
        out, after = [], 0
        try:
            while True:
                part = await db.rows_after(reader, "o", 1, after, limit, **options)
                if part.last == after:
                    return out
                out.append(part)
                after = part.last
        finally:
            await reader.close()

    return asyncio.run(go())


def test_a_sync_frame_is_bounded_by_bytes_and_never_holds_a_record_no_peer_takes(
    tmp_path: Path,
) -> None:
    path = make(tmp_path)
    kib = 1024
    sizes = [600 * kib, 600 * kib, 2 * kib, db.RECORD_BODY_BYTES_MAX + 1, 900 * kib, 10]
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?)",
            [("o", 1, seq, 1, b"x" * size) for seq, size in enumerate(sizes, start=1)],
        )
    conn.close()

    parts = every_slice(path, 2_000, bytes_max=1300 * kib)
    assert [[seq for seq, _ in p.rows] for p in parts] == [[1, 2, 3], [5, 6]]
    assert [p.oversized for p in parts] == [[4], []]
    assert all(sum(len(body) for _, body in p.rows) <= 1300 * kib for p in parts)


def test_a_record_larger_than_the_frame_budget_still_goes_alone(tmp_path: Path) -> None:
    path = make(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO records VALUES ('o', 1, 1, 1, ?)", (b"x" * 5000,))
    conn.close()

    async def first() -> RowSlice:
        reader = await db.open_reader(path)
        try:
            return await db.rows_after(reader, "o", 1, 0, 10, bytes_max=100)
        finally:
            await reader.close()

    assert [seq for seq, _ in asyncio.run(first()).rows] == [1]


def _task(job: str, cmd: str, name: str | None) -> TaskRecord:
    spec = TaskSpec(cmd=cmd, argv=None, need=Resources(1.0, 2**20))
    return TaskRecord(task_id(job, spec, name), job, name or "7", spec, 1)


def _store(path: Path, rows: list[tuple[Version, TaskRecord]]) -> None:
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?)",
            [(v.origin, v.generation, v.seq, int(Kind.TASK), db.encode(b)) for v, b in rows],
        )
    conn.close()


def test_a_task_record_edited_on_disk_is_refused_on_load(tmp_path: Path) -> None:
    path = make(tmp_path)
    named, unnamed = _task("j", "echo named", "first"), _task("j", "echo line", None)
    edited = _task("j", "echo fine", "third")
    edited = TaskRecord(
        edited.task_id, "j", "third", TaskSpec("rm -rf ~", None, edited.spec.need), 1
    )
    _store(path, [(Version("me", 1, 1), named), (Version("me", 1, 2), unnamed)])
    _store(path, [(Version("me", 1, 3), edited)])
    loaded = db.load_ledger(path)
    assert set(loaded.ledger.tasks) == {named.task_id, unnamed.task_id}
    assert len(loaded.refused) == 1 and "does not hash to its id" in loaded.refused[0]
    assert loaded.refused_versions == {Version("me", 1, 3)}
    assert loaded.unreadable == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"cmd": "echo", "cpus": 0.0, "memory": 1 << 20}, "cpus"),
        ({"cmd": "a\x00b", "cpus": 1.0, "memory": 1 << 20}, "cmd"),
        ({"cmd": "  ", "cpus": 1.0, "memory": 1 << 20}, "cmd"),
        ({"cmd": "echo", "cpus": 1.0, "memory": -1}, "memory"),
        ({"cmd": "x" * (128 * 1024), "cpus": 1.0, "memory": 1 << 20}, "cmd"),
    ],
)
def test_a_stored_command_spec_that_breaks_a_rule_is_left_out_and_described(
    tmp_path: Path, spec: dict[str, Any], field: str
) -> None:
    """A command spec takes the short way when it is read (spec.from_wire): one edited on disk
    to break a rule is still left out of the load, and the row described naming the field."""
    path = make(tmp_path)
    good = _task("j", "echo good", "a")
    _store(path, [(Version("me", 1, 1), good)])
    with sqlite3.connect(path) as conn:
        body = msgpack.packb([int(Kind.TASK), "f" * 64, "j", "b", spec, 1])
        conn.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?)", ("me", 1, 2, 1, body))
    conn.close()
    loaded = db.load_ledger(path)
    assert set(loaded.ledger.tasks) == {good.task_id}
    assert len(loaded.unreadable) == 1 and field in loaded.unreadable[0]
    assert loaded.unreadable[0].startswith("Version(origin='me', generation=1, seq=2)")


def test_a_load_makes_no_reference_cycles_whatever_rows_it_meets(tmp_path: Path) -> None:
    """The daemon freezes what a load made with no collection first (heap.bulk's cycle_free):
    a load that left cycles, of good rows or of rows it leaves out, would leak them."""
    path = make(tmp_path)
    good, edited = _task("j", "echo good", "a"), _task("j", "echo fine", "b")
    edited = TaskRecord(edited.task_id, "j", "b", TaskSpec("true", None, edited.spec.need), 1)
    _store(path, [(Version("me", 1, 1), good), (Version("me", 1, 2), edited)])
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?)",
            [
                ("me", 1, 3, 99, b"\xc1 junk"),
                ("me", 1, 4, 1, msgpack.packb([1, "x", "j", "n", {"cmd": 5}, 1])),
                ("me", "x", 5, 1, b""),
            ],
        )
    conn.close()
    gc.collect()
    gc.disable()
    try:
        loaded = db.load_ledger(path)
        assert len(loaded.unreadable) == 3 and len(loaded.refused) == 1
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_record_the_node_refused_itself_is_passed_over_not_served(tmp_path: Path) -> None:
    """A peer would refuse it too and hold the origin's watermark below it: it is left out of
    every frame, and the frame's last seq moves past it so the watermark can rise."""
    path = make(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?)",
            [("o", 1, seq, 1, b"x" * 10) for seq in range(1, 7)],
        )
    conn.close()

    parts = every_slice(path, 3, withheld={2, 5, 6})
    assert [[seq for seq, _ in p.rows] for p in parts] == [[1, 3], [4]]
    assert [p.withheld for p in parts] == [[2], [5, 6]]
    assert [p.last for p in parts] == [3, 6]


def test_a_ledger_that_is_a_directory_is_one_sentence_saying_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.db"
    path.mkdir()  # SQLite's own word for it is "disk I/O error", raised as the file is opened
    for read in (db.load_ledger, db.read_meta):
        with pytest.raises(CorruptLedgerError, match=r"ledger\.db is not a file .*: move it aside"):
            read(path)

    async def start() -> None:
        await db.open_writer(path)

    # aiosqlite's thread, when its own open failed, answered on the closed loop now and then
    # (1 start in 200): an error in a thread, after the start had said what was wrong.
    thread_errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: thread_errors.append(args.exc_value))
    for _ in range(200):
        with pytest.raises(CorruptLedgerError, match="is not a file"):
            asyncio.run(start())
    for thread in threading.enumerate():  # each one's error, if any, is in by its end
        if "_connection_worker_thread" in thread.name:
            thread.join(timeout=10)
    assert thread_errors == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_ledger_file_is_one_sentence_saying_what_to_do(
    tmp_path: Path, damage: str
) -> None:
    path = make(tmp_path)
    _store(path, [(Version("me", 1, i), _task("j", f"echo {i}", None)) for i in range(1, 300)])
    whole = path.read_bytes()
    path.write_bytes(
        {"garbage": bytes(range(256)) * 16, "truncated": whole[: len(whole) // 2], "empty": b""}[
            damage
        ]
    )
    for read in (db.load_ledger, db.read_meta):
        with pytest.raises(CorruptLedgerError, match=r"is corrupt .*: move it aside") as caught:
            read(path)
        assert "\n" not in str(caught.value)

    async def start() -> None:
        await db.open_writer(path)

    if damage != "empty":  # SQLite takes an empty file for a new database
        with pytest.raises(CorruptLedgerError, match="start the node again"):
            asyncio.run(start())
