"""A warm Python worker: one process that runs Python calls, one after the other, for its pool
(swarm/daemon/workers.py). Run as `python -m swarm.daemon.pyworker FD`.

Theory of operation
-------------------
The pool spawns the worker as the leader of its own session and process group, with the node's
environment (its `SWARM_NODE` tag, so that a later daemon's `kill_orphans` finds a worker a dead
one left) and one end of a socketpair inherited as descriptor FD. Everything between them goes
over FD as length-prefixed msgpack frames (pyworker_channel.py: the frames and the messages),
never over stdin or stdout: those are the call's.

The first frame is the worker's setup (`Hello`): the node's id, the daemon's `sys.path`, the
recycling bounds. Then each frame is one call (`Call`), answered by one frame (`Reply`). For a
call the worker points fds 0, 1 and 2 at /dev/null and the attempt's stdout and stderr files,
enters the attempt's cwd and environment (so the processes the call starts carry the attempt's
tags), loads the function (cached by digest) and the arguments, runs the call, and writes its
outcome (`pycall.returned` or `pycall.raised`) to the value file: a temp name, renamed (the
node makes it durable where it keeps it). Then it puts back its fds, cwd, environment and
`sys.stdout`/`sys.stderr`, kills what the call left in its process group (and waits for its own
children among those to die, so that their CPU time is this call's, not the next one's), and
replies with the outcome, the call's CPU time and peak memory, and whether it exits now.

Whatever the call raises, `SystemExit` and `KeyboardInterrupt` included, is its outcome; only
the process ending (`os._exit`, a segfault, a signal) ends the worker mid-call, which the pool
sees as its channel closing. It exits after `calls_max` calls, or when its resident memory is
over `rss_max_bytes`, so that a leaky library cannot grow it without end; and at the end of its
channel (the pool closed it, or the daemon died). It exits with `os._exit`: a thread a call left
running must not hold it up.

It imports little (stdlib, msgpack, cloudpickle, swarm.pycall): its start-up is on the path of
the first call of every worker.
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import os
import pickle
import platform
import resource
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from swarm import pycall
from swarm.core.spec import INLINE_OUTCOME_BYTES_MAX
from swarm.daemon.pyworker_channel import (
    RAISED,
    RETURNED,
    UNLOADABLE,
    Call,
    Hello,
    Reply,
    encode,
    read_frame,
    write_all,
)

FUNCTIONS_CACHED_MAX = 16  # loaded functions kept by digest (the same one comes 10,000 times)
LEFTOVER_ROUNDS_MAX = 5  # passes over /proc for processes a call left in the worker's group
KILLED_EXIT_WAIT_S = 1.0  # the longest the worker waits for the children it killed to die
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
PROC = "/proc"

# -- one call ------------------------------------------------------------------------------------


class Worker:
    """The worker's state between calls: its setup, and the functions it has loaded."""

    def __init__(self, hello: Hello) -> None:
        self.hello = hello
        self.calls = 0
        self.functions: collections.OrderedDict[str, Callable[..., Any]]
        self.functions = collections.OrderedDict()
        self.home = os.getcwd()
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        # Can the peak memory be reset per call? Else ru_maxrss is the worker's lifetime peak.
        self.peak_resettable = _reset_peak_rss()
        # The last pid handed out when the worker last looked for leftovers: any process in its
        # group is younger (the older ones were killed then).
        self.last_pid = _last_pid()
        self.signals = _SignalState.now()

    def run(self, call: Call) -> Reply:
        """Run one call with its files, cwd and environment, and put the worker's back."""
        self.calls += 1
        before_self = resource.getrusage(resource.RUSAGE_SELF)
        before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        if self.peak_resettable:
            _reset_peak_rss()
        try:
            with _call_context(call, self.devnull, self.home, self.signals):
                kind, reason, outcome = self._outcome(call)
        except Exception as exc:  # its files, cwd or environment could not be entered
            failure = _cannot_enter(call, exc)
            kind, reason, outcome = RAISED, _summary(failure), pycall.raised(failure)
        inline = b""
        if len(outcome) <= INLINE_OUTCOME_BYTES_MAX and _empty(call.stdout, call.stderr):
            inline = outcome  # in the reply, for the RESULT record: no file at all
        value_written = not inline and _write_value(call.value, outcome)
        self.last_pid = _kill_leftovers(self.last_pid)
        after_self = resource.getrusage(resource.RUSAGE_SELF)
        after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = _cpu_s(after_self) - _cpu_s(before_self)
        cpu_s += _cpu_s(after_children) - _cpu_s(before_children)
        max_rss_kb = _peak_rss_kb() if self.peak_resettable else after_self.ru_maxrss
        if after_children.ru_maxrss > before_children.ru_maxrss:  # a child of this call's peak
            max_rss_kb = max(max_rss_kb, after_children.ru_maxrss)
        if not (value_written or inline) and kind == RETURNED:
            kind, reason = RAISED, f"cannot write its value to {call.value}"
        recycle = self.calls >= self.hello.calls_max or _rss_bytes() > self.hello.rss_max_bytes
        return Reply(kind, reason, value_written, max(cpu_s, 0.0), max_rss_kb, recycle, inline)

    def _outcome(self, call: Call) -> tuple[str, str, bytes]:
        """(kind, one-line reason, the outcome's bytes) of running the call."""
        try:
            fn, args, kwargs = self._load(call)
        except BaseException as exc:  # unpickling runs the user's code
            failure = self._cannot_load(exc)
            return UNLOADABLE, _summary(failure), pycall.raised(failure)
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:  # SystemExit too is the call's outcome
            return RAISED, _summary(exc), pycall.raised(exc, _user_traceback(exc))
        try:
            return RETURNED, "", pycall.returned(value)
        except BaseException as exc:  # the value would not pickle
            return RAISED, _summary(exc), pycall.raised(exc)

    def _load(self, call: Call) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        if call.python != pycall.python_version():
            raise _VersionMismatch(f"it was pickled by Python {call.python}")
        fn = self.functions.get(call.fn_digest)
        if fn is None:
            with open(call.fn_path, "rb") as f:
                fn = pickle.load(f)
            if not callable(fn):
                raise TypeError(f"the call's function is a {type(fn).__name__}, not callable")
            self.functions[call.fn_digest] = fn
            if len(self.functions) > FUNCTIONS_CACHED_MAX:
                self.functions.popitem(last=False)
        else:
            self.functions.move_to_end(call.fn_digest)
        if call.args_inline:
            args, kwargs = pickle.loads(call.args_inline)
        else:
            with open(call.args_path, "rb") as f:
                args, kwargs = pickle.load(f)
        return fn, tuple(args), dict(kwargs)

    def _cannot_load(self, exc: BaseException) -> BaseException:
        """The error a call that cannot be loaded here fails with: it names this node, this
        Python and what is missing."""
        where = f"node {self.hello.node_id[:8]} (Python {platform.python_version()})"
        text = f"{where} cannot load the call: {_first_line(exc)}"
        failure: BaseException
        if isinstance(exc, ModuleNotFoundError):
            failure = ModuleNotFoundError(text, name=exc.name)
        elif isinstance(exc, ImportError):
            failure = ImportError(text, name=exc.name)
        else:
            failure = RuntimeError(text)
        failure.__cause__ = None if isinstance(exc, _VersionMismatch) else exc
        return failure


