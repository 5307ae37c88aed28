"""An attempt's processes beyond its leader: its process group, its strays, and orphans.

Theory of operation
-------------------
Each attempt leads its own session and process group, so a timeout, a cancel or a shutdown kills
the whole tree it started (`kill_group`); `live_groups` holds the groups of the attempts running
now, whose processes are theirs and never another attempt's strays.

If the daemon itself is killed, its attempts keep running as orphans. Every attempt carries
`SWARM_NODE=<node id>` in its environment, so the next start finds them in /proc and kills their
process groups (`kill_orphans`) before the tasks run again; no per-attempt file is needed.
The same tags (node, task id, epoch) find, when an attempt ends, the processes that left its
process group with setsid (`kill_strays`); only one that also cleared its environment escapes.
Reading a process's environment is the task's to slow down (thousands of processes with big
environments) or to block (the read takes the process's memory map lock, which a process stuck in
a page fault on a file it serves itself holds), so the reads run in a thread of their own
(`task_threads`), bounded in processes and time; the loop only checks whether any process is
young enough to be one of them, which for a task that leaves nothing behind is all it does
(`kill_attempt_strays`). Most often every pid handed out since the attempt started went to the
node's own next attempts (`leaders`), and one read of the last pid says so; else a listing of
/proc tells, with the `stat` of each young process: one of another running attempt's group is
not a stray, nor one that a process none of ours forked (another node's task on the same
machine, a cron job), told by its ancestry (`_Look.may_be_stray`).

A stopped attempt whose leader ends within the grace (a `cmd`'s shell dies at SIGTERM at once,
its program may trap it) gives the rest of its group what is left of the grace: `group_ended`
lists the group's live processes (in a thread) and watches them by pidfds until they are gone,
while the attempt keeps its leader unreaped so that the group's number names no other group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from pathlib import Path
from typing import NamedTuple

from swarm.daemon.task_threads import task_threads

log = logging.getLogger("swarm.daemon.procs")

PROC = Path("/proc")
NODE_TAG = "SWARM_NODE"  # set in every attempt's environment to the id of the node that runs it
# ...and this to its state dir's own tag (node_dir_tag): a daemon started from a copy of a running
# node's state dir on the same machine (it stops at its first sync) must not kill the other's
# attempts as orphans.
NODE_DIR_TAG = "SWARM_NODE_DIR"
STRAY_ROUNDS_MAX = 5  # scans of /proc for an ended attempt's processes outside its group
# /proc entries the loop lists, at an attempt's end, to tell whether any process is young enough to
# be one of its strays, before it leaves the question to the scan's thread (about 1 us each).
PROC_ENTRIES_INLINE_MAX = 2_048
# The `stat`s of young processes (and of their ancestors) read on the loop, to tell other
# attempts' processes and other programs' (most young ones, on a busy machine) from strays; with
# more, the scan goes to a thread.
STATS_READ_INLINE_MAX = 64
ANCESTRY_STEPS_MAX = 32  # ancestors looked at for one young process, read or remembered
STRAY_PIDS_MAX = 4_096  # environments read per scan of /proc for an attempt's strays
STRAY_SCAN_S = 2.0  # longest the scans for one attempt's strays may take, all rounds together
# Beyond the scans' own deadline, how long the attempt waits for one stuck in a read (of a
# process stuck in a page fault) before it ends without them.
STRAY_SCAN_GRACE_S = 1.0


# Our own recent attempt leaders whose pids are remembered: when every pid handed out since an
# attempt's leader went to one of them, nothing it forked can be alive (see `_any_young`).
LEADERS_REMEMBERED_MAX = 4_096


# The process groups of the attempts running now (each attempt leads its own group): their
# processes are theirs, never another attempt's strays.
live_groups: set[int] = set()


class Leaders:
    """The pids of the attempt leaders this node started last, oldest forgotten first, each
    with the order it was started in: pids start again from the bottom, so a pid counts as a
    leader's only if that leader started after the attempt asked about."""

    def __init__(self, remembered_max: int = LEADERS_REMEMBERED_MAX) -> None:
        self._order: deque[tuple[int, int]] = deque()  # (pid, rank), oldest first
        self._rank: dict[int, int] = {}  # pid -> how many leaders had started, it included
        self._started = 0
        self._max = remembered_max

    def add(self, pid: int) -> None:
        self._started += 1
        self._rank[pid] = self._started  # a pid handed out again: its new leader counts
        self._order.append((pid, self._started))
        if len(self._order) > self._max:
            old, rank = self._order.popleft()
            if self._rank.get(old) == rank:
                del self._rank[old]

    def took_all(self, after: int, last: int) -> bool:
        """Whether every pid from `after` + 1 to `last` went to a leader remembered here that
        started after `after` did (any remembered one, if `after` is not remembered)."""
        if last - after > len(self._rank):
            return False
        since = self._rank.get(after, 0)
        return all(self._rank.get(pid, 0) > since for pid in range(after + 1, last + 1))


