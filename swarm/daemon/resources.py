"""What this node can run: its CPU, memory and GPU capacity.

Theory of operation: a node claims only tasks that fit in its own capacity, so the capacity must be
what this process may really use, not what the hardware has. In a container or under systemd the
cgroup limits (v1 or v2) are usually far below the host's CPUs and RAM, so every probe takes the
minimum of the machine-wide figure and the cgroup limit. Every file is read relative to `root` so
tests can build a fake /proc and /sys tree; a missing or unreadable file means "no limit from that
source", never a crash, because kernels and container runtimes differ in what they expose.

How users write sizes (`--memory 8G`) is `swarm.core.units.parse_size`.
"""

from __future__ import annotations

import math
import os
import platform
import socket
from collections.abc import Mapping
from pathlib import Path

from swarm.core.spec import Resources
from swarm.errors import ConfigError

__all__ = [
    "available_memory_bytes",
    "builtin_labels",
    "probe",
    "probe_cpus",
    "probe_gpus",
    "probe_memory_bytes",
]

_ROOT = Path("/")
# cgroup v1 reports "no limit" as a page-rounded 2**63 - 1; anything this large is not a real limit.
_UNLIMITED_BYTES = 2**60

# --- reading the fake-able file tree -------------------------------------------------------------


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _to_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _read_int(path: Path) -> int | None:
    return _to_int(_read_text(path))


def _meminfo(root: Path) -> dict[str, int]:
    """The fields of proc/meminfo, in bytes ("MemTotal: 24684092 kB" -> 24684092 * 1024)."""
    text = _read_text(root / "proc" / "meminfo")
    fields: dict[str, int] = {}
    if text is None:
        return fields
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
        fields[name.strip()] = value * scale
    return fields


# --- CPUs ----------------------------------------------------------------------------------------


def _cgroup_cpu_limit(root: Path) -> float | None:
    """The cgroup CPU quota in cores, or None when no cgroup limits CPU time."""
    cgroup = root / "sys" / "fs" / "cgroup"
    limits: list[float] = []
    # v2: "max 100000" (unlimited) or "<quota> <period>".
    v2 = _read_text(cgroup / "cpu.max")
    if v2 is not None:
        parts = v2.split()
        if parts and parts[0] != "max":
            try:
                quota = int(parts[0])
                period = int(parts[1]) if len(parts) > 1 else 100_000
            except ValueError:
                pass
            else:
                if quota > 0 and period > 0:
                    limits.append(quota / period)
    # v1: quota -1 means unlimited.
    quota_v1 = _read_int(cgroup / "cpu" / "cpu.cfs_quota_us")
    period_v1 = _read_int(cgroup / "cpu" / "cpu.cfs_period_us")
    if quota_v1 is not None and period_v1 is not None and quota_v1 > 0 and period_v1 > 0:
        limits.append(quota_v1 / period_v1)
    return min(limits) if limits else None


def probe_cpus(root: Path = _ROOT) -> float:
    """The CPUs this process may use: the fewer of its CPU affinity and its cgroup quota."""
    count: int | None
    # The affinity mask belongs to this process, not to a fake tree, so only use it for real.
    if root == _ROOT and hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count()
    cpus = float(max(count or 1, 1))
    limit = _cgroup_cpu_limit(root)
    # A quota may be fractional (0.5 cpu): keep it as is, it is what we may really use.
    return min(cpus, limit) if limit is not None else cpus


# --- memory --------------------------------------------------------------------------------------


def _cgroup_memory(root: Path) -> tuple[int | None, int | None, int]:
    """(limit, usage, reclaimable cache) of the cgroup; limit None means unlimited."""
    cgroup = root / "sys" / "fs" / "cgroup"
    v2_max = _read_text(cgroup / "memory.max")
    if v2_max is not None:
        limit = None if v2_max == "max" else _to_int(v2_max)
        usage = _read_int(cgroup / "memory.current")
        cache = _memory_stat(cgroup / "memory.stat", "inactive_file")
    else:
        v1 = cgroup / "memory"
        limit = _read_int(v1 / "memory.limit_in_bytes")
        usage = _read_int(v1 / "memory.usage_in_bytes")
        cache = _memory_stat(v1 / "memory.stat", "total_inactive_file")
    if limit is not None and (limit >= _UNLIMITED_BYTES or limit <= 0):
        limit = None
    return limit, usage, cache


def _memory_stat(path: Path, key: str) -> int:
    text = _read_text(path)
    if text is None:
        return 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return 0


