"""Tests of swarm.daemon.outputs: an attempt's files moved into a real blob store, with the
`Finished` of a real (tiny) subprocess run by the executor, and the RESULT built from it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from swarm.core.ledger import Outcome
from swarm.core.manifest import manifest_bytes, parse_manifest
from swarm.core.spec import Resources
from swarm.daemon.executor import Finished
from swarm.daemon.outputs import OutputStore, result_record
from swarm.daemon.store import EMPTY_DIGEST, BlobStore
from tests.test_executor import make_launch, run_attempt


def put(outputs: OutputStore, finished: Finished, stored: dict[str, str]) -> tuple[str, bool]:
    return asyncio.run(outputs.put(finished, stored))


def test_stdout_stderr_and_output_files_become_one_manifest(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, "echo out; echo err >&2; echo 1,2 > r.csv", outputs=("*.csv",))
    _, finished = run_attempt(launch)
    store = BlobStore(tmp_path / "blobs")
    digest, new = put(OutputStore(store), finished, {})
    assert new
    manifest = parse_manifest(store.read_bytes(digest))
    assert store.read_bytes(manifest.stdout) == b"out\n"
    assert store.read_bytes(manifest.stderr) == b"err\n"
    assert store.read_bytes(manifest.files["r.csv"]) == b"1,2\n"
    # The attempt's own files were moved into the store, not copied.
    assert finished.outputs_movable
    assert not finished.stdout.exists() and not finished.outputs["r.csv"].exists()


def test_silent_tasks_share_one_manifest_stored_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    outputs = OutputStore(store)
    _, first = run_attempt(make_launch(tmp_path, "true"))
    _, second = run_attempt(make_launch(tmp_path, "true"))
    digest, new = put(outputs, first, {})
    assert (digest, new) == (
        store.put_bytes(manifest_bytes(EMPTY_DIGEST, EMPTY_DIGEST, {}))[0],
        True,
    )
    assert put(outputs, second, {}) == (digest, False)


def test_a_second_try_does_not_look_for_files_the_first_one_moved(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, "echo out; echo 1 > a.txt", outputs=("*.txt",))
    _, finished = run_attempt(launch)
    store = BlobStore(tmp_path / "blobs")
    stored: dict[str, str] = {}
    digest, _ = put(OutputStore(store), finished, stored)
    assert set(stored) == {"stdout", "stderr", "file:a.txt"}
    # As after a full disk: the same attempt again, its files already in the store.
    assert put(OutputStore(store), finished, stored) == (digest, False)


def test_an_output_file_removed_before_it_is_stored_is_an_error(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, "echo 1 > a.txt", outputs=("*.txt",))
    _, finished = run_attempt(launch)
    finished.outputs["a.txt"].unlink()
    with pytest.raises(FileNotFoundError):
        put(OutputStore(BlobStore(tmp_path / "blobs")), finished, {})


def test_the_result_record_carries_what_the_executor_measured(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, "exit 3")
    _, finished = run_attempt(launch)
    capacity = Resources(4.0, 8 << 30, 1)
    record = result_record(launch, finished, "ab" * 32, "why", capacity)
    assert (record.task_id, record.epoch, record.attempt) == (launch.task_id, 7, 2)
    assert (record.outcome, record.exit_code) == (Outcome.FAILED, 3)
    assert (record.started_ms, record.ended_ms) == (finished.started_ms, finished.ended_ms)
    assert record.wall_s == round(finished.wall_s, 6) and record.cpu_s == round(finished.cpu_s, 6)
    assert record.max_rss_kb == finished.max_rss_kb
    assert (record.digest, record.reason, record.node_capacity) == ("ab" * 32, "why", capacity)
    assert not record.evicted and record.proof == b""


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            "touch \"$(printf 'a\\377b')\"",
            "its output file b'a\\xffb' has a name that is not valid UTF-8, which a result "
            "cannot name",
        ),
        (
            "echo FILE > stdout",
            "its output file 'stdout' would take the place of its stdout in its results: give "
            "it another name",
        ),
        (
            "mkdir stderr; echo x > stderr/x",
            "its output file 'stderr/x' would take the place of its stderr in its results: give "
            "it another name",
        ),
    ],
    ids=["not-utf-8", "stdout", "under-stderr"],
)
def test_an_output_no_result_could_give_back_fails_the_attempt_and_its_streams_are_kept(
    tmp_path: Path, make: str, reason: str
) -> None:
    # Stored, a name that is not UTF-8 made the whole result unreadable (its stdout too), and
    # one named as a stream could never be written out by `swarm results`.
    launch = make_launch(tmp_path, f"echo hello; {make}", outputs=("*", "*/*"))
    _, finished = run_attempt(launch)
    assert (finished.outcome, finished.exit_code) == (Outcome.FAILED, 0)
    assert finished.reason == reason
    assert finished.outputs == {}
    store = BlobStore(tmp_path / "blobs")
    manifest = parse_manifest(store.read_bytes(put(OutputStore(store), finished, {})[0]))
    assert store.read_bytes(manifest.stdout) == b"hello\n"
    assert manifest.files == {}
