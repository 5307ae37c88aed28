"""Python executors side by side: swarm's SwarmExecutor, ProcessPoolExecutor, Dask, Ray, Celery.

What is measured, each tool in a fresh process of the bench's own venv (bench/executors_tools.py
runs it), interleaved across --runs with the order rotated each run:

1. Throughput: N calls (--calls, default 5,000) of a tiny function, `inc(x) = x + 1` from a module
   the bench writes, results gathered in input order. Calls/s from just before the first submit
   to the last result; the tool's start-up and two warm-up calls come before that clock starts.
   ProcessPoolExecutor(2) with chunksize 1 and 100, Dask LocalCluster(2 workers x 1 thread,
   processes), Ray (num_cpus=2), Celery (2 prefork workers, Redis broker and backend), swarm with
   chunksize 1 and 100, embedded (no daemon at its fresh home) and on a daemon (`swarm start
   --cpus 2`, started by the bench).
2. Cold start to the first result: a fresh process imports the tool, starts what it needs,
   submits one call and gets its result. Measured from the parent, from just before the spawn to
   the result (the child stamps it with the system-wide monotonic clock); also inside the child
   from its first line, and the whole process until it has exited.
3. Peak memory of the whole tree: the peak of the summed RSS of every process the run started
   (the driver, its workers, its servers: Redis for Celery, the daemon for swarm's daemon rows),
   sampled from /proc every 50 ms during the throughput run at chunksize 1. The bench makes
   itself a child subreaper, so a server that detaches from its parent is still counted (and
   stopped). For swarm's daemon the node alone (the daemon and its workers) is shown too.

Why ratios: the machine is shared and noisy. Every tool runs in one invocation, interleaved, and
the swarm/ProcessPoolExecutor and swarm/Ray ratios are computed within a run before the median.

Set-up: a venv of its own (default ~/.cache/swarm-bench/executors-venv, reused; --venv PATH)
into which pip installs Dask, Ray, Celery with Redis and swarm's dependencies; swarm itself is
imported from this checkout (PYTHONPATH). Debian's redis-server is installed with apt-get when
missing (as root). --no-install turns all installing off. Every server listens on 127.0.0.1 and is
stopped by the bench, also on Ctrl-C or an error.

Run:  python3 bench/executors.py [--runs 3] [--calls 5000] [--only NAME,...] [--quick]
This is a benchmark, not a test: it prints figures and exits 0 whatever they are.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from executors_proc import (
    ChildRun,
    ServerSet,
    SpawnedServer,
    TreeSampler,
    become_subreaper,
    run_child,
    sweep_orphans,
)
from executors_report import Results, report

REPO = Path(__file__).resolve().parent.parent
TOOLS_SCRIPT = Path(__file__).resolve().parent / "executors_tools.py"
DEFAULT_VENV = Path.home() / ".cache" / "swarm-bench" / "executors-venv"
PEERS = ["dask[distributed]", "ray", "celery[redis]", "redis"]
PEER_DISTS = ["dask", "distributed", "ray", "celery", "kombu", "redis", "cloudpickle"]
CALLS_DEFAULT = 5000
QUICK_CALLS = 1000
RUNS_DEFAULT = 3
CHUNKSIZES = (1, 100)
PIP_TIMEOUT_S = 1200.0
APT_TIMEOUT_S = 300.0
CHILD_TIMEOUT_BASE_S = 120.0  # a child is killed after this plus a per-call allowance
CHILD_TIMEOUT_PER_CALL_S = 0.1
SERVER_READY_S = 30.0
DAEMON_STOP_S = 30.0


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the tools ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    """One throughput row: a family (what --only names) at one chunksize."""

    family: str
    label: str
    chunksize: int
    memory: bool  # sample the tree's RSS during this run

    @property
    def key(self) -> str:
        return f"{self.family} {self.chunksize}"


FAMILIES = ("pool", "dask", "ray", "celery", "swarm", "swarm-daemon")
FAMILY_LABELS = {
    "pool": "ProcessPoolExecutor(2)",
    "dask": "Dask LocalCluster(2x1, processes)",
    "ray": "Ray (num_cpus=2)",
    "celery": "Celery (-c 2 prefork, Redis)",
    "swarm": "swarm (embedded)",
    "swarm-daemon": "swarm (daemon)",
}
CHUNKED = {"pool", "swarm", "swarm-daemon"}  # the others have no chunksize: one call, one task


def variants(families: list[str]) -> list[Variant]:
    rows = []
    for family in families:
        sizes = CHUNKSIZES if family in CHUNKED else (1,)
        for size in sizes:
            label = FAMILY_LABELS[family] + (f", chunksize {size}" if family in CHUNKED else "")
            rows.append(Variant(family, label, size, memory=size == 1))
    return rows


BENCHMOD = '''"""The work every tool runs (written by bench/executors.py)."""


def inc(x: int) -> int:
    return x + 1
'''

BENCH_CELERY = '''"""Celery's app for the bench (written by bench/executors.py): broker and backend are the
Redis the bench started on 127.0.0.1."""

import os

from celery import Celery

import benchmod

app = Celery("bench_celery", broker=os.environ["BENCH_REDIS_URL"],
             backend=os.environ["BENCH_REDIS_URL"])
app.conf.broker_connection_retry_on_startup = True


@app.task(name="bench.inc")
def inc(x: int) -> int:
    return benchmod.inc(x)
'''


# -- set-up: venv, Redis --------------------------------------------------------------------------


def swarm_requirements() -> list[str]:
    with open(REPO / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)["project"]
    return list(project["dependencies"])


def ensure_venv(venv: Path, install: bool) -> Path | None:
    """The venv's python, made and filled when install is on; None when there is none."""
    python = venv / "bin" / "python"
    if not python.exists():
        if not install:
            return None
        say(f"making the venv {venv} ...")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    if install:
        say("pip install " + " ".join(PEERS) + " and swarm's dependencies into it ...")
        argv = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        done = subprocess.run(
            [*argv, *PEERS, *swarm_requirements()],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_S,
        )
        if done.returncode != 0:
            say(
                f"pip failed ({done.returncode}); going on with what is installed:\n{done.stderr[-3000:]}"
            )
    return python


