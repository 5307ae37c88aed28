"""Running one attempt of a task as a subprocess, and collecting what it left behind.

Theory of operation
-------------------
Each attempt gets a run dir under `<data>/run/` holding its stdout and stderr files; unless the task names a `cwd`, it also runs in the empty `work/` dir there, so attempts never
see each other's files. Run dirs are recycled (`RunDirs`): creating files is the dearest part of a
short task on most filesystems, and an attempt that wrote nothing leaves its dir ready for the next. The process leads its own session and process group, so a
timeout, a cancel or a shutdown can kill the whole tree it started. stdout and stderr go straight to
files, never through our memory. The exit is awaited through a pidfd (no thread, no SIGCHLD
handler), and reaped with wait4() to get the attempt's CPU time and peak memory from the kernel.

If the daemon itself is killed, its attempts keep running as orphans. Every attempt carries
`SWARM_NODE=<node id>` in its environment, so the next start finds them in /proc and kills their
process groups (`kill_orphans`) before the tasks run again; no per-attempt file is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from swarm.ledger import Outcome
from swarm.spec import TaskSpec

NODE_TAG = "SWARM_NODE"  # set in every attempt's environment to the id of the node that runs it
KILL_GRACE_S = 2.0  # between SIGTERM and SIGKILL of a timed-out or cancelled attempt
MTIME_SLACK_NS = 10_000_000  # 10 ms
OUTPUT_FILES_MAX = 10_000  # per attempt, over all `outputs` patterns
SHELL = "/bin/sh"


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


def attempt_env(launch: Launch, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(launch.spec.env)
    if NODE_TAG in base:
        env[NODE_TAG] = base[NODE_TAG]  # the task's own env must not hide it from kill_orphans
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


class Attempt:
    """A started attempt. `finished()` waits for it; `stop()` ends it early."""

    def __init__(
        self, launch: Launch, base_env: Mapping[str, str], inherited_rss_kb: int = 0
    ) -> None:
        self.launch = launch
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
        self.stdout = launch.run_dir / "stdout"
        self.stderr = launch.run_dir / "stderr"
        scratch = launch.spec.cwd is None
        self.cwd = launch.run_dir / "work" if scratch else Path(launch.spec.cwd or "")
        argv = list(launch.spec.argv) if launch.spec.argv else [SHELL, "-c", launch.spec.cmd or ""]
        # Coarse filesystem timestamps may round down: allow a file stamped just before the start.
        self._started_ns = time.time_ns() - MTIME_SLACK_NS
        self.started_ms = time.time_ns() // 1_000_000
        self._t0 = time.monotonic()
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawn_error = ""
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            try:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=self.cwd,
                    env=attempt_env(launch, base_env),
                    start_new_session=True,
                )
            except OSError as exc:
                # The program or the cwd is missing or not executable: a failed attempt, like a
                # shell's exit 127, with the reason where the user looks first.
                self.spawn_error = f"cannot start {argv[0]!r} in {self.cwd}: {exc.strerror}"
                err.write(f"swarm: {self.spawn_error}\n".encode())

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
            return self._result(Outcome.FAILED, 127, 0.0, 0, self.spawn_error)
        status, usage = await _wait_exit(self.proc)
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        _kill_group(self.proc.pid, signal.SIGKILL)  # leftovers of the tree must not outlive it
        code = os.waitstatus_to_exitcode(status)
        cpu_s = usage.ru_utime + usage.ru_stime
        own_rss_kb = usage.ru_maxrss if usage.ru_maxrss > self.inherited_rss_kb else 0
        if self._stop_outcome is not None:
            outcome, reason = self._stop_outcome, self._stop_reason
        elif code == 0:
            outcome, reason = Outcome.OK, ""
        else:
            outcome = Outcome.FAILED
            reason = f"killed by {_signal_name(-code)}" if code < 0 else f"exit {code}"
        return self._result(outcome, code, cpu_s, max(own_rss_kb, self.peak_rss_kb), reason)

    async def reap(self) -> None:
        """Wait for the process to exit and reap it, collecting nothing (for error paths)."""
        if self.proc is not None and self.proc.returncode is None:
            await _wait_exit(self.proc)
            _kill_group(self.proc.pid, signal.SIGKILL)

    def stop(self, outcome: Outcome, reason: str, grace_s: float = KILL_GRACE_S) -> None:
        """End the attempt: SIGTERM to its process group, SIGKILL after `grace_s`."""
        if self.proc is None or self.proc.returncode is not None or self._stop_outcome is not None:
            return  # not started, already reaped (its pid may be reused), or already stopping
        self._stop_outcome, self._stop_reason = outcome, reason
        _kill_group(self.proc.pid, signal.SIGTERM)
        pid = self.proc.pid
        loop = asyncio.get_running_loop()
        self._kill_timer = loop.call_later(grace_s, _kill_group, pid, signal.SIGKILL)

    def evict(self, reason: str, grace_s: float = KILL_GRACE_S) -> None:
        """Stop the attempt to free memory: interrupted, and marked as an eviction."""
        if self._stop_outcome is None:
            self.evicted = True
        self.stop(Outcome.INTERRUPTED, reason, grace_s)

    def _result(
        self, outcome: Outcome, code: int | None, cpu_s: float, rss_kb: int, reason: str
    ) -> Finished:
        wall_s = time.monotonic() - self._t0
        scratch = self.launch.spec.cwd is None
        outputs = (
            {}
            if outcome is Outcome.INTERRUPTED
            else collect_outputs(self.cwd, self.launch, self._started_ns)
        )
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
        )


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

    def give_back(self, run_dir: Path) -> None:
        """Keep the dir for the next attempt if it can be made clean cheaply, else remove it."""
        work = run_dir / "work"
        try:
            for leftover in ("stdout", "stderr"):
                # Usually moved into the store already; if not (a kill, an error), not reused.
                with contextlib.suppress(FileNotFoundError):
                    if (run_dir / leftover).stat().st_size:
                        (run_dir / leftover).unlink()
            with os.scandir(work) as entries:
                dirty = any(entries)
            if dirty:
                shutil.rmtree(work)
                work.mkdir()
        except OSError:  # the dir is gone or broken: make a new one next time
            shutil.rmtree(run_dir, ignore_errors=True)
            return
        if len(self._spare) < self.spare_max:
            self._spare.append(run_dir)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def collect_outputs(cwd: Path, launch: Launch, not_before_ns: int = 0) -> dict[str, Path]:
    """Regular files matching the task's `outputs` globs, by path relative to the working dir,
    last modified at or after `not_before_ns` (wall clock)."""
    found: dict[str, Path] = {}
    if not launch.spec.outputs:
        return found
    real_cwd = os.path.realpath(cwd)
    for pattern in launch.spec.outputs:
        for rel in sorted(glob.glob(pattern, root_dir=cwd, recursive=True)):
            rel = os.path.normpath(rel)
            path = cwd / rel
            # No symlink anywhere on the path: a link must not pull in (or, once the file is moved
            # into the store, take away) a file from outside the working dir.
            if os.path.realpath(path) != os.path.join(real_cwd, rel) or not path.is_file():
                continue
            # In a shared working dir, only what this attempt wrote is its output (as HTCondor
            # takes back only new or changed files), not a file an earlier run left there.
            if path.stat().st_mtime_ns < not_before_ns:
                continue
            found[rel] = path
            if len(found) >= OUTPUT_FILES_MAX:
                return found
    return found


async def _wait_exit(proc: subprocess.Popen[bytes]) -> tuple[int, resource.struct_rusage]:
    """Wait for the process to exit without blocking the loop, and reap it with its rusage."""
    loop = asyncio.get_running_loop()
    pidfd = os.pidfd_open(proc.pid)
    try:
        exited: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, on_exit)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)
    _, status, usage = os.wait4(proc.pid, 0)
    # We reaped it ourselves: tell Popen, so it never waits on a pid that may be reused.
    proc.returncode = os.waitstatus_to_exitcode(status)
    return status, usage


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # real-time signals have no name in the enum
        return f"signal {number}"


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_orphans(run_root: Path, node_id: str, proc: Path = Path("/proc")) -> list[tuple[str, int]]:
    """Kill the process groups of attempts a previous daemon of this node left running (found by
    their SWARM_NODE tag), and remove the run dirs. Returns the (task id, epoch) of each group
    killed, so that the node can record those attempts even if their claims never reached its
    ledger (the daemon may have died before it wrote them)."""
    tag = f"{NODE_TAG}={node_id}".encode()
    groups: dict[int, tuple[str, int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if tag in environ:
            groups.setdefault(int(fields[2]), _attempt_of(environ))  # fields[2]: process group
    for pgid in groups:
        _kill_group(pgid, signal.SIGKILL)
    if run_root.is_dir():
        for run_dir in run_root.iterdir():
            shutil.rmtree(run_dir, ignore_errors=True)
    return list(groups.values())


def _attempt_of(environ: list[bytes]) -> tuple[str, int]:
    """The task id and epoch an attempt's environment names ("", 0 if it does not say)."""
    found = dict(item.split(b"=", 1) for item in environ if b"=" in item)
    try:
        epoch = int(found.get(b"SWARM_EPOCH", b"0"))
    except ValueError:
        epoch = 0
    return found.get(b"SWARM_TASK_ID", b"").decode(errors="replace"), epoch