def _physical_memory() -> int | None:
    """Fallback for a real machine whose /proc/meminfo cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def probe_memory_bytes(root: Path = _ROOT) -> int:
    """The memory this process may use: the less of the machine's RAM and its cgroup limit."""
    total = _meminfo(root).get("MemTotal")
    if total is None and root == _ROOT:
        total = _physical_memory()
    limit, _, _ = _cgroup_memory(root)
    candidates = [value for value in (total, limit) if value is not None and value > 0]
    if not candidates:
        raise ConfigError("cannot determine this machine's memory; give it with --memory")
    return min(candidates)


def available_memory_bytes(root: Path = _ROOT) -> int:
    """Memory still free for new work: the less of MemAvailable and what the cgroup has left.

    Cgroup usage counts the page cache, which the kernel drops under pressure; the inactive part
    of it is subtracted (as the kubelet does) so that a node that has read many files does not
    believe itself full. The result is never negative.
    """
    info = _meminfo(root)
    # MemAvailable is missing before Linux 3.14; MemFree is the conservative stand-in.
    free = info.get("MemAvailable", info.get("MemFree"))
    candidates: list[int] = [] if free is None else [free]
    limit, usage, cache = _cgroup_memory(root)
    if limit is not None and usage is not None:
        candidates.append(limit - max(usage - cache, 0))
    if not candidates:
        if root == _ROOT:
            try:
                return max(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"), 0)
            except (AttributeError, ValueError, OSError):
                pass
        raise ConfigError("cannot determine this machine's available memory")
    return max(min(candidates), 0)


# --- GPUs ----------------------------------------------------------------------------------------


def probe_gpus(root: Path = _ROOT, environ: Mapping[str, str] | None = None) -> int:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else the NVIDIA driver's list.

    nvidia-smi is deliberately not run: it can hang for seconds on a wedged driver.
    """
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = 0
        for entry in visible.split(","):
            entry = entry.strip()
            # CUDA stops at the first invalid index, so "-1" hides it and everything after it.
            if entry == "-1":
                break
            if entry:
                count += 1
        return count
    gpus_dir = root / "proc" / "driver" / "nvidia" / "gpus"
    try:
        return sum(1 for _ in gpus_dir.iterdir())
    except OSError:
        return 0


# --- user input ----------------------------------------------------------------------------------


def probe(
    cpus: float | None = None,
    memory_bytes: int | None = None,
    gpus: int | None = None,
    root: Path = _ROOT,
) -> Resources:
    """This node's capacity: each given override replaces the probed value."""
    # Overrides are checked before probing so that a bad flag is reported even where probing fails.
    if cpus is not None and (
        isinstance(cpus, bool)
        or not isinstance(cpus, int | float)
        or not math.isfinite(cpus)
        or cpus <= 0
    ):
        raise ConfigError(f"cpus: {cpus!r} must be a number greater than 0")
    if memory_bytes is not None and (
        isinstance(memory_bytes, bool) or not isinstance(memory_bytes, int) or memory_bytes <= 0
    ):
        raise ConfigError(f"memory: {memory_bytes!r} must be a number of bytes greater than 0")
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0):
        raise ConfigError(f"gpus: {gpus!r} must be a whole number, 0 or more")
    return Resources(
        cpus=float(cpus) if cpus is not None else probe_cpus(root),
        memory_bytes=memory_bytes if memory_bytes is not None else probe_memory_bytes(root),
        gpus=gpus if gpus is not None else probe_gpus(root),
    )


def builtin_labels(capacity: Resources) -> dict[str, str | int | float]:
    """The labels every node has, so tasks can require e.g. `gpus>=1` or `arch=x86_64`."""
    cpus: int | float = int(capacity.cpus) if capacity.cpus.is_integer() else capacity.cpus
    return {
        "cpus": cpus,
        "memory_gb": round(capacity.memory_bytes / 2**30, 1),
        "gpus": capacity.gpus,
        "arch": platform.machine(),
        "hostname": socket.gethostname(),
    }


def own_peak_rss_kb() -> int:
    """This process's peak resident memory (VmHWM). A child forked from us inherits it as the
    floor of its kernel-reported ru_maxrss, so only a figure above it is the child's own."""
    for line in (_read_text(_ROOT / "proc/self/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def group_rss_kb(pgids: set[int], root: Path = _ROOT) -> dict[int, int]:
    """Resident memory of each process group in `pgids`, summed over its members, in KiB.

    One pass over /proc serves every running attempt (each leads its own process group)."""
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    totals = dict.fromkeys(pgids, 0)
    proc = root / "proc"
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return totals
    for entry in entries:
        stat = _read_text(proc / entry / "stat")
        if stat is None:
            continue  # exited meanwhile
        fields = stat.rsplit(")", 1)[-1].split()
        try:
            pgid, rss_pages = int(fields[2]), int(fields[21])
        except (IndexError, ValueError):
            continue
        if pgid in totals:
            totals[pgid] += rss_pages * page_kb
    return totals
