"""The SQLite ledger file: what a node reads back, whatever it finds there."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from swarm import db
from swarm.errors import SwarmError
from swarm.ledger import HeartbeatRecord, Kind, ReplicaRecord, Version


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
    ledger, bad = db.load_ledger(path)
    assert len(bad) == 5 and ledger.records_applied == 0
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
    ledger, _ = db.load_ledger(path)
    assert ledger.heartbeats == {"me": 1}


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

    async def frames() -> list[db.RowSlice]:
        reader = await db.open_reader(path)
        out, after = [], 0
        try:
            while True:
                part = await db.rows_after(reader, "o", 1, after, 2_000, bytes_max=1300 * kib)
                if part.last == after:
                    return out
                out.append(part)
                after = part.last
        finally:
            await reader.close()

    parts = asyncio.run(frames())
    assert [[seq for seq, _ in p.rows] for p in parts] == [[1, 2, 3], [5, 6]]
    assert [p.oversized for p in parts] == [[4], []]
    assert all(sum(len(body) for _, body in p.rows) <= 1300 * kib for p in parts)


def test_a_record_larger_than_the_frame_budget_still_goes_alone(tmp_path: Path) -> None:
    path = make(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO records VALUES ('o', 1, 1, 1, ?)", (b"x" * 5000,))
    conn.close()

    async def first() -> db.RowSlice:
        reader = await db.open_reader(path)
        try:
            return await db.rows_after(reader, "o", 1, 0, 10, bytes_max=100)
        finally:
            await reader.close()

    assert [seq for seq, _ in asyncio.run(first()).rows] == [1]
