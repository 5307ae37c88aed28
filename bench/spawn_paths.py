"""What starting and reaping a task costs an asyncio loop, by the way it is done: the floor under
swarm's per-task path, and what a forkserver would take off it.

    python3 bench/spawn_paths.py            # 2,000 tasks, 5 runs of each: about 1 min
    python3 bench/spawn_paths.py --tasks 5000 --runs 7

Every runner keeps 2 slots busy with N tasks of `sh -c true` (stdout and stderr to /dev/null):
- `xargs -P2`, the reference;
- `loop`: a bare asyncio runner that spawns from its loop as swarm does (posix_spawn in a new
  process group, a pidfd watched by the loop, wait4 once it is readable);
- `forkserver`: the same runner handing each start to a helper process over a socketpair; the
  helper spawns, watches and reaps, and sends back each exit (batched per wakeup);
- `swarm run --cpus 2` on a fresh `--data-dir`, its ledger durable (its own printed rate: the
  node's start and the results dir left out).
Neither bare runner records anything: they are the floor, not a design. Reported: tasks/s, each
÷ xargs in the same round, and for the bare runners the CPU their own process spent per task
(`CPU µs/task`), the figure a CPU-bound daemon loop would win back; for swarm, its whole
process's (every thread, start-up and results dir included; not its tasks'). Rounds are interleaved and
their order rotated; medians and min-max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLOTS = 2
SHELL = "/bin/sh"

# The helper of the `forkserver` runner: one line in ("<id> <shell command>"), one line out per
# exit ("<id> <wait status>"), every exit seen in one wakeup sent in one write.
HELPER = r"""
import os, select, socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
poll = select.epoll()
poll.register(sock.fileno(), select.EPOLLIN)
watched = {}
pending = b""
null = os.open(os.devnull, os.O_WRONLY)
actions = [(os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)]
env = dict(os.environ)
while True:
    out = []
    for fd, _ in poll.poll():
        if fd == sock.fileno():
            data = sock.recv(65536)
            if not data:
                sys.exit(0)
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                tag, cmd = line.split(b" ", 1)
                pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", cmd.decode()], env,
                                     file_actions=actions, setpgroup=0)
                pidfd = os.pidfd_open(pid)
                poll.register(pidfd, select.EPOLLIN)
                watched[pidfd] = (tag, pid)
        else:
            tag, pid = watched.pop(fd)
            poll.unregister(fd)
            os.close(fd)
            _, status, _ = os.wait4(pid, 0)
            out.append(b"%s %d\n" % (tag, status))
    if out:
        sock.sendall(b"".join(out))
