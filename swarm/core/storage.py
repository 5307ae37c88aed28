"""Whether the node's disk lets it claim: a write that failed pauses claims for a while, and an
attempt that ended on a full state disk stops them until a check (the adapter's CheckDisk) finds
room again. Every task claimed meanwhile would likely fail on the same disk, and, interrupted,
come straight back."""

from __future__ import annotations

STORAGE_RETRY_S = 2.0  # after a failed write: how long before claiming (or checking) again


class Storage:
    def __init__(self) -> None:
        self.full = False
        self.paused_until = 0.0
        self._check_due: float | None = None  # None: a check is under way, or none wanted

    def pause(self, now: float, for_s: float = STORAGE_RETRY_S) -> None:
        self.paused_until = max(self.paused_until, now + for_s)

    def filled(self, now: float) -> bool:
        """An attempt ended on a full disk; True if that is news (say it)."""
        news = not self.full
        self.full = True
        self._check_due = now
        return news

    def checked(self, now: float, has_room: bool) -> bool:
        """A check came back; True if the disk has room again (claim)."""
        if has_room and self.full:
            self.full = False
            return True
        if not has_room:
            self._check_due = now + STORAGE_RETRY_S
        return False

    def check_now(self, now: float) -> bool:
        """Whether to ask for a check now (one at a time)."""
        if self.full and self._check_due is not None and now >= self._check_due:
            self._check_due = None
            return True
        return False

    def next_deadline(self) -> float | None:
        return self._check_due if self.full else None
