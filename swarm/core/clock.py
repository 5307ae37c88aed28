"""Hybrid logical clock (Kulkarni et al., 2014).

Theory of operation: a timestamp is one integer, `wall_ms << COUNTER_BITS | counter`. It never goes
backwards on a node (even if the wall clock does), it is at least the wall time when the wall clock
is sane, and after `observe(remote)` every later local stamp is greater than `remote`, so stamps order
causally related records across nodes. Pure: the physical time is always passed in.

Stamps order claims (of two claims of one epoch, both stolen or neither, the earlier wins) and
record submissions; they are never used to judge expiry, which is done on each node's own
monotonic clock.
"""

from __future__ import annotations

COUNTER_BITS = 16
COUNTER_MAX = (1 << COUNTER_BITS) - 1
# A remote stamp further ahead of our wall clock than this is not adopted: one node with a broken
# clock (or a garbage stamp) must not drag every other node's stamps into the future, where they
# would stay, since a clock never goes back. Refused whole, not capped at the bound: a capped
# stamp would still hold every node up to the bound ahead for as long as the bad clock talks.
# Clocks kept by NTP agree to within milliseconds; a minute leaves room for a badly set one.
# Within the bound, stamps order records across nodes whatever their clocks say; beyond it, a
# node's records order only by its own clock (a cancel from a node that far behind covers only
# what was submitted before its clock's time).
MAX_FORWARD_DRIFT_MS = 60_000


def pack(wall_ms: int, counter: int) -> int:
    return (wall_ms << COUNTER_BITS) | counter


def wall_ms_of(stamp: int) -> int:
    return stamp >> COUNTER_BITS


def counter_of(stamp: int) -> int:
    return stamp & COUNTER_MAX


class HybridClock:
    """Issues strictly increasing stamps; `last` is the high-water mark to persist."""

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def now(self, physical_ms: int) -> int:
        """A new stamp for a local event at wall time `physical_ms`."""
        last_wall = wall_ms_of(self.last)
        if physical_ms > last_wall:
            stamp = pack(physical_ms, 0)
        else:
            stamp = self._bump(last_wall, counter_of(self.last))
        self.last = stamp
        return stamp

    def observe(self, remote: int, physical_ms: int) -> bool:
        """Take in a stamp seen on a remote record. Returns False if it was too far ahead."""
        if wall_ms_of(remote) > physical_ms + MAX_FORWARD_DRIFT_MS:
            return False
        self.last = max(self.last, remote)
        return True

    @staticmethod
    def _bump(wall_ms: int, counter: int) -> int:
        # Counter overflow (65,536 events in one millisecond) borrows the next millisecond.
        if counter >= COUNTER_MAX:
            return pack(wall_ms + 1, 0)
        return pack(wall_ms, counter + 1)


class StampIntake:
    """Peers' stamps taken into a node's clock, so that what it stamps after seeing a record (a
    cancel after a submission) orders after it whatever its wall clock says. A stamp too far
    ahead of the wall clock (MAX_FORWARD_DRIFT_MS) is not adopted: one broken or hostile clock
    must not drag ours, and through ours every node's, into the future. Those are counted, and
    said once for each origin (a bounded number of them)."""

    SAID_MAX = 1024  # origins whose too-far-ahead stamps were said

    def __init__(self, clock: HybridClock) -> None:
        self.clock = clock
        self.refused = 0
        self._said: set[str] = set()

    def take(self, origin: str, stamp: int, physical_ms: int) -> str | None:
        """Take a stamp of `origin`'s; a warning to log when it was refused (once per origin)."""
        if self.clock.observe(stamp, physical_ms):
            return None
        self.refused += 1
        if origin in self._said or len(self._said) >= self.SAID_MAX:
            return None
        self._said.add(origin)
        ahead_s = (wall_ms_of(stamp) - physical_ms) / 1000
        return (
            f"node {origin[:8]} stamps its records {ahead_s:.0f} s ahead of this node's clock "
            f"(more than {MAX_FORWARD_DRIFT_MS // 1000} s): not taken into this node's clock; "
            "is one of the two clocks wrong? (logged once)"
        )
