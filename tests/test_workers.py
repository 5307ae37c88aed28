"""Tests of swarm.daemon.workers and swarm.daemon.pyworker with real worker processes: values and
exceptions as the value file holds them, per-call stdout and stderr, functions by value and by
reference, reuse and recycling of workers, a worker killed mid-call, stopping a call, calls that
cannot be loaded here, the environment and what a call leaves behind.

Each test drives one `WorkerPool` in `asyncio.run(...)` (`run_pool`), bounded in time, and
closes it in a `finally`, which ends every worker. Every wait on a process is a poll with a bound.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import os
import platform
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from swarm import pycall
from swarm.core.ledger import Outcome
from swarm.core.spec import PyCall, Resources, TaskSpec
from swarm.daemon import procs, pyworker
from swarm.daemon.executor import Finished, Launch
from swarm.daemon.memory import MemorySampler
from swarm.daemon.procs import NODE_TAG, kill_orphans
from swarm.daemon.rundirs import RunDirs
from swarm.daemon.workers import CallBlobs, PyAttempt, WorkerPool, worker_env

TEST_S = 60.0  # the longest one test's pool may run
WAIT_S = 10.0  # the longest a poll waits for a process or a file

# ------------------------------------------------------------------------------------------------
# helpers


class Harness:
    """A pool, a blob dir and run dirs; `start` makes a call's blobs and launch and starts it."""

    def __init__(self, tmp_path: Path, **pool_kwargs: Any) -> None:
        self.node_id = uuid.uuid4().hex + uuid.uuid4().hex
        self.base_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            NODE_TAG: self.node_id,
        }
        self.pool = WorkerPool(self.base_env, self.node_id, **pool_kwargs)
        self.blob_dir = tmp_path / "blobs"
        self.blob_dir.mkdir()
        self.run_dirs = RunDirs(tmp_path / "run", spare_max=0)

    def blob(self, data: bytes) -> tuple[str, Path]:
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_dir / digest
        path.write_bytes(data)
        return digest, path

    def start(
        self,
        fn: Any,
        *args: Any,
        fn_bytes: bytes | None = None,
        args_bytes: bytes | None = None,
        inline: bool = False,
        python: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        gpu_ids: tuple[int, ...] = (),
        prepare: Callable[[], Awaitable[CallBlobs | str]] | None = None,
        **kwargs: Any,
    ) -> PyAttempt:
        fn_digest, fn_path = self.blob(fn_bytes if fn_bytes is not None else by_value(fn))
        args_data = args_bytes or pycall.dumps_args(args, kwargs)
        args_digest, args_path = self.blob(args_data)
        encoded = base64.b64encode(args_data).decode("ascii") if inline else ""
        call = PyCall(
            fn_digest,
            "" if inline else args_digest,
            "tests.fn",
            python or pycall.python_version(),
            encoded,
        )
        spec = TaskSpec(
            cmd=None,
            argv=None,
            need=Resources(1.0, 64 << 20, len(gpu_ids)),
            env=tuple(sorted((env or {}).items())),
            cwd=cwd,
            call=call,
        )
        launch = Launch(
            task_id=uuid.uuid4().hex,
            job="job-1",
            name="a call",
            spec=spec,
            epoch=7,
            attempt=1,
            run_dir=self.run_dirs.take(),
            gpu_ids=gpu_ids,
        )

        async def held() -> CallBlobs | str:
            return CallBlobs(fn_path, None if inline else args_path)

        return self.pool.attempt(launch, prepare or held)

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Finished:
        return await self.start(fn, *args, **kwargs).finished()


def by_value(fn: Any) -> bytes:
    """The function's bytes with this module's functions taken by value, as a script's are (a
    worker need not import the tests to run them)."""
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        return pycall.dumps_call(fn)
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def run_pool(
    tmp_path: Path, body: Callable[[Harness], Awaitable[None]], **pool_kwargs: Any
) -> Harness:
    """Run `body` with a fresh pool, at most TEST_S; the pool is closed whatever happens."""
    h = Harness(tmp_path, **pool_kwargs)

    async def main() -> None:
        try:
            await asyncio.wait_for(body(h), TEST_S)
        finally:
            await asyncio.wait_for(h.pool.close(), TEST_S)

    asyncio.run(main())
    return h


