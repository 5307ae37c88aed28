"""Getting results out of the ledger and the blob store: CSV tables and result files on disk.

Theory of operation
-------------------
`write_results` lays out each task's result under an output dir, as its manifest
(`swarm.core.manifest`, validated there: relative, normalized paths only) names the files. It
checks once more, on the final resolved path, before each write (defence in depth against
symlinks already on disk).

`write_csv` renders the ledger as one row per task, or one row per attempt (plus a `running` row
for each task being run right now), with the csv module so any command text survives quoting.

Reads the ledger, never changes it; the only writes are to the caller's stream and output dir.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from swarm.core.clock import wall_ms_of
from swarm.core.ledger import Attempt, Ledger, TaskView
from swarm.core.manifest import MANIFEST_BYTES_MAX, NAME_BYTES_MAX, Manifest, parse_manifest
from swarm.core.spec import TaskSpec
from swarm.daemon.store import BlobStore
from swarm.errors import CorruptBlobError, MissingBlobError, UserInputError
from swarm.pycall import VALUE_FILE

TASK_COLUMNS: tuple[str, ...] = (
    "task_id",
    "job",
    "name",
    "state",
    "attempts",
    "node",
    "started",
    "ended",
    "wall_s",
    "cpu_s",
    "max_rss_mb",
    "exit_code",
    "outcome",
    "digest",
    "command",
    "cpus",
    "memory_mb",
    "gpus",
    "priority",
    "node_cpus",
    "node_memory_mb",
    "reason",
    "replicas",
)

ATTEMPT_COLUMNS: tuple[str, ...] = (
    "task_id",
    "job",
    "name",
    "attempt",
    "epoch",
    "outcome",
    "node",
    "started",
    "ended",
    "wall_s",
    "cpu_s",
    "max_rss_mb",
    "exit_code",
    "digest",
    "command",
    "node_cpus",
    "node_memory_mb",
    "reason",
)

NODE_COLUMNS: tuple[str, ...] = (
    "node", "attempts", "ok", "failed", "timeout", "interrupted", "wall_s", "cpu_s",
    "node_cpus", "node_memory_mb", "node_gpus", "last_ended",
)  # fmt: skip
_NODE_COUNTS = ("attempts", "ok", "failed", "timeout", "interrupted", "wall_s", "cpu_s")

# Columns that are numbers: JSON Lines gives them as numbers (and an empty cell as null), where
# CSV has only text.
_WHOLE_COLUMNS = frozenset(
    {"attempts", "attempt", "epoch", "exit_code", "gpus", "priority", "replicas", "ok", "failed",
     "timeout", "interrupted", "node_gpus"}
)  # fmt: skip
_REAL_COLUMNS = frozenset(
    {"wall_s", "cpu_s", "max_rss_mb", "cpus", "memory_mb", "node_cpus", "node_memory_mb"}
)

RUNNING = "running"  # the outcome shown for an attempt still in progress
STREAMS = ("stdout", "stderr")  # file names the streams take in a task's output dir
JOBS_LISTED_MAX = 10  # known jobs named in the error for an unknown one

_MIB = 1024 * 1024
# The columns `_attempt_cells` fills, in both tables.
_ATTEMPT_CELLS = (
    "node", "started", "ended", "wall_s", "cpu_s", "max_rss_mb", "exit_code", "outcome",
    "digest", "node_cpus", "node_memory_mb", "reason",
)  # fmt: skip
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- CSV -------------------------------------------------------------------------------------


WHATS = ("tasks", "attempts", "nodes")
FORMATS = ("csv", "jsonl")


def write_csv(
    ledger: Ledger, out: TextIO, *, job: str | None = None, attempts: bool = False
) -> int:
    """Write the tasks (or, with attempts=True, their attempts) as CSV; return the data rows."""
    return write(ledger, out, what="attempts" if attempts else "tasks", job=job)


def write(
    ledger: Ledger, out: TextIO, *, what: str = "tasks", fmt: str = "csv", job: str | None = None
) -> int:
    """Write a table of the ledger (`what`: a row per task, per attempt, or per node that ran
    something) as CSV or JSON Lines (one object per row, the same keys); return the data rows.

    `out` should be opened with newline="" (as the csv module asks), so that newlines inside a
    quoted command are written as they are. Jobs are sorted by name, tasks keep the order their
    job first saw them. UserInputError if `job` is given and unknown.
    """
    columns, rows = _table(ledger, what, job)
    if fmt == "jsonl":
        count = 0
        for row in rows:  # the CSV's cells in its column order, numbers as numbers
            out.write(json.dumps({c: _typed(c, row[c]) for c in columns}, ensure_ascii=False))
            out.write("\n")
            count += 1
        return count
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="raise")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow(row)
        count += 1
    return count


def _typed(column: str, cell: str) -> str | int | float | None:
    """A cell as JSON gives it: a number column's as a number, or null when empty."""
    if column in _WHOLE_COLUMNS or column in _REAL_COLUMNS:
        if not cell:
            return None
        return int(cell) if column in _WHOLE_COLUMNS else float(cell)
    return cell


