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