def _user_traceback(exc: BaseException) -> str:
    """The traceback of what the call raised, from the call's own frame on (not this one)."""
    tb = exc.__traceback__
    return "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))


def _cannot_enter(call: Call, exc: Exception) -> Exception:
    """The error of a call whose files, cwd or environment could not be entered."""
    if isinstance(exc, OSError):
        return OSError(exc.errno, f"cannot run the call in {call.cwd}: {exc.strerror}")
    return RuntimeError(f"cannot run the call in {call.cwd}: {exc}")


class _VersionMismatch(Exception):
    """The call was pickled by another Python."""


@contextlib.contextmanager
def _call_context(call: Call, devnull: int, home: str, signals: _SignalState) -> Any:
    """Inside: fds 0, 1, 2 on /dev/null and the call's files, its cwd, its environment. After:
    all of the worker's own put back, its signal handlers and mask too, whatever the call did
    to them."""
    saved_fds = [os.dup(fd) for fd in (0, 1, 2)]
    saved_streams = (sys.stdout, sys.stderr, sys.stdin)
    saved_env = dict(os.environb)  # bytes: no decoding of every entry, twice per call
    _flush(sys.stdout, sys.stderr)
    try:
        _point_fds(call, devnull)
        os.environ.update(call.env)
        yield
    finally:
        # A handler the call set (for SIGTERM, a checkpoint when stopped; SIGCHLD ignored,
        # which would make every later child's exit code 0) is its own: the next call, maybe
        # another task's, has the worker's (for SIGTERM the default: the worker ends at once).
        signals.put_back()
        _flush(sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
        sys.stdout, sys.stderr, sys.stdin = saved_streams
        for fd, saved in zip((0, 1, 2), saved_fds, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        _restore_env(saved_env)
        try:
            os.chdir(home)
        except OSError:
            os.chdir("/")


class _SignalState:
    """The worker's signal handlers (the standard signals Python can set one for) and its
    blocked signals."""

    def __init__(self, handlers: dict[int, Any], blocked: set[int]) -> None:
        self.handlers = handlers
        self.blocked = blocked

    @staticmethod
    def now() -> _SignalState:
        handlers = {}
        for number in signal.valid_signals():
            # Not the real-time signals: Python code hardly ever handles them, and looking at
            # 30 more after every call would double the cost.
            if number in (signal.SIGKILL, signal.SIGSTOP) or number >= signal.SIGRTMIN:
                continue
            with contextlib.suppress(ValueError, OSError):  # one Python may not ask of
                handlers[int(number)] = signal.getsignal(number)
        return _SignalState(handlers, _blocked())

    def put_back(self) -> None:
        getsignal = signal.getsignal  # after every call: 29 signals, about 20 µs
        changed = [n for n, handler in self.handlers.items() if getsignal(n) is not handler]
        for number in changed:
            with contextlib.suppress(ValueError, OSError, TypeError):  # None: not Python's
                signal.signal(number, self.handlers[number])
        if _blocked() != self.blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.blocked)


def _blocked() -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))  # Signals: ints, as sets go


