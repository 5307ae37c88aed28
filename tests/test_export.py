"""Tests of swarm.cli.export: manifests, CSV tables and result files written from a real store."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from itertools import count
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.cli.export import (
    ATTEMPT_COLUMNS,
    NODE_COLUMNS,
    TASK_COLUMNS,
    _number,
    write,
    write_csv,
    write_rows,
)
from swarm.cli.results_dir import write_results
from swarm.core.clock import pack
from swarm.core.ledger import (
    Body,
    ClaimRecord,
    Ledger,
    Outcome,
    ResultRecord,
    State,
    TaskRecord,
    Version,
)
from swarm.core.manifest import Manifest, manifest_bytes, parse_manifest
from swarm.core.spec import Resources, TaskSpec
from swarm.daemon.store import EMPTY_DIGEST, BlobStore
from swarm.errors import CorruptBlobError, UserInputError

MIB = 1024 * 1024
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00.000Z
NASTY = 'echo "a, b" \'c\'\nprintf "naïve ✓ 日本"'
NODE_CAP = Resources(8.0, 16384 * MIB, 1)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec(cmd: str = "true", *, cpus: float = 1.0, memory_mb: int = 512) -> TaskSpec:
    return TaskSpec(cmd=cmd, argv=None, need=Resources(cpus, memory_mb * MIB), priority=3)


class Swarm:
    """A ledger fed real records from named nodes, each with its own seq counter."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self._seqs: dict[str, count[int]] = {}

    def apply(self, node: str, body: Body) -> None:
        seq = next(self._seqs.setdefault(node, count(1)))
        self.ledger.apply(Version(node, 1, seq), body)

    def submit(self, job: str, name: str, task_spec: TaskSpec) -> str:
        task_id = sha(f"{job}/{name}".encode())
        self.apply("submitter", TaskRecord(task_id, job, name, task_spec, pack(T0, 0)))
        return task_id

    def claim(self, node: str, task_id: str, epoch: int, at_ms: int) -> None:
        self.apply(node, ClaimRecord(task_id, epoch, pack(at_ms, 0)))

    def result(
        self,
        node: str,
        task_id: str,
        epoch: int,
        outcome: Outcome,
        *,
        digest: str | None,
        started_ms: int,
        exit_code: int | None = 0,
        reason: str = "",
    ) -> None:
        self.claim(node, task_id, epoch, started_ms)
        body = ResultRecord(
            task_id=task_id,
            epoch=epoch,
            attempt=epoch,
            outcome=outcome,
            exit_code=exit_code,
            started_ms=started_ms,
            ended_ms=started_ms + 1500,
            wall_s=1.5,
            cpu_s=1.23456,
            max_rss_kb=2048 + 103,  # 2.1 MiB after rounding
            digest=digest,
            node_capacity=NODE_CAP,
            reason=reason,
        )
        self.apply(node, body)


def put_result(
    store: BlobStore, stdout: bytes, stderr: bytes, files: dict[str, bytes] | None = None
) -> str:
    """Store the blobs of one result and its manifest; return the manifest's digest."""
    names = {path: store.put_bytes(data)[0] for path, data in (files or {}).items()}
    out, err = store.put_bytes(stdout)[0], store.put_bytes(stderr)[0]
    return store.put_bytes(manifest_bytes(out, err, names))[0]


def read_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return list(reader.fieldnames or []), list(reader)


def csv_text(ledger: Ledger, *, job: str | None = None, attempts: bool = False) -> tuple[int, str]:
    buf = io.StringIO(newline="")
    n = write_csv(ledger, buf, job=job, attempts=attempts)
    return n, buf.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
def world(store: BlobStore) -> tuple[Swarm, dict[str, str]]:
    """Job "alpha": done (after a failure), failed, running, pending; job "beta": one done."""
    sw = Swarm()
    ids = {
        "done": sw.submit("alpha", "done", spec(NASTY, cpus=0.5, memory_mb=1536)),
        "failed": sw.submit("alpha", "failed", spec("false")),
        "running": sw.submit("alpha", "running", spec("sleep 100")),
        "pending": sw.submit("alpha", "pending", spec("echo later")),
        "other": sw.submit("beta", "other", spec("echo beta")),
    }
    bad = put_result(store, b"", b"boom\n")
    good = put_result(store, b"hello\n", b"", {"out/result.txt": b"42\n", "top.csv": b"a,b\n"})
    sw.result(
        "node-a",
        ids["done"],
        1,
        Outcome.FAILED,
        digest=bad,
        started_ms=T0 + 1000,
        exit_code=1,
        reason="exit 1",
    )
    sw.result("node-b", ids["done"], 2, Outcome.OK, digest=good, started_ms=T0 + 5000)
    fail = put_result(store, b"partial\n", b"fatal: no\n")
    for epoch in (1, 2, 3):
        sw.result(
            "node-a",
            ids["failed"],
            epoch,
            Outcome.FAILED,
            digest=fail,
            started_ms=T0 + 10_000 * epoch,
            exit_code=2,
        )
    sw.claim("node-c", ids["running"], 1, T0 + 7000)
    other = put_result(store, b"beta\n", b"")
    sw.result("node-a", ids["other"], 1, Outcome.OK, digest=other, started_ms=T0 + 2000)
    return sw, ids


