"""Small ledger batches committed on the loop (inline_commits.py): a write returns only once the
WAL is on disk, whatever becomes of the helper that syncs it, and a batch is all or nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from swarm.core.ledger import ReplicaRecord, Version
from swarm.daemon import db, inline_commits
from swarm.errors import SwarmError

# A helper that answers only once the test opens its gate (a file appears).
GATED_HELPER = r"""
import os, sys, time
wal, asks, answers = (int(a) for a in sys.argv[1:4])
gate = os.environ["GATE"]
os.write(answers, b"+")
while os.read(asks, 1):
    deadline = time.monotonic() + 20
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.fdatasync(wal)
    os.write(answers, b".")
"""

# A helper on a disk that fails every sync.
FAILING_HELPER = r"""
import os, sys
wal, asks, answers = (int(a) for a in sys.argv[1:4])
os.write(answers, b"+")
while os.read(asks, 1):
    os.write(answers, b"!5\n")
"""


@pytest.fixture(autouse=True)
def helper_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper starts at the first sync here (a node waits for HELPER_AFTER_SYNCS)."""
    monkeypatch.setattr(inline_commits, "HELPER_AFTER_SYNCS", 1)


def make(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    db.create(path, {"node_id": "me", "generation": 1})
    return path


def replica(seq: int) -> db.Row:
    return db.Row(Version("me", 1, seq), ReplicaRecord(f"{seq:064x}"))


def stored_seqs(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM records ORDER BY seq")]
    conn.close()
    return seqs


async def with_writer(
    path: Path, body: Callable[[db.LedgerWriter], Awaitable[None]], sync: str = "full"
) -> None:
    conn, writer = await db.open_writer(path, sync)
    task = asyncio.create_task(writer.run())
    try:
        await body(writer)
    finally:
        writer.close()
        await task
        await conn.close()


async def helper_up(writer: db.LedgerWriter) -> inline_commits.WalSync:
    """The writer's sync helper, once it has said it is up (the first sync starts it)."""
    inline = writer._inline
    assert inline is not None and inline.sync is not None
    deadline = time.monotonic() + 10
    while not inline.sync._up:
        assert time.monotonic() < deadline, "the sync helper never came up"
        await asyncio.sleep(0.01)
    return inline.sync


def test_a_small_write_returns_only_once_the_helper_has_synced_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make(tmp_path)
    gate = tmp_path / "gate"
    monkeypatch.setattr(inline_commits, "_HELPER", GATED_HELPER)
    monkeypatch.setenv("GATE", str(gate))

    async def body(writer: db.LedgerWriter) -> None:
        await writer.write([replica(1)])  # the first: synced from a thread, starts the helper
        await helper_up(writer)
        second = asyncio.create_task(writer.write([replica(2)]))
        await asyncio.sleep(0.3)
        assert not second.done(), "a write returned before its WAL was synced"
        gate.touch()
        await asyncio.wait_for(second, 10)

    asyncio.run(with_writer(path, body))
    assert stored_seqs(path) == [1, 2]


def test_writes_go_on_when_the_sync_helper_dies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = make(tmp_path)

    async def body(writer: db.LedgerWriter) -> None:
        await writer.write([replica(1)])
        sync = await helper_up(writer)
        assert sync._helper is not None
        os.kill(sync._helper.pid, signal.SIGKILL)
        for seq in range(2, 6):
            await asyncio.wait_for(writer.write([replica(seq)]), 10)
        assert sync._helper is None  # given up on: synced from a thread since

    with caplog.at_level(logging.WARNING, logger="swarm.daemon.inline_commits"):
        asyncio.run(with_writer(path, body))
    assert stored_seqs(path) == [1, 2, 3, 4, 5]
    assert "syncing from a thread" in caplog.text


def test_a_batch_whose_sync_fails_stops_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Committed but maybe not on disk: its writers hear so, and the writer stops (the node with
    it, to read the ledger back as the disk has it), rather than go on as if it were written."""
    path = make(tmp_path)
    monkeypatch.setattr(inline_commits, "_HELPER", FAILING_HELPER)

    async def go() -> None:
        conn, writer = await db.open_writer(path)
        task = asyncio.create_task(writer.run())
        await writer.write([replica(1)])
        await helper_up(writer)
        writes = [asyncio.create_task(writer.write([replica(seq)])) for seq in (2, 3, 4)]
        for write in writes:  # the first batch, and those queued behind it: each hears so
            with pytest.raises(inline_commits.LedgerSyncError, match=r"cannot sync the ledger"):
                await asyncio.wait_for(write, 10)
        with pytest.raises(inline_commits.LedgerSyncError):
            await asyncio.wait_for(task, 10)
        with pytest.raises(SwarmError, match="the ledger is closed"):
            await writer.write([replica(3)])
        await conn.close()

    asyncio.run(go())


def test_a_failed_batch_leaves_nothing_even_when_its_rollback_failed(tmp_path: Path) -> None:
    """Two INSERTs make an explicit transaction; the second clashes. If the rollback fails too
    (its transaction left open), the next batch must not slip into it uncommitted."""
    path = make(tmp_path)

    async def body(writer: db.LedgerWriter) -> None:
        await writer.write([replica(1)])
        inline = writer._inline
        assert inline is not None
        real_rollback = inline.rollback
        inline.rollback = lambda: None  # type: ignore[method-assign]
        clashing = [replica(seq) for seq in range(2, db.STATEMENT_ROWS_MAX + 3)] + [replica(1)]
        assert len(clashing) <= inline_commits.INLINE_ROWS_MAX  # committed on the loop
        with pytest.raises(SwarmError, match="cannot write the ledger"):
            await writer.write(clashing)
        inline.rollback = real_rollback  # type: ignore[method-assign]
        await writer.write([replica(1_000)])
        assert stored_seqs(path) == [1, 1_000]

    asyncio.run(with_writer(path, body))


def test_the_writer_checkpoints_what_the_loop_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's connection never checkpoints (it would sync the file on the loop): the writer
    has it done, so the WAL does not grow for ever. Checkpointed pages are in the file itself."""
    path = make(tmp_path)
    monkeypatch.setattr(inline_commits, "CHECKPOINT_EVERY_COMMITS", 2)

    async def body(writer: db.LedgerWriter) -> None:
        for seq in range(1, 6):  # checkpoints after the 2nd and 4th: the 5th waits for them
            await writer.write([replica(seq)])
        alone = tmp_path / "alone.db"  # the ledger file without its WAL
        shutil.copyfile(path, alone)
        assert stored_seqs(alone) == [1, 2, 3, 4]

    asyncio.run(with_writer(path, body))


def test_with_sync_normal_no_helper_is_started(tmp_path: Path) -> None:
    path = make(tmp_path)

    async def body(writer: db.LedgerWriter) -> None:
        await writer.write([replica(1)])
        assert writer._inline is not None and writer._inline.sync is None

    asyncio.run(with_writer(path, body, sync="normal"))
    assert stored_seqs(path) == [1]


def test_the_helper_ends_with_the_writer(tmp_path: Path) -> None:
    path = make(tmp_path)
    pids: list[int] = []

    async def body(writer: db.LedgerWriter) -> None:
        await writer.write([replica(1)])
        sync = await helper_up(writer)
        assert sync._helper is not None
        pids.append(sync._helper.pid)

    asyncio.run(with_writer(path, body))
    # Killed as the writer closed, and reaped (off the loop, if it was slow to die): gone.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pids[0], 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    with pytest.raises(ProcessLookupError):  # ended and reaped
        os.kill(pids[0], 0)


def test_peers_are_served_nothing_past_what_the_ledger_holds(tmp_path: Path) -> None:
    """A batch is in the file (readers see it) before its sync returns and it is applied: the
    records a sync answer reads stop at the ledger's high seq, so no peer gets a record that a
    power cut could take back (its seq would then be used again for another)."""
    path = make(tmp_path)

    async def body(writer: db.LedgerWriter) -> None:
        await writer.write([replica(seq) for seq in range(1, 6)])
        reader = await db.open_reader(path)
        try:
            part = await db.rows_after(reader, "me", 1, 0, 100, upto=3)
            assert [seq for seq, _ in part.rows] == [1, 2, 3] and part.last == 3
            every = await db.rows_after(reader, "me", 1, 0, 100)
            assert [seq for seq, _ in every.rows] == [1, 2, 3, 4, 5]
        finally:
            await reader.close()

    asyncio.run(with_writer(path, body))


def test_a_run_whose_ledger_cannot_be_synced_stops_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An embedded `swarm run` whose node stops on a failed sync says so in one sentence, not
    with the traceback of the task groups it came through."""
    from swarm.cli.main import main

    monkeypatch.setattr(inline_commits, "_HELPER", FAILING_HELPER)
    tasks = tmp_path / "cmds.txt"
    tasks.write_text("".join(f"sleep 0.1; echo {i}\n" for i in range(20)))
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(tasks), "--lines", "--cpus", "2", "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 1
    assert "swarm: cannot sync the ledger" in err
    assert "Traceback" not in err


def test_a_short_run_never_starts_the_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few syncs (a one-task run) are done from a thread: starting a Python process for them
    would cost a short run more than it saves. It starts at the HELPER_AFTER_SYNCS-th."""
    monkeypatch.setattr(inline_commits, "HELPER_AFTER_SYNCS", 5)
    path = make(tmp_path)

    async def body(writer: db.LedgerWriter) -> None:
        for seq in range(1, 5):
            await writer.write([replica(seq)])
        inline = writer._inline
        assert inline is not None and inline.sync is not None
        assert inline.sync._helper is None
        await writer.write([replica(5)])
        assert inline.sync._helper is not None
        await helper_up(writer)

    asyncio.run(with_writer(path, body))
    assert stored_seqs(path) == [1, 2, 3, 4, 5]
