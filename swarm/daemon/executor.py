"""Running one attempt of a task as a subprocess, and collecting what it left behind.

Theory of operation
-------------------
Each attempt runs in a run dir (`rundirs`) that holds its stdout and stderr files and, unless the
task names a `cwd`, the empty `work/` dir it runs in. The process leads its own session and
process group, so a timeout, a cancel or a shutdown can kill the whole tree it started (`procs`).
stdout and stderr go straight to files, never through our memory. The process is started by
`spawn` (posix_spawn for a shell command). The exit is awaited through a pidfd (no thread, no
SIGCHLD handler), and reaped with wait4() to get the attempt's CPU time and peak memory from the
kernel; the node hears of it once the processes that left its group are killed too (`on_exit`),
so the next task can take the slot while this one's files are looked at. `stop` ends an attempt
early: SIGTERM to its group, SIGKILL after `KILL_GRACE_S`; a leader that ends sooner (a shell)
is reaped only once the rest of its group has ended or been killed (`procs.group_ended`), so
that its pid names no other group meanwhile.

When it ends, the processes that left its group are killed (`procs.kill_attempt_strays`), its
declared outputs are found by a bounded walk (`outputs_walk`), and, if the state disk is full,
its files are thrown away when they are what filled it or it failed as the disk filled up. What
it leaves for the store is a `Finished`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import resource
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from swarm.core.ledger import Outcome
from swarm.core.spec import TaskSpec
from swarm.daemon.config import KILL_GRACE_S
from swarm.daemon.outputs_walk import bytes_text, collect_attempt_outputs
from swarm.daemon.procs import (
    NODE_DIR_TAG,
    NODE_TAG,
    began,
    group_ended,
    kill_attempt_strays,
    kill_group,
    leaders,
    live_groups,
)
from swarm.daemon.rundirs import file_identity, open_own, remove_all, run_dir_paths
from swarm.daemon.spawn import SHELL, Process, reap_child, spawn, wait_exited

log = logging.getLogger("swarm.daemon.executor")

MTIME_SLACK_NS = 10_000_000  # 10 ms
# The state disk counts as full below this many free bytes: a task's write failed there, or soon
# would, and the node's own ledger writes need a little room.
DISK_FULL_FREE_BYTES = 1 << 20
TREE_ENTRIES_MAX = 100_000  # entries counted when sizing a full disk's scratch dir
FREE_RECENT_S = 0.5  # a reading of the free space this fresh serves an attempt's start ...
FREE_REUSED_MIN_BYTES = 1 << 30  # ... if it is at least this much (below: read anew)
# An attempt that failed within this long after the disk was read as full (at another
# attempt's start or end) is judged as one that ended on a full disk, though there is room now.
FULL_SEEN_RECENT_S = 10.0


@dataclass(frozen=True, slots=True)
class Launch:
    """What the executor needs to start one attempt."""

    task_id: str
    job: str
    name: str
    spec: TaskSpec
    epoch: int
    attempt: int
    run_dir: Path
    gpu_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class Finished:
    """What an attempt left behind; files still in place, for the store to take in."""

    outcome: Outcome
    exit_code: int | None
    started_ms: int
    ended_ms: int
    wall_s: float
    cpu_s: float
    max_rss_kb: int
    stdout: Path
    stderr: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    outputs_movable: bool = False  # True when they live in our scratch dir and may be moved
    reason: str = ""
    evicted: bool = False  # stopped by its node to free memory
    # Its files were thrown away to give a full disk its space back: record it with no result.
    discarded: bool = False
    # A Python call's small outcome, for its RESULT record (then it has no files to store).
    inline_value: bytes = b""
    # The sizes of stdout and stderr as the attempt ended (None: the store looks).
    stream_bytes: tuple[int, int] | None = None


def attempt_env(launch: Launch, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(launch.spec.env)
    for tag in (NODE_TAG, NODE_DIR_TAG):
        if tag in base:
            env[tag] = base[tag]  # the task's own env must not hide it from kill_orphans
    env.update(
        SWARM_TASK_ID=launch.task_id,
        SWARM_TASK_NAME=launch.name,
        SWARM_JOB=launch.job,
        SWARM_ATTEMPT=str(launch.attempt),
        SWARM_EPOCH=str(launch.epoch),
    )
    if launch.spec.need.gpus or "CUDA_VISIBLE_DEVICES" in env:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in launch.gpu_ids)
    return env


def attempt_tags(env: Mapping[str, str]) -> frozenset[bytes]:
    """The environment entries that only this attempt's processes carry (`attempt_env` sets
    them over anything the task asked for), as they appear in /proc/<pid>/environ."""
    keys = (NODE_TAG, "SWARM_TASK_ID", "SWARM_EPOCH")
    return frozenset(f"{k}={env[k]}".encode() for k in keys if k in env)


class AnyAttempt(Protocol):
    """What the runner and the node use of an attempt, a command's (`executor.Attempt`) or a
    Python call's (`PyAttempt`)."""

    launch: Launch
    rss_kb: int | None
    peak_rss_kb: int
    evicted: bool
    started_ms: int

    @property
    def pid(self) -> int | None: ...
    async def finished(self) -> Finished: ...
    async def reap(self) -> None: ...
    def stop(self, outcome: Outcome, reason: str, grace_s: float = KILL_GRACE_S) -> None: ...
    def evict(self, reason: str, grace_s: float = KILL_GRACE_S) -> None: ...


