"""The last line of a failed attempt's stderr, as the status view shows it."""

from __future__ import annotations

from pathlib import Path

from swarm.core.manifest import manifest_bytes
from swarm.core.snapshot import FailureRow
from swarm.daemon.failures import fill_stderr_tails
from swarm.daemon.store import EMPTY_DIGEST, BlobStore


def row(digest: str | None) -> FailureRow:
    return {
        "task_id": "t", "job": "j", "name": "n", "node": "a", "outcome": "failed",
        "exit_code": 1, "reason": "exit 1", "ended_ms": 0, "digest": digest, "stderr_tail": "",
    }  # fmt: skip


def test_the_last_line_is_shown_without_the_tasks_escape_sequences(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    stderr, _ = store.put_bytes(b"starting\n\x1b]0;owned\x07\x1b[31mboom: bad input\x1b[0m\n\n")
    result, _ = store.put_bytes(manifest_bytes(EMPTY_DIGEST, stderr, {}))
    rows = [row(result), row(None), row("ab" * 32)]  # the last two: no result, or not held here
    fill_stderr_tails(rows, store)
    assert rows[0]["stderr_tail"] == "]0;owned[31mboom: bad input[0m"
    assert "\x1b" not in rows[0]["stderr_tail"] and "\x07" not in rows[0]["stderr_tail"]
    assert rows[1]["stderr_tail"] == rows[2]["stderr_tail"] == ""
