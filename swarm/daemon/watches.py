"""Watching tasks end: what a Python client (swarm/api.py) waits on, one connection at a time.

Theory of operation
-------------------
A connection's `Watch` holds the tasks it watches and those of them that ended since its last
reply. `Watches` indexes every open watch by task, and hears each state change the node applies
(`changed`, fed with what `NodeCore.apply` returns), so a task that ends costs one dict lookup,
however many tasks are watched. A task already ended when it is added goes straight to `ended`.
A task is reported once: should it be retried and end again, nobody watches it any more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from swarm.core.ledger import TERMINAL_STATES, Ledger, StateChanged


class Watch:
    def __init__(self) -> None:
        self.ended: list[str] = []  # watched tasks that ended since the last reply
        self.closed = False
        self._event = asyncio.Event()

    def saw_end(self, task_id: str) -> None:
        self.ended.append(task_id)
        self._event.set()

    async def wait(self, timeout_s: float) -> None:
        """Return once a watched task has ended (at once if one has), or after `timeout_s`."""
        if self.ended or timeout_s <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._event.wait()

    def take(self) -> list[str]:
        ended, self.ended = self.ended, []
        self._event.clear()
        return ended


class Watches:
    def __init__(self) -> None:
        self._by_task: dict[str, list[Watch]] = {}

    def add(self, ledger: Ledger, watch: Watch, task_ids: Iterable[str]) -> list[str]:
        """Watch these tasks of the node's ledger; returns the ids that name no task there."""
        unknown = []
        for task_id in task_ids:
            view = ledger.tasks.get(task_id)
            if view is None or view.spec is None:
                unknown.append(task_id)
            elif view.state in TERMINAL_STATES:
                watch.saw_end(task_id)
            else:
                self._by_task.setdefault(task_id, []).append(watch)
        return unknown

    def changed(self, changes: Iterable[StateChanged]) -> None:
        for change in changes:
            if change.new in TERMINAL_STATES:
                for watch in self._by_task.pop(change.task_id, ()):
                    if not watch.closed:
                        watch.saw_end(change.task_id)

    def close(self, watch: Watch) -> None:
        """The connection went away: its registrations go (now, not at the tasks' ends)."""
        watch.closed = True
        for task_id in [t for t, ws in self._by_task.items() if watch in ws]:
            left = [w for w in self._by_task[task_id] if w is not watch]
            if left:
                self._by_task[task_id] = left
            else:
                del self._by_task[task_id]
