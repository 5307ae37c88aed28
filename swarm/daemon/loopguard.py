"""The event loop's own error reports, rate-limited.

asyncio reports what it cannot hand to anyone (a failed `accept()` when the process is out of
descriptors, a callback that raised) through the loop's exception handler, which logs a
traceback each time. Out of descriptors, its accept loop retries up to a hundred times a turn,
so the default handler writes thousands of tracebacks a second and fills the disk with them.
Here each kind of report is logged at most once per LOOP_REPORT_EVERY_S, with a count of the
ones held back since.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger("swarm.loop")

LOOP_REPORT_EVERY_S = 10.0  # one log record per kind of report, at most, in this long
LOOP_REPORT_KINDS_MAX = 256  # kinds remembered; beyond, the oldest is forgotten


class LoopReports:
    """An exception handler for the event loop (`loop.set_exception_handler(LoopReports())`)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}  # kind -> (logged at, held back since)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exception = context.get("exception")
        kind = f"{context.get('message', '')}|{type(exception).__name__}"
        now = time.monotonic()
        logged_at, held = self._last.get(kind, (-LOOP_REPORT_EVERY_S, 0))
        if now - logged_at < LOOP_REPORT_EVERY_S:
            self._last[kind] = (logged_at, held + 1)
            return
        if kind not in self._last and len(self._last) >= LOOP_REPORT_KINDS_MAX:
            self._last.pop(next(iter(self._last)))
        self._last[kind] = (now, 0)
        if held:
            context = {**context, "message": f"{context.get('message')} ({held} more like it "
                       f"in the last {LOOP_REPORT_EVERY_S:g} s, not logged)"}  # fmt: skip
        loop.default_exception_handler(context)
