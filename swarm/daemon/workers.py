"""Warm Python workers: the pool that keeps them, and the attempt of a Python call run by one.

Theory of operation
-------------------
A task whose spec is a Python call (`spec.call`) runs in a warm worker (pyworker.py), not in an
interpreter of its own: starting one, and importing what the call imports, costs far more than
most calls. `WorkerPool` spawns workers lazily, each the leader of its own session and process
group, and keeps at most `idle_max` of them idle between calls; `close()` ends them all.

`pool.attempt(launch, prepare)` starts one call, on a task of its own, and returns its
`PyAttempt`, which looks to the runner and the node like the `executor.Attempt` of a command
(`executor.AnyAttempt` is what both offer). The attempt first awaits `prepare()`, which makes
the call's input blobs held here (its `CallBlobs`) or says why they cannot be (the attempt then
ends `interrupted`, no worker used); then it takes an idle worker or spawns one, sends the call,
and awaits the reply. A worker is one attempt's for the call: its pid (the group's leader) is the
attempt's `pid`, so the memory sampler sizes, and eviction stops, the worker with the call.

A call's outcome is its value file; the reply says whether it returned (`ok`) or raised
(`failed`: its exception's summary is the reason). A worker that dies mid-call (a segfault,
`os._exit`, the kernel's OOM killer, a SIGKILL) ends the call `interrupted`, which costs the
task no retry, and the next call gets a new worker. `stop` and `evict` end a call as they end a
command: SIGTERM to the worker's group, SIGKILL after the grace; a stopped call's worker is never
reused. The worker recycles itself after a number of calls, or when its memory grows past a
bound; whatever a call left in the worker's group is killed by the worker, and what left the
group (setsid) by `kill_attempt_strays`, as for a command. A worker that ended has its group
killed before it is reaped, as a command's leader does (executor.py): until the reap, its zombie
keeps its pid, and so the group's number, from being handed out again, and neither that kill
nor a stopped call's armed SIGKILL can reach another group. So the pool spawns and reaps its
workers itself (`Popen`, a pidfd, `spawn.reap_child`), not through asyncio's child watcher, which
reaps a child the moment it exits.

A worker runs only calls that see the same GPUs (`CUDA_VISIBLE_DEVICES`) as its first did: a
library that has initialised CUDA keeps the devices it saw then. The spec's `env` reaches the
call's `os.environ` (and so its subprocesses); a `PYTHONPATH` there changes only what those
subprocesses import, not the worker's own `sys.path`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import swarm
from swarm.core.ledger import Outcome
from swarm.daemon import procs
from swarm.daemon.config import KILL_GRACE_S
from swarm.daemon.executor import Finished, Launch, attempt_env, attempt_tags
from swarm.daemon.procs import kill_attempt_strays, kill_group, live_groups
from swarm.daemon.pyworker_channel import RETURNED, Call, Hello, Reply, encode
from swarm.daemon.rundirs import open_own, run_dir_paths
from swarm.daemon.spawn import has_exited, reap_child, wait_exited
from swarm.errors import SwarmError
from swarm.framing import FrameCut, FrameTooLarge, read_frame_body
from swarm.pycall import VALUE_FILE

log = logging.getLogger("swarm.daemon.workers")

WORKER_CALLS_MAX = 1_000  # calls a worker runs before it is replaced (a leak cannot grow forever)
WORKER_RSS_MAX_BYTES = 2 << 30  # a worker resident over this after a call is replaced
WORKER_REPLY_BYTES_MAX = 64 << 10  # a reply is a few numbers and one line
WORKER_EXIT_WAIT_S = 5.0  # at close, how long a worker may take to exit before SIGKILL
WORKER_TAG = "SWARM_WORKER"  # set to "1" in every worker's environment
# What only an attempt's environment names: never a worker's own (kill_orphans would take an
# idle worker for an attempt, were the daemon itself started inside a task).
ATTEMPT_KEYS = ("SWARM_TASK_ID", "SWARM_TASK_NAME", "SWARM_JOB", "SWARM_ATTEMPT", "SWARM_EPOCH")
SWARM_ROOT = str(Path(swarm.__file__).resolve().parent.parent)  # the dir `import swarm` needs


@dataclass(frozen=True, slots=True)
class CallBlobs:
    """The call's input blobs, held on this node: what `prepare()` gives the attempt."""

    fn: Path  # the pickled function (its name in the store is `spec.call.fn`, its digest)
    args: Path | None  # the pickled (args, kwargs); None when they are inline in the spec


