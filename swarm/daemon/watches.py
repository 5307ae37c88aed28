"""Watching tasks end: what a Python client (swarm/api.py) waits on, one connection at a time.

Theory of operation
-------------------
A connection's `Watch` holds the tasks it watches and those of them that ended since its last
reply. `Watches` indexes every open watch by task, and hears each state change the node applies
(`changed`, fed with what `NodeCore.apply` returns), so a task that ends costs one dict lookup,
however many tasks are watched. A task already ended when it is added goes straight to `ended`.
A task is reported once it has ended and its outcome can be had: one that runs again meanwhile
(its result lost with its holders), or whose outcome could not be copied here yet, is looked at
again a little later, as long as the connection lives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from swarm.core.ledger import TERMINAL_STATES, Ledger, StateChanged

LOOK_AGAIN_S = 1.0


class Watch:
    def __init__(self) -> None:
        self.ended: list[str] = []  # watched tasks that ended since the last reply
        self.closed = False
        self._event = asyncio.Event()
        # Ended tasks not yet reported: ended again since (a lost result re-queued it), or whose
        # outcome could not be had yet; looked at again after LOOK_AGAIN_S (task -> when).
        self._later: dict[str, float] = {}

    def saw_end(self, task_id: str) -> None:
        self.ended.append(task_id)
        self._event.set()

    def look_again(self, task_id: str, now: float) -> None:
        self._later[task_id] = now + LOOK_AGAIN_S

    async def wait(self, timeout_s: float, now: float) -> None:
        """Return once a watched task has ended (at once if one has), or after `timeout_s`
        (sooner when a task is due to be looked at again)."""
        if self._later:
            timeout_s = min(timeout_s, min(self._later.values()) - now)
        if self.ended or timeout_s <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._event.wait()

    def take(self, now: float, count_max: int) -> list[str]:
        """Up to `count_max` of the tasks to report now (the rest wait for the next reply)."""
        due = [t for t, at in self._later.items() if at <= now]
        for task in due:
            del self._later[task]
        ready = self.ended + due
        taken, self.ended = ready[:count_max], ready[count_max:]
        if not self.ended:
            self._event.clear()
        return taken


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
