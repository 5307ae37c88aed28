"""Starting an attempt's process: in its own session, with its stdout and stderr on our files.

Theory of operation
-------------------
A shell command (a task's `cmd`, the common case) starts with `os.posix_spawn`: glibc runs it
through a vfork-style clone and execs at once, with the environment encoded in C, so the event
loop is held about 40% less than by `subprocess.Popen` (its Python-side preparation and error
pipe): 150 against 250 us a start, measured on a 2-core machine. The loop still waits for the
child's exec, as vfork does; starting from a thread of its own, where Popen lets go of the GIL
meanwhile, was measured too, and cost the node half as much CPU again in GIL hand-overs.

posix_spawn has no working-directory action in Python 3.11, so the shell itself changes to the
task's dir first: the command becomes `cd -P -- DIR || exit 127; ` (and OLDPWD put back as the
task's environment had it) and, on the same line, the task's own text, so `$0`, the arguments,
the shell, its line numbers and the environment are the task's as before. A command so long
that this would take it past the kernel's limit for one argument starts with Popen instead.

A task given as an argv list starts with Popen, which changes dir and searches the task's own
PATH before it execs: no shell stands between the task and its program.

Either way the child leads a new session (so its whole tree can be killed), has /dev/null as
stdin, the signals Python ignores (SIGPIPE, SIGXFSZ) back at their defaults, and no descriptor of
ours but the two files. posix_spawn closes nothing itself: every descriptor Python, SQLite and
glibc open is close-on-exec, and those the process inherited from whoever started it are made so
before its first spawn (`_seal_inherited`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import select
import shlex
import signal
import stat
import subprocess
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from swarm.core.spec import ARG_BYTES_MAX

log = logging.getLogger("swarm.daemon.spawn")

SHELL = "/bin/sh"
# With no pidfd to watch a child by, its exit is asked for this often (doubling to the most).
EXIT_POLL_FIRST_S = 0.01
EXIT_POLL_MAX_S = 0.4
CWD_FAILED_EXIT = 127  # as a shell says of a command it cannot run
# Python ignores these; a child must get them at their defaults, as Popen's restore_signals does.
DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


class Process(Protocol):
    """What we keep of a process we started: its pid, and its exit once it was reaped."""

    pid: int
    returncode: int | None


@dataclass(slots=True)
class Spawned:
    """A process started by posix_spawn; `returncode` is set by whoever reaps it."""

    pid: int
    returncode: int | None = None


def spawn(
    cmd: str | None,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    out: int,
    err: int,
    *,
    cwd_known: bool = False,
) -> Process:
    """Start a shell command (`cmd`) or a program (`argv`) in `cwd`, with the descriptors `out`
    and `err` as its stdout and stderr. OSError if it cannot be started (the shell or program
    is missing, the dir is not there): nothing was started. `cwd_known`: the dir is the node's
    own, known to be there (a run dir's `work/`), so it is not looked at first."""
    if cmd is None:
        return _popen(argv, env, cwd, out, err)
    if not cwd_known:
        _check_dir(cwd)  # the shell would say so too, later and less clearly
    _seal_inherited()
    # On the task's first line, so that the shell's messages give the task's own line numbers;
    # -P: the dir chdir() would give (a logical cd would take `link/..` to the link's own dir).
    # cd sets OLDPWD to our own dir: the task gets what its environment said instead.
    given = env.get("OLDPWD")
    oldpwd = "unset OLDPWD" if given is None else f"OLDPWD={shlex.quote(given)}"
    script = f"cd -P -- {shlex.quote(str(cwd))} || exit {CWD_FAILED_EXIT}; {oldpwd}; {cmd}"
    if len(os.fsencode(script)) > ARG_BYTES_MAX:  # a cmd near the limit the spec allows:
        return _popen(argv, env, cwd, out, err)  # no room for the cd, so chdir() it is
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, out, 1),
        (os.POSIX_SPAWN_DUP2, err, 2),
    ]
    pid = os.posix_spawn(
        SHELL,
        [SHELL, "-c", script],
        env,
        file_actions=actions,
        setsid=True,
        setsigdef=DEFAULT_SIGNALS,
        setsigmask=(),
    )
    return Spawned(pid)