leaders = Leaders()


def kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def node_dir_tag(state_root: Path) -> str:
    """The NODE_DIR_TAG of a state dir: its device and inode, the same however the dir is
    named (a rename, a symlink to it), and another for a copy (a directory cannot be hard
    linked, as a key file could be)."""
    st = state_root.stat()
    return f"{st.st_dev}:{st.st_ino}"


def kill_orphans(
    run_root: Path, node_id: str, dir_tag: str = "", proc: Path = Path("/proc")
) -> list[tuple[str, int]]:
    """Kill the process groups of attempts a previous daemon of this node left running (found by
    their SWARM_NODE tag), and remove the run dirs. Returns the (task id, epoch) of each group
    killed, so that the node can record those attempts even if their claims never reached its
    ledger (the daemon may have died before it wrote them). A group none of whose processes
    names a task (an idle warm Python worker: workers.py) is killed and not recorded; a worker's
    group in the middle of a call is recorded as the call's attempt, which its children name.
    A process tagged with another state dir (NODE_DIR_TAG, other than `dir_tag`) is another
    daemon's, and spared."""
    tag = f"{NODE_TAG}={node_id}".encode()
    dir_prefix = f"{NODE_DIR_TAG}=".encode()
    ours = dir_prefix + dir_tag.encode()
    groups: dict[int, tuple[str, int] | None] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if tag in environ and not any(e.startswith(dir_prefix) and e != ours for e in environ):
            stat = _stat_of(proc, int(entry.name))
            if stat is None or stat[1] < 0:
                continue  # gone meanwhile, or not ours to read
            pgid = stat[1]
            task_id, epoch = _attempt_of(environ)
            if groups.get(pgid) is None:  # the first process of the group that names a task
                groups[pgid] = (task_id, epoch) if task_id else None
    for pgid in groups:
        kill_group(pgid, signal.SIGKILL)
    if run_root.is_dir():
        for run_dir in run_root.iterdir():
            shutil.rmtree(run_dir, ignore_errors=True)
    return [attempt for attempt in groups.values() if attempt is not None]


def kill_strays(
    tags: frozenset[bytes],
    since_pid: int = 0,
    proc: Path = Path("/proc"),
    rounds_max: int = STRAY_ROUNDS_MAX,
    *,
    pids_max: int = STRAY_PIDS_MAX,
    time_max_s: float = STRAY_SCAN_S,
    stop: threading.Event | None = None,
) -> int:
    """SIGKILL every process whose environment carries all of an attempt's `tags`: those that
    left the attempt's process group (setsid, a double fork into a new session), which killing
    the group misses. Blocking: run it in a thread. Only processes forked since `since_pid` (the
    attempt's leader) are read, so the cost follows how many are that young, not how many run.
    Rescans while it finds some (one may have forked meanwhile), at most `rounds_max` times, each
    reading at most `pids_max` environments; gives up after `time_max_s` or once `stop` is set;
    returns how many it killed. A process that cleared or replaced its environment is missed."""
    # Each process is read once: one that did not carry the tags will not (it would have to
    # exec with them). Never ourselves (a daemon started by a task).
    seen: set[int] = {os.getpid()}
    killed = 0
    deadline = time.monotonic() + time_max_s

    def over() -> bool:
        return time.monotonic() > deadline or (stop is not None and stop.is_set())

    for _ in range(rounds_max):
        found = _pids_with(tags, proc, since_pid, seen, pids_max, over)
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed += len(found)
        if over():  # it may have stopped reading in the middle of a round
            names = " ".join(sorted(tag.decode(errors="replace") for tag in tags))
            log.warning("gave up looking for the processes left behind with %s", names)
            break
        if not found:
            break
    return killed


