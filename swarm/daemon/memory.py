"""Memory sampling: what this machine's memory looks like, read from /proc and the cgroup.

Theory of operation
-------------------
Every `MEMORY_SAMPLE_S` the node asks its `MemorySampler` for one `MemorySample`: the daemon's
own peak RSS (a forked attempt inherits it, so the executor subtracts it from the child's
figure), the resident memory of each running attempt's process group, and, when the node packs
work by measured memory (--overcommit), how much memory the machine still has for new work.

The sampler only reads; what to do with a sample (record peaks, evict the newest attempt when
memory runs short, admit more work) is the node's decision. The walk over /proc that sizes the
process groups goes to a thread: with many processes it takes longer than a turn of the event
loop should. The other two figures are single small reads of procfs and cgroupfs, never of a
disk, and stay on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Set
from dataclasses import dataclass

from swarm.daemon import resources
from swarm.errors import ConfigError

MEMORY_SAMPLE_S = 0.5  # how often running attempts' memory is read from /proc


@dataclass(frozen=True, slots=True)
class MemorySample:
    """Memory as one sample saw it."""

    sampled_at: float  # monotonic seconds, taken before the figures were read
    own_peak_rss_kb: int  # the daemon's peak resident memory (VmHWM)
    group_rss_kb: Mapping[int, int]  # process group (an attempt's pid) -> its resident KiB
    available_bytes: int | None  # memory left for new work; None: not asked for, or unknown


class MemorySampler:
    """Reads a `MemorySample`; `available` says whether to read the memory left for new work."""

    def __init__(self, available: bool) -> None:
        self.available = available

    async def sample(self, pids: Set[int]) -> MemorySample:
        """The figures now, for the running attempts whose process groups lead by `pids`."""
        own_peak_rss_kb = resources.own_peak_rss_kb()
        sampled_at = time.monotonic()
        sizes: dict[int, int] = {}
        if pids:
            sizes = await asyncio.to_thread(resources.group_rss_kb, set(pids))
        available_bytes = None
        if self.available:
            with contextlib.suppress(ConfigError):  # unreadable: the caller keeps what it had
                available_bytes = resources.available_memory_bytes()
        return MemorySample(sampled_at, own_peak_rss_kb, sizes, available_bytes)