# -- manifests -------------------------------------------------------------------------------


def test_manifest_bytes_is_canonical() -> None:
    a, b, c = sha(b"a"), sha(b"b"), sha(b"c")
    data = manifest_bytes(a, b, {"z/1": c, "a": c})
    assert data == json.dumps(
        {"stdout": a, "stderr": b, "files": {"a": c, "z/1": c}},
        sort_keys=True,
        separators=(",", ":"),
    ).encode("utf-8")
    assert parse_manifest(data) == Manifest(a, b, {"a": c, "z/1": c})


safe_component = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]),
    min_size=1,
    max_size=20,
).filter(lambda s: s not in (".", ".."))


@given(st.lists(st.lists(safe_component, min_size=1, max_size=4), max_size=6))
def test_manifest_round_trip(paths: list[list[str]]) -> None:
    files = {"/".join(parts): sha("/".join(parts).encode()) for parts in paths}
    # Keep only paths that are not a directory of another (that conflict is tested below).
    files = {
        p: d for p, d in files.items() if not any(q.startswith(p + "/") for q in files if q != p)
    }
    parsed = parse_manifest(manifest_bytes(EMPTY_DIGEST, sha(b"x"), files))
    assert parsed.files == files
    assert (parsed.stdout, parsed.stderr) == (EMPTY_DIGEST, sha(b"x"))


@pytest.mark.parametrize(
    "path",
    [
        "../evil",
        "a/../../evil",
        "a/..",
        "..",
        "/etc/passwd",
        "//x",
        "a//b",
        "a/",
        "./a",
        "a/./b",
        ".",
        "",
        "a\x00b",
        "\ud800",
        "x" * 256,
    ],
)
def test_manifest_rejects_unsafe_paths(path: str) -> None:
    data = manifest_bytes(EMPTY_DIGEST, EMPTY_DIGEST, {path: EMPTY_DIGEST})
    with pytest.raises(CorruptBlobError, match="manifest file path"):
        parse_manifest(data)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"{not json", "not UTF-8 JSON"),
        (b"[]", "not a JSON object"),
        (b'{"stdout":"x"}', "keys"),
        (json.dumps({"stdout": "0" * 64, "stderr": "0" * 64, "files": {}, "x": 1}), "keys"),
        (json.dumps({"stdout": "A" * 64, "stderr": "0" * 64, "files": {}}), "stdout"),
        (json.dumps({"stdout": "0" * 64, "stderr": "../" + "0" * 61, "files": {}}), "stderr"),
        (json.dumps({"stdout": "0" * 64, "stderr": "0" * 64, "files": []}), "'files'"),
        (json.dumps({"stdout": "0" * 64, "stderr": "0" * 64, "files": {"a": 7}}), "file 'a'"),
        (
            json.dumps(
                {"stdout": "0" * 64, "stderr": "0" * 64, "files": {"a": "0" * 64, "a/b": "0" * 64}}
            ),
            "also a directory",
        ),
        ('{"stdout":"%s","stdout":"%s","stderr":"%s","files":{}}' % (("0" * 64,) * 3), "repeats"),
        (b"[" * 100_000, "not UTF-8 JSON"),
    ],
)
def test_manifest_rejects_malformed(raw: str | bytes, problem: str) -> None:
    data = raw.encode() if isinstance(raw, str) else raw
    with pytest.raises(CorruptBlobError, match=problem):
        parse_manifest(data)


# -- CSV per task ----------------------------------------------------------------------------


