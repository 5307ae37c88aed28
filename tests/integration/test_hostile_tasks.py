"""Tasks that try to hang or outlive their node: the real daemon keeps answering and cleans up.

An `outputs` glob over a loop of directory symlinks (or a link to /) froze the whole daemon when
the walk followed links on the event loop; a process that left its attempt's process group with
setsid outlived the attempt.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from swarm.daemon.outputs_walk import OUTPUT_FILES_MAX

from .conftest import Cli, Daemon, export_rows, wait_for, write_tasks

pytestmark = pytest.mark.integration


def test_hostile_output_globs_never_stop_the_daemon(
    cli: Cli, daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    node = daemon("--cpus", "2")
    tasks = write_tasks(
        cli.cwd / "globs.jsonl",
        [
            {
                "name": "loop",
                "cmd": "ln -s . a; ln -s . b; echo hi > x.txt",
                "outputs": ["**/*.txt"],
            },
            {"name": "root", "cmd": "ln -s / root", "outputs": ["**/hostname"]},
            {
                "name": "many",
                "cmd": f"seq {OUTPUT_FILES_MAX + 1} | sed 's/$/.out/' | xargs touch",
                "outputs": ["*.out"],
                "retries": 0,
            },
        ],
    )
    cli.ok("submit", str(tasks))

    def settled() -> bool:
        # Each poll is a control request: a frozen daemon fails the test by its timeout.
        cli.ok("members")
        job = cli.job("globs")
        return bool(job["done"] == 2 and job["failed"] == 1)

    wait_for("the three tasks to settle", settled)
    assert node.proc is not None and node.proc.poll() is None
    rows = {r["name"]: r for r in export_rows(cli, "--attempts")}
    assert rows["many"]["outcome"] == "failed"
    assert rows["many"]["reason"] == f"its outputs matched more than {OUTPUT_FILES_MAX:,} files"
    assert rows["loop"]["outcome"] == rows["root"]["outcome"] == "ok"
    out = tmp_path / "out"
    cli.ok("results", "globs", "--out", str(out))
    assert (out / "loop/x.txt").read_text() == "hi\n"
    assert not (out / "loop/a").exists()
    assert sorted(p.name for p in (out / "root").iterdir()) == ["stderr", "stdout"]


def _escape(pid_file: Path) -> str:
    """A shell command that starts `sleep 300` in a session of its own and returns once it has
    left the task's process group (its pid, in `pid_file`, is written from the new session)."""
    return (
        f"setsid sh -c 'echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; exec sleep 300' &"
        f" while [ ! -s {pid_file} ]; do sleep 0.01; done"
    )


def test_a_stdout_replaced_by_a_fifo_or_a_link_does_not_hang_or_leak(
    cli: Cli, daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon("--cpus", "2")
    secret = tmp_path / "secret"
    secret.write_text("not the task's\n")
    tasks = write_tasks(
        cli.cwd / "swap.jsonl",
        [
            {"name": "fifo", "cmd": "echo a; rm ../stdout; mkfifo ../stdout"},
            {"name": "link", "cmd": f"echo b; rm ../stdout; ln -s {secret} ../stdout"},
        ],
    )
    cli.ok("submit", str(tasks))
    wait_for("both to be done", lambda: cli.job("swap")["done"] == 2, timeout=20)
    out = tmp_path / "out"
    cli.ok("results", "swap", "--out", str(out))
    assert (out / "fifo/stdout").read_bytes() == b""
    assert (out / "link/stdout").read_bytes() == b""  # not the secret it pointed at


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_a_setsid_child_does_not_outlive_its_task_or_a_graceful_stop(
    cli: Cli, daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    node = daemon("--cpus", "2")
    pids = tmp_path / "pids"
    pids.mkdir()
    tasks = write_tasks(
        cli.cwd / "escape.jsonl",
        [
            {"name": "ends", "cmd": _escape(pids / "ends")},
            {"name": "runs", "cmd": _escape(pids / "runs") + "; sleep 300"},
        ],
    )
    strays: list[int] = []
    try:
        cli.ok("submit", str(tasks))
        wait_for("both to start", lambda: all((pids / n).exists() for n in ("ends", "runs")))
        strays = [int((pids / n).read_text()) for n in ("ends", "runs")]
        wait_for("the first task to end", lambda: cli.job("escape")["done"] == 1)
        wait_for("the stray of the ended task to die", lambda: _gone(strays[0]), timeout=10)
        assert not _gone(strays[1])  # its task still runs
        node.stop()
        assert node.proc is not None and node.proc.returncode is not None
        wait_for("the stray of the stopped task to die", lambda: _gone(strays[1]), timeout=10)
    finally:
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