class Attempt:
    """A started attempt. `finished()` waits for it; `stop()` ends it early."""

    def __init__(
        self,
        launch: Launch,
        base_env: Mapping[str, str],
        inherited_rss_kb: int = 0,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.launch = launch
        # Called once its process is reaped and its strays killed, before its files are looked
        # at: the node may start the next task in its slot meanwhile.
        self._on_exit = on_exit
        # Peak memory: the kernel's ru_maxrss counts the daemon's own peak for any child forked
        # from it, so below `inherited_rss_kb` only the sampled figure (`peak_rss_kb`, kept up to
        # date by the node from /proc) says anything about the task.
        self.inherited_rss_kb = inherited_rss_kb
        self.peak_rss_kb = 0
        self.rss_kb: int | None = None  # at the last sample; None before the first
        self.evicted = False
        self._stop_outcome: Outcome | None = None
        self._stop_reason = ""
        self._kill_timer: asyncio.TimerHandle | None = None
        self._kill_at: float | None = None  # when the kill timer fires, on the loop's clock
        paths = run_dir_paths(launch.run_dir)
        self.stdout = paths.stdout
        self.stderr = paths.stderr
        # What the state disk had free when it began, to tell at the end whether the attempt's
        # own output filled it (a statvfs of our own dir, not of the task's files, or the last
        # attempt's reading when it is recent).
        self._free_at_start = free_space.recent(launch.run_dir)
        scratch = launch.spec.cwd is None
        self.cwd = paths.work if scratch else Path(launch.spec.cwd or "")
        argv = list(launch.spec.argv) if launch.spec.argv else [SHELL, "-c", launch.spec.cmd or ""]
        cmd = None if launch.spec.argv else launch.spec.cmd or ""
        # Coarse filesystem timestamps may round down: allow a file stamped just before the start.
        self._started_ns = time.time_ns() - MTIME_SLACK_NS
        self.started_ms = time.time_ns() // 1_000_000
        self._t0 = time.monotonic()
        self._began = began()  # before the spawn: what began before it is not its
        self.proc: Process | None = None
        self.spawn_error = ""
        self._strays_left = False  # its leader has exited; processes outside its group may not
        env = attempt_env(launch, base_env)
        self._tags = attempt_tags(env)
        out, out_st = open_own(self.stdout)
        try:
            err, err_st = open_own(self.stderr)
        except OSError:
            os.close(out)
            raise
        try:
            # Which files these are: the task may replace them (with a link to a file outside,
            # a fifo, a dir) before they are stored, and then its node must not follow.
            self._own_files = {
                self.stdout: file_identity(out_st),
                self.stderr: file_identity(err_st),
            }
            try:
                self.proc = spawn(cmd, argv, env, self.cwd, out, err, cwd_known=scratch)
                live_groups.add(self.proc.pid)
                leaders.add(self.proc.pid)
            except OSError as exc:
                # The program or the cwd is missing or not executable: a failed attempt, like a
                # shell's exit 127, with the reason where the user looks first.
                self.spawn_error = f"cannot start {argv[0]!r} in {self.cwd}: {exc.strerror}"
                os.write(err, f"swarm: {self.spawn_error}\n".encode())
        finally:
            os.close(out)
            os.close(err)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def exited(self) -> bool:
        """The process has ended (or never started)."""
        return self.proc is None or self.proc.returncode is not None

    @property
    def started_at(self) -> float:
        """When it started, in monotonic seconds."""
        return self._t0

    async def finished(self) -> Finished:
        if self.proc is None:
            wall_s = time.monotonic() - self._t0
            return await self._result(Outcome.FAILED, 127, 0.0, 0, self.spawn_error, wall_s)
        await wait_exited(self.proc)
        await self._grace_for_group()
        status, usage = self._end_group(self.proc)
        wall_s = time.monotonic() - self._t0
        # Before its slot is freed: a stray (a setsid daemon on its GPU) must not run beside the
        # next task. Most often one read of the last pid says there is none.
        await self._kill_strays()
        if self._on_exit is not None:
            self._on_exit()
        code = os.waitstatus_to_exitcode(status)
        cpu_s = usage.ru_utime + usage.ru_stime
        # The child's floor is the node's peak as of the child's exec; the node's peak now
        # bounds it (the figure given at the start is the last sample, which may be older).
        inherited = max(self.inherited_rss_kb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        own_rss_kb = usage.ru_maxrss if usage.ru_maxrss > inherited else 0
        if self._stop_outcome is not None:
            outcome, reason = self._stop_outcome, self._stop_reason
        elif code == 0:
            outcome, reason = Outcome.OK, ""
        else:
            outcome = Outcome.FAILED
            reason = f"killed by {_signal_name(-code)}" if code < 0 else f"exit {code}"
        rss_kb = max(own_rss_kb, self.peak_rss_kb)
        return await self._result(outcome, code, cpu_s, rss_kb, reason, wall_s)

    async def reap(self) -> None:
        """Wait for the process to exit and reap it, collecting nothing (for error paths)."""
        if self.proc is not None and self.proc.returncode is None:
            await wait_exited(self.proc)
            self._end_group(self.proc)
            await self._kill_strays()

    def _end_group(self, proc: Process) -> tuple[int, resource.struct_rusage]:
        """The exited leader's group ends: what is left of it is killed (the leftovers of the
        tree must not outlive it) while the unreaped leader still holds the group's number, so
        that the kill reaches this group only; then the leader is reaped. Those that left the
        group are looked for next (`_kill_strays`)."""
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        kill_group(proc.pid, signal.SIGKILL)
        reaped = reap_child(proc)
        live_groups.discard(proc.pid)
        self._strays_left = True
        return reaped

    def stop(self, outcome: Outcome, reason: str, grace_s: float = KILL_GRACE_S) -> None:
        """End the attempt: SIGTERM to its process group, SIGKILL after `grace_s`."""
        if self.proc is None or self.proc.returncode is not None or self._stop_outcome is not None:
            return  # not started, already reaped (its pid may be reused), or already stopping
        self._stop_outcome, self._stop_reason = outcome, reason
        kill_group(self.proc.pid, signal.SIGTERM)
        pid = self.proc.pid
        loop = asyncio.get_running_loop()
        # Safe until the leader is reaped: its pid names this group until then (`finished`).
        self._kill_timer = loop.call_later(grace_s, kill_group, pid, signal.SIGKILL)
        self._kill_at = loop.time() + grace_s

    async def _grace_for_group(self) -> None:
        """A stopped attempt whose leader ended within the grace (a `cmd`'s shell dies at
        SIGTERM at once, its program may trap it): the rest of its group has what is left of
        the grace to end, before the SIGKILL. The leader is not reaped meanwhile, so its pid
        still names this group, and no other (a zombie's pid is not handed out again)."""
        if self._kill_at is not None and self.proc is not None:
            await group_ended(self.proc.pid, self.proc.pid, self._began, self._kill_at)

    def evict(self, reason: str, grace_s: float = KILL_GRACE_S) -> None:
        """Stop the attempt to free memory: interrupted, and marked as an eviction."""
        if self._stop_outcome is None:
            self.evicted = True
        self.stop(Outcome.INTERRUPTED, reason, grace_s)

    async def _result(
        self,
        outcome: Outcome,
        code: int | None,
        cpu_s: float,
        rss_kb: int,
        reason: str,
        wall_s: float,
    ) -> Finished:
        scratch = self.launch.spec.cwd is None
        outputs: dict[str, Path] = {}
        if outcome is not Outcome.INTERRUPTED and self.launch.spec.outputs:
            await self._kill_strays()  # first: none may write while we walk
            outputs, problem = await self._collect()
            if problem:
                reason = f"{reason}; {problem}" if outcome is not Outcome.OK else problem
                outcome = Outcome.FAILED
        # A handful of system calls on our own names in the run dir (and, if nothing is young
        # enough to be a stray, on /proc): done here, since a thread hop just before the next
        # task's fork was measured to slow it by ~1 ms.
        await self._kill_strays()
        replaced, stream_bytes = self._replaced_files()
        if replaced:
            await asyncio.to_thread(remove_all, replaced)  # a tree, maybe: not on the loop
        judged = None
        # Full now, or seen full since it started: another attempt that ended first may have
        # thrown its files away and given the space back before this one was looked at.
        full_now = free_space.now(self.launch.run_dir) < DISK_FULL_FREE_BYTES
        seen_full = outcome is not Outcome.OK and self._seen_full()
        if full_now or seen_full:
            judged = await asyncio.to_thread(
                self._judge_full_disk, outcome, reason, outputs, seen_full
            )
        discarded = judged is not None
        if judged is not None:
            (outcome, reason), outputs = judged, {}
        return Finished(
            outcome=outcome,
            exit_code=code,
            started_ms=self.started_ms,
            ended_ms=self.started_ms + int(wall_s * 1000),
            wall_s=wall_s,
            cpu_s=cpu_s,
            max_rss_kb=rss_kb,
            stdout=self.stdout,
            stderr=self.stderr,
            outputs=outputs,
            outputs_movable=scratch,
            reason=reason,
            evicted=self.evicted and outcome is Outcome.INTERRUPTED,
            discarded=discarded,
            stream_bytes=stream_bytes,
        )

    def _replaced_files(self) -> tuple[list[Path], tuple[int, int]]:
        """Our stdout and stderr names, where the task put something else in their place (a
        link to a file outside, a fifo, a dir): that is neither stored nor followed. And the
        sizes of our own two files (0 for one gone or replaced), for the store."""
        replaced = []
        sizes = []
        for path, identity in self._own_files.items():
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                sizes.append(0)
                continue
            if file_identity(st) == identity:
                sizes.append(st.st_size)
                continue
            log.warning("%s was replaced by its task; it is not stored", path)
            replaced.append(path)
            sizes.append(0)
        return replaced, (sizes[0], sizes[1])

    async def _kill_strays(self) -> None:
        """Kill the processes of this attempt that left its process group, once its leader has
        exited (see `kill_attempt_strays`)."""
        if not self._strays_left or self.proc is None:
            return
        self._strays_left = False
        await kill_attempt_strays(self._tags, self.proc.pid, self.launch.task_id, self._began)

    def _judge_full_disk(
        self, outcome: Outcome, reason: str, outputs: dict[str, Path], seen_full: bool
    ) -> tuple[Outcome, str] | None:
        """If the state disk is full as the attempt ends (or, `seen_full`, it failed within
        FULL_SEEN_RECENT_S of the disk being read as full), and the attempt failed or its own
        output filled it, throw its files away (blocking: run it in a thread) and return the
        outcome and reason to record instead; None otherwise. Its output filled the disk when
        it took all the room there was above the line and is at least as large as that line:
        a few KiB written on a disk already at the line did not fill it, and an attempt that
        ended well and did not fill it keeps its files (its node waits for space to store
        them). One that failed while the disk filled up under it is `interrupted`, which costs
        the task no retry."""
        where = self.launch.run_dir.parent
        if free_bytes(where) >= DISK_FULL_FREE_BYTES and not seen_full:
            return None
        own = self._own_bytes(outputs)
        if own >= DISK_FULL_FREE_BYTES and own + DISK_FULL_FREE_BYTES >= self._free_at_start:
            judged = (
                Outcome.FAILED,
                f"its output ({bytes_text(own)}) filled the disk holding {where} "
                f"({bytes_text(self._free_at_start)} free when it started)",
            )
        elif outcome in (Outcome.FAILED, Outcome.INTERRUPTED):
            cause = f"the disk holding {where} filled up while it ran"
            judged = (Outcome.INTERRUPTED, f"{cause} ({reason})" if reason else cause)
        else:
            return None
        self._discard_files()
        return judged

    def _seen_full(self) -> bool:
        """The state disk was read as full while this attempt ran, lately: a failure long
        after a moment of full disk is its own (and keeps its retry count and files)."""
        return free_space.low_since(max(self._t0, time.monotonic() - FULL_SEEN_RECENT_S))

    def _own_bytes(self, outputs: dict[str, Path]) -> int:
        """The bytes this attempt's files take on the state disk (none left: its task removed
        its own run dir)."""
        scratch = self.launch.spec.cwd is None
        try:
            dev = os.stat(self.launch.run_dir).st_dev
        except FileNotFoundError:
            return 0
        total = _tree_bytes(self.cwd) if scratch else 0  # scratch: all of work/ is the attempt's
        for path in (self.stdout, self.stderr, *(() if scratch else outputs.values())):
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if st.st_dev == dev:
                    total += st.st_size
        return total

    def _discard_files(self) -> None:
        for path in (self.stdout, self.stderr):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self.launch.spec.cwd is None:  # never a user's own dir
            shutil.rmtree(self.cwd, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.cwd.mkdir()

    async def _collect(self) -> tuple[dict[str, Path], str]:
        """The attempt's output files (see `collect_attempt_outputs`); or none and the reason
        they were not taken."""
        return await collect_attempt_outputs(self.cwd, self.launch.spec.outputs, self._started_ns)


class FreeSpace:
    """The state disk's free bytes, read as each attempt ends; an attempt that starts within
    FREE_RECENT_S of a reading (on a node alone, the next one starts as the last one's process
    ends, before that attempt's own reading) takes it rather than one of its own, unless it is
    low. A low reading may be from before space came back (files thrown away, a run dir
    emptied), and taken at a start it would blame that attempt for a disk it did not fill
    (`_judge_full_disk`); a high one cannot be off by an attempt's worth that matters."""

    def __init__(self) -> None:
        self._root: Path | None = None
        self._read_at = -math.inf
        self._bytes = 0
        self._low_at = -math.inf  # when a reading was last below DISK_FULL_FREE_BYTES

    def recent(self, run_dir: Path) -> int:
        fresh = time.monotonic() - self._read_at < FREE_RECENT_S
        parent = run_dir_paths(run_dir).parent
        if parent == self._root and fresh and self._bytes >= FREE_REUSED_MIN_BYTES:
            return self._bytes
        return self.now(run_dir)

    def now(self, run_dir: Path) -> int:
        # Of the runs' dir, not the attempt's own: its task may have removed that.
        root = run_dir_paths(run_dir).parent
        self._bytes = free_bytes(root)
        self._root, self._read_at = root, time.monotonic()
        if self._bytes < DISK_FULL_FREE_BYTES:
            self._low_at = self._read_at
        return self._bytes

    def low_since(self, since: float) -> bool:
        """The state disk was read as full at `since` (monotonic seconds) or later."""
        return self._low_at >= since


free_space = FreeSpace()


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still put on the filesystem of `path`."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _tree_bytes(root: Path, entries_max: int = TREE_ENTRIES_MAX) -> int:
    """The size of the regular files under `root`, never following a symlink; stops counting
    after `entries_max` entries (enough to tell that the tree is big)."""
    total = seen = 0
    stack = [root]
    while stack and seen < entries_max:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                seen += 1
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
    return total


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # real-time signals have no name in the enum
        return f"signal {number}"
