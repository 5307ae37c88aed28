"""Threads of their own for the calls a task can make hang for good.

Theory of operation
-------------------
Some of the node's calls touch what a task made, and the task decides how long they take: a walk
of its dir on a hung network mount, a read of its process's environment (the read takes the
process's memory map lock, which a process stuck in a page fault on a file it serves itself
holds). Those run here, on at most `TASK_THREADS_MAX` threads of their own, never on asyncio's
default executor, so a stuck one never takes a thread the node needs for its own files. The
threads are daemons: one stuck for good does not hold up the node's exit.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any, ParamSpec, TypeVar

# Threads for the calls a task can make hang for good (see `TaskThreads`): a few, since each
# stuck one is a thread lost until the call returns, if ever.
TASK_THREADS_MAX = 4

_P = ParamSpec("_P")
_T = TypeVar("_T")


class TaskThreads:
    """At most `threads_max` threads for the calls a task can make hang for good: a walk of its
    dir on a hung mount, a read of its process's environment. Those are kept off asyncio's default
    executor, whose few threads the node needs for its own files; and the threads are daemons,
    so one stuck for good does not hold up the node's exit (an executor's threads are joined at
    exit). A call waits its turn when all are busy; one cancelled before its turn never runs."""

    def __init__(self, threads_max: int) -> None:
        self._threads_max = threads_max
        self._threads = 0
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[futures.Future[Any], Callable[[], Any]]]
        self._queue = queue.SimpleQueue()

    def run(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> asyncio.Future[_T]:
        """`fn(*args, **kwargs)` in one of the threads; cancelling the future before it has
        begun takes it off the queue."""
        future: futures.Future[_T] = futures.Future()
        self._queue.put((future, functools.partial(fn, *args, **kwargs)))
        with self._lock:
            # Simpler than telling idle threads apart, and threads_max idle threads cost little.
            if self._threads < self._threads_max:
                self._threads += 1
                threading.Thread(target=self._serve, name="swarm-task-io", daemon=True).start()
        return asyncio.wrap_future(future)

    def _serve(self) -> None:
        while True:
            future, call = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue  # its caller stopped waiting before its turn
            try:
                result = call()
            except BaseException as exc:  # handed to the caller, as an executor does
                future.set_exception(exc)
            else:
                future.set_result(result)


task_threads = TaskThreads(TASK_THREADS_MAX)
