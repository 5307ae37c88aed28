"""Real daemons as separate processes, driven by the real CLI, on temporary state dirs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from swarm import control, statedir

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
WAIT_TIMEOUT_S = 60.0


def swarm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "swarm", *args]


@dataclass
class Cli:
    home: Path
    cwd: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "SWARM_HOME": str(self.home), "COLUMNS": "120"}

    def __call__(
        self, *args: str, input: bytes | None = None, timeout: float = WAIT_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            swarm_cmd(*args),
            cwd=self.cwd,
            env=self.env(),
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
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
        self.log = self.cli.cwd.parent / f"daemon-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                swarm_cmd("start", *self.args),
                cwd=self.cli.cwd,
                env=self.cli.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        state = statedir.StateDir(self.cli.home)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early:\n{self.log.read_text()}")
            if asyncio.run(control.is_running(state)):
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