def test_task_csv(world: tuple[Swarm, dict[str, str]]) -> None:
    sw, ids = world
    n, text = csv_text(sw.ledger)
    header, rows = read_csv(text)
    assert header == list(TASK_COLUMNS)
    assert n == len(rows) == 5
    # Jobs sorted by name, tasks in submission order.
    assert [(r["job"], r["name"]) for r in rows] == [
        ("alpha", "done"),
        ("alpha", "failed"),
        ("alpha", "running"),
        ("alpha", "pending"),
        ("beta", "other"),
    ]
    by_name = {r["name"]: r for r in rows}

    done = by_name["done"]
    assert done["command"] == NASTY  # comma, quotes, newline and non-ASCII survive
    assert done == {
        "task_id": ids["done"],
        "job": "alpha",
        "name": "done",
        "state": "done",
        "attempts": "2",
        "node": "node-b",  # the ok attempt, not the failed one
        "started": "2024-05-01T12:00:05.000Z",
        "ended": "2024-05-01T12:00:06.500Z",
        "wall_s": "1.500",
        "cpu_s": "1.235",
        "max_rss_mb": "2.1",
        "exit_code": "0",
        "outcome": "ok",
        "digest": sw.ledger.tasks[ids["done"]].attempts[(2, "node-b")].result.digest,
        "command": NASTY,
        "cpus": "0.5",
        "memory_mb": "1536",
        "gpus": "0",
        "priority": "3",
        "node_cpus": "8",
        "node_memory_mb": "16384",
        "reason": "",
        "replicas": "1",
    }

    failed = by_name["failed"]
    assert sw.ledger.tasks[ids["failed"]].state is State.FAILED
    assert (failed["state"], failed["attempts"], failed["outcome"]) == ("failed", "3", "failed")
    assert failed["started"] == "2024-05-01T12:00:30.000Z"  # the latest of three attempts
    assert failed["exit_code"] == "2"

    for name in ("running", "pending"):
        row = by_name[name]
        assert row["state"] == name
        assert row["attempts"] == "0"
        for col in ("ended", "wall_s", "outcome", "digest", "node_cpus"):
            assert row[col] == ""
        assert row["memory_mb"] == "512"
        assert row["cpus"] == "1"
    # A running task shows who holds it and since when; a pending one, nobody.
    assert by_name["running"]["node"] == "node-c" and by_name["running"]["started"]
    assert by_name["pending"]["node"] == by_name["pending"]["started"] == ""


def test_csv_to_a_real_file_round_trips_the_command(
    world: tuple[Swarm, dict[str, str]], tmp_path: Path
) -> None:
    sw, _ = world
    path = tmp_path / "tasks.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        write_csv(sw.ledger, f, job="alpha")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["command"] == NASTY
    assert len(rows) == 4


def test_job_filter(world: tuple[Swarm, dict[str, str]]) -> None:
    sw, ids = world
    n, text = csv_text(sw.ledger, job="beta")
    _, rows = read_csv(text)
    assert n == 1
    assert [r["task_id"] for r in rows] == [ids["other"]]
    n, text = csv_text(sw.ledger, job="beta", attempts=True)
    assert n == 1


def test_unknown_job_lists_known_jobs() -> None:
    sw = Swarm()
    with pytest.raises(UserInputError, match="no jobs"):
        write_csv(sw.ledger, io.StringIO(), job="nope")
    for i in range(12):
        sw.submit(f"job{i:02d}", "t", spec())
    with pytest.raises(UserInputError, match=r"'job00'.*'job09' and 2 more") as info:
        write_csv(sw.ledger, io.StringIO(), job="nope")
    assert "job10" not in str(info.value)


def test_empty_ledger_writes_only_the_header() -> None:
    n, text = csv_text(Ledger())
    assert n == 0
    assert text == ",".join(TASK_COLUMNS) + "\r\n"


def test_task_without_spec_is_skipped(world: tuple[Swarm, dict[str, str]]) -> None:
    sw, _ = world
    ghost = sha(b"ghost")
    sw.claim("node-a", ghost, 1, T0)  # a claim that arrived before its TASK record
    n, _ = csv_text(sw.ledger)
    assert n == 5
    sw.ledger.jobs["alpha"].append(ghost)  # even if a job somehow lists it
    n, text = csv_text(sw.ledger, attempts=True)
    assert ghost not in text


# -- CSV per attempt -------------------------------------------------------------------------


