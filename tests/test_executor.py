"""Tests of swarm.daemon.executor and its rooms (rundirs, procs, outputs_walk) with real
subprocesses: outcomes, captured bytes, environment, working dirs, stopping whole process groups,
resource figures, declared outputs and orphan killing.

Every async test drives the executor through `asyncio.run(...)` inside a plain test function.
Every process a test starts is reaped (by the executor's wait4, or by Popen.wait) and, on failure
paths, its whole process group is SIGKILLed in a `finally`, so nothing outlives the test.

"No process of the group remains" is checked by scanning /proc/*/stat for processes whose pgrp is
the group and whose state is not Z: killed grandchildren are reparented to PID 1 (or a subreaper),
which reaps them on its own schedule, so a zombie there is a dead process, not a leftover.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import errno
import glob
import json
import logging
import multiprocessing
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from swarm.core.ledger import Outcome
from swarm.core.spec import ARG_BYTES_MAX, Resources, TaskSpec, check
from swarm.daemon import executor, outputs_walk, procs, spawn
from swarm.daemon.executor import Attempt, Finished, Launch, attempt_env, attempt_tags
from swarm.daemon.outputs_walk import OUTPUT_FILES_MAX, collect_outputs
from swarm.daemon.procs import (
    NODE_DIR_TAG,
    NODE_TAG,
    began,
    group_members,
    kill_orphans,
    kill_strays,
)
from swarm.daemon.rundirs import RunDirs
from swarm.daemon.spawn import Process
from swarm.errors import OutputLimitError

BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "BASE_ONLY": "kept"}
PY = sys.executable


# ------------------------------------------------------------------------------------------------
# helpers


def make_launch(
    tmp_path: Path,
    cmd: str | None = None,
    argv: list[str] | None = None,
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    outputs: tuple[str, ...] = (),
    gpus: int = 0,
    gpu_ids: tuple[int, ...] = (),
    run_root: Path | None = None,
    task_id: str | None = None,
) -> Launch:
    assert (cmd is None) != (argv is None)
    spec = TaskSpec(
        cmd=cmd,
        argv=tuple(argv) if argv is not None else None,
        need=Resources(1.0, 64 * 1024 * 1024, gpus),
        env=tuple(sorted((env or {}).items())),
        cwd=cwd,
        outputs=outputs,
    )
    tid = task_id or uuid.uuid4().hex
    root = run_root if run_root is not None else tmp_path / "run"
    return Launch(
        task_id=tid,
        job="job-1",
        name="my task",
        spec=spec,
        epoch=7,
        attempt=2,
        run_dir=RunDirs(root, spare_max=4).take(),
        gpu_ids=gpu_ids,
    )


def proc_stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [0] state, [2] pgrp, [19] start time."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def live_group_members(pgid: int) -> list[int]:
    """Pids of the processes in group `pgid` that are not zombies."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_stat(entry.name)
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int, timeout: float = 3.0) -> list[int]:
    """Poll until no live member of the group is left (signals land asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        members = live_group_members(pgid)
        if not members or time.monotonic() > deadline:
            return members
        time.sleep(0.02)


def wait_for_file_text(path: Path, text: bytes, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if text in path.read_bytes():
                return
        time.sleep(0.01)
    raise AssertionError(f"{text!r} never appeared in {path}")


async def await_file_text(path: Path, text: bytes, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if text in path.read_bytes():
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{text!r} never appeared in {path}")


def cleanup(attempt: Attempt | None) -> None:
    """Kill the attempt's group and reap its leader, if a failing test left them behind."""
    if attempt is None or attempt.proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(attempt.proc.pid, signal.SIGKILL)
    if attempt.proc.returncode is None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(attempt.proc.pid, 0)


def reap(proc: Process, timeout: float = 5.0) -> int:
    """Wait for our child to exit and reap it: its exit code (negative: the signal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode
        time.sleep(0.01)
    raise AssertionError(f"process {proc.pid} did not exit in {timeout} s")


def still_running(pid: int) -> bool:
    """Whether our child `pid` has not exited yet (it is not reaped by asking)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def run_attempt(
    launch: Launch,
    during: Callable[[Attempt], Awaitable[None]] | None = None,
    inherited_rss_kb: int = 0,
) -> tuple[Attempt, Finished]:
    """Start the attempt in a fresh event loop, run `during` while it runs, await its end."""
    holder: list[Attempt] = []

    async def main() -> Finished:
        attempt = Attempt(launch, BASE_ENV, inherited_rss_kb)
        holder.append(attempt)
        if during is not None:
            await during(attempt)
        return await attempt.finished()

    try:
        finished = asyncio.run(main())
    finally:
        if holder:
            cleanup(holder[0])
    return holder[0], finished


@pytest.fixture
def sleeper() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `sleep 30` processes in their own sessions; always killed and reaped afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            ["sleep", "30"],
            env=env if env is not None else {"PATH": BASE_ENV["PATH"]},
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(timeout=5)


# ------------------------------------------------------------------------------------------------
# ok / failed


def test_ok_captures_raw_bytes(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, r"printf 'out\377\376\n'; printf 'err\376\000x' >&2")
    t0 = time.monotonic()
    attempt, f = run_attempt(launch)
    took = time.monotonic() - t0
    assert f.outcome is Outcome.OK
    assert f.exit_code == 0
    assert f.reason == ""
    assert f.stdout == launch.run_dir / "stdout"
    assert f.stderr == launch.run_dir / "stderr"
    assert f.stdout.read_bytes() == b"out\xff\xfe\n"
    assert f.stderr.read_bytes() == b"err\xfe\x00x"
    assert 0 < f.wall_s <= took
    assert f.started_ms <= f.ended_ms
    assert abs(f.started_ms - time.time() * 1000) < 60_000
    assert f.outputs == {}
    assert f.outputs_movable is True
    assert attempt.proc is not None and attempt.proc.returncode == 0  # Popen told it was reaped


