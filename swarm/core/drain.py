"""When a draining node may leave: once nothing of its own runs and no result is held by it
alone (or after DRAIN_HANDOFF_S of waiting for its results to be copied), or at once when the
drain's grace runs out (what still runs is then interrupted, and runs elsewhere)."""

from __future__ import annotations

from collections.abc import Callable

DRAIN_HANDOFF_S = 30.0  # a drained node waits at most this long for its results to be copied
DRAIN_POLL_S = 0.2  # how often a drain looks again at what it still holds alone


class Drain:
    def __init__(self) -> None:
        self.active = False
        self.left = False
        self._deadline: float | None = None  # the grace, if one was given
        self._handoff_end: float | None = None
        self._poll = float("inf")

    def begin(self, now: float, grace_s: float | None) -> bool:
        """Start draining; False if a drain is already under way."""
        if self.active:
            return False
        self.active = True
        self._deadline = None if grace_s is None else now + grace_s
        self._poll = now
        return True

    def next_deadline(self) -> float | None:
        if not self.active or self.left:
            return None
        return self._poll if self._deadline is None else min(self._poll, self._deadline)

    def step(self, now: float, busy: bool, sole_holdings: Callable[[], int]) -> bool:
        """Look again at `now`; True when the node is to leave. `busy`: attempts of its own are
        under way; `sole_holdings`: how many results only it holds (with live peers to copy)."""
        if not self.active or self.left:
            return False
        over = self._deadline is not None and now >= self._deadline
        if now < self._poll and not over:
            return False
        self._poll = now + DRAIN_POLL_S
        if busy and not over:
            return False
        if self._handoff_end is None:
            self._handoff_end = now + DRAIN_HANDOFF_S
        if not over and now < self._handoff_end and sole_holdings():
            return False
        self.left = True
        return True
