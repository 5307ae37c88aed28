"""The event loop's error reports are rate-limited: a node out of descriptors does not fill its
disk with the same traceback thousands of times a second."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import pytest

from swarm.daemon import loopguard
from swarm.daemon.loopguard import LOOP_REPORT_EVERY_S, LoopReports


class Loop:
    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.logged.append(context)


def report(handler: LoopReports, loop: Loop, message: str) -> None:
    out_of_fds = OSError(24, "Too many open files")
    handler(loop, {"message": message, "exception": out_of_fds})  # type: ignore[arg-type]


def test_one_record_per_kind_of_report_in_each_period(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(loopguard.time, "monotonic", lambda: now[0])
    handler, loop = LoopReports(), Loop()
    for _ in range(10_000):
        report(handler, loop, "socket.accept() out of system resource")
    report(handler, loop, "Task exception was never retrieved")
    assert len(loop.logged) == 2
    now[0] += LOOP_REPORT_EVERY_S
    report(handler, loop, "socket.accept() out of system resource")
    assert len(loop.logged) == 3
    assert "9999 more like it" in loop.logged[-1]["message"]


def test_the_handler_is_what_a_real_loop_calls() -> None:
    async def go() -> Loop:
        loop, seen = asyncio.get_running_loop(), Loop()
        handler = LoopReports()
        loop.set_exception_handler(lambda lp, ctx: handler(seen, ctx))  # type: ignore[arg-type]
        for _ in range(50):
            loop.call_exception_handler({"message": "out of descriptors"})
        return seen

    assert len(asyncio.run(go()).logged) == 1


def test_a_logger_s_records_are_held_to_the_same_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(loopguard.time, "monotonic", lambda: now[0])
    limited = loopguard.RateLimited()

    def record(message: str) -> logging.LogRecord:
        try:
            raise ValueError("bad request line")
        except ValueError:
            info = sys.exc_info()
        return logging.LogRecord("aiohttp.server", logging.ERROR, "", 0, message, None, info)

    passed = [limited.filter(record("Error handling request")) for _ in range(500)]
    assert passed.count(True) == 1
    assert limited.filter(record("another kind"))
    now[0] += LOOP_REPORT_EVERY_S
    later = record("Error handling request")
    assert limited.filter(later)
    assert later.getMessage() == (
        f"Error handling request (499 more like it in the last {LOOP_REPORT_EVERY_S:g} s, "
        "not logged)"
    )
