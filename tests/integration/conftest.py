"""Real daemons as separate processes, driven by the real CLI, on temporary state dirs."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from swarm import connection, statedir

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
WAIT_TIMEOUT_S = 60.0


def swarm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "swarm", *args]


@dataclass
class Cli:
    home: Path
    cwd: Path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "SWARM_HOME": str(self.home), "COLUMNS": "120", **(extra or {})}

    def __call__(
        self,
        *args: str,
        input: bytes | None = None,
        timeout: float = WAIT_TIMEOUT_S,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """A swarm command run to its end; `env`: variables to set for it."""
        return subprocess.run(
            swarm_cmd(*args),
            cwd=self.cwd,
            env=self.env(env),
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """A swarm command left running, its output piped as text; `env`: variables to set."""
        return subprocess.Popen(
            swarm_cmd(*args),
            cwd=self.cwd,
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ok(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        done = self(*args, input=input)
        assert done.returncode == 0, f"swarm {' '.join(args)} -> {done.returncode}\n{done.stderr}"
        return done

    def status(self) -> dict[str, Any]:
        snap: dict[str, Any] = json.loads(self.ok("status", "--json").stdout)
        return snap

    def job(self, name: str) -> dict[str, Any]:
        for row in self.status()["jobs"]:
            if row["job"] == name:
                return dict(row)
        raise AssertionError(f"no job {name}")

    def wait_for(
        self, what: str, check: Callable[[], bool], timeout: float = WAIT_TIMEOUT_S
    ) -> None:
        wait_for(what, check, timeout)


@dataclass
class Daemon:
    cli: Cli
    args: tuple[str, ...]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default=Path("/dev/null"))

    def start(self) -> Daemon:
        return self.launch().ready()

    def launch(self) -> Daemon:
        """Start the daemon's process, not waiting for it to listen (see `ready`)."""
        self.log = self.cli.cwd.parent / f"daemon-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                swarm_cmd("start", *self.args),
                cwd=self.cli.cwd,
                env=self.cli.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def ready(self) -> Daemon:
        """Wait until the launched daemon answers on its control socket."""
        assert self.proc is not None
        state = statedir.StateDir(self.cli.home)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early:\n{self.log.read_text()}")
            if asyncio.run(connection.is_running(state)):
                return self
            time.sleep(0.05)
        raise AssertionError(f"daemon did not start:\n{self.log.read_text()}")

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    work = tmp_path / "work"
    work.mkdir()
    return Cli(home=tmp_path / "home", cwd=work)


@pytest.fixture
def daemon(cli: Cli) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(*args: str) -> Daemon:
        d = Daemon(cli, args).start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def wait_for(
    what: str,
    check: Callable[[], bool],
    timeout: float = WAIT_TIMEOUT_S,
    interval_s: float = 0.1,
    detail: Callable[[], object] | None = None,
) -> None:
    """Poll `check` until it holds; fail naming `what` (and `detail()`, if given) after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    extra = f": {detail()}" if detail is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")


def write_tasks(path: Path, tasks: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def export_rows(cli: Cli, *args: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(cli.ok("export", *args).stdout)))


def drained_attempts(cli: Cli, node: str, held: set[str]) -> list[dict[str, str]]:
    """The attempts `node` made of the tasks in `held` (it ran them when told to drain), as
    `cli`'s node records them, less those that lost a claim race: when slots free on several
    nodes at once, a thief and a task's preferred node may both start it, and the loser's
    attempt stops; that is no part of a drain."""
    return [
        r
        for r in export_rows(cli, "--attempts")
        if r["name"] in held
        and r["node"] == node
        and not r["reason"].startswith("lost its claim to")
    ]


# -- several daemons on 127.0.0.1 --------------------------------------------------------------


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no free port")


class Swarm:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.nodes: list[tuple[Cli, Daemon, int]] = []

    def start(
        self,
        i: int,
        join: int | None = None,
        key_from: int | None = 0,
        cpus: int = 1,
        home: Path | None = None,
        extra: tuple[str, ...] = (),
        wait: bool = True,
    ) -> tuple[Cli, Daemon]:
        work = self.tmp_path / f"work{i}"
        work.mkdir(exist_ok=True)
        cli = Cli(home=home or self.tmp_path / f"home{i}", cwd=work)
        if key_from is not None and self.nodes:
            cli.ok("init", "--key-file", str(self.nodes[key_from][0].home / "swarm.key"))
        port = free_port()
        while port in {taken for _, _, taken in self.nodes}:  # one launched, not yet bound
            port = free_port()
        args = ["--bind", f"127.0.0.1:{port}", "--profile", "test", "--cpus", str(cpus)]
        if join is not None:
            args += ["--join", f"127.0.0.1:{self.nodes[join][2]}"]
        daemon = Daemon(cli, (*args, *extra)).launch()
        if wait:
            daemon.ready()
        self.nodes.append((cli, daemon, port))
        return cli, daemon

    def form(self, count: int, cpus: int = 1, homes: dict[int, Path] | None = None) -> list[str]:
        """Start `count` nodes, each joined to the first (node i's state dir in `homes[i]` if
        given); wait until the last sees them all alive. Returns their ids. The first starts
        alone (the others take its swarm key), then the others all at once, as a fleet would."""
        self.start(0, cpus=cpus, home=(homes or {}).get(0))
        for i in range(1, count):
            self.start(i, join=0, cpus=cpus, home=(homes or {}).get(i), wait=False)
        for _, daemon, _ in self.nodes[1:count]:
            daemon.ready()
        ids = [statedir.node_id(statedir.StateDir(cli.home)) for cli, _, _ in self.nodes[:count]]
        wait_for(
            f"all {count} to see each other",
            lambda: self.states(count - 1) == dict.fromkeys(ids, "alive"),
        )
        return ids

    def members(self, i: int) -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(self.nodes[i][0].ok("members", "--json").stdout)
        return reply

    def states(self, i: int) -> dict[str, str]:
        return {m["id"]: m["state"] for m in self.members(i)["members"]}

    def own_row(self, i: int) -> dict[str, Any]:
        """Node i's row of itself (the one with a pid) in its `members --json`."""
        own = [m for m in self.members(i)["members"] if m.get("pid")]
        return dict(own[0])

    def node_id(self, i: int) -> str:
        return str(self.own_row(i)["id"])

    def stop_all(self) -> None:
        for _, daemon, _ in self.nodes:
            daemon.stop()


@pytest.fixture
def swarm(tmp_path: Path) -> Any:
    s = Swarm(tmp_path)
    yield s
    s.stop_all()


def running_by_node(cli: Cli) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in export_rows(cli):
        if row["state"] == "running":
            counts[row["node"]] = counts.get(row["node"], 0) + 1
    return counts


# -- a small disk ------------------------------------------------------------------------------

TMPFS_BYTES = 4 << 20


@contextlib.contextmanager
def tmpfs(mount_point: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of `size_bytes` at `mount_point` (skips the test, saying why, without root)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", TMPFS_BYTES) as mount_point:
        yield mount_point


def fill(path: Path, leave_bytes: int) -> Path:
    """Write a filler file until only about `leave_bytes` are free."""
    stats = os.statvfs(path)
    free = stats.f_bavail * stats.f_frsize
    filler = path / "filler"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave_bytes))
    return filler