"""


async def in_loop(count: int) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    started = ended = 0
    null = os.open(os.devnull, os.O_WRONLY)
    actions = [(os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)]
    env = dict(os.environ)

    def start() -> None:
        nonlocal started
        started += 1
        pid = os.posix_spawn(SHELL, [SHELL, "-c", "true"], env, file_actions=actions, setpgroup=0)
        pidfd = os.pidfd_open(pid)

        def gone() -> None:
            nonlocal ended
            loop.remove_reader(pidfd)
            os.close(pidfd)
            os.wait4(pid, 0)
            ended += 1
            if started < count:
                start()
            elif ended == count:
                done.set()

        loop.add_reader(pidfd, gone)

    for _ in range(SLOTS):
        start()
    await done.wait()
    os.close(null)


async def via_forkserver(count: int) -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    helper = subprocess.Popen(
        [sys.executable, "-c", HELPER, str(theirs.fileno())], pass_fds=[theirs.fileno()]
    )
    theirs.close()
    ours.setblocking(False)
    done = asyncio.Event()
    started = ended = 0
    pending = b""

    def start() -> None:
        nonlocal started
        started += 1
        ours.send(b"%d true\n" % started)  # a few bytes: never blocks on a socketpair

    def readable() -> None:
        nonlocal pending, ended
        *lines, pending = (pending + ours.recv(65536)).split(b"\n")
        for _ in lines:
            ended += 1
            if started < count:
                start()
            elif ended == count:
                done.set()

    loop.add_reader(ours.fileno(), readable)
    for _ in range(SLOTS):
        start()
    await done.wait()
    loop.remove_reader(ours.fileno())
    ours.close()
    helper.wait(timeout=10)


def bare(runner: str, count: int) -> tuple[float, float]:
    """(tasks/s, µs of this process's CPU per task) of a bare runner, run in a fresh process."""
    code = (
        "import asyncio, resource, sys, time, json\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import spawn_paths as s\n"
        "r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()\n"
        f"asyncio.run(s.{runner}({count}))\n"
        "wall = time.perf_counter() - t0; r1 = resource.getrusage(resource.RUSAGE_SELF)\n"
        "cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime\n"
        "print(json.dumps([wall, cpu]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall, cpu = json.loads(done.stdout)
    return count / wall, cpu / count * 1e6


def xargs(count: int) -> float:
    lines = "".join(f"{i}\n" for i in range(count))
    started = time.perf_counter()
    subprocess.run(
        ["xargs", f"-P{SLOTS}", "-I{}", SHELL, "-c", "true"], input=lines, text=True, check=True
    )
    return count / (time.perf_counter() - started)


OWN_RATE = re.compile(r"\(([\d,.]+) tasks/s\)")


# `swarm run` with its own CPU (every thread of its process, none of its children's) written to
# stderr as it exits: start-up and the results dir included.
SWARM_RUN = (
    "import atexit, resource, runpy, sys\n"
    "def said():\n"
    "    u = resource.getrusage(resource.RUSAGE_SELF)\n"
    "    print(f'cpu_s={u.ru_utime + u.ru_stime}', file=sys.stderr)\n"
    "atexit.register(said)\n"
    "sys.argv = ['swarm', *sys.argv[1:]]\n"
    "runpy.run_module('swarm', run_name='__main__')\n"
)


def swarm(count: int, work: Path, round_: int) -> tuple[float, float]:
    """(its own printed tasks/s, µs of its process's CPU per task)."""
    tasks = work / "tasks.jsonl"
    if not tasks.exists():
        rows = (json.dumps({"cmd": "true", "name": f"t{i}"}) + "\n" for i in range(count))
        tasks.write_text("".join(rows))
    done = subprocess.run(
        [
            *(sys.executable, "-c", SWARM_RUN, "run", str(tasks), "--cpus", str(SLOTS)),
            *("--data-dir", str(work / f"d{round_}"), "--out", str(work / f"o{round_}")),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = OWN_RATE.search(done.stderr + done.stdout)
    cpu = re.search(r"cpu_s=([\d.]+)", done.stderr)
    if found is None or cpu is None:
        raise SystemExit(f"no rate in swarm run's output:\n{done.stderr}")
    return float(found.group(1).replace(",", "")), float(cpu.group(1)) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="swarm-spawn-"))
    rates: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    names = ["xargs", "loop", "forkserver", "swarm"]
    try:
        for round_ in range(args.runs):
            got: dict[str, float] = {}
            for name in names[round_ % 4 :] + names[: round_ % 4]:
                if name == "xargs":
                    got[name] = xargs(args.tasks)
                elif name == "swarm":
                    got[name], per_task = swarm(args.tasks, work, round_)
                    cpu.setdefault(name, []).append(per_task)
                else:
                    got[name], per_task = bare(
                        "in_loop" if name == "loop" else "via_forkserver", args.tasks
                    )
                    cpu.setdefault(name, []).append(per_task)
            for name, rate in got.items():
                rates.setdefault(name, []).append(rate)
                ratios.setdefault(name, []).append(rate / got["xargs"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.tasks:,} tasks of `sh -c true` on {SLOTS} slots; median (min-max) of {args.runs}")
    print(f"{'runner':<12}{'tasks/s':>24}{'÷ xargs':>22}{'CPU µs/task':>22}")
    for name in names:
        r, q = rates[name], ratios[name]
        rate = f"{statistics.median(r):,.0f} ({min(r):,.0f}-{max(r):,.0f})"
        ratio = f"{statistics.median(q):.2f}x ({min(q):.2f}-{max(q):.2f})"
        line = f"{name:<12}{rate:>24}{ratio:>22}"
        if name in cpu:
            c = cpu[name]
            line += f"{f'{statistics.median(c):,.0f} ({min(c):,.0f}-{max(c):,.0f})':>22}"
        print(line)


if __name__ == "__main__":
    main()