def _table(
    ledger: Ledger, what: str, job: str | None
) -> tuple[tuple[str, ...], Iterator[dict[str, str]]]:
    jobs = [_known_job(ledger, job)] if job is not None else sorted(ledger.jobs)
    if what == "nodes":
        return NODE_COLUMNS, iter(_node_rows(ledger, jobs))
    if what == "attempts":
        return ATTEMPT_COLUMNS, _rows(ledger, jobs, attempts=True)
    return TASK_COLUMNS, _rows(ledger, jobs, attempts=False)


def _rows(ledger: Ledger, jobs: list[str], attempts: bool) -> Iterator[dict[str, str]]:
    for name in jobs:
        for view in ledger.job_tasks(name):
            if view.spec is None:
                continue  # its TASK record has not arrived: nothing to describe it by
            if attempts:
                yield from _attempt_rows(view, view.spec)
            else:
                yield _task_row(view, view.spec, ledger.holders)


def _node_rows(ledger: Ledger, jobs: list[str]) -> list[dict[str, str]]:
    """A row per node that ran an attempt of these jobs: what it ran, how it went, the time it
    took, and its resources (as its latest result gives them), so machines can be compared."""
    nodes: dict[str, dict[str, float]] = {}
    shapes: dict[str, tuple[int, Attempt]] = {}
    for name in jobs:
        for view in ledger.job_tasks(name):
            for attempt in view.attempts.values():
                r = attempt.result
                node = attempt.version.origin
                counts = nodes.setdefault(node, dict.fromkeys(_NODE_COUNTS, 0.0))
                counts["attempts"] += 1
                counts[str(r.outcome)] += 1
                counts["wall_s"] += r.wall_s
                counts["cpu_s"] += r.cpu_s
                if node not in shapes or shapes[node][0] < r.ended_ms:
                    shapes[node] = (r.ended_ms, attempt)
    rows = []
    for node in sorted(nodes):
        counts, latest = nodes[node], shapes[node][1].result
        rows.append(
            {
                "node": node,
                "attempts": str(int(counts["attempts"])),
                **{o: str(int(counts[o])) for o in ("ok", "failed", "timeout", "interrupted")},
                "wall_s": f"{counts['wall_s']:.3f}",
                "cpu_s": f"{counts['cpu_s']:.3f}",
                "node_cpus": _number(latest.node_capacity.cpus),
                "node_memory_mb": _mib(latest.node_capacity.memory_bytes),
                "node_gpus": str(latest.node_capacity.gpus),
                "last_ended": _iso_ms(latest.ended_ms),
            }
        )
    return rows


def _task_row(view: TaskView, spec: TaskSpec, holders: Mapping[str, set[str]]) -> dict[str, str]:
    ordered = view.ordered_attempts()
    shown = view.ok_attempt() or (ordered[-1] if ordered else None)
    replicas = ""
    if shown is not None and shown.result.digest is not None:
        # The nodes that hold its result: the one that ran it, and those that copied it.
        replicas = str(len(holders.get(shown.result.digest, set()) | {shown.version.origin}))
    row = {
        "task_id": view.task_id,
        "job": view.job,
        "name": view.name,
        "state": str(view.state) if view.state is not None else "",
        "attempts": str(len(view.attempts)),
        "command": spec.command_text(),
        "cpus": _number(spec.need.cpus),
        "memory_mb": _mib(spec.need.memory_bytes),
        "gpus": str(spec.need.gpus),
        "priority": str(spec.priority),
        "replicas": replicas,
    }
    claim = view.active_claim()
    if claim is not None:
        # Running: the columns describe the attempt under way (who holds it, since when), not
        # an earlier one that ended.
        row.update(_attempt_cells(None))
        row.update(node=claim[1], started=_iso_ms(wall_ms_of(view.claims[claim].stamp)))
    else:
        row.update(_attempt_cells(shown))
    return row