class Began(NamedTuple):
    """When an attempt began, as its end's look for strays needs it (`began`, read before its
    process is spawned or its call is sent): the tick since boot (`boot_tick`) and the
    machine's forks so far (`forks_so_far`); -1 where unknown."""

    tick: int = -1
    forks: int = -1


UNKNOWN_START = Began()


def began() -> Began:
    return Began(boot_tick(), forks_so_far(FORKS_STALE_S))


async def kill_attempt_strays(
    tags: frozenset[bytes], since_pid: int, task_id: str, start: Began = UNKNOWN_START
) -> None:
    """Kill the processes of an attempt (led by `since_pid`, begun at `start`, carrying `tags`)
    that left its process group. They were all forked after its leader, so when no process is
    younger (a listing of /proc, in memory: done here) there is nothing to read; else their
    environments are read in a thread, bounded in processes and time, and an attempt whose scan
    is stuck ends without it. If the machine may have handed out a whole turn of pids since the
    attempt began (a long task on a busy machine), a pid says nothing of a process's age: the
    scan reads every process."""
    if pids_may_have_turned(start.forks):
        since_pid = 0  # every process may be young
    else:
        kin = _kin() if start.tick >= 0 else None
        groups = live_groups
        if not _any_young(PROC, since_pid, groups_skipped=groups, kin=kin, since_tick=start.tick):
            return
    stop = threading.Event()
    scan = task_threads.run(
        kill_strays,
        tags,
        since_pid,
        pids_max=STRAY_PIDS_MAX,
        time_max_s=STRAY_SCAN_S,
        stop=stop,
    )
    try:
        await asyncio.wait_for(scan, STRAY_SCAN_S + STRAY_SCAN_GRACE_S)
    except TimeoutError:
        log.warning(
            "the scan of %s for the processes task %s left behind did not end in %g s "
            "(a read stuck on one of them?); the attempt ends without it",
            PROC,
            task_id,
            STRAY_SCAN_S + STRAY_SCAN_GRACE_S,
        )
    finally:
        stop.set()  # a scan still running ends at its next process


def _pids_with(
    tags: frozenset[bytes],
    proc: Path,
    since_pid: int,
    seen: set[int],
    pids_max: int = STRAY_PIDS_MAX,
    over: Callable[[], bool] = lambda: False,
) -> list[int]:
    """The young pids, not in `seen`, whose environment carries all `tags`, from at most
    `pids_max` environments read (their pids are added to `seen`); stops reading once `over()`
    says so."""
    with os.scandir(proc) as entries:
        listed = sorted(int(entry.name) for entry in entries if entry.name.isdigit())
    young = _young_pids(proc, since_pid)  # after the listing: see there
    pids = []
    read = 0
    for pid in listed:
        if not young(pid) or pid in seen:
            continue
        if read >= pids_max or over():
            break
        read += 1
        seen.add(pid)
        try:
            environ = _read_environ(proc / str(pid))
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if tags.issubset(environ.split(b"\0")):
            pids.append(pid)
    return pids


