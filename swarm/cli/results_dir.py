"""Result files on disk: each task's stdout, stderr and output files under `OUT/<task name>/`.

Theory of operation
-------------------
`write_results` lays out each task's result under an output dir, as its manifest
(`swarm.core.manifest`, validated there: relative, normalized paths only) names the files. It
checks once more, on the final resolved path, before each write (defence in depth against
symlinks already on disk).

Creating a dir and two files per task is the dearest part of the end of a run of many short
tasks: tens of microseconds each on most filesystems, and hundreds on ext4 without a journal soon
after many files were deleted (its inode allocator reads past every inode freed in the last
seconds). Writing them from threads while the run goes on was tried and measured no faster on 2
cores (the work is the kernel's CPU, which the run needs too), so they are written at the end.

Reads the ledger and the blob store, never changes them; the only writes are to the output dir.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from swarm.cli.export import known_job
from swarm.core.ledger import Ledger
from swarm.core.manifest import (
    MANIFEST_BYTES_MAX,
    NAME_BYTES_MAX,
    STREAMS,
    Manifest,
    parse_manifest,
    stream_clash,
)
from swarm.daemon.store import BlobStore
from swarm.errors import CorruptBlobError, MissingBlobError
from swarm.pycall import VALUE_FILE


@dataclass(slots=True)
class ResultsWritten:
    """What `write_results` did. `missing` has one "name: why" line per problem."""

    tasks_written: int = 0  # tasks all of whose files were written
    files_written: int = 0  # files written, stdout and stderr included
    missing: list[str] = field(default_factory=list)
    corrupt: int = 0  # blobs found corrupt here (and set aside): a good copy may be fetched


def write_results(
    ledger: Ledger,
    store: BlobStore,
    job: str,
    out_dir: Path,
) -> ResultsWritten:
    """Write each task's stdout, stderr and output files under `out_dir/<task name>/`.

    A task's files come from its ok attempt, or else from its latest attempt that has a result
    digest (so a failed task's stderr can be read). A blob not held here or found corrupt, an
    invalid manifest, or a name that cannot be laid out safely is noted in `missing` and the
    rest goes on. Every file is copied verified and atomically by `BlobStore.copy_to`.
    UserInputError if the job is unknown; other OS errors (permissions, disk full) propagate.
    """
    known_job(ledger, job)
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
        if not safe_dir_name(name):
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
            written = write_task(store, digest, name, root / name, done, manifests)
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


def safe_dir_name(name: str) -> bool:
    return (
        bool(name)
        and "/" not in name
        and "\x00" not in name
        and name not in (".", "..")
        and len(name.encode("utf-8", "surrogateescape")) <= NAME_BYTES_MAX
    )


def write_task(
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
            done.corrupt += isinstance(exc, CorruptBlobError)
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
        if stream_clash(rel) is not None:
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
            done.corrupt += isinstance(exc, CorruptBlobError)
            done.missing.append(f"{name}: {rel} ({file_digest[:12]}): {exc}")
            complete = False
            continue
        done.files_written += 1
    return complete
