"""Processes for bench/executors.py: children run with a bound, servers started and stopped, and
the memory of a run's whole process tree sampled from /proc.

The bench makes itself a child subreaper (prctl), so every process a run starts stays in the
bench's tree even when its parent exits or it detaches (Ray's and Dask's helpers, a Celery pool
process): the sampler finds them all under the bench's own pid, and after every run
`sweep_orphans` kills (by pid) and reaps whatever the run left behind. Servers the bench keeps
across a run (Redis; a swarm daemon) are named in a ServerSet, so they are neither swept nor
counted in another tool's tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
SAMPLE_PERIOD_S = 0.05
PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>
READY_POLL_S = 0.1
SWEEP_ROUNDS_MAX = 50  # each round kills what is left and reaps it; grandchildren need a few
SWEEP_PAUSE_S = 0.05
LOG_TAIL_LINES = 12


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, RSS in bytes) of every process now, from /proc/PID/stat."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue  # it exited while we looked
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[21]) * PAGE_BYTES)
    return table


def descendants(table: dict[int, tuple[int, int]], roots: Iterable[int]) -> set[int]:
    """The roots (those alive) and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def tree_bytes(table: dict[int, tuple[int, int]], pids: set[int]) -> int:
    return sum(table[pid][1] for pid in pids)


class TreeSampler:
    """Every SAMPLE_PERIOD_S, the summed RSS of everything under the bench but the excluded
    servers (which belong to no run, or to another tool); its peak, and the peak of the subtree
    of `node_pid` (swarm's daemon and its workers) when given."""

    def __init__(self, exclude_pids: set[int], node_pid: int | None) -> None:
        self.exclude_pids = exclude_pids
        self.node_pid = node_pid
        self.peak_bytes = 0
        self.node_peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        table = proc_table()
        me = os.getpid()
        roots = [pid for pid, (ppid, _) in table.items() if ppid == me]
        tree = descendants(table, (pid for pid in roots if pid not in self.exclude_pids))
        self.peak_bytes = max(self.peak_bytes, tree_bytes(table, tree))
        if self.node_pid is not None:
            node = descendants(table, [self.node_pid])
            self.node_peak_bytes = max(self.node_peak_bytes, tree_bytes(table, node))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_PERIOD_S)


@dataclass(frozen=True, slots=True)
class ChildRun:
    spawned_monotonic: float  # time.monotonic() just before the spawn
    wall_s: float  # from the spawn until it was reaped
    exit_code: int | None  # None: killed at its timeout
    log_tail: str
    peak_bytes: int | None = None
    node_peak_bytes: int | None = None


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:])
    return ""


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_child(
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    timeout_s: float,
    sampler: TreeSampler | None,
) -> ChildRun:
    """Run argv in its own session to completion, or kill its group at timeout_s."""
    with open(log_path, "wb") as sink:
        spawned = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env,
            cwd=log_path.parent, start_new_session=True,
        )  # fmt: skip
        if sampler is not None:
            sampler.start()
        try:
            exit_code: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait()
            exit_code = None
        finally:
            wall_s = time.monotonic() - spawned
            if sampler is not None:
                sampler.stop()
    return ChildRun(
        spawned_monotonic=spawned,
        wall_s=wall_s,
        exit_code=exit_code,
        log_tail=tail(log_path),
        peak_bytes=sampler.peak_bytes if sampler else None,
        node_peak_bytes=sampler.node_peak_bytes if sampler and sampler.node_pid else None,
    )


@dataclass
class SpawnedServer:
    """A server the bench started (Redis, a swarm daemon), in its own session."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""

    @classmethod
    def spawn(
        cls, name: str, argv: list[str], log_path: Path, env: dict[str, str]
    ) -> SpawnedServer:
        with open(log_path, "wb") as sink:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        return cls(name, proc, log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, answers: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.proc.returncode}):\n{tail(self.log_path)}"
                )
            if answers():
                return
            time.sleep(READY_POLL_S)
        self.stop(timeout_s)
        raise RuntimeError(
            f"{self.name} did not answer in {timeout_s:.0f} s:\n{tail(self.log_path)}"
        )

    def stop(self, timeout_s: float) -> None:
        """SIGTERM, then SIGKILL of its whole group if it lingers."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(self.proc.pid)
            self.proc.wait(timeout=timeout_s)


@dataclass
class ServerSet:
    servers: list[SpawnedServer] = field(default_factory=list)

    def add(self, server: SpawnedServer) -> None:
        self.servers.append(server)

    def discard(self, server: SpawnedServer) -> None:
        with contextlib.suppress(ValueError):
            self.servers.remove(server)

    def pids(self) -> set[int]:
        return {server.pid for server in self.servers}

    def stop_all(self, timeout_s: float = 30.0) -> None:
        for server in list(reversed(self.servers)):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                server.stop(timeout_s)
            self.discard(server)


def command_name(pid: int) -> str:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/comm", encoding="utf-8") as handle:
        return handle.read().strip()
    return "?"


def sweep_orphans(servers: ServerSet) -> list[str]:
    """Kill and reap every process under the bench that is not a kept server (what a run left
    behind); the names of those it killed that were still running."""
    me = os.getpid()
    killed: dict[int, str] = {}
    for _ in range(SWEEP_ROUNDS_MAX):
        table = proc_table()
        mine = [pid for pid, (ppid, _) in table.items() if ppid == me and pid not in servers.pids()]
        if not mine:
            break
        for pid in descendants(table, mine):
            name = command_name(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                if table[pid][1] and pid not in killed:  # a zombie has no RSS: it had ended
                    killed[pid] = name
        for pid in mine:  # they are our children now: reap them, or they stay zombies
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(SWEEP_PAUSE_S)
    return sorted(killed.values())