# A stopped attempt whose leader ended first (a `cmd`'s shell dies at SIGTERM at once) gives the
# rest of its group what is left of the grace (`group_ended`): it lists the group's processes
# from /proc (among at most GROUP_ENTRIES_MAX entries), watches at most GROUP_WATCHED_MAX of them
# by pidfds (and the node's stopped attempts at most PIDFDS_WATCHED_MAX together), and lists
# again once those are gone, at most every GROUP_RELIST_S; when it cannot watch, it polls, at
# first after GROUP_RELIST_S, then after twice as long each round, up to GROUP_RELIST_MAX_S.
GROUP_WATCHED_MAX = 256
PIDFDS_WATCHED_MAX = 1_024
GROUP_ENTRIES_MAX = 65_536
GROUP_RELIST_S = 0.05
GROUP_RELIST_MAX_S = 0.4
_pidfds_watched = 0  # by all the stopped attempts now


async def group_ended(pgid: int, since_pid: int, start: Began, deadline: float) -> None:
    """Wait until the process group `pgid` has no live process but its leader, or until
    `deadline` (on the loop's clock). Its processes were all forked after `since_pid`, at or
    after `start`. The caller keeps the group's number from being handed out again meanwhile
    (its leader unreaped, or alive)."""
    loop = asyncio.get_running_loop()
    warned = False
    polls = 0  # rounds in a row that watched nothing: they back off
    while (left_s := deadline - loop.time()) > 0:
        round_ends = loop.time() + min(GROUP_RELIST_S * 2**polls, GROUP_RELIST_MAX_S)
        listing = asyncio.to_thread(group_members, pgid, since_pid, start, PROC, GROUP_WATCHED_MAX)
        try:
            members = await asyncio.wait_for(listing, left_s)
        except TimeoutError:
            return  # the listing is stuck behind other work: the grace ends without it
        if members == []:
            return
        failed = None
        if members is not None:
            failed = await _watch_until_gone(pgid, members, deadline - loop.time())
        polls = min(polls + 1, 8) if members is None or failed is not None else 0
        if failed is not None and not warned:
            warned = True  # (then it polls, at each round)
            log.warning("cannot watch the processes of group %d: %s", pgid, failed)
        # List again: for those forked since, those beyond the first ones, or after a failure.
        await asyncio.sleep(max(0.0, min(round_ends, deadline) - loop.time()))


def group_members(
    pgid: int,
    since_pid: int,
    start: Began,
    proc: Path = PROC,
    members_max: int = GROUP_WATCHED_MAX,
) -> list[int] | None:
    """Up to `members_max` live processes of the process group `pgid` but its leader, zombies
    left out; None if that cannot be told (/proc unreadable, more than GROUP_ENTRIES_MAX
    entries). Those wanted were all forked after `since_pid` was, at or after `start`, so
    /proc is listed from that pid on, unless pids may have started again from the bottom
    since. Blocking (a `stat` per process listed): a thread's."""
    last = _last_pid(proc)
    since = 0 if last < since_pid or pids_may_have_turned(start.forks) else since_pid
    pids = _pids_from(proc, since, GROUP_ENTRIES_MAX)
    if pids is None:
        return None
    members = []
    for pid in pids:
        if pid != pgid and _group_if_alive(proc, pid) == pgid:
            members.append(pid)
            if len(members) >= members_max:
                break
    return members


def _group_if_alive(proc: Path, pid: int) -> int | None:
    """The process group of `pid`; None if it is gone, a zombie or unreadable. One whose first
    thread has exited shows as a zombie while its other threads run: alive."""
    try:
        fields = _stat_fields(proc, pid, 18)  # (state ppid pgrp ... num_threads ...)
        state, group, threads = fields[0], int(fields[2]), int(fields[17])
        return None if state == b"X" or (state == b"Z" and threads <= 1) else group
    except (OSError, ValueError, IndexError):
        return None