# What the runner gives `WorkerPool.attempt`: make the call's input blobs held here and say where
# they are (`CallBlobs`, its `args` None when the spec holds them inline); or return why they
# cannot be (a reason, which ends the attempt `interrupted`, no worker used). A stop meanwhile
# cancels it. Raising is a bug: `finished()` raises it, and the runner records a swarm error.
Prepare = Callable[[], Awaitable[CallBlobs | str]]


class WorkerPoolClosed(SwarmError):
    """The pool was closed: no call starts any more."""


class _Worker:
    """One worker process, and our end of its channel."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.reader = reader
        self.writer = writer
        # The GPUs its calls may see (CUDA_VISIBLE_DEVICES, None: not set), fixed by its first
        # call: a library that has initialised CUDA keeps the devices it saw then.
        self.devices: str | None = None
        self._ending: asyncio.Future[int] | None = None  # `ended()`, once asked
        self._kill_timer: asyncio.TimerHandle | None = None  # a stopped call's SIGKILL

    @property
    def alive(self) -> bool:
        """Not known to have exited. Asked of the kernel (without reaping it): a worker killed
        while idle must not take a call, which would count as interrupted."""
        if self.proc.returncode is not None or self.writer.is_closing():
            return False
        try:
            return not has_exited(self.pid)
        except ChildProcessError:  # reaped already
            return False

    async def call(self, call: Call) -> Reply | None:
        """Run one call; None if the worker died (or its channel broke) before it replied. Its
        exit is watched as well as its channel: a process the call forked holds the channel
        open after the worker's death (the OOM killer's, say)."""
        try:
            self.writer.write(encode(call.to_wire()))
            await self.writer.drain()
            reading = asyncio.ensure_future(read_frame_body(self.reader, WORKER_REPLY_BYTES_MAX))
            exited = asyncio.ensure_future(wait_exited(self.proc))
            try:
                await asyncio.wait((reading, exited), return_when=asyncio.FIRST_COMPLETED)
                failed = exited.exception() if exited.done() else None
                if failed is not None and not reading.done():
                    # Its exit could not be watched (a bug): its channel alone tells, as before.
                    log.error("cannot watch Python worker %d for its exit: %s", self.pid, failed)
                    await reading
            except asyncio.CancelledError:
                reading.cancel()  # no read of its channel is left behind
                raise
            finally:
                exited.cancel()
            if not reading.done():  # it died with no reply: its channel may never close
                reading.cancel()
                return None
            body = reading.result()
            if body is None:
                return None
            return Reply.from_wire(_unpack_map(body))
        except (OSError, FrameCut, FrameTooLarge, ValueError, KeyError, TypeError):
            return None

    def terminate(self, grace_s: float) -> None:
        """SIGTERM to the worker's group, SIGKILL after `grace_s`, a timer `ended()` cancels
        before the worker is reaped (its pid may name another group from then on)."""
        kill_group(self.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self._kill_timer = loop.call_later(grace_s, kill_group, self.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL to the worker's whole group: it is not used again."""
        kill_group(self.pid, signal.SIGKILL)
        self.writer.close()

    async def ended(self) -> int:
        """Wait for the worker to exit (after `kill`, or once its channel is closed), killing it
        if it takes over WORKER_EXIT_WAIT_S; its return code. Its group is killed too, while
        the exited worker is not yet reaped: nothing of a call may outlive its worker, and the
        kill must reach no other group. Asked twice, it reaps once."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end())
        return await asyncio.shield(self._ending)

    async def _end(self) -> int:
        exited = asyncio.ensure_future(wait_exited(self.proc))
        try:
            await asyncio.wait_for(asyncio.shield(exited), WORKER_EXIT_WAIT_S)
        except TimeoutError:
            log.warning(
                "Python worker %d did not exit in %g s: killed", self.pid, WORKER_EXIT_WAIT_S
            )
            kill_group(self.pid, signal.SIGKILL)
            await exited
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        kill_group(self.pid, signal.SIGKILL)
        reap_child(self.proc)
        live_groups.discard(self.pid)
        self.writer.close()
        assert self.proc.returncode is not None  # set by the reap
        return self.proc.returncode


def _unpack_map(body: bytes) -> dict[str, object]:
    import msgpack

    raw = msgpack.unpackb(body, raw=False)
    if not isinstance(raw, dict):
        raise ValueError("a reply is not a map")
    return raw


class WorkerPool:
    """The node's warm Python workers."""

    def __init__(
        self,
        base_env: Mapping[str, str],
        node_id: str,
        *,
        max_calls: int = WORKER_CALLS_MAX,
        max_rss_bytes: int = WORKER_RSS_MAX_BYTES,
        idle_max: int | None = None,
    ) -> None:
        """`base_env`: the node's environment for attempts (with its NODE_TAG); `idle_max`: the
        workers kept idle between calls (default: one per core of this machine)."""
        self.base_env = dict(base_env)
        self.node_id = node_id
        self.max_calls = max_calls
        self.max_rss_bytes = max_rss_bytes
        self.idle_max = idle_max if idle_max is not None else (os.cpu_count() or 1)
        self.worker_env = worker_env(self.base_env)
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._attempts: set[PyAttempt] = set()
        self._retiring: set[asyncio.Task[int]] = set()
        self._closed = False

    @property
    def idle_pids(self) -> list[int]:
        """The pids of the idle workers, the most recently used last."""
        return [w.pid for w in self._idle]

    def attempt(self, launch: Launch, prepare: Prepare) -> PyAttempt:
        """Start the call of `launch` (its `spec.call` set) on a task of its own. Raises
        OSError if its stdout and stderr files cannot be made (as `executor.Attempt` does)."""
        attempt = PyAttempt(self, launch, prepare)
        self._attempts.add(attempt)
        attempt.task.add_done_callback(lambda _: self._attempts.discard(attempt))
        return attempt

    async def close(self) -> None:
        """Stop the calls still running (interrupted), and end every worker."""
        self._closed = True
        for attempt in list(self._attempts):
            attempt.stop(Outcome.INTERRUPTED, "the node is stopping", 0.0)
        for attempt in list(self._attempts):
            with contextlib.suppress(Exception):
                await attempt.reap()
        # With no call left, each worker is idle or retiring already (a stopped call's worker
        # was reaped by its attempt).
        idle, self._idle = self._idle, []
        for worker in idle:
            self._retire(worker)
        while self._retiring:
            await asyncio.gather(*self._retiring)

    async def _checkout(self, devices: str | None) -> _Worker:
        """The idle worker used last whose calls see the GPUs `devices`, or a new one. OSError
        if one cannot be started."""
        while True:
            found = [w for w in self._idle if w.devices == devices or not w.alive]
            if not found:
                break
            worker = found[-1]
            self._idle.remove(worker)
            if worker.alive:
                return worker
            self._retire(worker)  # it died while idle
        if self._closed:
            raise WorkerPoolClosed("the node is stopping")
        worker = await self._spawn()
        worker.devices = devices
        return worker

    async def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            # Started and reaped by us, not by asyncio's child watcher (see the module's doc).
            proc = subprocess.Popen(
                [sys.executable, "-m", "swarm.daemon.pyworker", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None,  # the daemon's: a worker that cannot start says why there
                env=self.worker_env,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        live_groups.add(proc.pid)  # its group's processes are its calls', not others' strays
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            ours.close()
            kill_group(proc.pid, signal.SIGKILL)
            live_groups.discard(proc.pid)
            reap_child(proc)  # SIGKILLed: it exits at once
            raise
        worker = _Worker(proc, reader, writer)
        self._workers.add(worker)
        hello = Hello(
            node_id=self.node_id,
            sys_path=[path or os.getcwd() for path in sys.path],  # "": the daemon's cwd
            calls_max=self.max_calls,
            rss_max_bytes=self.max_rss_bytes,
            pythonpath=self.base_env.get("PYTHONPATH"),
        )
        writer.write(encode(hello.to_wire()))
        log.debug("started Python worker %d", proc.pid)
        return worker

    def _give_back(self, worker: _Worker) -> None:
        """A worker whose call ended well: kept idle for the next (the one idle longest exits
        if that makes more than `idle_max`)."""
        if not worker.alive or self._closed:
            self._retire(worker)
            return
        self._idle.append(worker)
        if len(self._idle) > self.idle_max:
            self._retire(self._idle.pop(0))

    def _retire(self, worker: _Worker) -> None:
        """The worker is not used again: it exits at the end of its channel, and is reaped on
        a task of its own."""
        worker.writer.close()
        task = asyncio.get_running_loop().create_task(self._forget(worker))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _forget(self, worker: _Worker) -> int:
        code = await worker.ended()
        self._workers.discard(worker)
        return code


def worker_env(base_env: Mapping[str, str]) -> dict[str, str]:
    """A worker's environment: the node's (its NODE_TAG with it), tagged as a worker, naming no
    attempt, and with the dir of this `swarm` package on PYTHONPATH so that `-m swarm...`
    imports the daemon's own (the worker puts the daemon's PYTHONPATH back once started)."""
    env = {k: v for k, v in base_env.items() if k not in ATTEMPT_KEYS}
    env[WORKER_TAG] = "1"
    paths = [p for p in base_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([SWARM_ROOT, *(p for p in paths if p != SWARM_ROOT)])
    return env


class PyAttempt:
    """A started Python call. `finished()` waits for it; `stop()` ends it early."""

    def __init__(self, pool: WorkerPool, launch: Launch, prepare: Prepare) -> None:
        assert launch.spec.call is not None, "a PyAttempt runs a Python call"
        self.launch = launch
        self.pool = pool
        self.peak_rss_kb = 0  # sampled by the node, from /proc, while the call runs
        self.rss_kb: int | None = None
        self.evicted = False
        self.spawn_error = ""
        self.started_ms = time.time_ns() // 1_000_000
        self._t0 = time.monotonic()
        paths = run_dir_paths(launch.run_dir)
        self.stdout = paths.stdout
        self.stderr = paths.stderr
        self.value = launch.run_dir / VALUE_FILE
        self.cwd = paths.work if launch.spec.cwd is None else Path(launch.spec.cwd)
        if launch.spec.cwd is None:
            self.cwd.mkdir(exist_ok=True)
        for path in (self.stdout, self.stderr):
            os.close(open_own(path)[0])  # made (or emptied) here, never through what a task left
        with contextlib.suppress(FileNotFoundError):
            self.value.unlink()  # an earlier attempt's, in a recycled run dir
        self._env = attempt_env(launch, pool.base_env)
        self._tags = attempt_tags(self._env)
        self._worker: _Worker | None = None
        self._stop_outcome: Outcome | None = None
        self._stop_reason = ""
        self._stopped = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(prepare))

    @property
    def pid(self) -> int | None:
        """The worker's pid (it leads its group) while it runs the call; None before."""
        return self._worker.pid if self._worker is not None else None

    async def finished(self) -> Finished:
        return await asyncio.shield(self.task)

    async def reap(self) -> None:
        """Wait for the call to end, collecting nothing (for error paths)."""
        with contextlib.suppress(Exception):
            await asyncio.shield(self.task)

    def stop(self, outcome: Outcome, reason: str, grace_s: float = KILL_GRACE_S) -> None:
        """End the call: SIGTERM to its worker's group, SIGKILL after `grace_s`."""
        if self.task.done() or self._stop_outcome is not None:
            return
        self._stop_outcome, self._stop_reason = outcome, reason
        self._stopped.set()
        if self._worker is not None:
            self._worker.terminate(grace_s)

    def evict(self, reason: str, grace_s: float = KILL_GRACE_S) -> None:
        """Stop the call to free memory: interrupted, and marked as an eviction."""
        if self._stop_outcome is None:
            self.evicted = True
        self.stop(Outcome.INTERRUPTED, reason, grace_s)

    # -- the call, on its task -----------------------------------------------------------------

    async def _run(self, prepare: Prepare) -> Finished:
        blobs = await self._prepare(prepare)
        if blobs is None or self._stop_outcome is not None:
            return self._ended(self._stop_outcome or Outcome.INTERRUPTED, None, self._stop_reason)
        if isinstance(blobs, str):
            return self._ended(Outcome.INTERRUPTED, None, blobs)
        call = self._call(blobs)  # before a worker is taken: nothing may fail between the two
        try:
            worker = await self.pool._checkout(self._env.get("CUDA_VISIBLE_DEVICES"))
        except (OSError, WorkerPoolClosed) as exc:
            self.spawn_error = f"cannot start a Python worker: {exc}"
            return self._ended(Outcome.INTERRUPTED, None, self.spawn_error)
        if self._stop_outcome is not None:  # stopped while the worker started: it is unused
            self.pool._give_back(worker)
            return self._ended(self._stop_outcome, None, self._stop_reason)
        self._worker = worker
        # Its strays were forked after now: only younger processes are read for them.
        since_pid, start = procs.last_pid(), procs.began()
        try:
            reply = await worker.call(call)
        finally:
            self._worker = None  # the worker may run another attempt's call from now on
        finished = await self._close_call(worker, reply)
        # No pid handed out since the call began: it forked nothing, and left no stray (most
        # calls; a look for strays lists /proc).
        if since_pid <= 0 or procs.last_pid() != since_pid:
            since_pid = since_pid if since_pid > 0 else worker.pid
            await kill_attempt_strays(self._tags, since_pid, self.launch.task_id, start)
        return finished

    async def _prepare(self, prepare: Prepare) -> CallBlobs | str | None:
        """The call's blobs, or why there are none; None if stopped meanwhile."""
        preparing = asyncio.ensure_future(prepare())
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait((preparing, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not preparing.done():
            preparing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await preparing
            return None
        return preparing.result()

    def _call(self, blobs: CallBlobs) -> Call:
        call = self.launch.spec.call
        assert call is not None
        own = self.pool.worker_env
        inline = base64.b64decode(call.inline) if call.args == "" else b""  # a valid spec's
        return Call(
            fn_path=str(blobs.fn),
            fn_digest=call.fn,
            args_path=str(blobs.args) if blobs.args is not None else "",
            args_inline=inline,
            stdout=str(self.stdout),
            stderr=str(self.stderr),
            value=str(self.value),
            cwd=str(self.cwd),
            env={k: v for k, v in self._env.items() if own.get(k) != v},
            python=call.python,
        )

    async def _close_call(self, worker: _Worker, reply: Reply | None) -> Finished:
        """The call's `Finished`; the worker goes back to the pool if it can run another."""
        if reply is None or self._stop_outcome is not None:
            worker.kill()  # died, broke its channel, or stopped: never reused
            code = await worker.ended()
            self.pool._workers.discard(worker)
            if self._stop_outcome is not None:
                return self._ended(self._stop_outcome, None, self._stop_reason, reply)
            return self._ended(Outcome.INTERRUPTED, None, f"its worker died ({_exit_text(code)})")
        if reply.recycle:
            self.pool._retire(worker)
        else:
            self.pool._give_back(worker)
        if reply.kind == RETURNED:
            return self._ended(Outcome.OK, 0, "", reply)
        return self._ended(Outcome.FAILED, 1, reply.reason, reply)

    def _ended(
        self, outcome: Outcome, code: int | None, reason: str, reply: Reply | None = None
    ) -> Finished:
        wall_s = time.monotonic() - self._t0
        outputs = {}
        # As a command's outputs: kept unless the call was interrupted (it runs again).
        kept = reply is not None and outcome is not Outcome.INTERRUPTED
        if kept and reply is not None and reply.value_written:
            outputs[VALUE_FILE] = self.value
        return Finished(
            outcome=outcome,
            exit_code=code,
            started_ms=self.started_ms,
            ended_ms=self.started_ms + int(wall_s * 1000),
            wall_s=wall_s,
            cpu_s=reply.cpu_s if reply is not None else 0.0,
            max_rss_kb=max(reply.max_rss_kb if reply is not None else 0, self.peak_rss_kb),
            stdout=self.stdout,
            stderr=self.stderr,
            outputs=outputs,
            outputs_movable=True,
            reason=reason,
            evicted=self.evicted and outcome is Outcome.INTERRUPTED,
            inline_value=reply.inline if kept and reply is not None else b"",
        )


def _exit_text(code: int) -> str:
    """How a worker ended, from its return code: "SIGKILL", "exit 3"."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"