def test_with_no_pidfd_to_spare_the_exit_is_polled_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A node out of descriptors cannot watch its child by a pidfd: it asks for the exit now
    and then instead (without reaping, as the pidfd does), and says so."""

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    monkeypatch.setattr(spawn, "_said_polling", False)
    _, f = run_attempt(make_launch(tmp_path, "sleep 0.2; exit 3"))
    assert (f.outcome, f.exit_code, f.reason) == (Outcome.FAILED, 3, "exit 3")
    assert "polling for its exit" in caplog.text


def test_wall_time_is_how_long_the_task_ran(tmp_path: Path) -> None:
    t0 = time.monotonic()
    _, f = run_attempt(make_launch(tmp_path, "sleep 0.3"))
    took = time.monotonic() - t0
    assert f.outcome is Outcome.OK
    assert 0.3 <= f.wall_s <= took


def test_large_output_goes_to_file_with_exact_size(tmp_path: Path) -> None:
    size = 20 * 1000 * 1000
    launch = make_launch(tmp_path, f"printf 'AB'; head -c {size} /dev/zero; echo e >&2")
    _, f = run_attempt(launch)
    assert f.outcome is Outcome.OK
    assert f.stdout.stat().st_size == size + 2
    with open(f.stdout, "rb") as fh:
        assert fh.read(4) == b"AB\0\0"
    assert f.stderr.read_bytes() == b"e\n"


def test_exit_code_3_is_failed(tmp_path: Path) -> None:
    _, f = run_attempt(make_launch(tmp_path, "echo partial; exit 3"))
    assert f.outcome is Outcome.FAILED
    assert f.exit_code == 3
    assert "exit 3" in f.reason
    assert f.stdout.read_bytes() == b"partial\n"


def test_killed_by_signal_is_failed_with_signal_name(tmp_path: Path) -> None:
    _, f = run_attempt(make_launch(tmp_path, "kill -9 $$; sleep 5"))
    assert f.outcome is Outcome.FAILED
    assert f.exit_code == -9
    assert f.reason == "killed by SIGKILL"


def test_killed_by_realtime_signal_is_failed(tmp_path: Path) -> None:
    sig = int(signal.SIGRTMIN) + 1
    code = f"import os; os.kill(os.getpid(), {sig})"
    _, f = run_attempt(make_launch(tmp_path, argv=[PY, "-c", code]))
    assert f.outcome is Outcome.FAILED
    assert f.exit_code == -sig
    assert str(sig) in f.reason


# ------------------------------------------------------------------------------------------------
# environment and argv

DUMP_ENV = "import json, os, sys; sys.stdout.write(json.dumps(dict(os.environ)))"


def test_env_has_swarm_variables_and_task_env(tmp_path: Path) -> None:
    launch = make_launch(
        tmp_path,
        argv=[PY, "-c", DUMP_ENV],
        env={"FOO": "bar baz", "BASE_ONLY": "overridden", "SWARM_JOB": "spoofed"},
    )
    _, f = run_attempt(launch)
    assert f.outcome is Outcome.OK, f.stderr.read_bytes()
    env = json.loads(f.stdout.read_bytes())
    assert env["SWARM_TASK_ID"] == launch.task_id
    assert env["SWARM_TASK_NAME"] == "my task"
    assert env["SWARM_JOB"] == "job-1"  # the task's env cannot override the swarm variables
    assert env["SWARM_ATTEMPT"] == "2"
    assert env["SWARM_EPOCH"] == "7"
    assert env["FOO"] == "bar baz"
    assert env["BASE_ONLY"] == "overridden"  # the task env wins over the daemon's
    assert env["PATH"] == BASE_ENV["PATH"]
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_cuda_visible_devices_from_gpu_ids(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, argv=[PY, "-c", DUMP_ENV], gpus=2, gpu_ids=(0, 3))
    _, f = run_attempt(launch)
    env = json.loads(f.stdout.read_bytes())
    assert env["CUDA_VISIBLE_DEVICES"] == "0,3"


def test_attempt_env_hides_gpus_from_tasks_that_need_none(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, "true")
    env = attempt_env(launch, {"CUDA_VISIBLE_DEVICES": "0,1", "X": "1"})
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["X"] == "1"
    gpu = make_launch(tmp_path, "true", gpus=1, gpu_ids=(5,), env={"CUDA_VISIBLE_DEVICES": "9"})
    assert attempt_env(gpu, {})["CUDA_VISIBLE_DEVICES"] == "5"


def test_argv_runs_without_a_shell(tmp_path: Path) -> None:
    args = ["a b", 'it\'s "quoted"', "$HOME", "*", "; echo no", ""]
    code = "import json, sys; sys.stdout.write(json.dumps(sys.argv[1:]))"
    _, f = run_attempt(make_launch(tmp_path, argv=[PY, "-c", code, *args]))
    assert f.outcome is Outcome.OK, f.stderr.read_bytes()
    assert json.loads(f.stdout.read_bytes()) == args


# ------------------------------------------------------------------------------------------------
# working dir and spawn failures


def test_default_cwd_is_fresh_empty_work_dir(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, "pwd -P; ls -A; echo end")
    attempt, f = run_attempt(launch)
    assert attempt.cwd == launch.run_dir / "work"
    lines = f.stdout.read_bytes().decode().splitlines()
    assert lines == [os.path.realpath(launch.run_dir / "work"), "end"]
    assert f.outputs_movable is True


def test_explicit_cwd_is_used(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "input.txt").write_text("hello\n")
    # Left there earlier (an hour ago): not an output. Written just now, it would be one when
    # within the 10 ms slack for coarse timestamps, and then not on a loaded machine.
    an_hour_ago = time.time() - 3600
    os.utime(wd / "input.txt", (an_hour_ago, an_hour_ago))
    launch = make_launch(
        tmp_path, "pwd -P; cat input.txt; echo r > result.txt", cwd=str(wd), outputs=("*.txt",)
    )
    attempt, f = run_attempt(launch)
    assert f.outcome is Outcome.OK
    assert attempt.cwd == wd
    assert f.stdout.read_bytes().decode().splitlines() == [os.path.realpath(wd), "hello"]
    assert list((launch.run_dir / "work").iterdir()) == []  # the scratch dir is unused
    assert f.outputs == {"result.txt": wd / "result.txt"}  # never a file left there earlier
    assert f.outputs_movable is False  # the user's own files: to be copied, never moved


@pytest.mark.parametrize("case", ["missing_cwd", "missing_abs_program", "missing_path_program"])
def test_spawn_failure_is_failed_127(tmp_path: Path, case: str) -> None:
    if case == "missing_cwd":
        launch = make_launch(tmp_path, "true", cwd=str(tmp_path / "no-such-dir"))
        needle = "no-such-dir"
    elif case == "missing_abs_program":
        launch = make_launch(tmp_path, argv=[str(tmp_path / "no-such-prog"), "x"])
        needle = "no-such-prog"
    else:
        launch = make_launch(tmp_path, argv=["swarm-no-such-program-xyz"])
        needle = "swarm-no-such-program-xyz"

    async def stop_is_harmless(attempt: Attempt) -> None:
        assert attempt.pid is None
        attempt.stop(Outcome.TIMEOUT, "ignored")

    attempt, f = run_attempt(launch, stop_is_harmless)
    assert attempt.proc is None
    assert f.outcome is Outcome.FAILED
    assert f.exit_code == 127
    assert needle in f.reason
    err = f.stderr.read_bytes()
    assert err.startswith(b"swarm: ")
    assert needle.encode() in err
    assert f.stdout.read_bytes() == b""
    assert not (launch.run_dir / "pid").exists()
    assert f.outputs == {}


def test_non_executable_program_is_failed_127(tmp_path: Path) -> None:
    prog = tmp_path / "script.sh"
    prog.write_text("#!/bin/sh\necho hi\n")
    prog.chmod(0o644)
    _, f = run_attempt(make_launch(tmp_path, argv=[str(prog)]))
    assert f.outcome is Outcome.FAILED
    assert f.exit_code == 127
    assert f.stderr.read_bytes().startswith(b"swarm: ")


# ------------------------------------------------------------------------------------------------
# stop()


def test_stop_with_timeout_ends_quickly(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, "echo ready; sleep 30")

    async def during(attempt: Attempt) -> None:
        await await_file_text(attempt.stdout, b"ready")
        attempt.stop(Outcome.TIMEOUT, "timed out after 1s")
        attempt.stop(Outcome.INTERRUPTED, "second stop is ignored")

    t0 = time.monotonic()
    attempt, f = run_attempt(launch, during)
    assert time.monotonic() - t0 < 2.5
    assert f.outcome is Outcome.TIMEOUT
    assert f.reason == "timed out after 1s"
    assert f.exit_code is not None and f.exit_code < 0  # SIGTERM, not the grace's SIGKILL
    assert f.exit_code == -signal.SIGTERM
    assert attempt.pid is not None
    assert wait_group_gone(attempt.pid) == []


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, "sleep 30 & sleep 30 & echo ready; wait")
    seen: list[int] = []

    async def during(attempt: Attempt) -> None:
        await await_file_text(attempt.stdout, b"ready")
        assert attempt.pid is not None
        seen.extend(live_group_members(attempt.pid))
        attempt.stop(Outcome.TIMEOUT, "timeout")

    t0 = time.monotonic()
    attempt, f = run_attempt(launch, during)
    assert time.monotonic() - t0 < 2.5
    assert f.outcome is Outcome.TIMEOUT
    assert attempt.pid is not None
    assert attempt.pid in seen and len(seen) >= 3  # the shell and its two sleeps
    assert wait_group_gone(attempt.pid) == []


def test_stop_sigkills_a_task_that_ignores_sigterm(tmp_path: Path) -> None:
    # "ready" once the shell has forked its sleep: both ignore SIGTERM.
    launch = make_launch(tmp_path, 'trap "" TERM; sleep 30 & echo ready; wait; sleep 30')

    async def during(attempt: Attempt) -> None:
        await await_file_text(attempt.stdout, b"ready")
        attempt.stop(Outcome.TIMEOUT, "timeout", grace_s=0.3)

    t0 = time.monotonic()
    attempt, f = run_attempt(launch, during)
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 2.5
    assert f.outcome is Outcome.TIMEOUT
    assert f.exit_code == -signal.SIGKILL
    assert attempt.pid is not None
    assert wait_group_gone(attempt.pid) == []


# "ready" once the child `sh -c` has exec'd: until then a dash child keeps the trapping shell's
# handler, and a TERM landing then would be lost (the sleep would run on to the SIGKILL).
CLEANUP = """#!/bin/sh
trap 'sleep 0.3; echo cleaned up > cleaned; exit 0' TERM
sh -c 'echo ready > ready; exec sleep 30' &
wait
"""


@pytest.mark.parametrize("cmd", ["./cleanup.sh", "./cleanup.sh; echo after", "exec ./cleanup.sh"])
def test_a_stopped_cmds_program_has_the_grace_to_clean_up(tmp_path: Path, cmd: str) -> None:
    """A `cmd`'s shell dies at SIGTERM at once (unless it `exec`s its program); the program,
    which traps SIGTERM to write its checkpoint, still has the grace to do so before the
    SIGKILL, and the attempt ends as it does, not at the grace's end."""
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "cleanup.sh").write_text(CLEANUP)
    (wd / "cleanup.sh").chmod(0o755)
    launch = make_launch(tmp_path, cmd, cwd=str(wd))
    stopped_at: list[float] = []

    async def during(attempt: Attempt) -> None:
        await await_file_text(wd / "ready", b"ready")
        stopped_at.append(time.monotonic())
        attempt.stop(Outcome.TIMEOUT, "timed out", grace_s=30.0)

    attempt, f = run_attempt(launch, during)
    assert (wd / "cleaned").read_text() == "cleaned up\n"
    assert f.outcome is Outcome.TIMEOUT
    # It ended after the program's cleanup (0.3 s), and well before the grace's end.
    assert 0.3 <= attempt.started_at + f.wall_s - stopped_at[0] < 20
    assert attempt.pid is not None
    assert wait_group_gone(attempt.pid) == []