async def _watch_until_gone(
    pgid: int, members: Collection[int], timeout_s: float
) -> OSError | None:
    """Wait, up to `timeout_s`, until each of `members` of the group `pgid` has exited; at once
    the error, if one could not be watched (out of descriptors, say). Each is watched by a
    pidfd, once it is seen to be in the group still after the pidfd is opened: its pid may have
    gone to another process since it was listed."""
    global _pidfds_watched
    loop = asyncio.get_running_loop()
    all_gone = loop.create_future()
    watched: set[int] = set()

    def gone(fd: int) -> None:
        loop.remove_reader(fd)
        watched.discard(fd)
        if not watched and not all_gone.done():
            all_gone.set_result(None)

    opened: list[int] = []
    try:
        for pid in members:
            if _pidfds_watched >= PIDFDS_WATCHED_MAX:  # the others: at the next listing
                if not opened:
                    return OSError(f"the node watches {PIDFDS_WATCHED_MAX} processes already")
                break
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # gone already
            except OSError as exc:
                return exc
            opened.append(fd)
            _pidfds_watched += 1
            try:
                if os.getpgid(pid) != pgid:
                    continue
            except ProcessLookupError:
                continue
            watched.add(fd)
            loop.add_reader(fd, gone, fd)
        if watched:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_gone, timeout_s)
        return None
    finally:
        for fd in opened:
            if fd in watched:
                loop.remove_reader(fd)
            os.close(fd)
        _pidfds_watched -= len(opened)


def _read_environ(proc_pid: Path) -> bytes:
    """A process's environment (the kernel bounds it, with the argument list). Blocking, for as
    long as the process holds its memory map lock (stuck in a page fault): never on the loop.
    One whose first thread exited while others run (pthread_exit) is read through one of
    those: its own entry no longer has a memory map to read."""
    try:
        with open(proc_pid / "environ", "rb") as f:
            environ = f.read()
    except ProcessLookupError:  # (older kernels read nothing instead)
        environ = b""
    if environ:
        return environ
    for thread in os.listdir(proc_pid / "task"):
        with (
            contextlib.suppress(ProcessLookupError),
            open(proc_pid / "task" / thread / "environ", "rb") as f,
        ):
            environ = f.read()
        if environ:
            return environ
    return environ


def _any_young(
    proc: Path,
    since_pid: int,
    entries_max: int = PROC_ENTRIES_INLINE_MAX,
    groups_skipped: Collection[int] = (),
    kin: Collection[int] | None = None,
    since_tick: int = -1,
) -> bool:
    """Whether a process may have been forked since `since_pid` was, outside `groups_skipped`
    (the groups of attempts running now: their processes are theirs, not this one's strays),
    and, given `kin` (see `_kin`) and the attempt's start (`since_tick`), not forked by a
    process that is none of ours. Cheap enough for the loop: a listing of /proc, and the `stat`
    of each young process and of its ancestors up to one older than the attempt (a `stat` never
    waits on the process), stopping at the first that may be a stray or, saying maybe, after
    `entries_max` entries or STATS_READ_INLINE_MAX stats read."""
    before = _last_pid(proc)
    if since_pid <= 0 or before < since_pid:
        return True  # cannot tell, or pids have started again from the bottom since
    if leaders.took_all(since_pid, before):
        return False  # every pid since went to a leader of ours: nothing it forked is alive
    # Young, or forked while we list or before pids last started again.
    candidates = _pids_from(proc, since_pid, entries_max)
    if candidates is None:
        return True
    young = _young_pids(proc, since_pid)
    candidates = [pid for pid in candidates if young(pid)]
    if len(candidates) > STATS_READ_INLINE_MAX:
        return True
    look = _Look(proc, groups_skipped, kin if since_tick >= 0 else None, since_tick)
    return any(look.may_be_stray(pid) for pid in candidates)