def test_attempt_csv(world: tuple[Swarm, dict[str, str]]) -> None:
    sw, ids = world
    n, text = csv_text(sw.ledger, attempts=True)
    header, rows = read_csv(text)
    assert header == list(ATTEMPT_COLUMNS)
    assert n == len(rows) == 2 + 3 + 1 + 0 + 1
    summary = [(r["name"], r["attempt"], r["epoch"], r["outcome"], r["node"]) for r in rows]
    assert summary == [
        ("done", "1", "1", "failed", "node-a"),
        ("done", "2", "2", "ok", "node-b"),
        ("failed", "1", "1", "failed", "node-a"),
        ("failed", "2", "2", "failed", "node-a"),
        ("failed", "3", "3", "failed", "node-a"),
        ("running", "", "1", "running", "node-c"),
        ("other", "1", "1", "ok", "node-a"),
    ]
    first = rows[0]
    assert first["command"] == NASTY
    assert first["reason"] == "exit 1"
    assert first["exit_code"] == "1"
    assert (first["wall_s"], first["cpu_s"], first["max_rss_mb"]) == ("1.500", "1.235", "2.1")
    running = rows[5]
    assert running["task_id"] == ids["running"]
    assert running["started"] == "2024-05-01T12:00:07.000Z"  # from the claim's HLC stamp
    for col in ("ended", "wall_s", "exit_code", "digest", "node_cpus", "reason"):
        assert running[col] == ""


def test_running_row_only_while_claim_is_unanswered(world: tuple[Swarm, dict[str, str]]) -> None:
    sw, ids = world

    def running_rows() -> list[dict[str, str]]:
        _, rows = read_csv(csv_text(sw.ledger, attempts=True)[1])
        return [r for r in rows if r["outcome"] == "running"]

    assert [r["name"] for r in running_rows()] == ["running"]
    # A released claim is not running.
    sw.claim("node-d", ids["pending"], 1, T0 + 9000)
    assert [r["node"] for r in running_rows() if r["name"] == "pending"] == ["node-d"]
    sw.apply("node-d", ClaimRecord(ids["pending"], 1, pack(T0 + 9000, 0), released=True))
    assert [r["name"] for r in running_rows()] == ["running"]
    # A claim answered by its result is not either; a retry's new claim is, after the attempts.
    fail = sha(b"not needed here")
    sw.result("node-c", ids["running"], 1, Outcome.FAILED, digest=fail, started_ms=T0 + 7000)
    assert running_rows() == []
    sw.claim("node-e", ids["running"], 2, T0 + 20_000)
    _, rows = read_csv(csv_text(sw.ledger, attempts=True)[1])
    mine = [(r["epoch"], r["outcome"], r["node"]) for r in rows if r["name"] == "running"]
    assert mine == [("1", "failed", "node-c"), ("2", "running", "node-e")]


# -- result files ----------------------------------------------------------------------------


def test_write_results(
    world: tuple[Swarm, dict[str, str]], store: BlobStore, tmp_path: Path
) -> None:
    sw, _ = world
    out = tmp_path / "out"
    written = write_results(sw.ledger, store, "alpha", out)
    assert written.missing == []
    assert written.tasks_written == 2  # done and failed; running and pending have no result
    assert written.files_written == 4 + 2
    assert (out / "done" / "stdout").read_bytes() == b"hello\n"
    assert (out / "done" / "stderr").read_bytes() == b""  # the ok attempt, not the failed one
    assert (out / "done" / "out" / "result.txt").read_bytes() == b"42\n"
    assert (out / "done" / "top.csv").read_bytes() == b"a,b\n"
    assert (out / "failed" / "stderr").read_bytes() == b"fatal: no\n"
    assert (out / "failed" / "stdout").read_bytes() == b"partial\n"
    assert sorted(p.name for p in out.iterdir()) == ["done", "failed"]
    # No temp files left beside the results.
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    again = write_results(sw.ledger, store, "alpha", out)  # idempotent: overwrites in place
    assert (again.tasks_written, again.files_written, again.missing) == (2, 6, [])