def outcome_of(finished: Finished) -> tuple[bool, Any]:
    """The call's outcome: in the reply when small and it printed nothing, else its file."""
    if finished.inline_value:
        assert pycall.VALUE_FILE not in finished.outputs
        return pycall.read_outcome(finished.inline_value)
    return pycall.read_outcome(finished.outputs[pycall.VALUE_FILE].read_bytes())


def value_of(finished: Finished) -> Any:
    assert finished.outcome is Outcome.OK, finished.reason
    ok, value = outcome_of(finished)
    assert ok
    return value


def raised_of(finished: Finished) -> pycall.Raised:
    ok, raised = outcome_of(finished)
    assert not ok
    assert isinstance(raised, pycall.Raised)
    return raised


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts as gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.01)


def file_has(path: Path, text: bytes) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return text in path.read_bytes()
        except OSError:
            return False

    return check


@pytest.fixture
def pids_to_kill() -> Iterator[list[int]]:
    """Pids a test learned of; SIGKILLed at its end if a failure left them running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# The calls the tests make: module functions, pickled by value (see `by_value`).


def double(x: int) -> int:
    return x * 2


def fail(text: str) -> None:
    raise ValueError(text)


def chatty(word: str) -> str:
    print(f"out {word}")
    print(f"err {word}", file=sys.stderr)
    subprocess.run(["sh", "-c", f"echo sh-out {word}; echo sh-err {word} >&2"], check=True)
    return word


def getpid() -> int:
    return os.getpid()


def sleep_after_saying(word: str, seconds: float) -> None:
    print(word, flush=True)
    time.sleep(seconds)


def ignore_sigterm_and_sleep(seconds: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ignoring", flush=True)
    time.sleep(seconds)


def hog(mib: int) -> int:
    """Keep `mib` MiB resident in the worker after the call."""
    block = bytearray(mib << 20)
    block[::4096] = b"x" * len(block[::4096])
    sys.modules["builtins"].__dict__.setdefault("_swarm_test_hog", []).append(block)
    return os.getpid()


def environment(leak: str) -> dict[str, str | None]:
    seen = {k: os.environ.get(k) for k in ("SWARM_TASK_ID", "SPEC_VAR", "LEAK", NODE_TAG)}
    os.environ["LEAK"] = leak  # a call's change must not reach the next call
    shell = subprocess.run(
        ["sh", "-c", "echo $SWARM_TASK_ID"], capture_output=True, text=True, check=True
    )
    seen["subprocess SWARM_TASK_ID"] = shell.stdout.strip()
    seen["cwd"] = os.getcwd()
    return seen


def leave_children() -> tuple[int, int]:
    """A child left in the worker's group, and one that left it (setsid)."""
    in_group = subprocess.Popen(["sleep", "60"])
    outside = subprocess.Popen(["sleep", "60"], start_new_session=True)
    return in_group.pid, outside.pid


def exit_with(code: int) -> None:
    sys.exit(code)


def unpicklable_value() -> Any:
    import threading

    return threading.Lock()


def devices() -> tuple[int, str | None]:
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def leave_a_thread_running() -> int:
    import threading

    threading.Thread(target=time.sleep, args=(3600,)).start()  # not a daemon thread
    return os.getpid()


def hold_memory(mib: int, seconds: float) -> None:
    block = bytearray(mib << 20)
    block[::4096] = b"x" * len(block[::4096])
    print("holding", flush=True)
    time.sleep(seconds)


def checkpoint_when_stopped(path: str) -> None:
    def save(signum: int, frame: object) -> None:
        time.sleep(0.3)
        Path(path).write_text("saved")
        raise SystemExit("stopped")

    signal.signal(signal.SIGTERM, save)
    print("started", flush=True)
    time.sleep(30)


def set_a_sigterm_handler() -> tuple[int, bool]:
    before = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    signal.signal(signal.SIGTERM, lambda *_: None)
    return os.getpid(), before


def sleep_with_child(seconds: float) -> None:
    subprocess.Popen(["sleep", "60"])
    print("started", flush=True)
    time.sleep(seconds)


# ------------------------------------------------------------------------------------------------
# values and exceptions