def _attempt_rows(view: TaskView, spec: TaskSpec) -> list[dict[str, str]]:
    command = spec.command_text()
    base = {"task_id": view.task_id, "job": view.job, "name": view.name, "command": command}
    rows = []
    # Origin as the last key: two nodes may both report an epoch (a split claim), keep it stable.
    ordered = sorted(
        view.attempts.values(),
        key=lambda a: (a.result.epoch, a.result.started_ms, a.version.origin),
    )
    for attempt in ordered:
        row = dict(base)
        row.update(_attempt_cells(attempt))
        row["attempt"] = str(attempt.result.attempt)
        row["epoch"] = str(attempt.result.epoch)
        rows.append(row)
    claim = view.active_claim()
    if claim is not None:
        epoch, node = claim
        row = dict(base)
        row.update(_attempt_cells(None))
        # The attempt number is only known from the RESULT; the claim gives epoch, node, start.
        row.update(
            attempt="",
            epoch=str(epoch),
            outcome=RUNNING,
            node=node,
            started=_iso_ms(wall_ms_of(view.claims[claim].stamp)),
        )
        rows.append(row)
    return rows


def _attempt_cells(attempt: Attempt | None) -> dict[str, str]:
    """The columns both tables take from one attempt; all empty when there is none."""
    if attempt is None:
        return dict.fromkeys(_ATTEMPT_CELLS, "")
    r = attempt.result
    return {
        "node": attempt.version.origin,
        "started": _iso_ms(r.started_ms),
        "ended": _iso_ms(r.ended_ms),
        "wall_s": f"{r.wall_s:.3f}",
        "cpu_s": f"{r.cpu_s:.3f}",
        "max_rss_mb": f"{r.max_rss_kb / 1024:.1f}",
        "exit_code": "" if r.exit_code is None else str(r.exit_code),
        "outcome": str(r.outcome),
        "digest": r.digest or "",
        "node_cpus": _number(r.node_capacity.cpus),
        "node_memory_mb": _mib(r.node_capacity.memory_bytes),
        "reason": r.reason,
    }


