"""One node, end to end: the real daemon and CLI as separate processes, real SQLite, real tasks."""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import signal
import stat
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from swarm import connection, statedir
from swarm.daemon.node import APPLY_SLICE_ROWS
from swarm.daemon.store import BlobStore
from swarm.errors import ControlError

from .conftest import REPO, Cli, Daemon, export_rows, wait_for, write_tasks

pytestmark = pytest.mark.integration


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- swarm run: the main job -----------------------------------------------------------------


def test_run_hello_on_an_embedded_node(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = cli("run", str(REPO / "examples/hello.jsonl"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "5 done" in done.stderr
    assert (out / "hello/stdout").read_text().startswith("hello from hello on ")
    assert (out / "stderr/stderr").read_text() == "this goes to stderr\n"
    assert (out / "argv/stdout").read_text() == (
        "an argument vector: no shell, quotes stay 'as is'\n"
    )
    assert (out / "file/out/when.txt").read_text().startswith("20")
    rows = export_rows(cli)
    assert sorted(r["name"] for r in rows) == ["argv", "busy", "file", "hello", "stderr"]
    assert {r["state"] for r in rows} == {"done"}
    assert all(r["exit_code"] == "0" and r["outcome"] == "ok" for r in rows)
    # A task is not charged the node's memory (which the kernel counts as a child's floor),
    # even when it starts before the node's first memory sample.
    assert all(float(r["max_rss_mb"]) < 20 for r in rows), [r["max_rss_mb"] for r in rows]
    # The embedded node has gone: the socket is removed, the ledger stays readable.
    assert not statedir.StateDir(cli.home).socket_path.exists()


def test_run_is_resumable_a_second_run_adds_nothing(cli: Cli, tmp_path: Path) -> None:
    tasks = write_tasks(cli.cwd / "t.jsonl", [{"cmd": f"echo {i}"} for i in range(3)])
    cli.ok("run", str(tasks), "--out", str(tmp_path / "a"))
    again = cli.ok("run", str(tasks), "--out", str(tmp_path / "b"))
    assert "0 new, 3 already in the ledger" in again.stderr
    assert (tmp_path / "b/2/stdout").read_text() == "1\n"
    assert len(export_rows(cli, "--attempts")) == 3  # nothing ran twice


def test_run_exits_1_when_a_task_fails_and_keeps_its_stderr(cli: Cli, tmp_path: Path) -> None:
    tasks = write_tasks(
        cli.cwd / "mixed.jsonl",
        [
            {"name": "good", "cmd": "echo fine"},
            {"name": "bad", "cmd": "echo broken >&2; exit 3", "retries": 1},
        ],
    )
    done = cli("run", str(tasks), "--out", str(tmp_path / "out"))
    assert done.returncode == 1
    assert "1 failed" in done.stderr and "bad: exit 3" in done.stderr
    assert (tmp_path / "out/bad/stderr").read_text() == "broken\n"
    attempts = [r for r in export_rows(cli, "--attempts") if r["name"] == "bad"]
    assert [(r["outcome"], r["exit_code"]) for r in attempts] == [("failed", "3")] * 2
    # The status view lists the failures, with the last line of their stderr.
    status = cli.ok("status", "--once").stdout
    failures = status[status.index("Latest failures") :]
    assert "mixed/bad" in failures and "broken" in failures, status


def test_run_stops_when_the_rest_can_never_run_here(cli: Cli, tmp_path: Path) -> None:
    tasks = write_tasks(
        cli.cwd / "shapes.jsonl",
        [
            {"name": "fits", "cmd": "true", "requires": {"zone": "eu"}},
            {"name": "elsewhere", "cmd": "true", "requires": {"zone": "us"}},
            {"name": "huge", "cmd": "true", "cpus": 64},
        ],
    )
    done = cli("run", str(tasks), "--label", "zone=eu", "--cpus", "2", timeout=30)
    assert done.returncode == 1
    assert "2 tasks cannot run on this node" in done.stderr
    assert "elsewhere: requires zone=us, it has zone=eu" in done.stderr
    assert "huge: needs 64 cpus, the node has 2" in done.stderr
    states = {r["name"]: r["state"] for r in export_rows(cli)}
    assert states == {"fits": "done", "elsewhere": "pending", "huge": "pending"}


def test_sweep_example_collects_output_files(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = cli("run", str(REPO / "examples/sweep.jsonl"), "--out", str(out), timeout=120)
    assert done.returncode == 0, done.stderr
    for seed in (1, 20):
        text = (out / f"seed-{seed}/results/seed-{seed}.json").read_text()
        assert f'"seed": {seed}' in text
        assert (out / f"seed-{seed}/stdout").read_text().startswith(f"seed {seed}: pi ~ 3.1")


# -- bad input -------------------------------------------------------------------------------


def test_bad_task_file_names_file_line_and_field_and_adds_nothing(
    cli: Cli, daemon: Callable[..., Daemon]
) -> None:
    daemon()
    bad = cli.cwd / "bad.jsonl"
    bad.write_text(
        '{"cmd": "echo ok"}\n'
        '{"cmd": "echo two", "memory": "lots"}\n'
        '{"cmd": "echo three", "colour": "red"}\n'
        "not json\n"
    )
    done = cli("submit", str(bad))
    assert done.returncode == 2
    assert f"{bad}:2: memory:" in done.stderr
    assert f"{bad}:3: colour: unknown key" in done.stderr
    assert f"{bad}:4: json: not valid JSON" in done.stderr
    assert cli.status()["jobs"] == []


def test_submit_without_a_daemon_says_how_to_start_one(cli: Cli) -> None:
    tasks = write_tasks(cli.cwd / "t.jsonl", [{"cmd": "true"}])
    cli.ok("init")
    done = cli("submit", str(tasks))
    assert done.returncode == 3
    said = " ".join(done.stderr.split())  # the message is wrapped to the terminal's width
    assert "no swarm daemon is running" in said and "swarm start" in said


def test_a_second_daemon_on_the_same_data_dir_is_refused(
    cli: Cli, daemon: Callable[..., Daemon]
) -> None:
    daemon()
    done = cli("start")
    assert done.returncode == 2
    assert "already runs" in done.stderr


# -- the daemon --------------------------------------------------------------------------------


def test_submit_status_results_export_with_a_daemon(
    cli: Cli, daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon("--cpus", "2")
    state = statedir.StateDir(cli.home)
    assert stat.S_IMODE(state.socket_path.stat().st_mode) == 0o600
    tasks = write_tasks(
        cli.cwd / "jobfile.jsonl",
        [{"name": f"t{i}", "cmd": f"printf 'line %s' {i}"} for i in range(6)],
    )
    done = cli.ok("submit", str(tasks), "--wait")
    assert done.stdout.strip() == "jobfile"
    assert "6 tasks added" in done.stderr
    again = cli.ok("submit", str(tasks))
    assert "0 tasks added, 6 already in the ledger" in again.stderr
    job = cli.job("jobfile")
    assert (job["total"], job["done"], job["pending"], job["running"]) == (6, 6, 0, 0)
    node = cli.status()["nodes"][0]
    assert node["capacity"]["cpus"] == 2.0 and node["state"] == "alive"
    cli.ok("results", "jobfile", "--out", str(tmp_path / "res"))
    assert (tmp_path / "res/t4/stdout").read_text() == "line 4"
    rows = export_rows(cli, "--job", "jobfile", "--attempts")
    assert len(rows) == 6 and {r["outcome"] for r in rows} == {"ok"}
    csv_file = tmp_path / "ledger.csv"
    cli.ok("export", "-o", str(csv_file))
    assert csv_file.read_text().startswith("task_id,job,name,state,attempts,node,")


def test_a_submission_of_more_tasks_than_a_slice_is_applied_whole_and_survives_a_restart(
    cli: Cli, daemon: Callable[..., Daemon]
) -> None:
    """The daemon applies a committed submission a slice of rows at a time (APPLY_SLICE_ROWS)
    and lets the checked tasks go once their records are made: every task is still added,
    counted, and there after a restart."""
    count = APPLY_SLICE_ROWS * 2 + 7
    node = daemon("--no-work", "--cpus", "2")
    tasks = write_tasks(cli.cwd / "many.jsonl", [{"cmd": f"echo {i}"} for i in range(count)])
    assert f"{count:,} tasks added" in cli.ok("submit", str(tasks)).stderr
    job = cli.job("many")
    assert (job["total"], job["pending"]) == (count, count)
    node.stop()
    node.start()
    assert f"0 tasks added, {count:,} already in the ledger" in cli.ok("submit", str(tasks)).stderr
    assert cli.job("many")["pending"] == count


def test_priority_decides_the_order_on_a_busy_node(cli: Cli, daemon: Callable[..., Daemon]) -> None:
    daemon("--cpus", "1")
    tasks = write_tasks(
        cli.cwd / "prio.jsonl",
        [{"name": "blocker", "cmd": "sleep 0.5", "priority": 100}]
        + [{"name": f"p{p}", "cmd": "true", "priority": p} for p in (1, 5, 3, 9, 7)],
    )
    cli.ok("submit", str(tasks), "--wait")
    rows = [r for r in export_rows(cli) if r["name"] != "blocker"]
    order = [r["name"] for r in sorted(rows, key=lambda r: r["started"])]
    assert order == ["p9", "p7", "p5", "p3", "p1"]


def test_timeout_kills_the_task_and_counts_as_a_failed_attempt(
    cli: Cli, daemon: Callable[..., Daemon]
) -> None:
    daemon()
    tasks = write_tasks(
        cli.cwd / "slow.jsonl", [{"name": "slow", "cmd": "sleep 30", "timeout": 0.5, "retries": 0}]
    )
    started = time.monotonic()
    done = cli("submit", str(tasks), "--wait")
    assert done.returncode == 1
    assert time.monotonic() - started < 20
    (row,) = export_rows(cli, "--attempts")
    assert (row["outcome"], row["reason"]) == ("timeout", "timed out after 0.5s")


def test_a_cancelled_programs_sigterm_handler_has_the_grace_to_save(
    cli: Cli, daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """A `cmd` whose program (not the shell) traps SIGTERM: at the cancel the shell dies at
    once, and the program still writes its checkpoint before the SIGKILL."""
    daemon()
    ckpt, ready = tmp_path / "ckpt", tmp_path / "ready"
    train = (
        "import signal, sys, time\n"
        "def save(*_):\n"
        "    time.sleep(0.3)\n"
        f"    open({str(ckpt)!r}, 'w').write('saved')\n"
        "    sys.exit(3)\n"
        "signal.signal(signal.SIGTERM, save)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(30)\n"
    )
    (tmp_path / "train.py").write_text(train)
    cmd = f"python3 {tmp_path / 'train.py'}; echo the shell waits for it"
    cli.ok("submit", str(write_tasks(cli.cwd / "train.jsonl", [{"cmd": cmd}])))
    cli.wait_for("the program to set its handler", ready.exists)
    cli.ok("cancel", "train")
    cli.wait_for("its attempt to end", lambda: cli.status()["nodes"][0]["running"] == 0, 15)
    assert ckpt.read_text() == "saved"
    (row,) = export_rows(cli, "--attempts")
    assert (row["outcome"], row["reason"]) == ("interrupted", "cancelled")


def test_cancel_stops_a_running_job_and_retry_requeues_failures(
    cli: Cli, daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon("--cpus", "2")
    marker = tmp_path / "now-it-works"
    slow = write_tasks(cli.cwd / "slow.jsonl", [{"cmd": "sleep 60"}, {"cmd": "sleep 61"}])
    cli.ok("submit", str(slow))
    cli.wait_for("two running tasks", lambda: cli.job("slow")["running"] == 2)
    cli.ok("cancel", "slow")
    cli.wait_for("the job to be cancelled", lambda: cli.job("slow")["cancelled"] == 2)
    cli.wait_for("its attempts to end", lambda: cli.status()["nodes"][0]["running"] == 0, 15)
    assert {r["outcome"] for r in export_rows(cli, "--attempts", "--job", "slow")} == {
        "interrupted"
    }

    flaky = write_tasks(cli.cwd / "flaky.jsonl", [{"cmd": f"test -e {marker}", "retries": 0}])
    assert cli("submit", str(flaky), "--wait").returncode == 1
    marker.touch()
    assert "1 failed task of flaky re-queued" in cli.ok("retry", "flaky").stdout
    cli.wait_for("the retried task to succeed", lambda: cli.job("flaky")["done"] == 1)


def test_sigkill_and_restart_loses_nothing_and_reruns_what_was_running(
    cli: Cli, daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    # Each attempt records its pid, so we can see the orphans of the killed daemon die.
    tasks = write_tasks(
        cli.cwd / "crash.jsonl",
        [{"name": f"quick{i}", "cmd": f"echo {i}"} for i in range(4)]
        + [
            {"name": f"slow{i}", "cmd": f"echo $$ >> {pids}/slow{i}; sleep 3; echo slept"}
            for i in range(2)
        ],
    )
    first = daemon("--cpus", "2")
    cli.ok("submit", str(tasks))
    cli.wait_for(
        "both slow tasks running",
        lambda: all((pids / f"slow{i}").exists() for i in range(2)),
    )
    # A slot is free for the next task as soon as an attempt's process ends, a moment before
    # its result is committed: wait until the ledger too shows just the two slow ones running.
    cli.wait_for("only the slow tasks running", lambda: cli.job("crash")["running"] == 2)
    first.kill(signal.SIGKILL)
    orphans = [int((pids / f"slow{i}").read_text().split()[0]) for i in range(2)]
    assert all(pid_alive(pid) for pid in orphans)  # the tasks outlived their daemon

    offline = cli.job("crash")  # read from the ledger file, no daemon
    assert offline["total"] == 6 and offline["running"] == 2

    daemon("--cpus", "2")
    assert not any(pid_alive(pid) for pid in orphans)  # the restart killed them
    cli.wait_for("the job to finish", lambda: cli.job("crash")["done"] == 6)
    rows = export_rows(cli, "--attempts")
    slow = [r for r in rows if r["name"].startswith("slow")]
    assert sorted(r["outcome"] for r in slow) == ["interrupted"] * 2 + ["ok"] * 2
    tasks_rows = export_rows(cli)
    assert len(tasks_rows) == 6 and {r["state"] for r in tasks_rows} == {"done"}
    assert all(r["attempts"] == "2" for r in tasks_rows if r["name"].startswith("slow"))
    cli.ok("results", "crash", "--out", str(tmp_path / "res"))
    assert (tmp_path / "res/slow1/stdout").read_text() == "slept\n"


def test_status_once_and_json_read_a_stopped_nodes_ledger(cli: Cli) -> None:
    tasks = write_tasks(cli.cwd / "few.jsonl", [{"cmd": "true"}, {"cmd": "false", "retries": 0}])
    cli("run", str(tasks))
    job = cli.job("few")
    assert (job["done"], job["failed"]) == (1, 1)
    assert cli.status()["nodes"][0]["state"] == "stopped"
    text = cli.ok("status", "--once").stdout
    assert "few" in text and "1 failed" in text


def test_lines_mode_and_stdin(cli: Cli, tmp_path: Path) -> None:
    done = cli(
        "run", "-", "--lines", "--job", "piped", "--out", str(tmp_path / "o"),
        input=b"echo 'it''s' \"quoted\" $((6*7))\n\nprintf '%s' caf\xc3\xa9\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o/1/stdout").read_text() == "its quoted 42\n"
    assert (tmp_path / "o/3/stdout").read_text() == "café"
    assert sorted(os.listdir(tmp_path / "o")) == ["1", "3"]  # the blank line is no task


def test_repeated_lines_are_told_and_a_file_of_no_lines_is_refused_unread(
    cli: Cli, tmp_path: Path
) -> None:
    listed = tmp_path / "twice[gpu].txt"  # printed as it is, not read as markup
    listed.write_text("echo x\necho x\necho y\n")
    done = cli("run", "--lines", str(listed), "--job", "twice", "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    assert f"{listed}: 1 line repeats an earlier line and adds no task of its own" in done.stderr
    assert "make the lines differ" in done.stderr
    assert sorted(os.listdir(tmp_path / "o")) == ["1", "3"]
    # /dev/zero has no line end: refused at the line bound (read whole, it would fill memory).
    zero = cli("submit", "/dev/zero", timeout=60)
    assert zero.returncode == 2
    assert "/dev/zero:1: the line is longer than 4 MiB" in zero.stderr, zero.stderr


@pytest.mark.parametrize(
    ("job", "spec"),
    [
        ("evil", {"cmd": "true", "cpus": 1.0, "memory": 1, "env": {"A": 1}}),
        ("evil", {"cmd": "true", "cpus": 1.0, "memory": 1, "outputs": [5]}),
        ("evil", {"cmd": "true", "cpus": 1.0, "memory": 1, "requires": {"zone": {"x": 1}}}),
        ("evil", {"cmd": "true", "cpus": -1.0, "memory": 1}),
        ("evil", {"cmd": "true", "cpus": 1.0, "memory": 2**64 - 1}),
        ("evil", {"cmd": "true", "cpus": 1.0, "memory": 1, "timeout": float("nan")}),
        ("../escape", {"cmd": "true", "cpus": 1.0, "memory": 1}),
    ],
)
def test_a_malformed_submission_on_the_socket_is_refused_and_the_daemon_lives(
    cli: Cli, daemon: Callable[..., Daemon], job: str, spec: dict[str, object]
) -> None:
    node = daemon()
    state = statedir.StateDir(cli.home)

    async def submit() -> str:
        client = await connection.Client.connect(state)
        try:
            await client.send({"op": "submit", "job": job})
            await client.send({"tasks": [{"task_id": "0" * 64, "name": "n", "spec": spec}]})
            await client.send({"end": True})
            with pytest.raises(ControlError) as refused:
                await client.reply()
            await client.call("ping")  # the same connection still works
            return str(refused.value)
        finally:
            await client.close()

    message = asyncio.run(submit())
    assert "malformed task" in message or "job name" in message
    assert node.proc is not None and node.proc.poll() is None
    assert cli.status()["jobs"] == []


def test_status_of_a_paused_daemon_is_read_from_disk(
    cli: Cli, daemon: Callable[..., Daemon]
) -> None:
    node = daemon()
    tasks = write_tasks(cli.cwd / "p.jsonl", [{"name": "a", "cmd": "true"}])
    cli.ok("submit", str(tasks), "--wait")
    assert node.proc is not None
    node.proc.send_signal(signal.SIGSTOP)
    try:
        began = time.monotonic()
        shown = cli.ok("status", "--once")
        assert time.monotonic() - began < 20
        assert "did not answer" in shown.stderr and "p" in shown.stdout
    finally:
        node.proc.send_signal(signal.SIGCONT)


def test_why_says_what_a_task_waits_for(cli: Cli, daemon: Callable[..., Daemon]) -> None:
    """A task that needs a label no node has, one that waits its retry backoff after failing,
    and one that runs; and the retried one runs again only once its backoff is over."""
    daemon("--cpus", "1", "--label", "zone=us")
    tasks = write_tasks(
        cli.cwd / "waits.jsonl",
        [
            {"name": "eu", "cmd": "true", "requires": {"zone": "eu"}},
            {"name": "flaky", "cmd": "exit 3", "retries": 1, "retry_backoff": 4},
        ],
    )
    submitted = cli.ok("submit", str(tasks))
    assert "warning: 1 task fit no live node now: it requires zone=eu" in submitted.stderr
    why_eu = cli.ok("why", "waits/eu").stdout
    assert "it requires zone=eu: no live node matches (the nodes have zone=us)" in why_eu
    wait_for("flaky to fail once", lambda: "retry backoff" in cli.ok("why", "waits/flaky").stdout)
    wait_for("flaky to fail for good", lambda: cli.job("waits")["failed"] == 1, timeout=30)
    first, second = sorted(
        (r for r in export_rows(cli, "--attempts") if r["name"] == "flaky"),
        key=lambda r: r["started"],
    )
    gap = datetime.fromisoformat(second["started"]) - datetime.fromisoformat(first["ended"])
    assert gap.total_seconds() >= 3.9, gap  # the retry waited its backoff, by the ledger's times
    assert "swarm retry waits" in cli.ok("why", "waits/flaky").stdout
    refused = cli("why", "waits/nope")
    assert refused.returncode != 0 and "has no task named 'nope'" in refused.stderr


def test_logs_follow_a_running_attempt_then_show_each_attempt(
    cli: Cli, daemon: Callable[..., Daemon]
) -> None:
    daemon("--cpus", "1")
    gate = cli.cwd / "go"
    tasks = write_tasks(
        cli.cwd / "talk.jsonl",
        [
            {
                "name": "chat",
                "cmd": f"echo one; echo oops >&2; while [ ! -e {gate} ]; do sleep 0.05; done; echo two",
            },
            {"name": "bad", "cmd": "echo no >&2; exit 3", "retries": 1, "retry_backoff": 0},
        ],
    )
    cli.ok("submit", str(tasks))
    wait_for("chat to run", lambda: cli.job("talk")["running"] == 1)
    follower = cli.spawn("logs", "talk/chat", "--follow")
    try:
        assert follower.stdout is not None
        ready, _, _ = select.select([follower.stdout], [], [], 30)
        assert ready, "--follow printed nothing of the running attempt"
        first = follower.stdout.readline()  # printed while it runs: the gate is still shut
        gate.write_text("")
        rest, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert first + rest == "one\ntwo\n", (first, rest, err)  # each line once
    assert "oops" in err and "talk/chat: attempt 1" in err
    wait_for("bad to fail twice", lambda: cli.job("talk")["failed"] == 1)
    latest = cli.ok("logs", "talk/bad")
    assert "attempt 2 on node" in latest.stderr and latest.stderr.rstrip().endswith("no")
    first = cli.ok("logs", "talk/bad", "--attempt", "1")
    assert "attempt 1 on node" in first.stderr
    missing = cli("logs", "talk/bad", "--attempt", "9")
    assert missing.returncode != 0 and "no ended attempt 9" in missing.stderr
    # Its stderr held nowhere (the only copy gone): said, and the command fails (it gave 0).
    BlobStore(cli.home / "blobs").path(hashlib.sha256(b"no\n").hexdigest()).unlink()
    lost = cli("logs", "talk/bad")
    assert lost.returncode == 1, lost.stderr
    assert "(its stderr could not be had from any node)" in lost.stderr


def test_logs_follow_each_attempt_of_a_retried_task_whole_and_apart(
    cli: Cli, daemon: Callable[..., Daemon]
) -> None:
    daemon("--cpus", "1")
    gate = cli.cwd / "gate"  # each attempt ends once it exists: the first, once it is followed
    script = (
        f'n=$SWARM_ATTEMPT; echo "attempt-$n-a"; while [ ! -e {gate} ]; do sleep 0.05; done; '
        'echo "attempt-$n-b"; exit 1'
    )
    tasks = write_tasks(
        cli.cwd / "again.jsonl",
        [{"name": "twice", "cmd": script, "retries": 1, "retry_backoff": 0}],
    )
    cli.ok("submit", str(tasks))
    wait_for("it to run", lambda: cli.job("again")["running"] == 1)
    follower = cli.spawn("logs", "again/twice", "--follow")
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()
        gate.write_text("")
        rest, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert first + rest == "attempt-1-a\nattempt-1-b\nattempt-2-a\nattempt-2-b\n", (rest, err)
    assert "attempt 1 on node" in err and "attempt 2 on node" in err
