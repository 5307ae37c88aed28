"""Tests of swarm.daemon.memory: one sample of this machine's memory, with a real process group
that holds a known amount of memory."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.daemon.memory import MemorySample, MemorySampler

HELD_MIB = 64
# Touches every page of HELD_MIB MiB, says so, then waits to be killed.
HOLDER = f"import sys; b = bytearray({HELD_MIB} << 20); b[::4096] = b'x' * len(b[::4096]); print('ready', flush=True); sys.stdin.read()"


@pytest.fixture
def holder() -> Iterator[int]:
    """A process leading its own group that holds HELD_MIB MiB; killed and reaped after."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            yield proc.pid
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def sample(sampler: MemorySampler, pids: set[int]) -> MemorySample:
    return asyncio.run(sampler.sample(pids))


def test_a_running_group_is_measured_by_what_it_holds(holder: int) -> None:
    got = sample(MemorySampler(available=False), {holder})
    assert set(got.group_rss_kb) == {holder}
    assert got.group_rss_kb[holder] > HELD_MIB * 1024


def test_the_daemon_peak_is_read_with_every_sample() -> None:
    rss_kb = int(
        next(
            line.split()[1]
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("VmHWM:")
        )
    )
    got = sample(MemorySampler(available=False), set())
    assert got.own_peak_rss_kb >= rss_kb  # a peak only grows
    assert got.group_rss_kb == {}


def test_available_memory_is_read_only_when_asked_for() -> None:
    assert sample(MemorySampler(available=False), set()).available_bytes is None
    available = sample(MemorySampler(available=True), set()).available_bytes
    assert available is not None and available > 0