def test_write_results_unknown_job(store: BlobStore, tmp_path: Path) -> None:
    sw = Swarm()
    sw.submit("alpha", "t", spec())
    with pytest.raises(UserInputError, match="'alpha'"):
        write_results(sw.ledger, store, "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_latest_attempt_with_a_digest_is_used(store: BlobStore, tmp_path: Path) -> None:
    sw = Swarm()
    tid = sw.submit("j", "t", spec())
    failed = put_result(store, b"", b"first failure\n")
    sw.result("n1", tid, 1, Outcome.FAILED, digest=failed, started_ms=T0, exit_code=1)
    sw.result("n1", tid, 2, Outcome.INTERRUPTED, digest=None, started_ms=T0 + 10, exit_code=None)
    written = write_results(sw.ledger, store, "j", tmp_path / "out")
    assert (written.tasks_written, written.missing) == (1, [])
    assert (tmp_path / "out" / "t" / "stderr").read_bytes() == b"first failure\n"


def test_manifest_escaping_out_dir_is_rejected(store: BlobStore, tmp_path: Path) -> None:
    sw = Swarm()
    evil_tid = sw.submit("j", "evil", spec())
    good_tid = sw.submit("j", "good", spec())
    payload = store.put_bytes(b"pwned\n")[0]
    evil = store.put_bytes(manifest_bytes(EMPTY_DIGEST, EMPTY_DIGEST, {"../evil": payload}))[0]
    sw.result("n1", evil_tid, 1, Outcome.OK, digest=evil, started_ms=T0)
    sw.result("n1", good_tid, 1, Outcome.OK, digest=put_result(store, b"ok\n", b""), started_ms=T0)
    with pytest.raises(CorruptBlobError, match=r"'\.\./evil'"):
        parse_manifest(store.read_bytes(evil))

    out = tmp_path / "sandbox" / "out"
    written = write_results(sw.ledger, store, "j", out)
    assert written.tasks_written == 1
    assert len(written.missing) == 1
    assert written.missing[0].startswith("evil: manifest")
    assert "'..'" in written.missing[0]
    assert (out / "good" / "stdout").read_bytes() == b"ok\n"
    # Nothing at all was written for the evil task, inside or outside out_dir.
    assert sorted(p.name for p in out.iterdir()) == ["good"]
    assert sorted(p.name for p in (tmp_path / "sandbox").iterdir()) == ["out"]
    assert not [p for p in tmp_path.rglob("evil")]


def test_symlink_in_out_dir_is_not_followed(store: BlobStore, tmp_path: Path) -> None:
    sw = Swarm()
    tid = sw.submit("j", "t", spec())
    digest = put_result(store, b"out\n", b"", {"sub/x": b"secret\n", "y": b"fine\n"})
    sw.result("n1", tid, 1, Outcome.OK, digest=digest, started_ms=T0)
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    (out / "t").mkdir(parents=True)
    os.symlink(outside, out / "t" / "sub")  # left by someone else before the export

    written = write_results(sw.ledger, store, "j", out)
    assert list(outside.iterdir()) == []
    assert written.tasks_written == 0
    assert written.files_written == 3  # stdout, stderr, y
    assert len(written.missing) == 1
    assert written.missing[0].startswith("t: 'sub/x' resolves to")
    assert (out / "t" / "y").read_bytes() == b"fine\n"


def test_missing_and_corrupt_blobs_are_reported(store: BlobStore, tmp_path: Path) -> None:
    sw = Swarm()
    ids = [sw.submit("j", name, spec()) for name in ("a", "b", "c", "d")]
    absent = sha(b"never stored")
    # a: the manifest itself is not held here.
    sw.result("n1", ids[0], 1, Outcome.OK, digest=absent, started_ms=T0)
    # b: the manifest is held but one output file is not.
    held = store.put_bytes(b"kept\n")[0]
    partial = manifest_bytes(
        store.put_bytes(b"b out\n")[0], EMPTY_DIGEST, {"gone.bin": absent, "kept.txt": held}
    )
    sw.result("n1", ids[1], 1, Outcome.OK, digest=store.put_bytes(partial)[0], started_ms=T0)
    # c: stdout's blob is corrupt on disk.
    rotten = store.put_bytes(b"rotten stdout\n")[0]
    store.path(rotten).write_bytes(b"bit rot\n")
    c_manifest = store.put_bytes(manifest_bytes(rotten, EMPTY_DIGEST, {}))[0]
    sw.result("n1", ids[2], 1, Outcome.OK, digest=c_manifest, started_ms=T0)
    # d: fine.
    sw.result("n1", ids[3], 1, Outcome.OK, digest=put_result(store, b"d\n", b""), started_ms=T0)

    out = tmp_path / "out"
    written = write_results(sw.ledger, store, "j", out)
    assert written.tasks_written == 1
    assert written.files_written == 3 + 1 + 2  # b: stdout, stderr, kept.txt; c: stderr; d: both
    assert [m.split(":")[0] for m in written.missing] == ["a", "b", "c"]
    assert "not held" in written.missing[0]
    assert "gone.bin" in written.missing[1] and "not held" in written.missing[1]
    assert "stdout" in written.missing[2] and "does not hash" in written.missing[2]
    assert not (out / "a").exists()
    assert not (out / "b" / "gone.bin").exists()
    assert (out / "b" / "kept.txt").read_bytes() == b"kept\n"
    assert not (out / "c" / "stdout").exists()
    assert (out / "d" / "stdout").read_bytes() == b"d\n"


def test_unusable_names_are_reported(store: BlobStore, tmp_path: Path) -> None:
    sw = Swarm()
    digest = put_result(store, b"x\n", b"", {"stdout/inner": b"clash\n"})
    plain = put_result(store, b"y\n", b"")
    # A TASK record from another node that skipped the submission checks.
    bad = sha(b"bad")
    sw.apply("rogue", TaskRecord(bad, "j", "../up", spec(), pack(T0, 0)))
    sw.result("n1", bad, 1, Outcome.OK, digest=plain, started_ms=T0)
    first = sw.submit("j", "same", spec("echo 1"))
    second = sha(b"same again")
    sw.apply("submitter", TaskRecord(second, "j", "same", spec("echo 2"), pack(T0, 1)))
    sw.result("n1", first, 1, Outcome.OK, digest=digest, started_ms=T0)
    sw.result("n1", second, 1, Outcome.OK, digest=plain, started_ms=T0)

    out = tmp_path / "deep" / "out"
    written = write_results(sw.ledger, store, "j", out)
    assert written.tasks_written == 0
    assert len(written.missing) == 3
    assert written.missing[0].startswith("'../up': task name")
    assert "clashes with the stdout/stderr" in written.missing[1]
    assert written.missing[2].startswith(f"same: task {second[:12]}")
    assert (out / "same" / "stdout").read_bytes() == b"x\n"  # the first task's, not overwritten
    assert not (tmp_path / "deep" / "up").exists()


# -- JSON Lines, and a row per node ----------------------------------------------------------


def test_json_lines_hold_the_csvs_rows_in_its_column_order(
    world: tuple[Swarm, dict[str, str]],
) -> None:
    sw, _ = world
    for what, columns in (("tasks", TASK_COLUMNS), ("attempts", ATTEMPT_COLUMNS)):
        as_csv, as_json = io.StringIO(newline=""), io.StringIO()
        n_csv = write(sw.ledger, as_csv, what=what)
        n_json = write(sw.ledger, as_json, what=what, fmt="jsonl")
        objects = [json.loads(line) for line in as_json.getvalue().splitlines()]
        assert n_csv == n_json == len(objects)
        assert all(list(o) == list(columns) for o in objects)
        # The same cells; numbers as numbers, and an empty number as null.
        for parsed, cells in zip(objects, read_csv(as_csv.getvalue())[1], strict=True):
            for key, value in parsed.items():
                if value is None:
                    assert cells[key] == "", key
                elif isinstance(value, str):
                    assert value == cells[key], key
                else:
                    assert value == type(value)(cells[key]), key
        numbers = [o["wall_s"] for o in objects if o["wall_s"] is not None]
        assert numbers and all(isinstance(n, float) for n in numbers)
        assert all(isinstance(o["exit_code"], int | None) for o in objects)
        assert all(isinstance(o["name"], str) for o in objects)


def test_a_row_per_node_sums_what_each_node_ran(world: tuple[Swarm, dict[str, str]]) -> None:
    sw, _ = world
    out = io.StringIO(newline="")
    assert write(sw.ledger, out, what="nodes") == 2  # node-c holds a claim, but ran nothing yet
    header, rows = read_csv(out.getvalue())
    assert header == list(NODE_COLUMNS)
    by_node = {r["node"]: r for r in rows}
    a, b = by_node["node-a"], by_node["node-b"]
    assert (a["attempts"], a["ok"], a["failed"], a["interrupted"]) == ("5", "1", "4", "0")
    assert (b["attempts"], b["ok"]) == ("1", "1")
    assert a["wall_s"] == "7.500" and b["wall_s"] == "1.500"
    assert a["node_cpus"] == _number(NODE_CAP.cpus)
    only_beta = io.StringIO(newline="")
    assert write(sw.ledger, only_beta, what="nodes", job="beta") == 1


@pytest.mark.parametrize("columns", [("only",), ("one", "two")])
def test_rows_are_written_cell_by_cell_whatever_the_columns(columns: tuple[str, ...]) -> None:
    out = io.StringIO()
    rows = [{c: f"{c} text, quoted" for c in columns}]
    assert write_rows(columns, rows, out, "csv") == 1
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [list(columns), list(rows[0].values())]