def find_redis(install: bool) -> str | None:
    exe = shutil.which("redis-server")
    if exe or not install or not shutil.which("apt-get") or os.geteuid() != 0:
        return exe
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for update_first in (False, True):  # a stale package list is refreshed once, then retried
        say("redis-server is missing: apt-get install -y redis-server ...")
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if update_first:
                subprocess.run(
                    ["apt-get", "update"], capture_output=True, timeout=APT_TIMEOUT_S, env=env
                )
            subprocess.run(
                ["apt-get", "install", "-y", "redis-server"],
                capture_output=True,
                timeout=APT_TIMEOUT_S,
                env=env,
            )
        exe = shutil.which("redis-server")
        if exe:
            return exe
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        return int(tcp.getsockname()[1])


def redis_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1.0) as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(64).startswith(b"+PONG")
    return False


def start_redis(exe: str, work: Path) -> SpawnedServer:
    """Redis on 127.0.0.1 on a free port, with no persistence (no RDB, no AOF)."""
    port = free_port()
    argv = [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--protected-mode", "yes", "--daemonize", "no", "--dir", str(work)]  # fmt: skip
    server = SpawnedServer.spawn("redis", argv, work / "redis.log", dict(os.environ))
    server.wait_ready(lambda: redis_answers(port), SERVER_READY_S)
    server.address = f"redis://127.0.0.1:{port}/0"
    return server


def unix_socket_answers(path: Path) -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(1.0)
        conn.connect(str(path))
        return True
    return False


# -- one run of one tool --------------------------------------------------------------------------


@dataclass
class Bench:
    python: Path
    work: Path
    calls: int
    env: dict[str, str]
    servers: ServerSet
    results: Results
    redis: SpawnedServer | None

    def child_argv(
        self, tool: str, mode: str, out: Path, chunksize: int, home: Path | None
    ) -> list[str]:
        argv = [str(self.python), str(TOOLS_SCRIPT), tool, mode, "--out", str(out)]
        argv += ["--calls", str(self.calls), "--chunksize", str(chunksize)]
        if home is not None:
            argv += ["--home", str(home), "--job", f"bench-inc-{uuid.uuid4().hex[:12]}"]
        return argv

    def timeout_s(self) -> float:
        return CHILD_TIMEOUT_BASE_S + CHILD_TIMEOUT_PER_CALL_S * self.calls

    @contextlib.contextmanager
    def family_servers(
        self, family: str, scratch: Path
    ) -> Iterator[tuple[Path | None, list[int], int | None]]:
        """What a family needs running around its child: (swarm home, extra pids in its tree,
        the pid whose subtree is 'the node')."""
        if family == "celery":
            if self.redis is None:
                raise RuntimeError("no redis-server: install it or drop --no-install")
            yield None, [self.redis.pid], None
        elif family == "swarm":
            yield scratch / "home", [], None
        elif family == "swarm-daemon":
            home = scratch / "home"
            daemon = self.start_daemon(home, scratch)
            try:
                yield home, [daemon.pid], daemon.pid
            finally:
                self.stop_daemon(daemon, home)
        else:
            yield None, [], None

    def start_daemon(self, home: Path, scratch: Path) -> SpawnedServer:
        argv = [str(self.python), "-m", "swarm", "start", "--data-dir", str(home), "--cpus", "2",
                "--sync", "full"]  # fmt: skip
        daemon = SpawnedServer.spawn("swarm daemon", argv, scratch / "daemon.log", self.env)
        self.servers.add(daemon)
        try:
            sock = self.control_socket(home)
            daemon.wait_ready(lambda: unix_socket_answers(sock), SERVER_READY_S)
        except BaseException:
            self.stop_daemon(daemon, home)
            raise
        return daemon

    def control_socket(self, home: Path) -> Path:
        """Where the daemon of home listens: swarm moves the socket of a deep dir elsewhere."""
        code = (
            "import sys, pathlib; from swarm.statedir import StateDir; "
            "print(StateDir(pathlib.Path(sys.argv[1])).socket_path)"
        )
        done = subprocess.run(
            [str(self.python), "-c", code, str(home)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=SERVER_READY_S,
            check=True,
        )
        return Path(done.stdout.strip())

    def stop_daemon(self, daemon: SpawnedServer, home: Path) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [str(self.python), "-m", "swarm", "stop", "--data-dir", str(home)],
                env=self.env,
                capture_output=True,
                timeout=DAEMON_STOP_S,
            )
        daemon.stop(DAEMON_STOP_S)
        self.servers.discard(daemon)

    def run_one(
        self, family: str, mode: str, chunksize: int, sample: bool
    ) -> tuple[ChildRun, dict[str, Any]]:
        scratch = Path(tempfile.mkdtemp(prefix="run-", dir=self.work))
        try:
            with self.family_servers(family, scratch) as (home, extra_pids, node_pid):
                tool = "swarm" if family.startswith("swarm") else family
                out = scratch / "figures.json"
                argv = self.child_argv(tool, mode, out, chunksize, home)
                # Servers of other tools (Redis, unless this is Celery) are not this run's.
                exclude = self.servers.pids() - set(extra_pids)
                sampler = TreeSampler(exclude, node_pid) if sample else None
                child = run_child(argv, self.env, scratch / "child.log", self.timeout_s(), sampler)
                figures: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
            return child, figures
        finally:
            left = sweep_orphans(self.servers)
            if left:
                say(
                    f"  ({FAMILY_LABELS[family]} left processes behind; stopped: {', '.join(left)})"
                )
            shutil.rmtree(scratch, ignore_errors=True)

    def throughput(self, variant: Variant, run: int) -> None:
        if variant.family in self.results.unavailable:
            return
        child, figures = self.run_one(
            variant.family, "throughput", variant.chunksize, variant.memory
        )
        what = f"throughput, {variant.label}, run {run}"
        if not self.results.accept(variant.family, what, child, figures):
            return
        rate = float(figures["calls_per_s"])
        self.results.add(f"tput {variant.key}", rate)
        if child.peak_bytes is not None:
            self.results.add(f"mem {variant.family}", child.peak_bytes / 1e6)
        if child.node_peak_bytes is not None:
            self.results.add(f"mem {variant.family} node", child.node_peak_bytes / 1e6)
        say(f"  {variant.label}: {rate:,.0f} calls/s")

    def cold(self, family: str, run: int) -> None:
        if family in self.results.unavailable:
            return
        child, figures = self.run_one(family, "cold", 1, sample=False)
        if not self.results.accept(family, f"cold start, {family}, run {run}", child, figures):
            return
        first = float(figures["result_monotonic"]) - child.spawned_monotonic
        self.results.add(f"cold {family}", first)
        self.results.add(f"cold {family} inside", float(figures["inside_s"]))
        self.results.add(f"cold {family} whole", child.wall_s)
        say(f"  {FAMILY_LABELS[family]}: first result after {first:.3f} s")


def run_steps(
    res: Results, what: str, steps: Sequence[tuple[str, Callable[[], None]]], run: int
) -> None:
    """Run the steps rotated by the run number, so no tool always goes first; a step that raises
    is reported as a problem and the others still run (Ctrl-C still stops the bench)."""
    shift = run % len(steps) if steps else 0
    for name, step in [*steps[shift:], *steps[:shift]]:
        try:
            step()
        except Exception as exc:
            res.problem(f"{what}, {name}, run {run}", f"{type(exc).__name__}: {exc}")


def pair_ratios(res: Results, before: dict[str, int], run: int) -> None:
    """swarm ÷ ProcessPoolExecutor (same chunksize) and swarm ÷ Ray, from this run's figures."""

    def this_run(key: str) -> float | None:
        values = res.get(f"tput {key}")
        return values[-1] if len(values) > before.get(key, 0) else None

    for family in ("swarm", "swarm-daemon"):
        for size in CHUNKSIZES:
            mine = this_run(f"{family} {size}")
            if mine is None:
                continue
            for peer, key in (("pool", f"pool {size}"), ("ray", "ray 1")):
                theirs = this_run(key)
                if theirs:
                    res.add(f"ratio {family} {size} {peer}", mine / theirs)


def peer_versions(python: Path, redis_exe: str | None) -> list[str]:
    code = (
        "import importlib.metadata as m\n"
        f"for d in {PEER_DISTS!r}:\n"
        "    try: print(d, m.version(d))\n"
        "    except m.PackageNotFoundError: print(d, 'not installed')\n"
        "import swarm; print('swarm imported from', swarm.__path__[0])\n"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    lines = done.stdout.splitlines() or [done.stderr.strip()[-500:]]
    commit = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %cI"],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    lines.append(f"swarm at commit {commit.stdout.strip() or '?'}")
    if redis_exe:
        version = subprocess.run(
            [redis_exe, "--version"], capture_output=True, text=True, timeout=30
        )
        lines.append(version.stdout.strip())
    return lines


def child_env(work: Path, redis: SpawnedServer | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SWARM_HOME", None)  # every swarm run gets its own home; never the user's node
    env["PYTHONPATH"] = os.pathsep.join([str(work), str(REPO)])  # benchmod, and this swarm
    env["RAY_USAGE_STATS_ENABLED"] = "0"  # nothing leaves this machine
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray on 127.0.0.1 only: its laptop mode
    env["BENCH_RAY_TEMP_DIR"] = str(work / "ray")
    env["TMPDIR"] = str(work / "tmp")  # Dask's scratch space and the like go where we clean up
    if redis is not None:
        env["BENCH_REDIS_URL"] = redis.address
    return env


def parse_only(parser: argparse.ArgumentParser, text: str | None) -> list[str]:
    if not text:
        return list(FAMILIES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    return [family for family in FAMILIES if family in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--runs", type=int, help=f"repetitions of everything (default {RUNS_DEFAULT})"
    )
    parser.add_argument(
        "--calls", type=int, help=f"calls per throughput run (default {CALLS_DEFAULT:,})"
    )
    parser.add_argument("--quick", action="store_true", help=f"1 run of {QUICK_CALLS:,} calls")
    parser.add_argument("--only", metavar="NAME[,NAME]", help="a subset of: " + ", ".join(FAMILIES))
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"default {DEFAULT_VENV}")
    parser.add_argument("--no-install", action="store_true", help="no pip, no apt-get")
    args = parser.parse_args(argv)
    calls = args.calls or (QUICK_CALLS if args.quick else CALLS_DEFAULT)
    runs = args.runs or (1 if args.quick else RUNS_DEFAULT)
    if calls < 1 or runs < 1:
        parser.error("--calls and --runs must be at least 1")
    families = parse_only(parser, args.only)

    started = time.monotonic()
    loads = [os.getloadavg()]
    become_subreaper()  # a server that detaches is still ours to count and to stop
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    work = Path(tempfile.mkdtemp(prefix="swarm-executors-"))
    servers = ServerSet()
    try:
        python = ensure_venv(args.venv, install=not args.no_install)
        if python is None:
            say(f"no venv at {args.venv} and --no-install: nothing to run")
            return 0
        redis_exe = find_redis(install=not args.no_install) if "celery" in families else None
        (work / "tmp").mkdir()
        (work / "benchmod.py").write_text(BENCHMOD)
        (work / "bench_celery.py").write_text(BENCH_CELERY)
        redis = start_redis(redis_exe, work) if redis_exe else None
        if redis is not None:
            servers.add(redis)
        res = Results()
        if "celery" in families and redis is None:
            res.unavailable["celery"] = "no redis-server (apt-get install redis-server)"
        bench = Bench(python, work, calls, child_env(work, redis), servers, res, redis)
        versions = peer_versions(python, redis_exe)
        rows = variants(families)
        for run in range(1, runs + 1):
            say(f"run {run}/{runs}: throughput, {calls:,} calls")
            before = {v.key: len(res.get(f"tput {v.key}")) for v in rows}
            steps = [(v.label, partial(bench.throughput, v, run)) for v in rows]
            run_steps(res, "throughput", steps, run)
            pair_ratios(res, before, run)
            say(f"run {run}/{runs}: cold start")
            cold = [(f, partial(bench.cold, f, run)) for f in families]
            run_steps(res, "cold start", cold, run)
        loads.append(os.getloadavg())
        report(
            res,
            rows,
            families,
            FAMILY_LABELS,
            calls,
            runs,
            time.monotonic() - started,
            loads,
            versions,
        )
        return 0
    finally:
        servers.stop_all()
        sweep_orphans(servers)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every server and child is already stopped by main's finally
        say("interrupted")
        sys.exit(130)
