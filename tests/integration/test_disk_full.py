"""A node whose state dir fills up keeps running, corrupts nothing, and finishes once space is back.

Needs root to mount a small tmpfs (CI runs as root); elsewhere it skips and says why.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Cli, Daemon, fill, write_tasks

pytestmark = pytest.mark.integration
TMPFS_BYTES = 4 << 20


def test_full_disk_pauses_the_node_and_it_recovers(
    small_disk: Path, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    work = tmp_path / "work2"
    work.mkdir()
    cli = Cli(home=small_disk / "home", cwd=work)
    node = Daemon(cli, ("--cpus", "2")).start()
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
        time.sleep(3)
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
