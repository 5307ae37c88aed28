"""Run dirs: where each attempt's stdout, stderr and (unless it names a `cwd`) scratch dir live.

Theory of operation
-------------------
Each attempt gets a run dir under `<data>/run/` holding its stdout and stderr files; unless the
task names a `cwd`, it also runs in the empty `work/` dir there, so attempts never see each
other's files. Run dirs are recycled (`RunDirs`): creating files is the dearest part of a short
task on most filesystems, and an attempt that wrote nothing leaves its dir ready for the next.

What an attempt leaves in its dir is the task's to decide (a million files, a symlink to /, a
loop of links, a fifo in place of its stdout), so cleaning a run dir never follows a symlink, and
emptying a tree of the task's making runs in a thread. Our own stdout and stderr files are opened
without following whatever an earlier task left under their names (`open_own`), and known by
their identity (`file_identity`), so that a file the task put in their place is never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import stat
from pathlib import Path
from typing import NamedTuple

# Paths of the run dirs in use and spare, cached: a recycled dir's paths are made (and turned
# into text) once, not at every attempt (pathlib's joins were ~5% of a short task's loop time).
RUN_DIR_PATHS_CACHED = 256


class RunDirPaths(NamedTuple):
    parent: Path
    stdout: Path
    stderr: Path
    work: Path


@functools.lru_cache(maxsize=RUN_DIR_PATHS_CACHED)
def run_dir_paths(run_dir: Path) -> RunDirPaths:
    return RunDirPaths(run_dir.parent, run_dir / "stdout", run_dir / "stderr", run_dir / "work")


class RunDirs:
    """A pool of run dirs, so that back-to-back attempts reuse their files instead of creating
    new ones. A recycled dir holds an empty `work/` and no output of an earlier attempt."""

    def __init__(self, root: Path, spare_max: int) -> None:
        self.root = root
        self.spare_max = spare_max
        self._spare: list[Path] = []
        self._made = 0

    def take(self) -> Path:
        """A run dir with an empty `work/` in it. Raises OSError if it cannot be made."""
        if self._spare:
            return self._spare.pop()
        self._made += 1
        run_dir = self.root / f"r{os.getpid()}-{self._made}"
        (run_dir / "work").mkdir(parents=True, exist_ok=True)
        return run_dir

    async def give_back(self, run_dir: Path) -> None:
        """Keep the dir for the next attempt if it can be made clean cheaply, else remove it.
        Whether it is clean takes a few system calls whatever the task left there (the first
        entry of work/ tells); emptying it, a tree of the task's making, goes to a thread."""
        clean = _is_clean(run_dir)
        if clean is False:
            clean = await asyncio.to_thread(_empty_work, run_dir)
        if clean and len(self._spare) < self.spare_max:
            self._spare.append(run_dir)
        else:
            await asyncio.to_thread(shutil.rmtree, run_dir, ignore_errors=True)


def _is_clean(run_dir: Path) -> bool | None:
    """Whether a used run dir is ready for reuse once a stdout or stderr left in it (not moved
    into the store: a kill, an error) is removed; None if it is gone or broken."""
    paths = run_dir_paths(run_dir)
    try:
        for leftover in (paths.stdout, paths.stderr):
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(leftover)
                if not stat.S_ISREG(st.st_mode) or st.st_size:
                    leftover.unlink()  # a dir there (the task's doing) fails: not reused
        with os.scandir(paths.work) as entries:
            return not any(entries)
    except OSError:
        return None


def _empty_work(run_dir: Path) -> bool:
    """Empty work/ (blocking); False if that fails. rmtree never follows a symlink, so a link
    the task left cannot lead it outside."""
    work = run_dir / "work"
    try:
        shutil.rmtree(work)
        work.mkdir()
    except OSError:
        return False
    return True


def open_own(path: Path) -> tuple[int, os.stat_result]:
    """Open our stdout or stderr file in a (maybe recycled) run dir for writing, truncated: its
    descriptor (the caller closes it) and what it is. What an earlier task may have left under
    that name (a symlink, a fifo) is never followed or opened: it is removed, and a new file
    made."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = -1
    with contextlib.suppress(OSError):  # a symlink (ELOOP), a fifo with no reader (ENXIO), ...
        fd = os.open(path, flags, 0o644)
    if fd >= 0:
        st = os.fstat(fd)
        # Truncated only if it is our own plain file: a hard link would truncate its twin.
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            if st.st_size:  # most often it is empty already: left so by a task that wrote nothing
                os.ftruncate(fd, 0)
            return _blocking(fd), st
        os.close(fd)
    _remove(path)  # not ours to reuse: made anew
    fd = os.open(path, flags | os.O_EXCL, 0o644)
    return _blocking(fd), os.fstat(fd)


def _blocking(fd: int) -> int:
    os.set_blocking(fd, True)
    return fd


def file_identity(st: os.stat_result) -> tuple[int, int, bool]:
    """Which file this is (device, inode, regular?): another put in its place differs."""
    return st.st_dev, st.st_ino, stat.S_ISREG(st.st_mode)


def remove_all(paths: list[Path]) -> None:
    for path in paths:
        _remove(path)


def _remove(path: Path) -> None:
    """Remove whatever is at `path` (a file, a link, a fifo, a tree), never following links."""
    try:
        path.unlink()
    except IsADirectoryError:
        shutil.rmtree(path, ignore_errors=True)
    except FileNotFoundError:
        pass