def test_a_call_returns_its_value_in_the_value_file(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        finished = await h.run(double, "x" * 5000)  # too big to come in the reply
        assert (finished.outcome, finished.exit_code, finished.reason) == (Outcome.OK, 0, "")
        assert value_of(finished) == "x" * 10000
        assert finished.outputs_movable and not finished.inline_value
        assert finished.outputs[pycall.VALUE_FILE].parent == finished.stdout.parent
        assert finished.max_rss_kb > 1024  # a Python process's peak, from the worker

    run_pool(tmp_path, body)


def test_a_small_outcome_of_a_silent_call_comes_in_the_reply_with_no_file(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        quiet = await h.run(double, 21)
        assert value_of(quiet) == 42 and quiet.inline_value and quiet.outputs == {}
        assert not (quiet.stdout.parent / pycall.VALUE_FILE).exists()
        talkative = await h.run(chatty, "hi")  # it printed: its outcome goes with its files
        assert not talkative.inline_value and pycall.VALUE_FILE in talkative.outputs

    run_pool(tmp_path, body)


def test_small_arguments_travel_inline_in_the_spec(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        assert value_of(await h.run(double, 8, inline=True)) == 16
        missing = b"cswarm_no_such_module\nfit\n."
        finished = await h.run(getpid, args_bytes=missing, inline=True)
        assert finished.outcome is Outcome.FAILED
        assert "No module named 'swarm_no_such_module'" in finished.reason

    run_pool(tmp_path, body)


def test_a_call_that_raises_fails_with_its_exception_kept(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        finished = await h.run(fail, "no good")
        assert (finished.outcome, finished.exit_code) == (Outcome.FAILED, 1)
        assert finished.reason == "ValueError: no good"
        raised = raised_of(finished)
        exc = raised.exception()
        assert isinstance(exc, ValueError) and str(exc) == "no good"
        assert "in fail" in raised.traceback and "raise ValueError(text)" in raised.traceback
        assert "pyworker" not in raised.traceback  # the call's frames, not the worker's

    run_pool(tmp_path, body)


def test_system_exit_is_the_calls_outcome_and_the_worker_lives_on(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        first = await h.run(getpid)
        finished = await h.run(exit_with, 3)
        assert (finished.outcome, finished.reason) == (Outcome.FAILED, "SystemExit: 3")
        assert isinstance(raised_of(finished).exception(), SystemExit)
        assert value_of(await h.run(getpid)) == value_of(first)

    run_pool(tmp_path, body)


def test_a_value_that_will_not_pickle_fails_the_call(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        finished = await h.run(unpicklable_value)
        assert finished.outcome is Outcome.FAILED
        assert finished.reason.startswith("TypeError: cannot pickle")
        assert isinstance(raised_of(finished).exception(), TypeError)

    run_pool(tmp_path, body)


def test_each_calls_output_goes_to_its_own_files(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        first = await h.run(chatty, "one")
        second = await h.run(chatty, "two")
        assert first.stdout != second.stdout
        for finished, word in ((first, "one"), (second, "two")):
            # Python's own stdout is block-buffered into a file, as a script's is: flushed last.
            out = sorted(finished.stdout.read_text().splitlines())
            assert out == [f"out {word}", f"sh-out {word}"]
            err = sorted(finished.stderr.read_text().splitlines())
            assert err == [f"err {word}", f"sh-err {word}"]

    run_pool(tmp_path, body)


def test_a_lambda_and_a_closure_travel_by_value(tmp_path: Path) -> None:
    offset = 100

    def add_offset(x: int) -> tuple[int, bool]:
        return x + offset, __name__ in sys.modules  # this module was not imported there

    async def body(h: Harness) -> None:
        lam = await h.run(None, 5, fn_bytes=pycall.dumps_call(lambda x: x * 3))
        assert value_of(lam) == 15
        closure = await h.run(None, 1, fn_bytes=pycall.dumps_call(add_offset))
        assert value_of(closure) == (101, False)

    run_pool(tmp_path, body)


def test_a_module_function_is_imported_by_reference_from_the_nodes_sys_path(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        # By reference: the worker imports this test module, found on the daemon's sys.path.
        finished = await h.run(None, 4, fn_bytes=pycall.dumps_call(double))
        assert value_of(finished) == 8

    run_pool(tmp_path, body)


def test_a_call_runs_in_its_scratch_dir_or_its_cwd(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        scratch = await h.run(os.getcwd, fn_bytes=pycall.dumps_call(os.getcwd))
        assert value_of(scratch) == str(scratch.stdout.parent / "work")
        own = tmp_path / "own"
        own.mkdir()
        finished = await h.run(None, cwd=str(own), fn_bytes=pycall.dumps_call(os.getcwd))
        assert value_of(finished) == str(own)
        missing = await h.run(
            None, cwd=str(tmp_path / "nope"), fn_bytes=pycall.dumps_call(os.getcwd)
        )
        assert missing.outcome is Outcome.FAILED
        assert f"cannot run the call in {tmp_path / 'nope'}" in missing.reason
        assert value_of(await h.run(getpid)) == value_of(await h.run(getpid))  # worker kept

    run_pool(tmp_path, body)


# ------------------------------------------------------------------------------------------------
# reuse and recycling


def test_a_worker_is_reused_and_recycled_after_max_calls(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        pids = [value_of(await h.run(getpid)) for _ in range(5)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
        await wait_until(lambda: gone(pids[0]) and gone(pids[2]), "recycled workers exit")
        assert h.pool.idle_pids == [pids[4]]

    run_pool(tmp_path, body, max_calls=2)


def test_a_worker_over_its_memory_bound_is_recycled(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        small = value_of(await h.run(getpid))
        assert value_of(await h.run(getpid)) == small  # under the bound: kept
        hogged = await h.run(hog, 160)
        assert value_of(hogged) == small
        assert hogged.max_rss_kb > 150 * 1024
        after = value_of(await h.run(getpid))
        assert after != small
        await wait_until(lambda: gone(small), "the worker over its bound exits")
        # The peak is the call's, not the worker's lifetime's.
        assert (await h.run(getpid)).max_rss_kb < 150 * 1024

    run_pool(tmp_path, body, max_rss_bytes=100 << 20)


def test_a_worker_runs_only_calls_that_see_the_same_gpus(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        pid0, seen0 = value_of(await h.run(devices, gpu_ids=(0,)))
        pid1, seen1 = value_of(await h.run(devices, gpu_ids=(1,)))
        pid_none, seen_none = value_of(await h.run(devices))  # no GPU asked: all visible
        assert (seen0, seen1, seen_none) == ("0", "1", None)
        assert len({pid0, pid1, pid_none}) == 3
        assert value_of(await h.run(devices, gpu_ids=(0,))) == (pid0, "0")
        assert value_of(await h.run(devices, gpu_ids=(1,))) == (pid1, "1")

    run_pool(tmp_path, body, idle_max=4)


def test_a_worker_whose_call_left_a_thread_running_still_exits(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        pid = value_of(await h.run(leave_a_thread_running))
        assert value_of(await h.run(getpid)) != pid  # recycled after max_calls=1
        await wait_until(lambda: gone(pid), "the worker exits despite the thread")

    run_pool(tmp_path, body, max_calls=1)


def test_at_most_idle_max_workers_stay_idle(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        attempts = [h.start(sleep_after_saying, str(i), 0.5) for i in range(3)]
        await wait_until(lambda: all(a.pid is not None for a in attempts), "three workers")
        pids = {a.pid for a in attempts}
        assert len(pids) == 3
        for attempt in attempts:
            assert (await attempt.finished()).outcome is Outcome.OK
        assert len(h.pool.idle_pids) == 1
        retired = [pid for pid in pids if pid not in h.pool.idle_pids and pid is not None]
        await wait_until(lambda: all(gone(pid) for pid in retired), "extra workers exit")

    run_pool(tmp_path, body, idle_max=1)


def test_the_memory_sampler_sizes_a_calls_worker_while_it_runs(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        attempt = h.start(hold_memory, 120, 30.0)
        await wait_until(file_has(attempt.stdout, b"holding"), "the call holds its memory")
        pid = attempt.pid
        assert pid is not None
        sample = await MemorySampler(available=False).sample({pid})
        assert sample.group_rss_kb[pid] > 110 * 1024
        attempt.evict("memory is short", grace_s=0.0)
        finished = await attempt.finished()
        assert (finished.outcome, finished.evicted) == (Outcome.INTERRUPTED, True)
        assert attempt.pid is None  # no longer sampled

    run_pool(tmp_path, body)


def test_close_ends_idle_workers_and_interrupts_running_calls(tmp_path: Path) -> None:
    seen: list[int] = []

    async def body(h: Harness) -> None:
        idle = value_of(await h.run(getpid))
        running = h.start(sleep_after_saying, "busy", 30.0)
        await wait_until(file_has(running.stdout, b"busy"), "the call started")
        assert running.pid is not None
        seen.extend([idle, running.pid])
        await h.pool.close()
        finished = await running.finished()
        assert (finished.outcome, finished.reason) == (Outcome.INTERRUPTED, "the node is stopping")

    run_pool(tmp_path, body)
    assert all(gone(pid) for pid in seen)


# ------------------------------------------------------------------------------------------------
# crashes and stops


def test_a_worker_killed_mid_call_interrupts_it_and_is_replaced(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        attempt = h.start(sleep_after_saying, "started", 30.0)
        await wait_until(file_has(attempt.stdout, b"started"), "the call started")
        pid = attempt.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        finished = await attempt.finished()
        assert finished.outcome is Outcome.INTERRUPTED
        assert finished.reason == "its worker died (SIGKILL)"
        assert pycall.VALUE_FILE not in finished.outputs
        assert value_of(await h.run(getpid)) != pid

    run_pool(tmp_path, body)


def test_a_segfault_interrupts_the_call_and_its_traceback_is_in_its_stderr(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        finished = await h.run(segfault)
        assert (finished.outcome, finished.reason) == (
            Outcome.INTERRUPTED,
            "its worker died (SIGSEGV)",
        )
        stderr = finished.stderr.read_text()
        assert "Segmentation fault" in stderr and "in segfault" in stderr
        assert value_of(await h.run(double, 1)) == 2

    run_pool(tmp_path, body)


def test_an_idle_worker_that_died_is_replaced_before_a_call(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        pid = value_of(await h.run(getpid))
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: gone(pid), "the idle worker is dead")
        finished = await h.run(getpid)
        assert value_of(finished) != pid

    run_pool(tmp_path, body)


def test_os_exit_in_a_call_ends_its_worker(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        finished = await h.run(None, 5, fn_bytes=pycall.dumps_call(os._exit))
        assert (finished.outcome, finished.reason) == (
            Outcome.INTERRUPTED,
            "its worker died (exit 5)",
        )

    run_pool(tmp_path, body)


def test_stop_ends_a_sleeping_call_with_the_stops_outcome(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        attempt = h.start(sleep_after_saying, "started", 30.0)
        await wait_until(file_has(attempt.stdout, b"started"), "the call started")
        pid = attempt.pid
        assert pid is not None
        attempt.stop(Outcome.TIMEOUT, "timed out after 1s", grace_s=5.0)
        finished = await attempt.finished()
        assert (finished.outcome, finished.reason) == (Outcome.TIMEOUT, "timed out after 1s")
        assert finished.wall_s < 30.0
        assert gone(pid)  # a stopped call's worker is not reused
        assert value_of(await h.run(getpid)) != pid

    run_pool(tmp_path, body)


def test_a_call_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        attempt = h.start(ignore_sigterm_and_sleep, 30.0)
        await wait_until(file_has(attempt.stdout, b"ignoring"), "the call started")
        attempt.evict("memory is short", grace_s=0.2)
        finished = await attempt.finished()
        assert (finished.outcome, finished.reason) == (Outcome.INTERRUPTED, "memory is short")
        assert finished.evicted

    run_pool(tmp_path, body)


SPIN_THEN_SAY = """
import sys, time
started = time.process_time()
while time.process_time() - started < 0.3:
    pass
open(sys.argv[1], "w").close()
while True:
    pass
"""


def leave_a_busy_child(flag: str) -> int:
    """Start a child that spins on the CPU, and return once it has spun 0.3 s of it (it says so
    by making `flag`), leaving it spinning."""
    child = subprocess.Popen([sys.executable, "-c", SPIN_THEN_SAY, flag])
    deadline = time.monotonic() + 30
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    return child.pid


def test_the_cpu_of_a_child_a_call_left_counts_for_that_call_not_the_next(
    tmp_path: Path,
) -> None:
    """The worker kills what a call left and waits for it to die before it answers: the CPU
    time of that leftover (a spinning child) is the call's, never the next call's on the same
    worker."""

    async def body(h: Harness) -> None:
        for i in range(3):
            flag = tmp_path / f"spun{i}"
            first = await h.run(leave_a_busy_child, str(flag))
            assert first.outcome is Outcome.OK and flag.exists()
            assert gone(value_of(first))
            second = await h.run(double, 1)
            assert first.cpu_s >= 0.3, (first.cpu_s, second.cpu_s)
            assert second.cpu_s < 0.15, (first.cpu_s, second.cpu_s)

    run_pool(tmp_path, body)


def test_a_killed_leftover_is_waited_for_past_descriptor_1024() -> None:
    """The worker waits for a leftover it killed to die however many descriptors it holds (a
    call's pool of connections, say): its pidfd may be numbered past 1024."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip("this machine allows a process fewer than 2,048 descriptors")
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    held: list[int] = []
    child = subprocess.Popen(["sleep", "100"])
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        child.kill()
        pyworker._await_dying_children([child.pid], 5.0)
        # Dead and not reaped: the worker's reap that follows gets its CPU time.
        assert os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    finally:
        for fd in held:
            os.close(fd)
        child.kill()
        child.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_call_whose_task_is_cancelled_leaves_no_read_of_its_worker_behind(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        attempt = h.start(sleep_after_saying, "started", 30.0)
        await wait_until(file_has(attempt.stdout, b"started"), "the call started")
        pid = attempt.pid
        assert pid is not None
        attempt.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await attempt.task
        await asyncio.sleep(0)  # the cancelled reads run their last step
        reads = [t for t in asyncio.all_tasks() if "read_frame_body" in repr(t.get_coro())]
        assert reads == []
        os.kill(pid, signal.SIGKILL)  # the worker no attempt will end (the pool's close won't)
        await wait_until(lambda: gone(pid), "the worker is dead")
        for worker in list(h.pool._workers):
            if worker.pid == pid:
                await worker.ended()
                h.pool._workers.discard(worker)

    run_pool(tmp_path, body)


def test_a_workers_group_is_killed_before_the_worker_is_reaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until its reap, an exited worker's zombie keeps its pid, and so its group's number, from
    being handed out again: a SIGKILL to the group then reaches that group and no other. Every
    SIGKILL the pool sends a worker's group (one that died mid-call, one stopped, one retired
    at the pool's close) finds the worker not yet reaped, and the stopped call's armed SIGKILL
    does not fire after its grace, once the worker is gone."""
    kills: list[tuple[int, bool]] = []
    real_kill_group = procs.kill_group

    def spy(pgid: int, sig: signal.Signals) -> None:
        if sig == signal.SIGKILL:
            try:  # not reaping it
                os.waitid(os.P_PID, pgid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                reaped = False
            except ChildProcessError:  # reaped already: that pid may name any group now
                reaped = True
            kills.append((pgid, reaped))
        real_kill_group(pgid, sig)

    monkeypatch.setattr("swarm.daemon.workers.kill_group", spy)

    async def body(h: Harness) -> None:
        died = await h.run(None, 5, fn_bytes=pycall.dumps_call(os._exit))
        assert died.reason == "its worker died (exit 5)"
        attempt = h.start(sleep_after_saying, "started", 30.0)
        await wait_until(file_has(attempt.stdout, b"started"), "the call started")
        attempt.stop(Outcome.TIMEOUT, "timed out after 1s", grace_s=0.3)
        finished = await attempt.finished()
        assert finished.outcome is Outcome.TIMEOUT
        await asyncio.sleep(0.6)  # past the grace: a SIGKILL still armed would fire now
        assert value_of(await h.run(double, 1)) == 2  # its worker is idle until the close

    run_pool(tmp_path, body)
    assert len({pgid for pgid, _ in kills}) == 3, kills  # the three workers, each killed
    assert [reaped for _, reaped in kills] == [False] * len(kills), kills


def test_a_call_ends_well_when_no_pidfd_can_watch_its_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of descriptors, a worker's exit is polled for: its call still returns its value,
    and is not taken for a dead worker's."""

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)

    async def body(h: Harness) -> None:
        finished = await h.run(sleep_after_saying, "started", 0.3)
        assert (finished.outcome, finished.reason) == (Outcome.OK, "")
        attempt = h.start(sleep_after_saying, "started", 30.0)
        await wait_until(file_has(attempt.stdout, b"started"), "the call started")
        pid = attempt.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # its death is still seen, by the polls
        finished = await attempt.finished()
        assert finished.reason == "its worker died (SIGKILL)"

    run_pool(tmp_path, body)


def test_a_stopped_call_with_its_own_sigterm_handler_may_write_a_checkpoint(
    tmp_path: Path,
) -> None:
    saved = tmp_path / "saved"

    async def body(h: Harness) -> None:
        attempt = h.start(checkpoint_when_stopped, str(saved))
        await wait_until(file_has(attempt.stdout, b"started"), "the call started")
        stopped_at = time.monotonic()
        attempt.stop(Outcome.INTERRUPTED, "cancelled", grace_s=30.0)
        finished = await attempt.finished()
        assert (finished.outcome, finished.reason) == (Outcome.INTERRUPTED, "cancelled")
        # The handler had its 0.3 s; the call ended as it did, not at the grace's end.
        assert 0.3 <= time.monotonic() - stopped_at < 20
        assert saved.read_text() == "saved"

    run_pool(tmp_path, body)


def test_a_sigterm_handler_a_call_set_is_gone_for_the_next_call(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        first = await h.run(set_a_sigterm_handler)
        second = await h.run(set_a_sigterm_handler)
        assert first.outcome is Outcome.OK and second.outcome is Outcome.OK
        (pid, default_first), (same_pid, default_then) = value_of(first), value_of(second)
        assert pid == same_pid  # one worker ran both
        assert default_first and default_then

    run_pool(tmp_path, body)


def ignore_sigchld_and_block_sigusr1() -> int:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    return os.getpid()


def a_childs_exit_code_and_the_blocked_signals() -> tuple[int, int, list[int]]:
    code = subprocess.run(["false"]).returncode
    return os.getpid(), code, sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))


def test_signal_handlers_and_mask_a_call_set_are_gone_for_the_next_call(tmp_path: Path) -> None:
    """SIGCHLD ignored by one call would make the exit code of every later call's child 0 (the
    kernel reaps them): the worker puts its own handlers and signal mask back after each."""

    async def body(h: Harness) -> None:
        worker = value_of(await h.run(ignore_sigchld_and_block_sigusr1))
        assert value_of(await h.run(a_childs_exit_code_and_the_blocked_signals)) == (worker, 1, [])

    run_pool(tmp_path, body)


def test_stop_while_preparing_uses_no_worker(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        never = asyncio.Event()

        async def stuck() -> CallBlobs | str:
            await never.wait()
            raise AssertionError("unreachable")

        attempt = h.start(getpid, prepare=stuck)
        await asyncio.sleep(0)
        attempt.stop(Outcome.FAILED, "cancelled", 0.0)
        finished = await attempt.finished()
        assert (finished.outcome, finished.reason) == (Outcome.FAILED, "cancelled")
        assert finished.exit_code is None
        assert h.pool.idle_pids == [] and attempt.pid is None

    run_pool(tmp_path, body)


def test_blobs_that_cannot_be_made_interrupt_the_call(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async def unavailable() -> CallBlobs | str:
            return "no live node holds blob 1234abcd"

        finished = await h.start(getpid, prepare=unavailable).finished()
        assert (finished.outcome, finished.reason) == (
            Outcome.INTERRUPTED,
            "no live node holds blob 1234abcd",
        )
        assert finished.outputs == {} and h.pool.idle_pids == []

    run_pool(tmp_path, body)


# ------------------------------------------------------------------------------------------------
# calls this node cannot load


def test_a_call_pickled_by_another_python_names_the_node_and_this_python(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        finished = await h.run(getpid, python="3.99")
        node = h.node_id[:8]
        text = (
            f"node {node} (Python {platform.python_version()}) cannot load the call: "
            "it was pickled by Python 3.99"
        )
        assert (finished.outcome, finished.reason) == (Outcome.FAILED, f"RuntimeError: {text}")
        exc = raised_of(finished).exception()
        assert isinstance(exc, RuntimeError) and str(exc) == text

    run_pool(tmp_path, body)


def test_a_missing_module_names_the_node_this_python_and_the_module(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        missing = b"cswarm_no_such_module\nfit\n."  # a pickle of swarm_no_such_module.fit
        finished = await h.run(None, fn_bytes=missing)
        text = (
            f"node {h.node_id[:8]} (Python {platform.python_version()}) cannot load the call: "
            "No module named 'swarm_no_such_module'"
        )
        assert (finished.outcome, finished.reason) == (
            Outcome.FAILED,
            f"ModuleNotFoundError: {text}",
        )
        exc = raised_of(finished).exception()
        assert isinstance(exc, ModuleNotFoundError)
        assert (str(exc), exc.name) == (text, "swarm_no_such_module")
        # Arguments that need it: the same error.
        args = await h.run(getpid, args_bytes=missing)
        assert (args.outcome, args.reason) == (Outcome.FAILED, f"ModuleNotFoundError: {text}")

    run_pool(tmp_path, body)


# ------------------------------------------------------------------------------------------------
# environment and leftovers


def test_a_call_sees_its_attempts_environment_and_the_next_does_not(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        first = h.start(environment, "first", env={"SPEC_VAR": "from the spec"})
        seen = value_of(await first.finished())
        assert seen["SWARM_TASK_ID"] == first.launch.task_id
        assert seen["subprocess SWARM_TASK_ID"] == first.launch.task_id
        assert (seen["SPEC_VAR"], seen["LEAK"], seen[NODE_TAG]) == (
            "from the spec",
            None,
            h.node_id,
        )
        second = h.start(environment, "second")
        seen = value_of(await second.finished())
        assert seen["SWARM_TASK_ID"] == second.launch.task_id
        assert (seen["SPEC_VAR"], seen["LEAK"]) == (None, None)
        assert seen["cwd"] == str(second.launch.run_dir / "work")

    run_pool(tmp_path, body)


def test_processes_a_call_leaves_behind_are_killed(tmp_path: Path, pids_to_kill: list[int]) -> None:
    async def body(h: Harness) -> None:
        in_group, outside = value_of(await h.run(leave_children))
        pids_to_kill.extend([in_group, outside])
        await wait_until(lambda: gone(in_group), "the child left in the worker's group is killed")
        await wait_until(lambda: gone(outside), "the child that left the group is killed")

    run_pool(tmp_path, body)


def test_the_worker_imports_little() -> None:
    # Its start-up is on the path of every worker's first call: no event loop, no daemon, no
    # rich or cryptography (swarm/__init__.py must not import them eagerly either).
    heavy = ("asyncio", "rich", "cryptography", "aiosqlite", "swarm.daemon.node", "swarm.cli.api")
    code = (
        "import sys, swarm.daemon.pyworker, cloudpickle; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=WAIT_S
    )
    assert (done.returncode, done.stdout.strip()) == (0, "")


def test_worker_env_names_no_attempt_and_finds_swarm() -> None:
    env = worker_env({"PATH": "/bin", "SWARM_TASK_ID": "t", "SWARM_EPOCH": "3", "PYTHONPATH": "/x"})
    assert "SWARM_TASK_ID" not in env and "SWARM_EPOCH" not in env
    assert env["SWARM_WORKER"] == "1"
    root = str(Path(__file__).resolve().parent.parent)
    assert env["PYTHONPATH"].split(os.pathsep) == [root, "/x"]


def test_kill_orphans_kills_an_idle_worker_without_recording_an_attempt(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        pid = value_of(await h.run(getpid))
        killed = await asyncio.to_thread(kill_orphans, tmp_path / "no-runs", h.node_id)
        assert killed == []
        await wait_until(lambda: gone(pid), "the idle worker is killed")

    run_pool(tmp_path, body)


def test_kill_orphans_records_a_worker_mid_call_as_its_attempt(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        attempt = h.start(sleep_with_child, 30.0)
        await wait_until(file_has(attempt.stdout, b"started"), "the call started")
        killed = await asyncio.to_thread(kill_orphans, tmp_path / "no-runs", h.node_id)
        assert killed == [(attempt.launch.task_id, attempt.launch.epoch)]
        finished = await attempt.finished()
        assert (finished.outcome, finished.reason) == (
            Outcome.INTERRUPTED,
            "its worker died (SIGKILL)",
        )

    run_pool(tmp_path, body)


# -- a call's fork that left the worker's group and never exec'd ---------------------------------


def fork_into_a_session_of_its_own() -> int:
    """What a library that daemonizes does, in one fork: the child never execs, so /proc shows
    the environment the worker started with, which names no attempt."""
    pid = os.fork()
    if pid == 0:
        os.setsid()
        time.sleep(60)
        os._exit(0)
    return pid


def test_a_call_stray_that_never_execs_dies_before_the_slot_is_freed(
    tmp_path: Path, pids_to_kill: list[int]
) -> None:
    async def body(h: Harness) -> None:
        stray = value_of(await h.run(fork_into_a_session_of_its_own))
        pids_to_kill.append(stray)
        await wait_until(lambda: gone(stray), "the forked child that left the group is killed", 2.0)

    run_pool(tmp_path, body)
