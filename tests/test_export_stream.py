"""`swarm export` of a ledger file, streamed: the same rows, in the same order, as a table made
of the whole loaded ledger, whatever the pages, jobs, peers' records and left-out records."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest

from swarm.cli import export, export_stream
from swarm.core.clock import pack
from swarm.core.ledger import (
    KIND_OF,
    Body,
    CancelRecord,
    ClaimRecord,
    Outcome,
    ReplicaRecord,
    TaskRecord,
)
from swarm.core.spec import Resources, TaskSpec, task_id
from swarm.daemon import db
from swarm.errors import UserInputError

from .test_ledger import result

T0 = 1_714_564_800_000


class File:
    """A ledger file written record by record, as several nodes would have (each its seqs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        db.create(path, {"node_id": "n0", "generation": 1})
        self.seqs: dict[str, int] = {}

    def put(self, origin: str, body: Body) -> None:
        self.seqs[origin] = self.seqs.get(origin, 0) + 1
        with sqlite3.connect(self.path) as conn:
            conn.execute(
                "INSERT INTO records (origin, generation, seq, kind, body) VALUES (?, 1, ?, ?, ?)",
                (origin, self.seqs[origin], int(KIND_OF[type(body)]), db.encode(body)),
            )
        conn.close()

    def submit(self, origin: str, job: str, n: int, name: str | None = None) -> str:
        spec = TaskSpec(cmd=f"echo {n}", argv=None, need=Resources(1.0, 1 << 20))
        shown = name if name is not None else str(n)
        task = task_id(job, spec, name)
        self.put(origin, TaskRecord(task, job, shown, spec, pack(T0 + n, 0)))
        return task


@pytest.fixture(name="ledger_file")
def fixture_ledger_file(tmp_path: Path) -> Path:
    f = File(tmp_path / "ledger.db")
    tasks = []
    for n in range(40):  # three jobs, submitted from two nodes: stored order is not job order
        job = ("b-job", "a-job", "c")[n % 3]
        tasks.append(f.submit(("n2", "n1")[n % 2], job, n, name=f"t{n}"))
    # A task submitted by two nodes (lines, so no name of its own): the earlier stamp names it.
    twice = f.submit("n2", "a-job", 100)
    f.put("n1", TaskRecord(twice, "a-job", "7", _spec_of(100), pack(T0 - 5, 0)))
    # A TASK record edited on disk: it does not hash to its id, and is left out.
    f.put("n1", TaskRecord("f" * 64, "a-job", "forged", _spec_of(5), pack(T0, 0)))
    f.put("n3", ClaimRecord(tasks[0], 1, pack(T0, 1)))
    f.put("n3", result(tasks[0], 1, Outcome.FAILED))
    f.put("n3", ClaimRecord(tasks[0], 2, pack(T0, 2)))
    f.put("n3", result(tasks[0], 2, Outcome.OK))
    f.put("n3", ClaimRecord(tasks[1], 1, pack(T0, 3)))  # running
    f.put("n3", ClaimRecord(twice, 1, pack(T0, 4)))
    f.put("n3", result(twice, 1, Outcome.OK))
    f.put("n1", ReplicaRecord("ab" * 32))
    f.put("n1", CancelRecord("c", None, pack(T0 + 1000, 0)))
    return f.path


def _spec_of(n: int) -> TaskSpec:
    return TaskSpec(cmd=f"echo {n}", argv=None, need=Resources(1.0, 1 << 20))


@pytest.mark.parametrize("what", ["tasks", "attempts"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("job", [None, "a-job", "c"])
@pytest.mark.parametrize("page_rows", [1, 7, 1000])
def test_a_streamed_export_is_the_table_of_the_loaded_ledger(
    ledger_file: Path, what: str, fmt: str, job: str | None, page_rows: int
) -> None:
    loaded = db.load_ledger(ledger_file)
    whole = io.StringIO(newline="")
    expected = export.write(loaded.ledger, whole, what=what, fmt=fmt, job=job)
    streamed = io.StringIO(newline="")
    rows, left_out = export_stream.write(
        ledger_file, streamed, what=what, fmt=fmt, job=job, page_rows=page_rows
    )
    assert streamed.getvalue() == whole.getvalue()
    assert rows == expected and (rows > 0 or what == "attempts")
    if job != "c":  # the forged record is of a-job: seen only when a-job is read
        assert left_out.refused == loaded.refused and len(loaded.refused) == 1


def test_a_task_stored_twice_is_one_row_named_by_its_earlier_submission(
    ledger_file: Path,
) -> None:
    out = io.StringIO(newline="")
    export_stream.write(ledger_file, out, job="a-job")
    lines = [line for line in out.getvalue().splitlines() if "echo 100" in line]
    assert len(lines) == 1 and ",a-job,7,done," in lines[0]


def test_an_unknown_job_names_the_known_ones(ledger_file: Path) -> None:
    with pytest.raises(UserInputError, match="no job 'nope'; jobs: a-job, b-job, c"):
        export_stream.write(ledger_file, io.StringIO(), job="nope")