def _point_fds(call: Call, devnull: int) -> None:
    """fd 0 on /dev/null, 1 and 2 on the attempt's files, and the call's cwd; OSError if one of
    them cannot be entered (the call then fails without having begun)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    os.dup2(devnull, 0)
    for fd, path in ((1, call.stdout), (2, call.stderr)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)  # dup2 clears close-on-exec: the call's subprocesses inherit it
        os.close(opened)
    os.chdir(call.cwd)


def _flush(*streams: Any) -> None:
    for stream in streams:
        with contextlib.suppress(Exception):  # a stream the call closed or replaced
            stream.flush()


def _restore_env(saved: dict[bytes, bytes]) -> None:
    """Put os.environ back as it was (each change is a putenv, which subprocesses see)."""
    env = os.environb
    for key in [key for key in env if key not in saved]:
        del env[key]
    for key, value in saved.items():
        if env.get(key) != value:
            env[key] = value


def _empty(*paths: str) -> bool:
    """Whether these files (the call's stdout and stderr) are empty."""
    try:
        return not any(os.stat(path).st_size for path in paths)
    except OSError:
        return False


def _write_value(path: str, outcome: bytes) -> bool:
    """Write the outcome as the value file: a temp name, renamed, so that it is whole or absent.
    Not fsynced: it is made durable where it is kept, in the RESULT record or the blob store.
    False if it could not be (the attempt's dir is gone, the disk is full)."""
    temp = f"{path}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            write_all(fd, outcome)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        return False
    return True


def _summary(exc: BaseException) -> str:
    """The one line a task's reason shows, as `pycall.Raised.summary` words it."""
    kind = type(exc)
    type_name = f"{kind.__module__}.{kind.__qualname__}"
    return pycall.Raised(type_name, _first_line(exc), "", b"").summary()


REASON_CHARS_MAX = 1000  # of a reason's one line: the whole text is in the outcome


def _first_line(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # a __str__ that raises
        return ""
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= REASON_CHARS_MAX else line[: REASON_CHARS_MAX - 1] + "…"


def _cpu_s(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


# -- memory --------------------------------------------------------------------------------------


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident memory to its current one (Linux 4.0+), so that the
    next peak read is the call's; False if that cannot be done here."""
    try:
        with open(f"{PROC}/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _peak_rss_kb() -> int:
    """The peak resident KiB since the last reset (VmHWM): ru_maxrss never goes below what it
    was at exec, which for a process forked from the daemon is the daemon's own."""
    try:
        with open(f"{PROC}/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _rss_bytes() -> int:
    """This process's resident memory now."""
    try:
        with open(f"{PROC}/self/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


# -- what a call leaves behind -------------------------------------------------------------------


def _last_pid() -> int:
    """The last pid handed out, or -1 if that cannot be read."""
    try:
        with open(f"{PROC}/loadavg", "rb") as f:
            return int(f.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return -1


def _kill_leftovers(since_pid: int) -> int:
    """Kill the processes a call left in the worker's process group (a pool it left open, a
    subprocess in the background), so that the next call starts clean, and reap the worker's
    children once they are dead (their CPU time is the call's: reaped later, it would count
    for the next call); returns the last pid handed out as it looked. Only processes forked
    since `since_pid` was handed out are looked at; when no pid has been handed out since (the
    call started no process, nor did anyone else), there is nothing to look for."""
    me = os.getpid()
    killed: list[int] = []
    for _ in range(LEFTOVER_ROUNDS_MAX):
        now = _last_pid()
        if since_pid >= 0 and now == since_pid:
            break
        found = _group_members(me, since_pid, now)
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        since_pid = now  # one killed may have forked meanwhile: those are younger still
        if not found:
            break
    _await_dying_children(killed, KILLED_EXIT_WAIT_S)
    _reap_children()
    return since_pid


def _await_dying_children(pids: list[int], timeout_s: float) -> None:
    """Wait, `timeout_s` at most in all, for those of `pids` that are the worker's own children
    to exit (not reaping them): a SIGKILLed process takes a moment to die. One not watched (no
    pidfd to spare) is reaped by a later call if it is still dying, and its CPU counts there."""
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # gone already (reaped by a thread of the call), or no pidfd to spare
            continue
        try:
            # Asked of the pidfd, not the pid: the pid may name another process by now, if a
            # thread the call left reaped its child meanwhile.
            if os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                watch = select.poll()  # not select(): a pidfd may be numbered past 1024
                watch.register(pidfd, select.POLLIN)
                watch.poll(max(0.0, deadline - time.monotonic()) * 1000)
        except ChildProcessError:
            pass  # not our child (a grandchild): its CPU never comes to us
        finally:
            os.close(pidfd)


def _group_members(me: int, since_pid: int, last_pid: int) -> list[int]:
    """The processes of the worker's group (the worker leads it), but itself, and its own
    children that left it (a call's fork that went into a session of its own and never
    exec'd: its environment, the worker's, names no attempt for `kill_attempt_strays` to find;
    the worker forks nothing of its own), among those forked after `since_pid` up to
    `last_pid` (pids rise to a maximum, then start again from the bottom); all of them when
    either is unknown."""
    members = []
    for name in os.listdir(PROC):
        if not name.isdigit() or int(name) == me or not _young(int(name), since_pid, last_pid):
            continue
        try:
            with open(f"{PROC}/{name}/stat", "rb") as f:
                stat_line = f.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat_line[stat_line.rindex(b")") + 2 :].split()
        if me in (int(fields[1]), int(fields[2])) and fields[0] not in (b"Z", b"X"):
            members.append(int(name))
    return members


def _young(pid: int, since_pid: int, last_pid: int) -> bool:
    if since_pid < 0 or last_pid < 0:
        return True
    if last_pid >= since_pid:
        return since_pid < pid <= last_pid
    return pid > since_pid or pid <= last_pid


def _reap_children() -> None:
    """Reap the worker's children that have ended, never waiting: one still dying after the
    wait (a process stuck in the kernel) is reaped by a later call, and its CPU counts there."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# -- the process ---------------------------------------------------------------------------------


def serve(fd: int) -> None:
    """Answer calls on `fd` until the pool closes it or a bound says exit."""
    raw = read_frame(fd)
    if raw is None:
        return
    hello = Hello.from_wire(raw)
    sys.path[:] = hello.sys_path
    import cloudpickle  # noqa: F401 - every call needs it: loaded once, before the first

    if hello.pythonpath is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = hello.pythonpath
    worker = Worker(hello)
    while True:
        raw = read_frame(fd)
        if raw is None:
            return
        reply = worker.run(Call.from_wire(raw))
        try:
            write_all(fd, encode(reply.to_wire()))
        except OSError:
            return  # the pool is gone (the daemon died)
        if reply.recycle:
            return


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m swarm.daemon.pyworker FD", file=sys.stderr)
        return 2
    # A segfault in a call prints its Python traceback into that call's stderr (fd 2 then).
    faulthandler.enable()
    fd = int(argv[1])
    os.set_inheritable(fd, False)  # a call's subprocess holding it would hide our death
    serve(fd)
    _flush(sys.stdout, sys.stderr)
    # Not sys.exit: that would wait for any thread a call left running, for ever maybe.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
