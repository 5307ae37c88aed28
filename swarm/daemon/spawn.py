"""Starting an attempt's process off the event loop, in a thread of its own.

Theory of operation
-------------------
`subprocess.Popen` starts a child with vfork: the calling thread is held until the child has
exec'd, which on a busy machine means until the child got a CPU (milliseconds, with every core
taken by tasks). CPython lets go of the GIL meanwhile, so the holding costs the loop nothing if
the call is made from another thread; `os.posix_spawn` keeps the GIL and would hold everything.
So every attempt's process is started by `start`, in the one `spawner` thread: the loop hands it
the argv, environment, dir and the two open files, and goes on; the attempt awaits the outcome
before it waits for the process (`executor.Attempt`).

The child leads a new session (so its whole tree can be killed), has /dev/null as stdin, the
signals Python ignores back at their defaults, and no descriptor of ours but its stdout and
stderr (Popen closes the others in the child).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO

from swarm.daemon.procs import leaders

# One thread: starts are quick once the thread has the GIL, and one at a time keeps them in
# the order the node asked for them.
spawner = ThreadPoolExecutor(1, thread_name_prefix="swarm-spawn")


def start(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path, out: IO[bytes], err: IO[bytes]
) -> Future[subprocess.Popen[bytes] | str]:
    """Start `argv` in `cwd` from the spawner thread, which then closes `out` and `err` (ours:
    the child has its own copies). The future holds the process, or why it could not be
    started (also written to `err`, where the user looks first)."""
    return spawner.submit(_start, list(argv), dict(env), cwd, out, err)


def _start(
    argv: list[str], env: dict[str, str], cwd: Path, out: IO[bytes], err: IO[bytes]
) -> subprocess.Popen[bytes] | str:
    with out, err:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            # The program or the dir is missing or not executable: a failed attempt, like a
            # shell's exit 127.
            why = f"cannot start {argv[0]!r} in {cwd}: {exc.strerror}"
            err.write(f"swarm: {why}\n".encode())
            return why
    # Known as ours at once, before the loop takes it: an attempt ending meanwhile need not
    # read /proc to tell that this young process is not one of its strays.
    leaders.add(proc.pid)
    return proc