def test_a_stopped_group_that_cannot_be_watched_is_polled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No pidfd to spare (the node watches its most already): the group is listed again, ever
    less often, until its program has cleaned up; said once in the log."""
    monkeypatch.setattr(procs, "PIDFDS_WATCHED_MAX", 0)
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "cleanup.sh").write_text(CLEANUP)
    launch = make_launch(tmp_path, "sh ./cleanup.sh; echo after", cwd=str(wd))
    stopped_at: list[float] = []

    async def during(attempt: Attempt) -> None:
        await await_file_text(wd / "ready", b"ready")
        stopped_at.append(time.monotonic())
        attempt.stop(Outcome.TIMEOUT, "timed out", grace_s=30.0)

    with caplog.at_level(logging.WARNING, logger="swarm.daemon.procs"):
        _, f = run_attempt(launch, during)
    assert (wd / "cleaned").read_text() == "cleaned up\n"
    assert 0.3 <= time.monotonic() - stopped_at[0] < 20
    assert f.outcome is Outcome.TIMEOUT
    said = [r.getMessage() for r in caplog.records if "cannot watch" in r.getMessage()]
    assert len(said) == 1 and "the node watches 0 processes already" in said[0], said


def test_the_rest_of_a_stopped_group_is_killed_when_the_grace_runs_out(tmp_path: Path) -> None:
    """The shell dies at SIGTERM; the subshell it forked ignores it: SIGKILL at the grace's
    end (the leader's pid unreaped until then, so that the SIGKILL reaches this group only)."""
    launch = make_launch(tmp_path, '(trap "" TERM; echo ready; sleep 30) & wait')
    stopped_at: list[float] = []

    async def during(attempt: Attempt) -> None:
        await await_file_text(attempt.stdout, b"ready")
        stopped_at.append(time.monotonic())
        attempt.stop(Outcome.TIMEOUT, "timeout", grace_s=0.5)

    attempt, f = run_attempt(launch, during)
    assert 0.5 <= time.monotonic() - stopped_at[0] < 10
    assert f.outcome is Outcome.TIMEOUT
    assert f.exit_code == -signal.SIGTERM  # the shell's: the program's is not the node's to see
    assert attempt.pid is not None
    assert wait_group_gone(attempt.pid) == []


def test_the_grace_waits_for_processes_forked_during_it_and_beyond_those_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four programs that each, at SIGTERM, leave a process behind to finish their cleanup:
    with two watched at a time, the group is listed again until none is left, well before
    the grace's end."""
    monkeypatch.setattr(procs, "GROUP_WATCHED_MAX", 2)
    listed: list[int] = []
    group_members = procs.group_members

    def counted(*args: Any) -> list[int] | None:
        found = group_members(*args)
        listed.append(-1 if found is None else len(found))
        return found

    monkeypatch.setattr(procs, "group_members", counted)
    wd = tmp_path / "wd"
    wd.mkdir()
    late = "trap 'sleep 0.1; (sleep 0.3; echo done > late.$1) & exit 0' TERM; echo ready > ready.$1; wait"
    (wd / "leaves_one.sh").write_text(f"sleep 30 & {late}\n")
    launch = make_launch(
        tmp_path, "for i in 1 2 3 4; do sh ./leaves_one.sh $i & done; wait", cwd=str(wd)
    )
    stopped_at: list[float] = []

    async def during(attempt: Attempt) -> None:
        for i in range(1, 5):
            await await_file_text(wd / f"ready.{i}", b"ready")
        stopped_at.append(time.monotonic())
        attempt.stop(Outcome.TIMEOUT, "timeout", grace_s=30.0)

    attempt, f = run_attempt(launch, during)
    assert 0.3 <= time.monotonic() - stopped_at[0] < 20
    assert sorted(p.name for p in wd.glob("late.*")) == [f"late.{i}" for i in range(1, 5)]
    assert max(listed) == 2 and len(listed) >= 3  # two at a time, listed again
    assert f.outcome is Outcome.TIMEOUT
    assert attempt.pid is not None
    assert wait_group_gone(attempt.pid) == []


def test_a_process_whose_first_thread_exited_is_alive_to_the_grace(tmp_path: Path) -> None:
    """/proc shows it as a zombie while its other threads run (one that saves, say)."""
    proc = tmp_path / "proc"
    for pid, state, threads in ((300, "Z", 2), (301, "Z", 1), (302, "S", 1)):
        (proc / str(pid)).mkdir(parents=True)
        rest = " ".join(["0"] * 14 + [str(threads)] + ["0"] * 30)
        (proc / str(pid) / "stat").write_text(f"{pid} (a (b)) {state} 1 300 {rest}\n")
    (proc / "loadavg").write_text("0.0 0.0 0.0 1/100 302\n")
    assert group_members(300, 299, began(), proc) == [302]  # the leader itself left out
    assert group_members(299, 299, began(), proc) == []
    (proc / "300" / "stat").write_text(f"300 (x) Z 1 299 {' '.join(['0'] * 14 + ['2'])}\n")
    assert group_members(299, 299, began(), proc) == [300]


def test_group_members_are_the_live_processes_of_the_group(tmp_path: Path) -> None:
    """What a stopped attempt's grace waits on: the group's live processes, read from /proc."""
    start = began()
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 30 & sleep 30 & echo ready; wait"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        members = group_members(proc.pid, proc.pid, start)
        assert members is not None and len(members) == 2
        assert sorted(members) == sorted(p for p in live_group_members(proc.pid) if p != proc.pid)
        assert group_members(proc.pid, proc.pid, start, members_max=1) == members[:1]
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()  # reaped: the leader's pid names no group now
        assert wait_group_gone(proc.pid) == []
        assert group_members(proc.pid, proc.pid, start) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_background_leftovers_are_killed_when_the_leader_exits(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, "sleep 30 & echo done")
    t0 = time.monotonic()
    attempt, f = run_attempt(launch)
    assert time.monotonic() - t0 < 5
    assert f.outcome is Outcome.OK
    assert f.stdout.read_bytes() == b"done\n"
    assert attempt.pid is not None
    assert wait_group_gone(attempt.pid) == []


# ------------------------------------------------------------------------------------------------
# resource figures

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3:\n    pass\n"


def test_cpu_time_of_a_busy_task(tmp_path: Path) -> None:
    _, f = run_attempt(make_launch(tmp_path, argv=[PY, "-c", BURN]))
    assert f.outcome is Outcome.OK
    assert f.cpu_s >= 0.25
    assert f.cpu_s <= f.wall_s + 0.1


def test_max_rss_from_the_kernel_when_above_inherited(tmp_path: Path) -> None:
    # 80 MiB more than this process's peak (the floor the kernel gives its children, which the
    # attempt reads as the child ends), written byte by byte: the child's own ru_maxrss.
    own_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size_kb = own_peak_kb + 80 * 1024
    code = f"b = b'x' * ({size_kb} << 10)"
    _, f = run_attempt(make_launch(tmp_path, argv=[PY, "-c", code]), inherited_rss_kb=0)
    assert f.outcome is Outcome.OK
    assert f.max_rss_kb >= size_kb


def test_max_rss_falls_back_to_sampled_peak_below_inherited(tmp_path: Path) -> None:
    """With `inherited_rss_kb` above anything the kernel can report, ru_maxrss is discarded and
    `max_rss_kb` is exactly the sampled `peak_rss_kb`, set here while the task still runs."""
    launch = make_launch(tmp_path, "echo ready; sleep 0.3")

    async def during(attempt: Attempt) -> None:
        await await_file_text(attempt.stdout, b"ready")
        assert attempt.proc is not None and still_running(attempt.proc.pid)
        attempt.peak_rss_kb = 4242

    _, f = run_attempt(launch, during, inherited_rss_kb=10**12)
    assert f.outcome is Outcome.OK
    assert f.max_rss_kb == 4242

    # And with no sample at all, nothing is claimed.
    _, f = run_attempt(make_launch(tmp_path, "true"), inherited_rss_kb=10**12)
    assert f.max_rss_kb == 0


def test_max_rss_takes_the_larger_of_kernel_and_sample(tmp_path: Path) -> None:
    async def during(attempt: Attempt) -> None:
        attempt.peak_rss_kb = 10**9

    _, f = run_attempt(make_launch(tmp_path, "sleep 0.05"), during, inherited_rss_kb=0)
    assert f.max_rss_kb == 10**9


# ------------------------------------------------------------------------------------------------
# outputs

MAKE_FILES = """
mkdir -p out/sub/deep dir.csv
echo a > out/a.csv
echo b > out/sub/b.csv
echo c > out/sub/deep/c.csv
echo n > out/notes.log
echo t > top.txt
echo h > .hidden.txt
ln -s top.txt link.txt
ln -s a.csv out/link.csv
ln -s /nonexistent/target out/dangling.csv
mkfifo out/pipe.csv
"""


def test_outputs_are_regular_files_with_normalized_relative_paths(tmp_path: Path) -> None:
    launch = make_launch(
        tmp_path, MAKE_FILES, outputs=("out/**/*.csv", "*.txt", "./top.txt", "dir.csv", "*.nope")
    )
    _, f = run_attempt(launch)
    assert f.outcome is Outcome.OK, f.stderr.read_bytes()
    work = launch.run_dir / "work"
    assert f.outputs == {
        "out/a.csv": work / "out/a.csv",
        "out/sub/b.csv": work / "out/sub/b.csv",
        "out/sub/deep/c.csv": work / "out/sub/deep/c.csv",
        "top.txt": work / "top.txt",
    }
    assert all(p.is_file() for p in f.outputs.values())
    assert f.outputs_movable is True


def test_collect_outputs_directly(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    (wd / "a" / "b").mkdir(parents=True)
    (wd / "a" / "b" / "x.bin").write_bytes(b"x")
    (wd / "y.bin").write_bytes(b"y")
    (wd / "z.bin").symlink_to(wd / "y.bin")
    launch = make_launch(
        tmp_path, "true", cwd=str(wd), outputs=("**/*.bin", "a//b/x.bin", "./y.bin")
    )
    assert collect_outputs(wd, launch.spec.outputs) == {
        "a/b/x.bin": wd / "a/b/x.bin",
        "y.bin": wd / "y.bin",
    }


def test_outputs_do_not_follow_symlinked_dirs(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me\n")
    launch = make_launch(
        tmp_path, f"echo r > mine.txt; ln -s '{outside}' link", outputs=("**/*.txt",)
    )
    _, f = run_attempt(launch)
    assert f.outcome is Outcome.OK
    assert set(f.outputs) == {"mine.txt"}


def collect_within(wd: Path, launch: Launch, bound_s: float = 20.0) -> dict[str, Path]:
    """collect_outputs in a daemon thread, failing the test if it has not returned in `bound_s`
    (a walk that follows a symlink loop never does; the thread is then left to the exit)."""
    box: list[dict[str, Path] | BaseException] = []

    def walk() -> None:
        try:
            box.append(collect_outputs(wd, launch.spec.outputs))
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=walk, daemon=True)
    thread.start()
    thread.join(bound_s)
    assert box, f"collect_outputs did not return within {bound_s}s"
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def test_outputs_walk_survives_directory_symlink_loops(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    (wd / "sub").mkdir(parents=True)
    (wd / "x.txt").write_text("hi\n")
    (wd / "sub" / "y.txt").write_text("yo\n")
    for name in ("a", "b", "c"):
        (wd / name).symlink_to(".")
    (wd / "sub" / "up").symlink_to("..")
    launch = make_launch(tmp_path, "true", cwd=str(wd), outputs=("**/*.txt",))
    assert collect_within(wd, launch) == {"x.txt": wd / "x.txt", "sub/y.txt": wd / "sub/y.txt"}


def test_outputs_walk_does_not_enter_a_link_to_the_root(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "root").symlink_to("/")
    (wd / "hostname").symlink_to("/etc/hostname")  # a link to a file outside: not taken either
    launch = make_launch(tmp_path, "true", cwd=str(wd), outputs=("**/hostname", "root/etc/*"))
    assert collect_within(wd, launch) == {}


def test_outputs_walk_matches_what_glob_matches_on_a_plain_tree(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    for rel in ("a.csv", "b.txt", ".h.csv", "d/a.csv", "d/e/f.csv", "d/.g/h.csv", "x/y/z.txt"):
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        (wd / rel).write_text(rel)
    patterns = ("**/*.csv", "d/*", "x/**", "*.[bc]*", ".h.csv", "d/**/f.csv", "**/.g/*.csv")
    for pattern in patterns:
        launch = make_launch(tmp_path, "true", cwd=str(wd), outputs=(pattern,))
        expected = {
            os.path.normpath(rel)
            for rel in glob.glob(pattern, root_dir=wd, recursive=True)
            if (wd / rel).is_file()
        }
        assert set(collect_outputs(wd, launch.spec.outputs)) == expected, pattern


@pytest.mark.parametrize(
    ("bounds", "reason"),
    [
        ({"files_max": 3}, "its outputs matched more than 3 files"),
        ({"bytes_max": 1024}, "its outputs add up to more than 1 KiB"),
        ({"time_max_s": -1.0}, "collecting its outputs took over -1 s"),
    ],
    ids=["files", "bytes", "time"],
)
def test_outputs_walk_stops_at_its_bounds(
    tmp_path: Path, bounds: dict[str, Any], reason: str
) -> None:
    wd = tmp_path / "wd"
    wd.mkdir()
    for i in range(4):
        (wd / f"f{i}.bin").write_bytes(b"x" * 400)
    launch = make_launch(tmp_path, "true", cwd=str(wd), outputs=("*.bin",))
    with pytest.raises(OutputLimitError) as caught:
        collect_outputs(wd, launch.spec.outputs, **bounds)
    assert str(caught.value) == reason


def test_outputs_walk_ends_between_entries_once_told_to_stop(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "f.bin").write_bytes(b"x")
    launch = make_launch(tmp_path, "true", cwd=str(wd), outputs=("*.bin",))
    stop = threading.Event()
    assert set(collect_outputs(wd, launch.spec.outputs, stop=stop)) == {"f.bin"}
    stop.set()
    with pytest.raises(OutputLimitError, match="collecting its outputs took over"):
        collect_outputs(wd, launch.spec.outputs, stop=stop)


def test_output_walks_stuck_in_a_system_call_leave_the_default_executor_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A walk on a hung mount stays in its system call for good: the attempt gives up on it, the
    walk is told to stop (for when the call returns), and more such walks than the default
    executor has threads still leave it free for the node's own files. Before, each stuck walk
    held one of the default executor's threads (6 on this 2-core machine), and the
    `asyncio.to_thread` after them waited (this test's bound: 5 s)."""
    monkeypatch.setattr(outputs_walk, "OUTPUT_COLLECT_S", 0.05)
    monkeypatch.setattr(outputs_walk, "OUTPUT_COLLECT_GRACE_S", 0.05)
    hung = threading.Event()  # set by the test's end: the "system call" returns
    stops: list[threading.Event | None] = []

    def stuck_walk(*args: Any, stop: threading.Event | None = None, **kwargs: Any) -> Any:
        stops.append(stop)
        hung.wait(30)
        return {}

    monkeypatch.setattr(outputs_walk, "collect_outputs", stuck_walk)
    walks = (os.cpu_count() or 1) + 5  # more than asyncio's default executor has threads
    launches = [make_launch(tmp_path, "true", outputs=("*.out",)) for _ in range(walks)]

    async def main() -> list[Finished]:
        try:
            ended = [await Attempt(launch, BASE_ENV).finished() for launch in launches]
            # The node's own blocking calls still get a thread.
            assert await asyncio.wait_for(asyncio.to_thread(len, "free"), 5) == 4
            return ended
        finally:
            hung.set()

    for f in asyncio.run(main()):
        assert f.outcome is Outcome.FAILED
        assert f.reason == "collecting its outputs took over 0.05 s"
    assert stops, "no walk began"
    assert all(stop is not None and stop.is_set() for stop in stops)


def test_an_attempt_past_the_file_bound_fails_with_the_reason(tmp_path: Path) -> None:
    files = OUTPUT_FILES_MAX + 1
    launch = make_launch(
        tmp_path, f"seq {files} | sed 's/$/.out/' | xargs touch", outputs=("*.out",)
    )
    _, f = run_attempt(launch)
    assert f.outcome is Outcome.FAILED
    assert f.reason == f"its outputs matched more than {OUTPUT_FILES_MAX:,} files"
    assert f.outputs == {}


@pytest.mark.parametrize(
    ("cmd", "free_at_start", "outcome", "reason"),
    [
        ("head -c 300000 /dev/zero; exit 1", 4 << 20, Outcome.INTERRUPTED, "filled up while"),
        ("head -c 1200000 /dev/zero; exit 1", 2 << 20, Outcome.FAILED, "filled the disk"),
        ("head -c 1200000 /dev/zero", 2 << 20, Outcome.FAILED, "filled the disk"),
        ("head -c 300000 /dev/zero", 4 << 20, Outcome.OK, ""),
        # A few KiB on a disk already at the line: the task did not fill it.
        ("head -c 6000 /dev/zero", (1 << 20) + (8 << 10), Outcome.OK, ""),
        ("head -c 6000 /dev/zero; exit 1", (1 << 20) + (8 << 10), Outcome.INTERRUPTED, "while"),
    ],
    ids=[
        "failed-as-it-filled",
        "failed-filling-it",
        "ok-filling-it",
        "ok-on-a-full-disk",
        "ok-small-at-the-line",
        "failed-small-at-the-line",
    ],
)
def test_an_attempt_ending_on_a_full_disk(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cmd: str,
    free_at_start: int,
    outcome: Outcome,
    reason: str,
) -> None:
    # The disk has `free_at_start` bytes when the attempt starts, and 4 KiB when it ends.
    frees = iter([free_at_start])
    monkeypatch.setattr(executor, "free_bytes", lambda _: next(frees, 4096))
    launch = make_launch(tmp_path, f"{cmd}; echo x > scratch.bin")
    _, f = run_attempt(launch)
    assert f.outcome is outcome
    assert reason in f.reason
    kept = outcome is Outcome.OK  # an attempt that ended well keeps its files, to be stored
    assert f.discarded is not kept
    assert f.stdout.exists() is kept
    assert (launch.run_dir / "work" / "scratch.bin").exists() is kept
    if "filled the disk" in reason:
        assert f.reason.startswith("its output (1.1 MiB) filled the disk holding ")
        assert f.reason.endswith(" (2 MiB free when it started)")


@pytest.mark.parametrize(
    ("cmd", "outcome", "reason"),
    [
        ("echo out; exit 1", Outcome.INTERRUPTED, "filled up while it ran (exit 1)"),
        ("echo out", Outcome.OK, ""),
    ],
    ids=["failed", "ok"],
)
def test_an_attempt_that_ran_while_the_disk_was_seen_full_is_judged_so_after_space_came_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cmd: str, outcome: Outcome, reason: str
) -> None:
    # Another attempt ended first, found the disk full and threw its files away: by this one's
    # end there is room again, yet it ran out of it (it was recorded as an ordinary failure,
    # its truncated files stored, and the disk filled up again with them).
    frees = iter([4 << 20, 4096])  # at its start; then the other attempt's end, while it runs
    monkeypatch.setattr(executor, "free_bytes", lambda _: next(frees, 4 << 20))
    launch = make_launch(tmp_path, cmd)

    async def another_attempt_ends(attempt: Attempt) -> None:
        assert executor.free_space.now(launch.run_dir) == 4096

    _, f = run_attempt(launch, during=another_attempt_ends)
    assert (f.outcome, f.reason) == (
        outcome,
        reason and f"the disk holding {tmp_path / 'run'} {reason}",
    )
    assert f.discarded is (outcome is not Outcome.OK)
    assert f.stdout.exists() is (outcome is Outcome.OK)


def test_a_failure_long_after_a_moment_of_full_disk_is_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frees = iter([4 << 20, 4096])
    monkeypatch.setattr(executor, "free_bytes", lambda _: next(frees, 4 << 20))
    monkeypatch.setattr(executor, "FULL_SEEN_RECENT_S", 0.2)
    launch = make_launch(tmp_path, "sleep 0.5; echo its own >&2; exit 1")

    async def disk_full_a_moment(attempt: Attempt) -> None:
        assert executor.free_space.now(launch.run_dir) == 4096

    _, f = run_attempt(launch, during=disk_full_a_moment)
    assert (f.outcome, f.reason, f.discarded) == (Outcome.FAILED, "exit 1", False)
    assert f.stderr.read_text() == "its own\n"


def test_a_task_that_removes_its_own_run_dir_is_recorded_as_it_ended(tmp_path: Path) -> None:
    # The free space is read of the runs' dir, and the attempt's files are found gone: it is
    # neither judged a full disk nor failed by swarm (it was: "swarm error: FileNotFoundError").
    launch = make_launch(tmp_path, 'echo gone; rm -rf "$(dirname "$PWD")"; exit 3')
    _, f = run_attempt(launch)
    assert (f.outcome, f.exit_code, f.reason) == (Outcome.FAILED, 3, "exit 3")
    assert not f.discarded
    assert not launch.run_dir.exists()


@pytest.mark.parametrize(
    "replace",
    ["mkfifo ../stdout", "ln -s /etc/hostname ../stdout", "ln ../../../outside ../stdout"],
    ids=["fifo", "symlink", "hard-link"],
)
def test_a_stdout_the_task_replaced_is_not_kept(tmp_path: Path, replace: str) -> None:
    (tmp_path / "outside").write_text("the user's\n")
    launch = make_launch(tmp_path, f"echo mine; rm ../stdout; {replace}")
    assert launch.run_dir.parent.parent == tmp_path  # so ../../../outside is that file
    _, f = run_attempt(launch)
    assert f.outcome is Outcome.OK
    assert not os.path.lexists(f.stdout)  # the node stores nothing, and follows nothing
    assert (tmp_path / "outside").read_text() == "the user's\n"


@pytest.mark.parametrize("kind", ["symlink", "hard-link", "fifo"])
def test_a_recycled_run_dir_never_writes_through_what_a_task_left(
    tmp_path: Path, kind: str
) -> None:
    outside = tmp_path / "outside"
    outside.write_text("the user's\n")
    pool = RunDirs(tmp_path / "run", spare_max=1)
    run_dir = pool.take()
    stdout = run_dir / "stdout"
    if kind == "symlink":
        stdout.symlink_to(outside)
    elif kind == "hard-link":
        os.link(outside, stdout)
    else:
        os.mkfifo(stdout)
    launch = make_launch(tmp_path, "echo fresh")
    launch = Launch(**{**{k: getattr(launch, k) for k in Launch.__slots__}, "run_dir": run_dir})
    _, f = run_attempt(launch)
    assert f.stdout.read_bytes() == b"fresh\n"
    assert outside.read_text() == "the user's\n"


def test_interrupted_attempt_collects_no_outputs(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, "echo x > out.txt; echo ready; sleep 30", outputs=("*.txt",))

    async def during(attempt: Attempt) -> None:
        await await_file_text(attempt.stdout, b"ready")
        attempt.stop(Outcome.INTERRUPTED, "node shutting down")

    _, f = run_attempt(launch, during)
    assert f.outcome is Outcome.INTERRUPTED
    assert f.reason == "node shutting down"
    assert (launch.run_dir / "work" / "out.txt").is_file()
    assert f.outputs == {}


# ------------------------------------------------------------------------------------------------
# kill_orphans


NODE_ENV = {**BASE_ENV, NODE_TAG: "node-under-test"}


def test_kill_orphans_kills_a_live_attempt_group_and_removes_its_dir(tmp_path: Path) -> None:
    run_root = tmp_path / "run"
    launch = make_launch(tmp_path, "sleep 30 & sleep 30 & echo ready; wait", run_root=run_root)
    attempt = Attempt(launch, NODE_ENV)  # as if left by a killed daemon: never awaited
    try:
        assert attempt.proc is not None
        pgid = attempt.proc.pid
        wait_for_file_text(attempt.stdout, b"ready")
        assert len(live_group_members(pgid)) >= 3
        assert len(kill_orphans(run_root, "node-under-test")) == 1
        assert wait_group_gone(pgid) == []
        assert not launch.run_dir.exists()
        assert list(run_root.iterdir()) == []
        assert reap(attempt.proc) == -signal.SIGKILL
    finally:
        cleanup(attempt)


def test_kill_orphans_kills_leftovers_after_the_leader_is_gone(tmp_path: Path) -> None:
    run_root = tmp_path / "run"
    launch = make_launch(tmp_path, "sleep 30 & echo ready", run_root=run_root)
    attempt = Attempt(launch, NODE_ENV)
    try:
        assert attempt.proc is not None
        pgid = attempt.proc.pid
        assert reap(attempt.proc) == 0  # the leader exited and is reaped
        assert len(live_group_members(pgid)) == 1  # its background sleep still runs
        assert len(kill_orphans(run_root, "node-under-test")) == 1
        assert wait_group_gone(pgid) == []
    finally:
        cleanup(attempt)


def pid_gone(pid: int, timeout: float = 5.0) -> bool:
    """Poll until `pid` has exited (a zombie counts as gone), for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = proc_stat(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("stop", [False, True], ids=["ends", "stopped"])
def test_a_process_that_left_the_group_dies_with_its_attempt(tmp_path: Path, stop: bool) -> None:
    tail = "echo ready; sleep 30" if stop else "echo ready"
    # The pid file is written from the new session: the task goes on only once it has left.
    escape = "setsid sh -c 'echo $$ > s.tmp; mv s.tmp stray.pid; exec sleep 300' &"
    launch = make_launch(
        tmp_path, f"{escape} while [ ! -s stray.pid ]; do sleep 0.01; done; {tail}"
    )

    async def during(attempt: Attempt) -> None:
        await await_file_text(attempt.stdout, b"ready")
        if stop:
            attempt.stop(Outcome.INTERRUPTED, "node shutting down")

    stray = 0
    try:
        _, f = run_attempt(launch, during)
        stray = int((launch.run_dir / "work" / "stray.pid").read_text())
        assert pid_gone(stray), f"the setsid sleep {stray} outlived its attempt ({f.outcome})"
    finally:
        if stray:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stray, signal.SIGKILL)


def test_kill_strays_spares_other_attempts(
    tmp_path: Path, sleeper: Callable[..., subprocess.Popen[bytes]]
) -> None:
    env = {"PATH": BASE_ENV["PATH"], NODE_TAG: "n1", "SWARM_TASK_ID": "t1", "SWARM_EPOCH": "2"}
    other_epoch = sleeper({**env, "SWARM_EPOCH": "1"})
    mine = sleeper(env)
    # Popen returns once exec has begun; the kernel shows the new environment a moment later.
    wait_for_file_text(Path(f"/proc/{mine.pid}/environ"), b"SWARM_EPOCH=2")
    wait_for_file_text(Path(f"/proc/{other_epoch.pid}/environ"), b"SWARM_EPOCH=1")
    assert kill_strays(attempt_tags(env)) == 1
    assert pid_gone(mine.pid)
    assert other_epoch.poll() is None


@pytest.mark.parametrize(
    ("loadavg", "since_pid", "young", "old"),
    [
        # Listed before 5000 was the last pid handed out: 5001 was handed out before pids
        # last started again from the bottom.
        ("0.1 0.2 0.3 1/90 5000", 4000, [4000, 4500, 5000], [5001, 3999, 1]),
        ("0.1 0.2 0.3 1/90 300", 4000, [4000, 32767, 1, 300], [301, 3999]),  # wrapped
        ("garbled", 4000, [1, 4000], []),
    ],
    ids=["rising", "wrapped", "unreadable"],
)
def test_young_pids(
    tmp_path: Path, loadavg: str, since_pid: int, young: list[int], old: list[int]
) -> None:
    (tmp_path / "loadavg").write_text(loadavg + "\n")
    is_young = procs._young_pids(tmp_path, since_pid)
    assert [is_young(p) for p in young + old] == [True] * len(young) + [False] * len(old)


ESCAPE = "setsid sh -c 'echo $$ > s.tmp; mv s.tmp stray.pid; exec sleep 300' &"
ESCAPED = f"{ESCAPE} while [ ! -s stray.pid ]; do sleep 0.01; done"


def kill_stray(launch: Launch) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((launch.run_dir / "work" / "stray.pid").read_text()), signal.SIGKILL)


def test_the_loop_runs_while_the_stray_scan_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How long reading the young processes' environments takes is the task's to say (thousands
    of processes with big environments; a process stuck in a page fault blocks the read of its
    environment): the loop must run meanwhile. The scan is held (a seam) until the loop has run
    during it. Before, the scan ran on the loop, so the loop could not run until the hold gave
    up (after this test's bound of 5 s)."""
    scanning, loop_ran = threading.Event(), threading.Event()
    held: list[bool] = []
    real = procs._pids_with

    def held_scan(*args: Any, **kwargs: Any) -> list[int]:
        scanning.set()
        held.append(loop_ran.wait(5))
        return real(*args, **kwargs)

    monkeypatch.setattr(procs, "_pids_with", held_scan)
    launch = make_launch(tmp_path, ESCAPED)

    async def heartbeat() -> None:
        while not loop_ran.is_set():
            if scanning.is_set():
                loop_ran.set()
            await asyncio.sleep(0.005)

    async def main() -> Finished:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(heartbeat())
            return await Attempt(launch, BASE_ENV).finished()

    try:
        f = asyncio.run(main())
        assert f.outcome is Outcome.OK
        assert held and all(held), "the loop did not run while the stray scan read"
        stray = int((launch.run_dir / "work" / "stray.pid").read_text())
        assert pid_gone(stray)  # and the scan, off the loop, still killed the stray
    finally:
        loop_ran.set()
        kill_stray(launch)


def test_an_attempt_ends_though_its_stray_scan_is_stuck_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of a process's environment that never returns (its process stuck in a page fault
    on a file it serves itself) costs the scan's thread, not the attempt's end. Before, the
    attempt ended only once the read did (here, when the seam's 5 s bound ran out)."""
    monkeypatch.setattr(procs, "STRAY_SCAN_S", 0.05)
    monkeypatch.setattr(procs, "STRAY_SCAN_GRACE_S", 0.05)
    release, returned = threading.Event(), threading.Event()

    def stuck_scan(*args: Any, **kwargs: Any) -> list[int]:
        release.wait(5)  # as a read of /proc/<pid>/environ that does not return
        returned.set()
        return []

    monkeypatch.setattr(procs, "_pids_with", stuck_scan)
    launch = make_launch(tmp_path, ESCAPED)
    try:
        _, f = run_attempt(launch)
        assert not returned.is_set(), "the attempt waited for the stuck read"
        assert f.outcome is Outcome.OK
    finally:
        release.set()
        kill_stray(launch)


def test_a_stray_scan_reads_a_bounded_number_of_environments(tmp_path: Path) -> None:
    tags = frozenset({b"SWARM_NODE=n1", b"SWARM_TASK_ID=t1"})
    (tmp_path / "loadavg").write_text("0.1 0.2 0.3 1/90 5010\n")
    for pid in range(5000, 5011):  # fake processes: found, never killed (no kill_strays)
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "environ").write_bytes(b"PATH=/bin\0" + b"\0".join(tags))
    seen = {5003}
    found = procs._pids_with(tags, tmp_path, 5002, seen, pids_max=4)
    assert found == [5002, 5004, 5005, 5006]  # 5000 and 5001 are older, 5003 was read already
    assert procs._pids_with(tags, tmp_path, 5002, seen, pids_max=4) == [5007, 5008, 5009, 5010]
    assert procs._pids_with(tags, tmp_path, 5002, set(), over=lambda: True) == []


def test_every_stray_of_many_dies_in_bounded_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More strays than one round reads (a bound made small here): the next rounds read on from
    where the last stopped, and all die."""
    monkeypatch.setattr(procs, "STRAY_PIDS_MAX", 8)
    strays = 20
    big = "x" * 100_000  # each a big environment to read
    launch = make_launch(
        tmp_path,
        # s.pids exists before the wait: else the wait's test errs, and ends it before the strays
        # have all started.
        ": > s.pids;"
        f" for i in $(seq {strays}); do setsid sh -c 'echo $$ >> s.pids; exec sleep 300' & done;"
        f" while [ $(wc -l < s.pids) -lt {strays} ]; do sleep 0.01; done",
        env={"BIG": big},
    )
    pids: list[int] = []
    try:
        _, f = run_attempt(launch)
        pids = [int(p) for p in (launch.run_dir / "work" / "s.pids").read_text().split()]
        assert f.outcome is Outcome.OK
        assert len(pids) == strays
        assert [p for p in pids if not pid_gone(p)] == []
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("loadavg", "pids", "since_pid", "entries_max", "young"),
    [
        ("0 0 0 1/9 5000", [1, 3999], 4000, 100, False),
        ("0 0 0 1/9 5000", [1, 3999, 4500], 4000, 100, True),
        ("0 0 0 1/9 5000", [1, 3999, 30000], 4000, 100, False),  # from before a wrap
        ("0 0 0 1/9 300", [1, 3999], 4000, 100, True),  # wrapped since: cannot tell cheaply
        ("0 0 0 1/9 5000", [1, 2, 3], 4000, 2, True),  # too many to list here
        ("garbled", [1], 4000, 100, True),
    ],
    ids=["none", "one", "pre-wrap", "wrapped", "many", "unreadable"],
)
def test_any_young(
    tmp_path: Path,
    loadavg: str,
    pids: list[int],
    since_pid: int,
    entries_max: int,
    young: bool,
) -> None:
    (tmp_path / "loadavg").write_text(loadavg + "\n")
    for pid in pids:
        (tmp_path / str(pid)).mkdir()
    assert procs._any_young(tmp_path, since_pid, entries_max) is young


def test_young_processes_of_other_running_attempts_are_no_strays(tmp_path: Path) -> None:
    # On a busy node most young processes belong to the attempts running beside this one: they
    # are told apart by their group inline, so an attempt that left nothing costs no scan.
    (tmp_path / "loadavg").write_text("0 0 0 1/9 5000\n")
    (tmp_path / "4500").mkdir()
    (tmp_path / "4500" / "stat").write_text("4500 (sh (x) y) S 4100 4100 4100 0 -1 ...\n")
    assert procs._any_young(tmp_path, 4000, groups_skipped={4100}) is False
    assert procs._any_young(tmp_path, 4000, groups_skipped={4200}) is True
    assert procs._any_young(tmp_path, 4000) is True


def _fake_stat(proc: Path, pid: int, ppid: int, group: int, started: int) -> None:
    (proc / str(pid)).mkdir()
    later = " ".join(["0"] * 16)  # tty_nr .. itrealvalue, then starttime
    (proc / str(pid) / "stat").write_text(f"{pid} (s h) S {ppid} {group} {later} {started} 0\n")


TICK = 1_000  # the attempt began at this tick since boot; an ancestor below it is older


@pytest.mark.parametrize(
    ("family", "young"),
    [
        ({4500: (300, 4500, TICK), 300: (1, 300, 10)}, False),  # an older program forked it
        ({4500: (100, 4500, TICK)}, True),  # forked by the node (or adopted by its reaper)
        ({4500: (1, 4500, TICK)}, True),  # adopted by init: an orphan, maybe ours
        (  # its parent is young; the parent's parent is an older program
            {4500: (4400, 4500, TICK), 4400: (300, 4400, TICK), 300: (1, 300, 10)},
            False,
        ),
        ({4500: (4400, 4500, TICK), 4400: (100, 4400, TICK)}, True),  # a child of the node's
        ({4500: (4400, 4500, TICK)}, True),  # its parent went as we looked: adopted, by us maybe
        ({4500: (300, 4500, TICK), 300: (1, 300, TICK)}, True),  # 300 began as it did: maybe
        # 3000's pid is below the attempt's leader, but it began after it (pids started again
        # from the bottom meanwhile): it may be the attempt's, and so may its child.
        ({4500: (3000, 4500, TICK), 3000: (1, 3000, TICK + 5)}, True),
    ],
    ids=[
        "foreign",
        "node's",
        "init's",
        "foreign-grandparent",
        "kin-grandparent",
        "parent-gone",
        "same-tick",
        "pid-wrapped",
    ],
)
def test_young_processes_that_other_programs_forked_are_no_strays(
    tmp_path: Path, family: dict[int, tuple[int, int, int]], young: bool
) -> None:
    """On a machine where other programs fork (other nodes, cron, a shell), a young process
    with an ancestor outside the node's kin (itself, its ancestors, init, the live groups)
    that began before the attempt was forked by someone else: no scan reads its environment.
    Without `kin`, or the attempt's start, any young process may be a stray, as before."""
    (tmp_path / "loadavg").write_text("0 0 0 1/9 5000\n")
    for pid, (ppid, group, started) in family.items():
        _fake_stat(tmp_path, pid, ppid, group, started)
    assert procs._any_young(tmp_path, 4000, kin={1, 100}, since_tick=TICK) is young
    assert procs._any_young(tmp_path, 4000, kin={1, 100}) is True
    assert procs._any_young(tmp_path, 4000, since_tick=TICK) is True


def test_a_young_process_of_an_unrelated_program_is_told_apart_inline() -> None:
    """With the real /proc: a child that a program older than the attempt forked is no stray of
    it, and a child the node forked (in a session of its own, as a stray leaves) may be."""
    code = (
        "import subprocess, sys; sys.stdin.readline(); "
        "print(subprocess.Popen(['sleep', '60']).pid, flush=True); sys.stdin.readline()"
    )
    # Started before the attempt: old, and none of the node's kin.
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as forker:
        assert forker.stdin is not None and forker.stdout is not None
        time.sleep(0.05)  # the forker began a tick or more before the attempt
        tick = procs.boot_tick()
        leader = subprocess.Popen(["true"])  # the attempt's leader: the pids after it are young
        leader.wait()
        forker.stdin.write(b"go\n")
        forker.stdin.flush()
        theirs = int(forker.stdout.readline())
        kin = procs._kin()
        assert kin is not None
        try:
            assert procs._any_young(procs.PROC, leader.pid, kin=kin, since_tick=tick) is False
            with subprocess.Popen(["sleep", "60"], start_new_session=True) as ours:
                assert procs._any_young(procs.PROC, leader.pid, kin=kin, since_tick=tick) is True
                ours.kill()
        finally:
            os.kill(theirs, signal.SIGKILL)
            forker.kill()


def test_the_real_proc_is_listed_from_a_pid_on_and_a_plain_dir_whole(tmp_path: Path) -> None:
    """The listing at an attempt's end begins at the attempt's pid on the real /proc (the
    machine's older processes are passed over, not read), and lists the same young pids as a
    whole listing would; a dir that is not laid out so is listed whole."""
    with (
        subprocess.Popen(["sleep", "60"]) as first,
        subprocess.Popen(["sleep", "60"]) as second,
    ):
        try:
            whole = sorted(int(n) for n in os.listdir(procs.PROC) if n.isdigit())
            from_first = procs._pids_from(procs.PROC, first.pid, procs.PROC_ENTRIES_INLINE_MAX)
            assert procs._seeks[procs.PROC] is True
            assert from_first is not None and first.pid in from_first and second.pid in from_first
            # Those of a whole listing from the first pid on (bar any that ended meanwhile).
            young = [pid for pid in whole if pid >= first.pid]
            assert set(from_first) >= {pid for pid in young if os.path.exists(f"/proc/{pid}")}
            assert 1 in whole and min(from_first) == first.pid
            # Only the young entries were passed over, not /proc's many others (its files, the
            # older processes): a whole listing would go past this bound (a few forks' margin).
            bound = len(young) + 8
            assert len(os.listdir(procs.PROC)) > bound
            assert procs._pids_from(procs.PROC, first.pid, bound) is not None
        finally:
            first.kill()
            second.kill()
    for name in ("1", "4000", "4100", "self", "stat"):
        (tmp_path / name).mkdir()
    assert sorted(procs._pids_from(tmp_path, 4000, 10) or []) == [4000, 4100]
    assert procs._seeks[tmp_path] is False
    assert procs._pids_from(tmp_path, 4000, 4) is None  # five entries passed over


def test_a_failed_look_at_procs_layout_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of descriptors at the node's first look: /proc is listed whole that time, and looked
    at again the next, not listed whole for the rest of the node's life."""
    monkeypatch.setattr(procs, "_seeks", {})
    real_scandir = os.scandir

    def out_of_descriptors(path: Any) -> Any:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    fd = os.open(procs.PROC, os.O_RDONLY | os.O_DIRECTORY)
    try:
        monkeypatch.setattr(os, "scandir", out_of_descriptors)
        assert procs._seeks_by_pid(procs.PROC, fd) is False
        assert procs.PROC not in procs._seeks
        monkeypatch.setattr(os, "scandir", real_scandir)
        assert procs._seeks_by_pid(procs.PROC, fd) is True
    finally:
        os.close(fd)


def test_the_node_tag_survives_a_task_env_that_sets_it(tmp_path: Path) -> None:
    launch = make_launch(tmp_path, "true", env={NODE_TAG: "forged"})
    assert attempt_env(launch, NODE_ENV)[NODE_TAG] == "node-under-test"


@pytest.mark.parametrize(
    "env",
    [
        {"PATH": BASE_ENV["PATH"]},  # untagged: not an attempt at all
        {"PATH": BASE_ENV["PATH"], NODE_TAG: "another-node"},  # another node's attempt
        # The same node's id, another daemon's run dir (a copy of its state dir, started here)
        {"PATH": BASE_ENV["PATH"], NODE_TAG: "node-under-test", NODE_DIR_TAG: "9:99"},
    ],
    ids=["untagged", "other-node", "other-dir"],
)
def test_kill_orphans_spares_processes_not_of_this_node(
    tmp_path: Path, sleeper: Callable[..., subprocess.Popen[bytes]], env: dict[str, str]
) -> None:
    p = sleeper(env)
    tags = {
        NODE_TAG: "node-under-test",
        NODE_DIR_TAG: "8:88",
        "SWARM_TASK_ID": "t-mine",
        "SWARM_EPOCH": "3",
    }
    mine = sleeper({"PATH": BASE_ENV["PATH"], **tags})
    # Popen returns once exec has begun; the kernel shows the new environment a moment later.
    for proc in (p, mine):
        wait_for_file_text(Path(f"/proc/{proc.pid}/cmdline"), b"sleep\x0030")
    assert kill_orphans(tmp_path / "run", "node-under-test", "8:88") == [("t-mine", 3)]
    # Killed in the same pass: once this node's attempt is gone, the other was spared.
    assert pid_gone(mine.pid)
    assert p.poll() is None
    assert live_group_members(p.pid) == [p.pid]


def test_a_state_dir_s_tag_follows_it_when_moved_not_when_copied(tmp_path: Path) -> None:
    from swarm.daemon.procs import node_dir_tag

    home = tmp_path / "home"
    home.mkdir()
    (home / "identity.key").write_text("key")
    tag = node_dir_tag(home)
    (tmp_path / "link").symlink_to(home)
    assert node_dir_tag(tmp_path / "link") == tag
    home.rename(tmp_path / "moved")
    assert node_dir_tag(tmp_path / "moved") == tag
    shutil.copytree(tmp_path / "moved", tmp_path / "copy")
    assert node_dir_tag(tmp_path / "copy") != tag
    (tmp_path / "linked").mkdir()  # its files hard-linked: still another dir
    os.link(tmp_path / "moved" / "identity.key", tmp_path / "linked" / "identity.key")
    assert node_dir_tag(tmp_path / "linked") != tag


def test_kill_orphans_removes_leftover_run_dirs(tmp_path: Path) -> None:
    run_root = tmp_path / "run"
    assert len(kill_orphans(run_root, "node-under-test")) == 0  # no run root at all
    (run_root / "r1-1" / "work").mkdir(parents=True)
    (run_root / "r1-1" / "stdout").write_bytes(b"\xff partial")
    assert len(kill_orphans(run_root, "node-under-test")) == 0
    assert list(run_root.iterdir()) == []


def test_run_dirs_are_recycled_clean(tmp_path: Path) -> None:
    pool = RunDirs(tmp_path / "run", spare_max=1)
    first = pool.take()
    (first / "stdout").write_bytes(b"left by a killed attempt")
    (first / "stderr").write_bytes(b"")
    (first / "work" / "sub").mkdir()
    (first / "work" / "sub" / "f").write_text("x")
    asyncio.run(pool.give_back(first))
    again = pool.take()
    assert again == first
    assert list((again / "work").iterdir()) == []
    assert not (again / "stdout").exists()
    assert (again / "stderr").read_bytes() == b""  # empty: kept, to be truncated and reused
    second = pool.take()
    assert second != first and (second / "work").is_dir()
    asyncio.run(pool.give_back(again))
    asyncio.run(pool.give_back(second))  # over spare_max: removed
    assert not second.exists() and first.exists()


def test_outputs_in_a_shared_cwd_are_only_what_this_attempt_wrote(tmp_path: Path) -> None:
    wd = tmp_path / "shared"
    (wd / "results").mkdir(parents=True)
    stale = wd / "results" / "old.json"
    stale.write_text("from an earlier run")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    launch = make_launch(
        tmp_path, "echo new > results/new.json", cwd=str(wd), outputs=("results/*.json",)
    )
    _, f = run_attempt(launch)
    assert f.outcome is Outcome.OK
    assert sorted(f.outputs) == ["results/new.json"]


def test_a_recycled_run_dir_is_clean_even_when_stdout_was_moved_away(tmp_path: Path) -> None:
    pool = RunDirs(tmp_path / "run", spare_max=1)
    first = pool.take()
    (first / "stderr").write_bytes(b"")  # stdout is absent: the store took it
    (first / "work" / "leftover.txt").write_text("secret of the previous task")
    asyncio.run(pool.give_back(first))
    again = pool.take()
    assert again == first
    assert list((again / "work").iterdir()) == []


# -- how the process is started (spawn.py) ------------------------------------------------------


@pytest.mark.parametrize("how", ["cmd", "argv"])
def test_a_task_inherits_no_descriptor_of_the_node(tmp_path: Path, how: str) -> None:
    """Only stdin, stdout and stderr reach the task: nothing the node holds open (its ledger,
    sockets, pidfds, the other attempts' files)."""
    listing = "import os; print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))"
    if how == "cmd":
        launch = make_launch(tmp_path, f"exec {PY} -c {shlex.quote(listing)}")
    else:
        launch = make_launch(tmp_path, argv=[PY, "-c", listing])
    # As if the node had inherited an open descriptor from whoever started it.
    held = os.open(tmp_path, os.O_RDONLY)
    os.set_inheritable(held, True)
    spawn._sealed = False  # the node's first spawn, as far as the seal is concerned
    try:
        _, f = run_attempt(launch)
    finally:
        os.close(held)
    assert f.outcome is Outcome.OK, f.stderr.read_bytes()
    fds = ast.literal_eval(f.stdout.read_text())
    assert fds[:3] == [0, 1, 2] and len(fds) <= 4  # the 4th: the listing's own, if any


def test_a_shell_task_gets_sigpipe_at_its_default(tmp_path: Path) -> None:
    """Python ignores SIGPIPE; a task must not inherit that, or a writer into a closed pipe
    loops on EPIPE errors instead of ending quietly."""
    _, f = run_attempt(make_launch(tmp_path, "yes | head -n 1"))
    assert f.outcome is Outcome.OK
    assert f.stdout.read_bytes() == b"y\n"
    assert f.stderr.read_bytes() == b""


def test_a_shell_task_keeps_its_zero_and_runs_in_a_dir_with_an_awkward_name(tmp_path: Path) -> None:
    wd = tmp_path / "it's a\n$(dir) `x`"
    wd.mkdir()
    _, f = run_attempt(make_launch(tmp_path, 'echo "$0"; pwd -P', cwd=str(wd)))
    assert f.outcome is Outcome.OK
    assert f.stdout.read_text() == f"/bin/sh\n{os.path.realpath(wd)}\n"


def test_a_cwd_that_is_a_file_is_failed_127(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    _, f = run_attempt(make_launch(tmp_path, "true", cwd=str(afile)))
    assert f.outcome is Outcome.FAILED and f.exit_code == 127
    assert "Not a directory" in f.reason


def test_no_young_process_when_every_pid_since_went_to_our_leaders(tmp_path: Path) -> None:
    """The cheap answer: pids 4001..4003 went to attempts this node started, so nothing the
    attempt led by 4000 forked can be alive, whatever /proc lists; a pid in between that went
    elsewhere sends the question to the listing."""
    (tmp_path / "loadavg").write_text("0 0 0 1/9 4003\n")
    (tmp_path / "4002").mkdir()  # listed, and its group unreadable: it may be a stray
    ours = procs.Leaders()
    for pid in (4000, 4001, 4002, 4003):
        ours.add(pid)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(procs, "leaders", ours)
        assert procs._any_young(tmp_path, 4000) is False
        ours = procs.Leaders()
        for pid in (4000, 4001, 4003):
            ours.add(pid)
        patch.setattr(procs, "leaders", ours)
        assert procs._any_young(tmp_path, 4000) is True


def test_leaders_forget_the_oldest() -> None:
    ours = procs.Leaders(remembered_max=2)
    for pid in (10, 11, 12):
        ours.add(pid)
    assert ours.took_all(10, 12) is True
    assert ours.took_all(9, 12) is False  # 10 is forgotten


def test_the_exit_is_told_once_the_process_is_reaped_before_its_files_are_looked_at(
    tmp_path: Path,
) -> None:
    """`on_exit` frees the attempt's slot: it comes once, after the leader is reaped (so the
    next task cannot be held up by this one's outputs), and before `finished()` returns."""
    launch = make_launch(tmp_path, "echo out > r.txt", outputs=("*.txt",))
    heard: list[tuple[bool, bool]] = []
    holder: list[Attempt] = []

    def on_exit() -> None:
        attempt = holder[0]
        assert attempt.proc is not None
        try:
            os.waitpid(attempt.proc.pid, os.WNOHANG)
            reaped = False
        except ChildProcessError:
            reaped = True
        heard.append((reaped, attempt.proc.returncode == 0))

    async def main() -> Finished:
        attempt = Attempt(launch, BASE_ENV, on_exit=on_exit)
        holder.append(attempt)
        finished = await attempt.finished()
        assert len(heard) == 1  # told before finished() returned
        return finished

    f = asyncio.run(main())
    assert f.outcome is Outcome.OK and "r.txt" in f.outputs
    assert heard == [(True, True)]


def test_the_slot_is_freed_only_once_the_strays_are_killed(tmp_path: Path) -> None:
    """`on_exit` lets the next task take this one's CPUs, memory and GPUs: a process the task
    left running outside its group (a setsid daemon still holding a GPU) must be killed by
    then, not after the next task has started beside it."""
    escape = "setsid sh -c 'echo $$ > s.tmp; mv s.tmp stray.pid; exec sleep 300' &"
    launch = make_launch(tmp_path, f"{escape} while [ ! -s stray.pid ]; do sleep 0.01; done")
    stray_pid = launch.run_dir / "work" / "stray.pid"
    alive_at_exit: list[bool] = []

    def on_exit() -> None:
        alive_at_exit.append(not pid_gone(int(stray_pid.read_text()), timeout=2.0))

    async def main() -> Finished:
        return await Attempt(launch, NODE_ENV, on_exit=on_exit).finished()

    try:
        f = asyncio.run(main())
        assert f.outcome is Outcome.OK
        assert alive_at_exit == [False], "the next task could start beside this one's stray"
    finally:
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(int(stray_pid.read_text()), signal.SIGKILL)


def test_a_leader_pid_from_before_pids_started_again_is_no_proof(tmp_path: Path) -> None:
    """Pids start again from the bottom (every 32,768 on many machines): a remembered leader
    of the last round says nothing of who holds its pid now. The attempt led by 500 forked a
    stray that got 501, the pid of one of our leaders of the round before: it may be alive."""
    (tmp_path / "loadavg").write_text("0 0 0 1/9 501\n")
    (tmp_path / "501").mkdir()  # listed, and its group unreadable: it may be a stray
    ours = procs.Leaders()
    for pid in (501, 32_000, 32_767, 300, 500):  # 501 before pids started again, 500 after
        ours.add(pid)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(procs, "leaders", ours)
        assert procs._any_young(tmp_path, 500) is True


def test_a_shell_task_reads_as_the_shell_would_run_it_there(tmp_path: Path) -> None:
    """The dir change in front of a shell task is invisible: the shell's messages name the
    task's own line numbers, and the task runs where chdir() would have put it (a cwd that
    goes up out of a symlinked dir goes up from the dir the link leads to)."""
    target = tmp_path / "real" / "sub"
    target.mkdir(parents=True)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "link").symlink_to(target)
    wd = f"{tmp_path}/x/link/.."
    cmd = "pwd -P; swarm-no-such-command-xyz; echo line2 >&2"
    _, f = run_attempt(make_launch(tmp_path, cmd, cwd=wd))
    direct = subprocess.run(
        [spawn.SHELL, "-c", cmd], cwd=wd, capture_output=True, env=BASE_ENV, check=True
    )
    assert f.outcome is Outcome.OK
    assert f.stdout.read_bytes() == direct.stdout == f"{tmp_path / 'real'}\n".encode()
    assert f.stderr.read_bytes() == direct.stderr


@pytest.mark.parametrize("given", [None, "/given dir"])
def test_a_shell_task_gets_oldpwd_only_from_its_environment(
    tmp_path: Path, given: str | None
) -> None:
    """The dir change in front of a shell task leaves no OLDPWD (the node's own dir) behind."""
    env = {"OLDPWD": given} if given is not None else None
    _, f = run_attempt(make_launch(tmp_path, 'echo "${OLDPWD-unset}"', env=env))
    assert f.outcome is Outcome.OK
    assert f.stdout.read_text() == f"{given or 'unset'}\n"


CANNOT_ENTER = """
import asyncio, sys, uuid
from pathlib import Path
from swarm.core.spec import Resources, TaskSpec
from swarm.daemon.executor import Attempt, Launch
run_dir, locked = Path(sys.argv[1]), sys.argv[2]
(run_dir / "work").mkdir(parents=True)
spec = TaskSpec(cmd="true", argv=None, need=Resources(1.0, 1 << 26), cwd=locked)
launch = Launch(uuid.uuid4().hex, "j", "t", spec, 1, 1, run_dir)
f = asyncio.run(Attempt(launch, {}).finished())
print(f.outcome, f.exit_code, f.reason, sep="\\n")
print(f.stderr.read_text())
"""


def test_a_cwd_the_node_cannot_enter_is_failed_127_with_the_reason(tmp_path: Path) -> None:
    """As under Popen's chdir(): the attempt fails with `Permission denied` in its reason and
    swarm's own line in its stderr, not the shell's `can't cd` and a bare `exit 127`. The node
    runs as root without the capabilities that let root enter any dir (tests run as root)."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o600)  # a dir, but not searchable
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    repo = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(
            [*drop, PY, "-c", CANNOT_ENTER, str(tmp_path / "run" / "r1"), str(locked)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(repo)},
        )
    finally:
        locked.chmod(0o700)
    assert done.returncode == 0, done.stderr
    outcome, code, reason, stderr = done.stdout.split("\n", 3)
    assert (outcome, code) == ("failed", "127")
    assert "Permission denied" in reason and str(locked) in reason
    assert stderr.startswith("swarm: ")


def test_an_attempt_is_not_blamed_for_a_full_disk_by_a_reading_taken_before_space_came_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last attempt ended on a full disk and its files were thrown away, which gave the
    disk its room back; the next one starts at once, prints a line, ends well while another
    fills the disk: it keeps its files (the node waits for space), as it would had it read
    the free space itself, rather than being failed for filling a disk that had no room."""
    disk = {"free": 4096}
    monkeypatch.setattr(executor, "free_bytes", lambda _: disk["free"])
    root = tmp_path / "run"
    _, first = run_attempt(make_launch(tmp_path, "echo x > big.bin; exit 1", run_root=root))
    assert first.discarded  # the disk was full as it ended: its files were thrown away ...
    disk["free"] = 10 << 30  # ... and the disk has room again

    async def another_fills_the_disk(attempt: Attempt) -> None:
        disk["free"] = 4096

    launch = make_launch(tmp_path, "echo hello", run_root=root)
    _, f = run_attempt(launch, another_fills_the_disk)
    assert (f.outcome, f.discarded, f.reason) == (Outcome.OK, False, "")
    assert f.stdout.read_bytes() == b"hello\n"


def test_a_shell_command_as_long_as_a_task_may_give_still_runs(tmp_path: Path) -> None:
    """The spec takes a `cmd` up to the kernel's limit for one argument: what the node puts in
    front of it (the dir change) must not push it over, and fail a task that ran before."""
    cmd = "echo ok; : " + "x" * (ARG_BYTES_MAX - len("echo ok; : "))
    check(TaskSpec(cmd=cmd, argv=None, need=Resources(1.0, 1 << 26, 0)))  # a valid task
    _, f = run_attempt(make_launch(tmp_path, cmd, cwd=str(tmp_path)))
    assert f.outcome is Outcome.OK, f.reason
    assert f.stdout.read_bytes() == b"ok\n"


def test_an_attempt_is_not_blamed_for_a_full_disk_by_a_reading_taken_before_a_run_dir_was_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, with the space given back by the recycling of the last attempt's run dir (a
    scratch file of its own it did not declare): the next start must not take the reading of
    the nearly full disk taken before."""
    disk = {"free": 2 << 20}
    monkeypatch.setattr(executor, "free_bytes", lambda _: disk["free"])
    root = tmp_path / "run"
    pool = RunDirs(root, spare_max=4)
    first = make_launch(tmp_path, "head -c 100000 /dev/zero > scratch.bin", run_root=root)
    _, f = run_attempt(first)
    assert f.outcome is Outcome.OK and not f.discarded  # the disk is nearly full, not full
    asyncio.run(pool.give_back(first.run_dir))  # its scratch file goes ...
    disk["free"] = 10 << 30  # ... and, say, many like it: the disk has room again

    async def another_fills_the_disk(attempt: Attempt) -> None:
        disk["free"] = 4096

    launch = make_launch(tmp_path, "head -c 2000000 /dev/zero", run_root=root)
    _, f = run_attempt(launch, another_fills_the_disk)
    assert (f.outcome, f.discarded, f.reason) == (Outcome.OK, False, "")


# -- strays in another pid namespace, and strays whose first thread exited ----------------------


@pytest.fixture
def old_pid_namespace() -> Iterator[int]:
    """A pid namespace made before the attempt (a container, a sandbox): the pid, as /proc
    shows it, of its init, which is old and none of the node's kin."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs util-linux unshare and nsenter")
    holder = subprocess.Popen(["unshare", "-Urpf", "--kill-child", "sleep", "300"])
    try:
        deadline = time.monotonic() + 5.0
        children = ""
        while not children and time.monotonic() < deadline and holder.poll() is None:
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{holder.pid}/task/{holder.pid}/children").read_text()
            time.sleep(0.01)
        if not children.split():
            pytest.skip("cannot make a user and pid namespace here")
        yield int(children.split()[0])
    finally:
        holder.kill()
        holder.wait(timeout=5)


def test_a_stray_that_entered_an_older_pid_namespace_dies_before_the_slot_is_freed(
    tmp_path: Path, old_pid_namespace: int
) -> None:
    """A task that enters an existing pid namespace (nsenter, firejail --join, lxc-attach) and
    leaves a setsid daemon there: when its parent in that namespace exits, the kernel hands it
    to the namespace's init, an old process outside the node's kin, though it carries the
    attempt's tags. The inline check must not call it another program's."""
    init = old_pid_namespace
    # /proc is the node's: /proc/self/stat gives the stray's pid as the node sees it.
    inner = "read p r < /proc/self/stat; echo $p > s.tmp; mv s.tmp stray.pid; exec sleep 300"
    escape = (
        f"nsenter -t {init} -U -p --preserve-credentials -- "
        f"sh -c {shlex.quote(f'setsid sh -c {shlex.quote(inner)} &')}; "
    )
    launch = make_launch(tmp_path, f"{escape} while [ ! -s stray.pid ]; do sleep 0.01; done")
    stray_pid = launch.run_dir / "work" / "stray.pid"
    seen: list[tuple[bool, int]] = []

    def on_exit() -> None:
        pid = int(stray_pid.read_text())
        fields = proc_stat(pid)
        seen.append((not pid_gone(pid, timeout=2.0), int(fields[1]) if fields else 0))

    async def main() -> Finished:
        return await Attempt(launch, NODE_ENV, on_exit=on_exit).finished()

    try:
        f = asyncio.run(main())
        assert f.outcome is Outcome.OK, f.reason
        assert seen and seen[0][1] in (0, init)  # adopted by the namespace's init, as said
        assert seen[0][0] is False, "the stray in the older pid namespace outlived its attempt"
    finally:
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(int(stray_pid.read_text()), signal.SIGKILL)


def test_a_stray_whose_main_thread_exited_dies_before_the_slot_is_freed(tmp_path: Path) -> None:
    """A stray whose first thread ended (pthread_exit) while another runs: /proc shows its
    leader as a zombie, and its environ can no longer be read (ESRCH), so the tags are not
    seen. `pid_gone` would call it gone: look at its threads instead."""
    code = (
        "import ctypes, os, threading, time; "
        "open('s.tmp', 'w').write(str(os.getpid())); os.rename('s.tmp', 'stray.pid'); "
        "threading.Thread(target=time.sleep, args=(300,)).start(); "
        "ctypes.CDLL(None).pthread_exit(None)"
    )
    escape = f"setsid {shlex.quote(PY)} -c {shlex.quote(code)} &"
    launch = make_launch(
        tmp_path, f"{escape} while [ ! -s stray.pid ]; do sleep 0.01; done; sleep 0.3"
    )
    stray_pid = launch.run_dir / "work" / "stray.pid"
    threads_at_exit: list[int] = []

    def on_exit() -> None:
        pid = int(stray_pid.read_text())

        def live_threads() -> int:
            # Its zombie first thread stays listed until init reaps it: the live ones count.
            live = 0
            for task in glob.glob(f"/proc/{pid}/task/*"):
                with contextlib.suppress(OSError):
                    stat_line = Path(task, "stat").read_text()
                    live += stat_line[stat_line.rindex(")") + 2] not in "ZX"
            return live

        # A SIGKILL sent before now ends every thread within moments; none sent, none ends.
        deadline = time.monotonic() + 5.0
        while (live := live_threads()) and time.monotonic() < deadline:
            time.sleep(0.01)
        threads_at_exit.append(live)

    async def main() -> Finished:
        return await Attempt(launch, NODE_ENV, on_exit=on_exit).finished()

    try:
        f = asyncio.run(main())
        assert f.outcome is Outcome.OK, f.reason
        assert threads_at_exit == [0], "a thread of the stray outlived its attempt"
    finally:
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(int(stray_pid.read_text()), signal.SIGKILL)


# -- a loop in the ancestry, and a whole turn of pids during an attempt -----------------------------


def _look_at(proc: str) -> None:
    procs._any_young(Path(proc), 4000, kin={1, 100}, since_tick=TICK)


def test_an_ancestry_cycle_does_not_hang_the_loop(tmp_path: Path) -> None:
    """Two young processes each the other's parent as read (pids handed out again between the
    reads): the walk up their ancestors, which remembers what it read, stops after
    ANCESTRY_STEPS_MAX steps (saying maybe) instead of going round for ever on the loop."""
    (tmp_path / "loadavg").write_text("0 0 0 1/9 5000\n")
    _fake_stat(tmp_path, 4500, 4400, 4500, TICK)
    _fake_stat(tmp_path, 4400, 4500, 4400, TICK)
    check = multiprocessing.get_context("fork").Process(target=_look_at, args=(str(tmp_path),))
    check.start()
    check.join(5.0)
    hung = check.is_alive()
    if hung:
        check.kill()
        check.join()
    assert not hung, "the ancestry walk loops for ever on a cycle"


_IN_NAMESPACE = r"""
import asyncio, os, sys, tempfile, time
from pathlib import Path
sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], "tests")]
from test_executor import NODE_ENV, make_launch, pid_gone
from swarm.daemon.executor import Attempt

with open("/proc/sys/kernel/pid_max", "w") as f:
    f.write("1000")  # this namespace's own (Linux 6.14+): pids wrap from 999 to 300
while int(open("/proc/loadavg").read().split()[-1]) < 700:
    os.waitpid(os.spawnv(os.P_NOWAIT, "/bin/true", ["true"]), 0)
# The attempt's leader ($$) gets a pid near 700. It burns pids until they start again from
# the bottom, leaves a setsid daemon there (its pid below the leader's), then burns pids until
# the last one handed out is above the leader's again: one full turn of the pids.
cmd = (
    "L=$$; "
    "while :; do /bin/true & p=$!; wait $p; [ $p -lt $L ] && break; done; "
    "setsid sleep 300 & echo $! > stray.pid; "
    "while :; do /bin/true & p=$!; wait $p; [ $p -gt $L ] && break; done"
)
tmp = Path(tempfile.mkdtemp())
launch = make_launch(tmp, cmd)

async def main():
    attempt = Attempt(launch, NODE_ENV)
    f = await attempt.finished()
    return attempt.proc.pid, f

leader, f = asyncio.run(main())
stray = int((launch.run_dir / "work" / "stray.pid").read_text())
gone = pid_gone(stray, timeout=2.0)
print(f"leader {leader} stray {stray} outcome {f.outcome} stray gone {gone}", flush=True)
sys.exit(0 if gone else 3)
"""


def test_a_stray_forked_after_the_pids_turned_over_dies_before_the_slot_is_freed() -> None:
    """An attempt that runs while the machine hands out a whole turn of pids (pid_max 32768 on
    many machines: a long task on a busy build host) leaves a setsid daemon whose pid is below
    its leader's, and ends once the last pid is above the leader's again: by pid, the daemon
    looks older than the attempt. The machine's forks since the attempt began say a turn may
    have happened, and the scan reads every process. Shown in a pid namespace of its own whose
    pid_max is 1,000 (per namespace since Linux 6.14), run as root."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and util-linux unshare")
    root = str(Path(__file__).resolve().parent.parent)
    run = subprocess.run(
        ["unshare", "-pf", "--mount-proc", sys.executable, "-c", _IN_NAMESPACE, root],
        capture_output=True,
        text=True,
        timeout=50,
    )
    if "Permission denied" in run.stderr or "Invalid argument" in run.stderr:
        pytest.skip(f"cannot set a pid namespace's pid_max here: {run.stderr[-300:]}")
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