def _iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO-8601 UTC, e.g. 2024-05-01T12:00:00.123Z."""
    try:
        # timedelta, not fromtimestamp(ms / 1000): no float rounding of the milliseconds.
        when = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        return ""  # a wildly wrong clock on some node; a blank beats a failed export
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: float) -> str:
    # 2.0 cores reads better as "2"; fractions keep their exact repr.
    value = float(value)  # an int slipped in would lack is_integer() before Python 3.12
    return str(int(value)) if value.is_integer() else repr(value)


def _mib(n_bytes: int) -> str:
    return str(n_bytes // _MIB) if n_bytes % _MIB == 0 else f"{n_bytes / _MIB:.1f}"


def _known_job(ledger: Ledger, job: str) -> str:
    if job in ledger.jobs:
        return job
    known = sorted(ledger.jobs)
    if not known:
        raise UserInputError(f"unknown job {job!r}: no jobs are known here")
    listed = ", ".join(repr(j) for j in known[:JOBS_LISTED_MAX])
    more = len(known) - JOBS_LISTED_MAX
    suffix = f" and {more} more" if more > 0 else ""
    raise UserInputError(f"unknown job {job!r}; known jobs: {listed}{suffix}")


# -- result files ----------------------------------------------------------------------------


@dataclass(slots=True)
class ResultsWritten:
    """What `write_results` did. `missing` has one "name: why" line per problem."""

    tasks_written: int = 0  # tasks all of whose files were written
    files_written: int = 0  # files written, stdout and stderr included
    missing: list[str] = field(default_factory=list)


def write_results(ledger: Ledger, store: BlobStore, job: str, out_dir: Path) -> ResultsWritten:
    """Write each task's stdout, stderr and output files under `out_dir/<task name>/`.

    A task's files come from its ok attempt, or else from its latest attempt that has a result
    digest (so a failed task's stderr can be read). A blob not held here or found corrupt, an
    invalid manifest, or a name that cannot be laid out safely is noted in `missing` and the
    rest goes on. Every file is copied verified and atomically by `BlobStore.copy_to`.
    UserInputError if the job is unknown; other OS errors (permissions, disk full) propagate.
    """
    _known_job(ledger, job)
    out_dir = Path(out_dir)
    root = out_dir.resolve()
    done = ResultsWritten()
    seen_names: dict[str, str] = {}  # task name -> id of the task written under it
    manifests: dict[str, Manifest] = {}  # identical results (say, empty output) are read once
    for view in ledger.job_tasks(job):
        if view.spec is None:
            continue
        attempt = view.outcome_attempt()
        if attempt is None or (attempt.result.digest is None and not attempt.result.value):
            continue  # nothing ran to completion yet: nothing to export, nothing missing
        name = view.name
        if not _safe_dir_name(name):
            # Names are checked at submission, but the TASK record may come from another node.
            done.missing.append(f"{name!r}: task name is not usable as a directory name")
            continue
        clash = seen_names.get(name)
        if clash is not None:
            # Two submissions may give one name to different tasks; one directory each, first wins.
            done.missing.append(
                f"{name}: task {view.task_id[:12]} has the same name as task {clash[:12]}, "
                "whose files were written instead"
            )
            continue
        seen_names[name] = view.task_id
        digest = attempt.result.digest
        if digest is None:
            written = _write_inline(attempt.result.value, name, root / name, done)
        else:
            written = _write_task(store, digest, name, root / name, done, manifests)
        if written:
            done.tasks_written += 1
    return done


def _write_inline(value: bytes, name: str, task_dir: Path, done: ResultsWritten) -> bool:
    """A Python call whose outcome is in its RESULT record: it printed nothing, so its files
    are empty stdout and stderr and its value file."""
    if task_dir.is_symlink():
        done.missing.append(f"{name}: {task_dir} is a symlink, to {task_dir.resolve()}")
        return False
    task_dir.mkdir(parents=True, exist_ok=True)
    for rel, data in ((STREAMS[0], b""), (STREAMS[1], b""), (VALUE_FILE, value)):
        tmp = task_dir / f".{rel}.tmp"
        tmp.unlink(missing_ok=True)
        with open(tmp, "xb") as out:  # exclusive: never through a link someone put there
            out.write(data)
        os.replace(tmp, task_dir / rel)
        done.files_written += 1
    return True


def _safe_dir_name(name: str) -> bool:
    return (
        bool(name)
        and "/" not in name
        and "\x00" not in name
        and name not in (".", "..")
        and len(name.encode("utf-8", "surrogateescape")) <= NAME_BYTES_MAX
    )


def _write_task(
    store: BlobStore,
    digest: str,
    name: str,
    task_dir: Path,
    done: ResultsWritten,
    manifests: dict[str, Manifest],
) -> bool:
    """Write one task's files; True if all of them were written.

    Syscalls are few on purpose (one lstat, one mkdir, one open per file in the common case):
    on some filesystems each metadata operation costs a good fraction of a millisecond."""
    manifest = manifests.get(digest)
    if manifest is None:
        try:
            manifest = parse_manifest(store.read_bytes(digest, max_bytes=MANIFEST_BYTES_MAX))
        except (MissingBlobError, CorruptBlobError) as exc:
            done.missing.append(f"{name}: manifest {digest[:12]}: {exc}")
            return False
        except ValueError as exc:
            # A malformed digest in the RESULT record, or a manifest too big to be one.
            done.missing.append(f"{name}: manifest: {exc}")
            return False
        manifests[digest] = manifest
    # `task_dir` is the resolved output dir joined with a name without '/': only a symlink put
    # there beforehand could lead a write elsewhere.
    if task_dir.is_symlink():
        done.missing.append(f"{name}: {task_dir} is a symlink, to {task_dir.resolve()}")
        return False
    task_dir.mkdir(parents=True, exist_ok=True)
    task_root = task_dir
    wanted = list(zip(STREAMS, (manifest.stdout, manifest.stderr), strict=True))
    complete = True
    for rel, file_digest in sorted(manifest.files.items()):
        if rel.split("/")[0] in STREAMS:
            done.missing.append(f"{name}: output file {rel!r} clashes with the stdout/stderr files")
            complete = False
            continue
        wanted.append((rel, file_digest))
    for rel, file_digest in wanted:
        dest = task_dir / rel
        nested = "/" in rel
        # Defence in depth: the manifest's paths were validated, but a symlink already in the
        # output dir (say task_dir/sub -> /etc) must not carry a write outside it. A top-level
        # file is written without following links, so only nested paths need resolving.
        if nested and not dest.resolve().is_relative_to(task_root):
            done.missing.append(f"{name}: {rel!r} resolves to {dest.resolve()}, outside {task_dir}")
            complete = False
            continue
        try:
            store.copy_to(file_digest, dest, make_parents=nested)
        except (MissingBlobError, CorruptBlobError) as exc:
            done.missing.append(f"{name}: {rel} ({file_digest[:12]}): {exc}")
            complete = False
            continue
        done.files_written += 1
    return complete