def _popen(argv: Sequence[str], env: Mapping[str, str], cwd: Path, out: int, err: int) -> Process:
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )


async def wait_exited(proc: Process) -> None:
    """Wait for our child to exit without blocking the loop, and without reaping it: until
    `reap_child`, its zombie keeps its pid (and so its group's number) from being handed out
    again, so a signal to that group can reach no one else. Watched by a pidfd; polled if no
    pidfd can be had (the node out of descriptors)."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise  # reaped already, or not our child: a bug, not a shortage
        await _poll_exited(proc.pid, exc)
        return
    exits = _exit_watch(loop)
    try:
        await exits.exited(pidfd)
    finally:
        exits.forget(pidfd)
        os.close(pidfd)


class _ExitWatch:
    """The pidfds a loop waits on, in one epoll of their own that the loop watches: an exit
    costs an epoll_ctl and a dict entry here, where the loop's own add_reader and remove_reader
    cost two epoll_ctl calls and its selector's bookkeeping, at every task's end."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # (No reference to the loop: the loop is the key it is kept under, weakly.)
        self._epoll = select.epoll()  # close-on-exec, as Python makes every descriptor
        self._waiting: dict[int, asyncio.Future[None]] = {}
        loop.add_reader(self._epoll.fileno(), self._ready)

    def exited(self, pidfd: int) -> asyncio.Future[None]:
        """Done once the process behind `pidfd` has exited (at once if it has)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._epoll.register(pidfd, select.EPOLLIN | select.EPOLLONESHOT)
        self._waiting[pidfd] = future
        return future

    def forget(self, pidfd: int) -> None:
        """Before `pidfd` is closed: one still waited on (a cancelled wait) is taken out."""
        if self._waiting.pop(pidfd, None) is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(pidfd)

    def _ready(self) -> None:
        for pidfd, _ in self._epoll.poll(0):
            future = self._waiting.pop(pidfd, None)  # one-shot: it reports no more
            if future is not None and not future.done():
                future.set_result(None)


def _exit_watch(loop: asyncio.AbstractEventLoop) -> _ExitWatch:
    watch = _exit_watches.get(loop)
    if watch is None:
        watch = _exit_watches[loop] = _ExitWatch(loop)
    return watch


# One per loop (tests run many): dropped, and its epoll closed, with its loop.
_exit_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ExitWatch] = (
    weakref.WeakKeyDictionary()
)


async def _poll_exited(pid: int, why: OSError) -> None:
    """Wait for our child `pid` to exit by asking the kernel now and then, without reaping it."""
    global _said_polling
    if not _said_polling:
        _said_polling = True
        log.warning("cannot watch process %d by a pidfd (%s): polling for its exit", pid, why)
    pause = EXIT_POLL_FIRST_S
    while not has_exited(pid):
        await asyncio.sleep(pause)
        pause = min(pause * 2, EXIT_POLL_MAX_S)


def has_exited(pid: int) -> bool:
    """Whether our child `pid` has exited, asked without reaping it. ChildProcessError if it is
    not our child, or was reaped already."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def reap_child(proc: Process) -> tuple[int, resource.struct_rusage]:
    """Reap our exited child: its wait status and rusage. Its pid may be handed out again from
    now on."""
    _, status, usage = os.wait4(proc.pid, 0)
    # We reaped it ourselves: tell Popen, so it never waits on a pid that may be reused.
    proc.returncode = os.waitstatus_to_exitcode(status)
    return status, usage


def _check_dir(path: Path) -> None:
    """OSError, as chdir would raise it, unless `path` is a dir we may enter."""
    if not stat.S_ISDIR(os.stat(path).st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    if not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


_sealed = False
_said_polling = False  # the fallback to polling for exits is said once


def _seal_inherited() -> None:
    """Make close-on-exec every descriptor above stderr that this process holds (once): those
    it inherited from its own parent (a shell's, a test runner's) would reach every task."""
    global _sealed
    if _sealed:
        return
    _sealed = True
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
                os.set_inheritable(fd, False)
