"""A node whose state dir fills up keeps running, corrupts nothing, and finishes once space is back.

Needs root to mount a small tmpfs (CI runs as root); elsewhere it skips and says why.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Cli, Daemon, export_rows, fill, write_tasks

pytestmark = pytest.mark.integration
TMPFS_BYTES = 4 << 20


def test_full_disk_pauses_the_node_and_it_recovers(
    small_disk: Path, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    cli, node = _node_on(small_disk, tmp_path)
    work = cli.cwd
    try:
        tasks = write_tasks(
            work / "big.jsonl",
            [
                {"name": f"t{i}", "cmd": f"head -c 300000 /dev/zero && echo {i}", "retries": 20}
                for i in range(6)
            ],
        )
        filler = fill(small_disk, leave_bytes=64 << 10)
        submitted = cli("submit", str(tasks))
        # The submission itself may or may not fit; either way nothing is half-added.
        if submitted.returncode != 0:
            assert "disk full" in submitted.stderr or "full" in submitted.stderr.lower()
            assert cli.status()["jobs"] == []
            filler.unlink()
            filler = fill(small_disk, leave_bytes=200 << 10)
            cli.ok("submit", str(tasks))
        cli.wait_for(
            "the node to stop claiming for want of space",
            lambda: "not claiming new tasks" in node.log.read_text(),
            DISK_WAIT_S,
        )
        assert node.proc is not None and node.proc.poll() is None  # still alive
        assert cli.job("big")["done"] < 6  # 6 x 300 kB cannot fit in what is left
        filler.unlink()
        cli.wait_for("every task to finish", lambda: cli.job("big")["done"] == 6, timeout=90)
        out = tmp_path / "out"
        cli.ok("results", "big", "--out", str(out))
        for i in range(6):
            assert (out / f"t{i}/stdout").stat().st_size == 300000 + len(f"{i}\n")
    finally:
        node.stop()
    assert "disk full" in node.log.read_text()  # the condition was really met, and reported
    with sqlite3.connect(cli.home / "ledger.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


# -- one attempt, a refused submission, running tasks: each leaves the node at work -------------

DISK_WAIT_S = 20.0  # each case settles in a few seconds once fixed; stuck, it never does


def _node_on(disk: Path, tmp_path: Path) -> tuple[Cli, Daemon]:
    """A node whose state dir is on the small disk (its tasks' files outside it)."""
    work = tmp_path / "work2"
    work.mkdir()
    cli = Cli(home=disk / "home", cwd=work)
    return cli, Daemon(cli, ("--cpus", "2")).start()


def _free(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _home_files(home: Path) -> list[Path]:
    return [p for p in (home / "blobs").rglob("*") if p.is_file()] + [
        p for p in (home / "run").rglob("*") if p.is_file()
    ]


def test_a_task_whose_stdout_fills_the_disk_fails_and_gives_the_space_back(
    small_disk: Path, tmp_path: Path
) -> None:
    cli, node = _node_on(small_disk, tmp_path)
    work = cli.cwd
    try:
        free_before = _free(small_disk)
        flood = write_tasks(
            work / "flood.jsonl",
            [{"name": "flood", "cmd": f"head -c {TMPFS_BYTES * 4} /dev/zero", "retries": 0}],
        )
        cli.ok("submit", str(flood))
        cli.wait_for(
            "the flooding task to fail", lambda: cli.job("flood")["failed"] == 1, DISK_WAIT_S
        )
        (row,) = export_rows(cli, "--attempts", "--job", "flood")
        assert row["outcome"] == "failed"
        assert row["reason"].startswith("its output (")
        assert f"filled the disk holding {cli.home / 'run'}" in row["reason"]
        # Its partial output is gone, and the node runs the next job.
        assert _free(small_disk) > free_before - (512 << 10)
        small = write_tasks(work / "small.jsonl", [{"name": "s", "cmd": "echo small"}])
        cli.ok("submit", str(small))
        cli.wait_for("the next job", lambda: cli.job("small")["done"] == 1, DISK_WAIT_S)
        node.stop()
        node = Daemon(cli, ("--cpus", "2")).start()
        assert cli.job("flood")["failed"] == 1  # and it stays so across a restart
        assert sum(p.stat().st_size for p in _home_files(cli.home)) < 64 << 10
    finally:
        node.stop()


def test_a_submission_refused_for_space_gives_its_space_back(
    small_disk: Path, tmp_path: Path
) -> None:
    cli, node = _node_on(small_disk, tmp_path)
    work = cli.cwd
    try:
        free_before = _free(small_disk)
        huge = write_tasks(
            work / "huge.jsonl",
            [{"name": f"t{i}", "cmd": f"echo {'x' * 200} {i}"} for i in range(20_000)],
        )
        refused = cli("submit", str(huge))
        assert refused.returncode != 0 and "disk full" in refused.stderr
        assert cli.status()["jobs"] == []  # nothing of it was added
        wal = cli.home / "ledger.db-wal"
        assert not wal.exists() or wal.stat().st_size < 256 << 10
        assert _free(small_disk) > free_before - (512 << 10)
        small = write_tasks(work / "small.jsonl", [{"name": "s", "cmd": "echo small"}])
        cli.ok("submit", str(small))
        cli.wait_for("the next small job", lambda: cli.job("small")["done"] == 1, DISK_WAIT_S)
    finally:
        node.stop()


def test_tasks_running_when_the_disk_fills_lose_no_retry(small_disk: Path, tmp_path: Path) -> None:
    cli, node = _node_on(small_disk, tmp_path)
    work = cli.cwd
    filler: Path | None = None
    try:
        # Each writes 20 kB a tenth of a second for 6 s, and stops at its first failed write.
        cmd = "set -e; for i in $(seq 60); do head -c 20000 /dev/zero; sleep 0.1; done"
        tasks = write_tasks(
            work / "slow.jsonl",
            [{"name": f"w{i}", "cmd": cmd, "retries": 0} for i in range(2)],
        )
        cli.ok("submit", str(tasks))
        cli.wait_for("both to run", lambda: cli.job("slow")["running"] == 2, DISK_WAIT_S)
        # Room to record what happened, less than the two will write, or than a node claims in.
        filler = fill(small_disk, leave_bytes=256 << 10)

        def both_interrupted() -> bool:
            rows = export_rows(cli, "--attempts", "--job", "slow")
            return sum(r["outcome"] == "interrupted" for r in rows) >= 2

        cli.wait_for("both attempts to be interrupted", both_interrupted, DISK_WAIT_S)
        assert cli.job("slow")["failed"] == 0
        filler.unlink()
        filler = None
        cli.wait_for("both to finish", lambda: cli.job("slow")["done"] == 2, DISK_WAIT_S)
        rows = export_rows(cli, "--attempts", "--job", "slow")
        assert {r["outcome"] for r in rows} == {"interrupted", "ok"}
        for r in rows:
            if r["outcome"] == "interrupted":
                assert r["reason"].startswith(f"the disk holding {cli.home / 'run'} filled up")
    finally:
        if filler is not None:
            filler.unlink()
        node.stop()