def _pids_from(proc: Path, since_pid: int, entries_max: int) -> list[int] | None:
    """The pids `proc` lists from `since_pid` up; None if it cannot be listed or more than
    `entries_max` entries were passed over. The real /proc is read from `since_pid` on (see
    `_seeks_by_pid`): a machine's hundreds of older processes are not listed at every
    attempt's end."""
    try:
        fd = os.open(proc, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if _seeks_by_pid(proc, fd):
            os.lseek(fd, since_pid + PROC_PID_POS, os.SEEK_SET)
        else:
            os.lseek(fd, 0, os.SEEK_SET)
        pids = []
        with os.scandir(fd) as entries:  # (a copy of fd, at its position)
            for seen, entry in enumerate(entries):
                if seen >= entries_max:
                    return None
                if entry.name.isdigit() and int(entry.name) >= since_pid:
                    pids.append(int(entry.name))
        return pids
    except OSError:
        return None
    finally:
        os.close(fd)


# Linux lists /proc's processes by pid, the one with pid P at directory position P + 258 (the
# entries before them: fs/proc/base.c, TGID_OFFSET), so a listing may begin at a pid.
PROC_PID_POS = 258
_seeks: dict[Path, bool] = {}


def _seeks_by_pid(proc: Path, fd: int) -> bool:
    """Whether `proc` (open as `fd`) lists from a pid when its position is set to it: tried once
    on our own pid, which must then come first, and on the pid after it, which must not. Not so
    (a kernel that lays /proc out otherwise, or a plain dir): listed whole."""
    known = _seeks.get(proc)
    if known is None:
        own = os.getpid()

        def first_from(pid: int) -> str | None:
            os.lseek(fd, pid + PROC_PID_POS, os.SEEK_SET)
            with os.scandir(fd) as entries:
                return next((entry.name for entry in entries), None)

        try:
            after = first_from(own + 1)
            known = first_from(own) == str(own) and (after is None or int(after) > own)
        except OSError:  # (out of descriptors, say): listed whole this time, tried again next
            return False
        except ValueError:
            known = False
        _seeks[proc] = known
    return known


class _Look:
    """One check's reads of /proc (see `may_be_stray`), bounded, each process's `stat` read at
    most once (the few other programs that fork are the parents of many young processes)."""

    def __init__(
        self, proc: Path, groups_skipped: Collection[int], kin: Collection[int] | None, tick: int
    ) -> None:
        self.proc, self.groups_skipped, self.kin, self.tick = proc, groups_skipped, kin, tick
        self.reads_left = STATS_READ_INLINE_MAX
        self._stats: dict[int, _Stat | None] = {}

    def may_be_stray(self, pid: int) -> bool:
        """Whether the young process `pid` may be a stray of the attempt: alive, outside the
        groups skipped and, given `kin`, not the descendant of a process that is none of ours
        and began before the attempt did.

        A stray's ancestors are its attempt's processes, all begun since it, up to the attempt's
        leader and the node (or, for a Python call, its warm worker, whose group is live); one
        orphaned is adopted by a reaper: the nearest ancestor marked as a child subreaper, or
        init: one of the node's own ancestors, unless it is in another pid namespace (the task
        entered one that was there before it), whose init adopts it. So a young process with an
        ancestor outside `kin` that began before the attempt, in the node's pid namespace, was
        forked by someone else: another node's task on the same machine, a cron job, a shell's
        command. Its environment is not read."""
        stat = self._stat(pid, start=False)
        if stat is None:
            return False  # gone: no stray
        parent, group, _ = stat
        if group in self.groups_skipped:
            return False
        kin = self.kin
        if kin is None or parent < 0:
            return True
        for _ in range(ANCESTRY_STEPS_MAX):
            if parent in kin:
                return True
            up = self._stat(parent, start=True)
            if up is None or up[0] < 0:
                return True  # gone as we looked (its child adopted meanwhile), or unreadable
            if 0 <= up[2] < self.tick:  # began before the attempt: none of its processes
                return _in_another_pid_namespace(self.proc, parent, up[2])
            parent = up[0]
        return True  # a chain this long (or a loop, pids handed out again as we read): maybe

    def _stat(self, pid: int, start: bool) -> _Stat | None:
        known = self._stats.get(pid, _UNREAD)
        if known is not _UNREAD and (known is None or known[2] >= 0 or not start):
            return known
        if self.reads_left <= 0:
            return _UNREAD
        self.reads_left -= 1
        self._stats[pid] = found = _stat_of(self.proc, pid, start)
        return found


# What a process's `stat` says of it: (parent, group, start in ticks since boot; -1 not read).
# (-1, -1, -1): it could not be read (then it may be a stray).
_Stat = tuple[int, int, int]
_UNREAD: _Stat = (-1, -1, -1)


def _stat_of(proc: Path, pid: int, start: bool = False) -> _Stat | None:
    """The parent, group and (if `start`) start of `pid`; None once it is gone (a gone
    process is no stray), `_UNREAD` if it cannot be read. Read with plain system calls: a few
    are made at the end of every attempt, on the loop."""
    path = f"{proc}/{pid}"
    try:
        fields = _stat_fields(proc, pid, 20 if start else 3)  # (state ppid pgrp ... starttime)
        started = int(fields[19]) if start and len(fields) > 19 else -1
        return int(fields[1]), int(fields[2]), started
    except (OSError, ValueError, IndexError):
        return None if not os.path.exists(path) else _UNREAD


def _stat_fields(proc: Path, pid: int, splits: int) -> list[bytes]:
    """The fields of `pid`'s stat after its name, the state first, split `splits` times;
    OSError or ValueError if it cannot be read."""
    fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    try:
        stat_line = os.read(fd, 4096)
    finally:
        os.close(fd)
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    return stat_line[stat_line.rindex(b")") + 2 :].split(None, splits)


def boot_tick() -> int:
    """Now, in the clock ticks since boot that /proc gives a process's start in: a process whose
    start is below the tick read before an attempt began began before it."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // _NS_PER_TICK


_NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")

# How old a reading of the machine's forks may be: at an attempt's start (older only makes the
# count since then larger: a turn of pids is suspected sooner), and at its end (a turn of pids
# in that long would take millions of forks a second).
FORKS_STALE_S = 5.0
FORKS_FRESH_S = 0.1
RESERVED_PIDS = 300  # pids start again from here, not from 1 (the kernel's RESERVED_PIDS)


def forks_so_far(max_age_s: float) -> int:
    """The processes and threads forked on this machine since boot (`processes` in /proc/stat:
    each took a pid), as read at most `max_age_s` ago; -1 if it cannot be read."""
    global _forks
    now = time.monotonic()
    if now - _forks[0] >= max_age_s:
        count, pid_max = -1, _forks[2]
        with contextlib.suppress(OSError, ValueError):
            with open(PROC / "stat", "rb") as f:
                data = f.read()
            at = data.index(b"\nprocesses ") + len(b"\nprocesses ")
            count = int(data[at : data.index(b"\n", at)])
            pid_max = int((PROC / "sys" / "kernel" / "pid_max").read_text())
        _forks = (now, count, pid_max)
    return _forks[1]


_forks: tuple[float, int, int] = (-math.inf, -1, 1 << 22)  # (read at, forks, pid_max)


def pids_may_have_turned(forks_at_start: int) -> bool:
    """Whether enough pids were handed out since `forks_at_start` (`forks_so_far` then) for
    them to have started again from the bottom and come back round: then a young process may
    have any pid."""
    now = forks_so_far(FORKS_FRESH_S)
    if forks_at_start < 0 or now < 0:
        return False
    return now - forks_at_start >= max(1, _forks[2] - RESERVED_PIDS)


def _in_another_pid_namespace(proc: Path, pid: int, started: int) -> bool:
    """Whether the process `pid` (begun at tick `started`) is in a pid namespace other than the
    node's (an init there adopts the orphans of that namespace). Remembered for the process: the
    few programs that fork on a machine are asked about at every attempt's end. False if it
    cannot be read: a process not ours to look at (the scan could not read the environment of
    its children either), or one gone."""
    global _own_ns
    known = _other_ns.get((pid, started))
    if known is not None:
        return known
    try:
        if _own_ns is None:
            _own_ns = os.readlink(f"{PROC}/self/ns/pid")
        other = os.readlink(f"{proc}/{pid}/ns/pid") != _own_ns
    except OSError:
        return False
    if len(_other_ns) >= OTHER_NS_REMEMBERED_MAX:
        _other_ns.clear()
    _other_ns[(pid, started)] = other
    return other


OTHER_NS_REMEMBERED_MAX = 1_024  # processes whose pid namespace is remembered (then forgotten)
_other_ns: dict[tuple[int, int], bool] = {}  # (pid, start tick) -> in another pid namespace
_own_ns: str | None = None


def _kin() -> frozenset[int] | None:
    """The processes that may be the parent of one of this node's strays, apart from those
    begun since its attempt: the node itself, its warm Python workers and attempt leaders (the
    live groups), init, and the node's own ancestors (one of which may be a subreaper that
    adopts its orphans). The ancestors are read again whenever this process's parent changes;
    None (any young process may be a stray) if they cannot all be read (`hidepid`)."""
    global _ancestors
    ppid = os.getppid()
    if _ancestors[0] != ppid:
        chain: list[int] | None = [ppid]
        while chain is not None and chain[-1] > 1 and len(chain) < ANCESTORS_MAX:
            stat = _stat_of(PROC, chain[-1])
            if stat is None or stat[0] < 0:
                chain = None  # gone (read again next time) or hidden
            else:
                chain.append(stat[0])
        if chain is None or chain[-1] > 1:
            return None
        _ancestors = (ppid, frozenset(chain))
    return frozenset((os.getpid(), 1, *_ancestors[1], *live_groups))


ANCESTORS_MAX = 64  # the node's ancestors looked up as kin (a chain is rarely 10 long)
_ancestors: tuple[int, frozenset[int]] = (-1, frozenset())


def _young_pids(proc: Path, since_pid: int) -> Callable[[int], bool]:
    """Which pids of a listing of /proc made just before may have been forked since `since_pid`
    was. Pids are handed out in rising order up to a maximum, then again from the bottom, so
    those from `since_pid` up to the last one handed out (from loadavg, read after the listing:
    any pid listed was handed out by then); if that is below `since_pid`, they have started
    again from the bottom meanwhile: those above `since_pid` or up to the last. A pid above the
    last was handed out before pids last started again from the bottom: it is older. Every pid
    when that cannot be told."""
    last = _last_pid(proc)
    if since_pid <= 0 or last < 0:
        return lambda pid: True
    if last < since_pid:
        return lambda pid: pid >= since_pid or pid <= last
    return lambda pid: since_pid <= pid <= last


def last_pid() -> int:
    """The last pid handed out on this machine, or -1 if that cannot be read: a process forked
    after now has a pid above it (until pids start again from the bottom). Read twice per
    Python call, so from a descriptor kept open (a pread costs a few µs; an open and a read of
    /proc/loadavg ten times that)."""
    global _loadavg_fd
    try:
        if _loadavg_fd < 0:
            _loadavg_fd = os.open(PROC / "loadavg", os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(_loadavg_fd, 256, 0).split()[-1])
    except (OSError, ValueError, IndexError):
        return -1


_loadavg_fd = -1


def _last_pid(proc: Path) -> int:
    """The last pid handed out as `proc` (the real /proc, or a test's) says, or -1 if that
    cannot be read."""
    if proc == PROC:
        return last_pid()  # from the descriptor kept open
    try:
        return int((proc / "loadavg").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return -1


def _attempt_of(environ: list[bytes]) -> tuple[str, int]:
    """The task id and epoch an attempt's environment names ("", 0 if it does not say)."""
    found = dict(item.split(b"=", 1) for item in environ if b"=" in item)
    try:
        epoch = int(found.get(b"SWARM_EPOCH", b"0"))
    except ValueError:
        epoch = 0
    return found.get(b"SWARM_TASK_ID", b"").decode(errors="replace"), epoch
