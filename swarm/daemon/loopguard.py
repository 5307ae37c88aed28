"""The event loop's own error reports, rate-limited.

asyncio reports what it cannot hand to anyone (a failed `accept()` when the process is out of
descriptors, a callback that raised) through the loop's exception handler, which logs a
traceback each time. Out of descriptors, its accept loop retries up to a hundred times a turn,
so the default handler writes thousands of tracebacks a second and fills the disk with them.
Here each kind of report is logged at most once per LOOP_REPORT_EVERY_S, with a count of the
ones held back since. The HTTP server's own error log (aiohttp logs a traceback for each request
it cannot parse: anyone who reaches the port could write a line per byte they send) is held to
the same rate by a logging filter (`RateLimited`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger("swarm.loop")

LOOP_REPORT_EVERY_S = 10.0  # one log record per kind of report, at most, in this long
LOOP_REPORT_KINDS_MAX = 256  # kinds remembered; beyond, the oldest is forgotten


class _Rate:
    """Which reports of each kind may be logged now: one per LOOP_REPORT_EVERY_S."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}  # kind -> (logged at, held back since)

    def admit(self, kind: str) -> int | None:
        """None: hold this report back; else log it, with this many held back since the last."""
        now = time.monotonic()
        logged_at, held = self._last.get(kind, (-LOOP_REPORT_EVERY_S, 0))
        if now - logged_at < LOOP_REPORT_EVERY_S:
            self._last[kind] = (logged_at, held + 1)
            return None
        if kind not in self._last and len(self._last) >= LOOP_REPORT_KINDS_MAX:
            self._last.pop(next(iter(self._last)))
        self._last[kind] = (now, 0)
        return held


def _held_text(held: int) -> str:
    return f" ({held} more like it in the last {LOOP_REPORT_EVERY_S:g} s, not logged)"


class LoopReports:
    """An exception handler for the event loop (`loop.set_exception_handler(LoopReports())`)."""

    def __init__(self) -> None:
        self._rate = _Rate()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exception = context.get("exception")
        held = self._rate.admit(f"{context.get('message', '')}|{type(exception).__name__}")
        if held is None:
            return
        if held:
            context = {**context, "message": f"{context.get('message')}{_held_text(held)}"}
        loop.default_exception_handler(context)


class RateLimited(logging.Filter):
    """A filter letting through one record of each kind (its message and exception type) per
    LOOP_REPORT_EVERY_S, the first after a pause saying how many were held back."""

    def __init__(self) -> None:
        super().__init__()
        self._rate = _Rate()

    def filter(self, record: logging.LogRecord) -> bool:
        exception = record.exc_info[1] if record.exc_info else None
        held = self._rate.admit(f"{record.msg}|{type(exception).__name__}")
        if held is None:
            return False
        if held:
            record.msg = f"{record.getMessage()}{_held_text(held)}"
            record.args = None
        return True
