"""Memory under --overcommit: what a node may still admit, and which attempt to evict.

Theory of operation
-------------------
Users declare memory generously (a task that may need 4G usually uses far less), so a node that
reserves what tasks declare sits half idle. With --overcommit a running attempt counts for what it
is measured to use (its process group's resident memory, sampled from /proc), and for its declared
memory only until its first sample. A new task is admitted when its declared memory fits in what is
left above a floor, `memfree`.

Measured use can grow. What is left is the less of the machine's available memory (cgroup-aware)
and the node's own budget (`--memory`) less what its attempts use; when it falls below half the
floor, the most recently started attempt is stopped and its task returned to pending, recorded as
an eviction (GNU parallel's --memfree, and Ray's memory monitor: the newest attempt has lost the
least work). One eviction at a time: the next is judged only on a sample taken after the last
victim has exited.

Pure: no I/O, no clock reads. The node samples, then asks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from swarm.core.ledger import EVICTION_CAP
from swarm.core.units import format_bytes

MEMFREE_SHARE = 0.05  # the default floor, as a share of the node's memory (Ray's 95% threshold)
MEMFREE_MIN = 64 * 1024**2  # ... and at least this much


@dataclass(frozen=True, slots=True)
class Running:
    """One running attempt, as memory pressure sees it."""

    task_id: str
    started: float  # monotonic seconds: the newest is evicted first
    declared: int  # bytes the task declared
    measured: int | None  # bytes resident at the last sample; None before the first one


def default_memfree(memory_bytes: int) -> int:
    return max(int(memory_bytes * MEMFREE_SHARE), MEMFREE_MIN)


def in_use(running: Iterable[Running]) -> int:
    return sum(r.declared if r.measured is None else r.measured for r in running)


def left(budget: int, running: Iterable[Running], available: int) -> int:
    """Memory still free: the less of what the machine has available and the node's budget
    less what its attempts use. Negative when the attempts use more than the budget."""
    return min(available, budget - in_use(running))


def headroom(budget: int, running: Iterable[Running], available: int, memfree: int) -> int:
    """The most memory a new attempt may declare and still be admitted."""
    return max(0, left(budget, running, available) - memfree)


def victim(running: Iterable[Running], left_bytes: int, memfree: int) -> Running | None:
    """The attempt to evict when too little is left: the most recently started one that has
    been measured (one not yet started, or not yet sampled, cannot be said to use anything)."""
    if left_bytes >= memfree // 2:
        return None
    measured = (r for r in running if r.measured is not None)
    return max(measured, key=lambda r: (r.started, r.task_id), default=None)


class Guard:
    """One node's memory guard: the last sample, and the eviction under way. (The node leaves
    an evicted task to others for a while, with Scheduler.hold: re-running it here at once
    would likely see it evicted again, using up its cap.)"""

    def __init__(self, budget: int, memfree: int) -> None:
        self.budget = budget
        self.memfree = memfree
        self.available = budget  # until the first sample
        self.evictions = 0
        self._victim: str | None = None
        self._victim_gone_at = -1e18  # monotonic time the last victim exited

    def headroom(self, running: Iterable[Running]) -> int:
        return headroom(self.budget, running, self.available, self.memfree)

    def left(self, running: Iterable[Running]) -> int:
        return left(self.budget, running, self.available)

    def choose(self, running: list[Running], sampled_at: float) -> Running | None:
        """The attempt to evict after a sample taken at `sampled_at`, if any. None while a
        victim is still exiting, or when the sample began before it had exited (its memory may
        be in it)."""
        if self._victim is not None or sampled_at <= self._victim_gone_at:
            return None
        chosen = victim(running, self.left(running), self.memfree)
        if chosen is not None:
            self._victim = chosen.task_id
            self.evictions += 1
        return chosen

    def ended(self, task_id: str, now: float) -> bool:
        """An attempt of `task_id` ended here; True if it was the victim (now gone)."""
        if task_id != self._victim:
            return False
        self._victim = None
        self._victim_gone_at = now
        return True


def eviction_reason(guard: Guard, running: list[Running], chosen: Running, over_cap: bool) -> str:
    """Why `chosen` is evicted, in words (its record and the log say it); `over_cap`: this
    eviction is one past the task's cap, so it fails."""
    size = format_bytes
    reason = (
        f"evicted under memory pressure: {size(max(guard.left(running), 0))} left, "
        f"below half of --memfree {size(guard.memfree)}; it used "
        f"{size(chosen.measured or 0)} and declared {size(chosen.declared)}"
    )
    if over_cap:
        reason += f"; evicted more than {EVICTION_CAP} times, so failed: declare what it needs"
    return reason
