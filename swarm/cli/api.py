"""The Python API: `SwarmExecutor`, a `concurrent.futures.Executor` whose calls run on the swarm,
and `results(job)`, a job's values read back later, anywhere.

Theory of operation
-------------------
A call is a task like any other (its spec's `call`, spec.PyCall): the function and its arguments
are cloudpickled (swarm/pycall.py), the function stored as a blob named by its sha256 and the
arguments too, unless they are small enough to travel in the spec. The task's id is the hash of
that content and the job, so the same call in the same job is one task: a script run again
reuses every result already done (a failed one runs again), and a function sent 10,000 times is
stored once.

The executor talks to the daemon of its state dir (`home`, else $SWARM_HOME, else the default)
over the control socket, or, when none runs there, to a node it starts in its own process for as
long as it lives (as `swarm run` does). Given `peer` (or $SWARM_PEER), it talks to that node of
another machine instead, over the sealed channel (swarm/remote.py), with the swarm key of its
state dir, and copies the outcome blobs it reads from there. That talk happens on a thread of its own with an asyncio
loop (`_Backend`): `submit` pickles in the caller's thread, queues the call and returns its
future at once; the backend's one loop sends what is queued (blobs first, then the tasks in one
submission), then asks the node, on the same connection, which of the tasks it watches have
ended (`watch`, a long poll), and settles their futures from the outcome blobs, read from the
node's blob store on this machine.

`serial=True` (or SWARM_SERIAL=1) runs each call in the caller's thread at `submit`, with no node:
the same values and exceptions, for debugging. What an outcome means to the caller, and
`results(job)`, are in outcomes.py.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from swarm import connection, control, pycall, statedir
from swarm.cli.outcomes import (  # re-exported: the API of `swarm`
    CallLostError,
    RemoteCallError,
    outcome_of,
    results,
)
from swarm.connection import Client
from swarm.control import EndedTask
from swarm.core.spec import (
    DEFAULT_MEMORY_BYTES,
    INLINE_ARGS_BYTES_MAX,
    PyCall,
    Resources,
    TaskSpec,
    check,
    name_problem,
    normalize_requires,
    task_id,
)
from swarm.core.units import parse_size
from swarm.daemon.store import BlobStore
from swarm.errors import SwarmError, UserError

__all__ = ["CallLostError", "RemoteCallError", "SwarmExecutor", "SwarmFuture", "results"]

WATCH_WAIT_MS = 50  # a watch's long poll, while nothing new is queued: calls queued meanwhile wait
SUBMIT_BATCH_MAX = connection.SUBMIT_CHUNK_TASKS  # calls sent in one submission
REMOTE_PING_S = 60.0  # an idle executor pings another machine's node this often
CALL_RETRIES = 0  # a call that raises is not run again unless its options say so


@dataclass(frozen=True, slots=True)
class Options:
    """What each call of an executor (view) asks for; `SwarmExecutor.options` makes new ones."""

    cpus: float = 1.0
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    gpus: int = 0
    requires: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    retries: int = CALL_RETRIES
    priority: int = 0

    def need(self) -> Resources:
        return Resources(float(self.cpus), self.memory_bytes, self.gpus)


class SwarmFuture(concurrent.futures.Future[Any]):
    """A call's future: `cancel()` also cancels its task in the swarm (once every future of
    that task is cancelled: equal calls share one task)."""

    def __init__(self, backend: _Backend | None, task: str) -> None:
        super().__init__()
        self._backend = backend
        self.task_id = task

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled and self._backend is not None:
            self._backend.cancelled(self.task_id)
        return cancelled


def _serial_by_default(home: object, peer: object) -> bool:
    """SWARM_SERIAL=1 says serial, SWARM_SERIAL=0 not. Unset: serial inside a task of the swarm
    (SWARM_TASK_ID is set, and no node is named), where a map's calls would wait for slots that
    their caller holds (all of them, in the end: a deadlock), or, with no SWARM_HOME there, go to
    a node of their own that the swarm never sees."""
    flag = os.environ.get("SWARM_SERIAL", "")
    if flag:
        return flag != "0"
    return "SWARM_TASK_ID" in os.environ and home is None and peer is None


class SwarmExecutor(concurrent.futures.Executor):
    """Runs calls on the swarm. `job` defaults to the script's file name; `home` is the state
    dir of the node to use (else $SWARM_HOME, else the default); `peer` (HOST:PORT, else
    $SWARM_PEER) is another machine's node to use instead, with `home`'s swarm key; `serial` runs every call
    inline (also SWARM_SERIAL=1); `max_workers` is accepted and ignored (the swarm's slots
    decide). A future stays pending until its call ends (`running()` is never true), and
    `cancel()` stops its call even while it runs."""

    def __init__(
        self,
        job: str | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        peer: str | None = None,
        serial: bool | None = None,
        max_workers: int | None = None,
    ) -> None:
        # `max_workers` is taken and not used, so that code written for ProcessPoolExecutor
        # runs as it is: the slots of the swarm's nodes say how many calls run at once.
        del max_workers
        if job is not None and not isinstance(job, str):
            raise TypeError(
                f"job must be a job name (a str), not {type(job).__name__}: SwarmExecutor takes "
                "no worker count (the swarm's slots decide how many calls run at once)"
            )
        self.job = job if job is not None else default_job()
        problem = name_problem(self.job)
        if problem is not None:
            raise UserError(f"job name {self.job!r} {problem}")
        if serial is None:
            serial = _serial_by_default(home, peer)
        self.serial = serial
        self._options = Options()
        self._backend: _Backend | None = None
        self._shared = _Shared()
        if not serial:
            state = statedir.resolve(os.fspath(home) if home else None)
            self._backend = _Backend(state, self.job, statedir.resolve_peer(peer))
            self._backend.start()
        self._view = False

    # -- the Executor interface ------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> SwarmFuture:
        if self._shared.shut:
            raise RuntimeError("cannot schedule new calls after shutdown")
        if self.serial:
            return _run_inline(fn, args, kwargs)
        assert self._backend is not None
        call = _prepare(self.job, fn, args, kwargs, self._options, self._shared.next_index())
        return self._backend.queue(call)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """The values of `fn` over the iterables, in their order. `chunksize` > 1 sends that
        many calls as one task (one process start-up, one record, for many small calls)."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = _chunks(zip(*iterables, strict=False), chunksize)
        named = pycall.qualified_name(fn)
        # Each chunk is one call whose value is a list: flattened here.
        results = super().map(pycall.Chunk(fn, named), chunks, timeout=timeout)
        return itertools.chain.from_iterable(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._view:
            return  # a view's shutdown is its executor's
        self._shared.shut = True
        if self._backend is not None:
            self._backend.close(wait=wait, cancel_futures=cancel_futures)

    def options(
        self,
        *,
        cpus: float | None = None,
        memory: str | int | None = None,
        gpus: int | None = None,
        requires: dict[str, Any] | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        priority: int | None = None,
    ) -> SwarmExecutor:
        """A view of this executor whose calls carry these needs (the rest as this one's).
        `memory` as in a task file ("4G", or a number of MiB)."""
        changes: dict[str, Any] = {}
        if cpus is not None:
            changes["cpus"] = float(cpus)
        if memory is not None:
            changes["memory_bytes"] = parse_size(memory, field="memory")
        if gpus is not None:
            changes["gpus"] = gpus
        if requires is not None:
            changes["requires"] = dict(requires)
        if timeout is not None:
            changes["timeout_s"] = float(timeout)
        if retries is not None:
            changes["retries"] = retries
        if priority is not None:
            changes["priority"] = priority
        view = object.__new__(SwarmExecutor)
        view.__dict__.update(self.__dict__)
        view._options = replace(self._options, **changes)
        view._view = True
        _spec_of(
            self.job, view._options, PyCall("0" * 64, "0" * 64, "check", "3.11")
        )  # checked now
        return view


@dataclass
class _Shared:
    """What an executor and its views share."""

    shut: bool = False
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_index(self) -> int:
        with self._lock:
            return next(self._counter)


@dataclass(frozen=True, slots=True)
class _Call:
    """A call ready to send: its task, and the blobs the node must hold for it."""

    task_id: str
    name: str
    spec: TaskSpec
    blobs: dict[str, bytes]  # digest -> bytes


def default_job() -> str:
    """The script's file name (`fits` for `python fits.py`), else `python`."""
    main = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    stem = Path(main).stem
    return stem if stem and name_problem(stem) is None else "python"


def _spec_of(job: str, options: Options, call: PyCall) -> TaskSpec:
    spec = TaskSpec(
        cmd=None,
        argv=None,
        need=options.need(),
        priority=options.priority,
        timeout_s=options.timeout_s,
        retries=options.retries,
        requires=normalize_requires(options.requires),
        call=call,
    )
    check(spec)
    return spec


def _prepare(
    job: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: Options,
    index: int,
) -> _Call:
    """Pickle a call and name it by its content."""
    name = getattr(fn, "swarm_name", None) or pycall.qualified_name(fn)
    fn_bytes = pycall.dumps_call(fn)
    args_bytes = pycall.dumps_args(args, kwargs)
    blobs = {_digest(fn_bytes): fn_bytes}
    if len(args_bytes) <= INLINE_ARGS_BYTES_MAX:
        args_digest, inline = "", base64.b64encode(args_bytes).decode("ascii")
    else:
        args_digest, inline = _digest(args_bytes), ""
        blobs[args_digest] = args_bytes
    call = PyCall(_digest(fn_bytes), args_digest, name, pycall.python_version(), inline)
    spec = _spec_of(job, options, call)
    task = task_id(job, spec, None)
    short = name.rsplit(".", 1)[-1].strip("<>") or "call"
    return _Call(task, f"{short}-{index}-{task[:8]}", spec, blobs)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run_inline(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> SwarmFuture:
    future = SwarmFuture(None, "")
    future.set_running_or_notify_cancel()
    try:
        future.set_result(fn(*args, **kwargs))
    except KeyboardInterrupt:  # the user's, at the keyboard: it stops the script
        raise
    except BaseException as exc:  # as a worker does: the call's exception is its outcome
        future.set_exception(exc)
    return future


def _chunks(items: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


# -- the backend: one thread, one asyncio loop, one connection ---------------------------------


class _Backend:
    def __init__(self, state: statedir.StateDir, job: str, peer: str | None) -> None:
        self.state = state
        self.peer = peer  # another machine's node (HOST:PORT); None: this machine's
        self.store = BlobStore(state.blobs)
        self.job = job
        self._lock = threading.Lock()
        self._queued: list[tuple[_Call, SwarmFuture]] = []
        self._cancels: list[str] = []
        self._futures: dict[str, list[SwarmFuture]] = {}  # task id -> its futures
        self._sent_blobs: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="swarm-executor", daemon=True)
        self._ready = concurrent.futures.Future[None]()
        self._done = concurrent.futures.Future[None]()
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.result()  # raises what made it fail to start (a bad state dir, say)

    def queue(self, call: _Call) -> SwarmFuture:
        future = SwarmFuture(self, call.task_id)
        with self._lock:
            if self.error is not None:
                raise SwarmError(f"the executor's node stopped: {self.error}")
            if self._closing:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._queued.append((call, future))
        self._poke()
        return future

    def cancelled(self, task: str) -> None:
        with self._lock:
            self._cancels.append(task)
        self._poke()

    def close(self, wait: bool, cancel_futures: bool) -> None:
        if cancel_futures:
            with self._lock:
                futures = [f for _, f in self._queued] + [
                    f for fs in self._futures.values() for f in fs
                ]
            for future in futures:
                future.cancel()
        with self._lock:
            self._closing = True
        self._poke()
        if wait:
            self._done.result()

    def _poke(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- on the backend's thread -----------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:
            self._fail_all(exc)
            if not self._ready.done():
                self._ready.set_exception(exc)
        finally:
            self._loop.close()
            self._done.set_result(None)

    async def _main(self) -> None:
        if self.peer is not None or await connection.is_running(self.state):
            await self._serve()
            return
        from swarm.daemon.config import NodeConfig  # only an embedded node needs the daemon
        from swarm.daemon.node import Node

        statedir.init(self.state)
        node = Node(self.state, NodeConfig())
        failure: Exception | None = None
        async with asyncio.TaskGroup() as tg:
            running = tg.create_task(node.run())
            ready = tg.create_task(node.wait_ready())
            await asyncio.wait([running, ready], return_when=asyncio.FIRST_COMPLETED)
            if running.done():  # it failed to start: the TaskGroup raises why
                ready.cancel()
                return
            # An error of the serving is raised after the TaskGroup, never inside it: the group
            # would cancel the node mid-stop (attempts unrecorded).
            try:
                await self._serve()
            except Exception as exc:
                failure = exc
            node.stop()  # its graceful stop: attempts recorded, claims closed
            await asyncio.wait([running])
        if failure is not None:
            raise failure

    async def _serve(self) -> None:
        if self.peer is None:
            client = await Client.connect(self.state)
        else:
            from swarm import remote  # only a remote client needs the sealing

            client = await remote.connect(self.peer, self.state)
        self._ready.set_result(None)
        try:
            while True:
                self._wake.clear()  # before the look: what comes after it wakes the next one
                with self._lock:
                    batch, self._queued = (
                        self._queued[:SUBMIT_BATCH_MAX],
                        self._queued[SUBMIT_BATCH_MAX:],
                    )
                    cancels, self._cancels = self._cancels, []
                    more = bool(self._queued)
                    closing = self._closing
                    waiting = bool(self._futures)
                for task in cancels:
                    await self._cancel(client, task)
                added = await self._send(client, batch) if batch else []
                if not added and not waiting and not more:
                    if closing:
                        return
                    await self._idle(client)
                    continue
                # A short poll while calls are queued or cancelled meanwhile; else a long one,
                # which new calls wait behind for at most WATCH_WAIT_MS.
                wait_ms = 0 if more or cancels or self._wake.is_set() else WATCH_WAIT_MS
                reply = await client.watch(added, wait_ms)
                for ended in reply["ended"]:
                    await self._settle_task(client, ended)
                for task in reply["unknown"]:  # not in the ledger: the submission was refused
                    self._resolve(task, error=SwarmError(f"the node does not know task {task}"))
        finally:
            await client.close()

    async def _idle(self, client: Client) -> None:
        """Wait for calls; to another machine's node, say every REMOTE_PING_S that this client
        is still here (the node lets a silent one go)."""
        if self.peer is None:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REMOTE_PING_S):
                await self._wake.wait()
                return
        await client.ping()

    async def _send(self, client: Client, batch: list[tuple[_Call, SwarmFuture]]) -> list[str]:
        """Send a batch: the blobs the node may lack, then its tasks as one submission. Returns
        the ids to watch (those with a future still wanted)."""
        live = [(call, f) for call, f in batch if not f.cancelled()]
        try:
            for call, _ in live:
                for digest, data in call.blobs.items():
                    if digest not in self._sent_blobs:
                        got = (await client.put_blob(data))["digest"]
                        if got != digest:
                            raise SwarmError(f"the node stored blob {digest[:12]} as {got[:12]}")
                        self._sent_blobs.add(digest)
            tasks: list[control.SubmittedTask] = [
                {"task_id": c.task_id, "name": c.name, "spec": c.spec.to_wire()} for c, _ in live
            ]
            if tasks:
                await client.submit(self.job, [tasks], rerun_failed=True)
        except SwarmError as exc:  # refused: these calls fail, the next may go
            for _, future in live:
                _settle(future, error=exc)
            return []
        except BaseException as exc:  # the connection broke: these calls fail, then the rest
            lost = SwarmError(f"the executor lost its node: {type(exc).__name__}: {exc}")
            for _, future in live:
                _settle(future, error=lost)
            raise
        new = []
        with self._lock:
            for call, future in live:
                if call.task_id not in self._futures:
                    new.append(call.task_id)
                self._futures.setdefault(call.task_id, []).append(future)
        return new

    async def _cancel(self, client: Client, task: str) -> None:
        with self._lock:
            futures = list(self._futures.get(task, ())) or None
        if futures is None or not all(f.cancelled() for f in futures):
            return  # not sent yet (it will not be), or another future still wants it
        with contextlib.suppress(SwarmError):
            await client.cancel(task)

    async def _settle_task(self, client: Client, ended: EndedTask) -> None:
        task = ended["task_id"]
        try:
            if self.peer is not None and ended["value"] is not None:
                from swarm.cli.remote_reads import copy_blob  # only a remote client reads so

                await copy_blob(client, ended["value"], self.store)
            if ended["inline"] or ended["value"] is None:  # no file to read: not worth a thread
                value = outcome_of(self.store, ended)
            else:
                value = await asyncio.to_thread(outcome_of, self.store, ended)
        except BaseException as exc:
            self._resolve(task, error=exc)
            return
        self._resolve(task, value=value)

    def _resolve(self, task: str, value: Any = None, error: BaseException | None = None) -> None:
        with self._lock:
            futures = self._futures.pop(task, [])
        for future in futures:
            _settle(future, value, error)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            self.error = exc
            pending = [f for _, f in self._queued] + [
                f for fs in self._futures.values() for f in fs
            ]
            self._queued, self._futures = [], {}
        lost = SwarmError(f"the executor's node stopped: {type(exc).__name__}: {exc}")
        for future in pending:
            _settle(future, error=lost)


def _settle(future: SwarmFuture, value: Any = None, error: BaseException | None = None) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled meanwhile
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
