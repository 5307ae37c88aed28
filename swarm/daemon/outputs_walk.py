"""Finding an attempt's output files: its `outputs` globs matched by one walk of its working dir.

Theory of operation
-------------------
What an attempt leaves in its dir is the task's to decide (a million files, a symlink to /, a
loop of links), so the walk (`collect_outputs`) runs in a thread, never follows a symlink, and is
bounded in files (`OUTPUT_FILES_MAX`), bytes (`OUTPUT_BYTES_MAX`) and time (`OUTPUT_COLLECT_S`);
past a bound the attempt fails with `OutputLimitError`'s message as its reason. The walk matches
every pattern at once, component by component, and descends only into dirs some pattern can still
match below. A walk can hang for good (a hung mount), so it runs on a thread of its own
(`task_threads`), and the attempt stops waiting for it after a grace (`collect_attempt_outputs`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import glob
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from swarm.core.manifest import stream_clash
from swarm.daemon.task_threads import task_threads
from swarm.errors import OutputLimitError

OUTPUT_FILES_MAX = 10_000  # per attempt, over all `outputs` patterns
OUTPUT_BYTES_MAX = 64 << 30  # per attempt, the sum of its output files' sizes
OUTPUT_COLLECT_S = 60.0  # longest the walk for an attempt's outputs may take
# Beyond the walk's own deadline, how long the node waits for a walk stuck in one system call
# (a hung network filesystem) before it gives up on it.
OUTPUT_COLLECT_GRACE_S = 5.0


async def collect_attempt_outputs(
    cwd: Path, patterns: Sequence[str], not_before_ns: int
) -> tuple[dict[str, Path], str]:
    """An attempt's output files, found in a thread (the task decides how big and how deep its
    dir is); or none and the reason they were not taken."""
    if not patterns:
        return {}, ""
    stop = threading.Event()
    walk = task_threads.run(collect_outputs, cwd, patterns, not_before_ns, stop=stop)
    try:
        return await asyncio.wait_for(walk, OUTPUT_COLLECT_S + OUTPUT_COLLECT_GRACE_S), ""
    except OutputLimitError as exc:
        return {}, str(exc)
    except TimeoutError:
        return {}, f"collecting its outputs took over {OUTPUT_COLLECT_S:g} s"
    finally:
        # A walk that outlived its wait (it waited for a thread, or one system call hung)
        # ends at its next entry; one still inside a hung call cannot be interrupted, and
        # holds its thread until the call returns.
        stop.set()


def collect_outputs(
    cwd: Path,
    patterns: Sequence[str],
    not_before_ns: int = 0,
    *,
    files_max: int = OUTPUT_FILES_MAX,
    bytes_max: int = OUTPUT_BYTES_MAX,
    time_max_s: float = OUTPUT_COLLECT_S,
    stop: threading.Event | None = None,
) -> dict[str, Path]:
    """Regular files matching the `patterns` (a task's `outputs` globs), by path relative to the
    working dir, last modified at or after `not_before_ns` (wall clock).

    Blocking: run it in a thread. It walks the working dir itself, never following a symlink
    (to a directory or to a file): a link must not pull in, or loop over, anything outside the
    working dir, nor (once the file is moved into the store) take a file away from there. The
    walk is bounded in files, bytes and time; past a bound it raises OutputLimitError, whose
    message is the attempt's failure reason. It also ends so, between two entries, once `stop`
    is set (by a caller that stopped waiting for it)."""
    found: dict[str, Path] = {}
    globs = [_glob_parts(p) for p in patterns]
    if not globs:
        return found
    deadline = time.monotonic() + time_max_s
    total_bytes = 0
    start = _advance(globs, {(k, 0) for k in range(len(globs))})
    stack: list[tuple[str, set[tuple[int, int]]]] = [("", start)]
    while stack:
        rel_dir, states = stack.pop()
        try:
            entries = os.scandir(cwd / rel_dir if rel_dir else cwd)
        except OSError:
            continue  # unreadable, or gone meanwhile: as glob, skip it
        with entries:
            for entry in entries:
                if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                    raise OutputLimitError(f"collecting its outputs took over {time_max_s:g} s")
                after = _step(globs, states, entry.name)
                if not after:
                    continue
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if any(i < len(globs[k]) for k, i in after):
                            stack.append((rel, after))
                        continue
                    if not entry.is_file(follow_symlinks=False) or not any(
                        i == len(globs[k]) for k, i in after
                    ):
                        continue  # a symlink, a fifo, a socket, or not a full match
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed meanwhile
                # In a shared working dir, only what this attempt wrote is its output (as
                # HTCondor takes back only new or changed files), not a file an earlier run left.
                if st.st_mtime_ns < not_before_ns:
                    continue
                _check_output_name(rel)
                found[rel] = cwd / rel
                total_bytes += st.st_size
                if len(found) > files_max:
                    raise OutputLimitError(f"its outputs matched more than {files_max:,} files")
                if total_bytes > bytes_max:
                    raise OutputLimitError(
                        f"its outputs add up to more than {bytes_text(bytes_max)}"
                    )
    return found


def _check_output_name(rel: str) -> None:
    """OutputLimitError if a found output could never be had back: a result names its files in
    UTF-8 (a name that is not would make the whole result unreadable, its stdout too), and a
    task's results dir holds its stdout and stderr files under those names."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise OutputLimitError(
            f"its output file {os.fsencode(rel)!r} has a name that is not valid UTF-8, "
            "which a result cannot name"
        ) from None
    stream = stream_clash(rel)
    if stream is not None:
        raise OutputLimitError(
            f"its output file {rel!r} would take the place of its {stream} in its results: give "
            "it another name"
        )


def _glob_parts(pattern: str) -> tuple[str, ...]:
    """A pattern's path components, without empty or "." ones, runs of "**" as one."""
    parts: list[str] = []
    for part in pattern.split("/"):
        if part in ("", ".") or (part == "**" and parts and parts[-1] == "**"):
            continue
        parts.append(part)
    return tuple(parts)


def _advance(globs: list[tuple[str, ...]], states: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """`states` plus what "**" matching no directory at all adds: (pattern, next component)."""
    out = set(states)
    for k, i in states:
        while i < len(globs[k]) and globs[k][i] == "**":
            i += 1
            out.add((k, i))
    return out


def _step(
    globs: list[tuple[str, ...]], states: set[tuple[int, int]], name: str
) -> set[tuple[int, int]]:
    """The states after one more path component `name` (empty: nothing below can match)."""
    after: set[tuple[int, int]] = set()
    hidden = name.startswith(".")
    for k, i in states:
        if i >= len(globs[k]):
            continue
        part = globs[k][i]
        if part == "**":
            if not hidden:  # as glob: "**" and "*" do not match names starting with "."
                after.add((k, i))
        elif _component_matches(name, part, hidden):
            after.add((k, i + 1))
    return _advance(globs, after)


def _component_matches(name: str, part: str, hidden: bool) -> bool:
    if not glob.has_magic(part):
        return name == part
    if hidden and not part.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, part)


def bytes_text(count: int) -> str:
    """A size in a failure reason: `64 GiB`, `1.5 MiB`, `300 bytes`."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.1f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{count} bytes"
