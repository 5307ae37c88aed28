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
