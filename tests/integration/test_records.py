"""Records are checked before they are trusted: a TASK record must hash to its id, on load and
from peers; a ledger file SQLite cannot read is one sentence saying what to do; a row that
cannot be read is said in `swarm status`, not only in the daemon's log."""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from swarm.core.ledger import Kind, TaskRecord
from swarm.core.spec import Resources, TaskSpec, task_id
from swarm.daemon import db

from .conftest import Cli, Daemon, Swarm, export_rows, free_port, wait_for, write_tasks

pytestmark = pytest.mark.integration

NEVER = {"zone": "nowhere"}  # a task that no node here may run: it stays pending, visible


def _edit_task_commands(ledger: Path, cmd: str) -> int:
    """Rewrite the command of every TASK record in the file, as someone with the file could."""
    with sqlite3.connect(ledger) as conn:
        rows = conn.execute(
            "SELECT origin, generation, seq, body FROM records WHERE kind = ?", (int(Kind.TASK),)
        ).fetchall()
        for origin, generation, seq, body in rows:
            plain = msgpack.unpackb(body, raw=False)
            plain[4]["cmd"] = cmd
            conn.execute(
                "UPDATE records SET body = ? WHERE origin = ? AND generation = ? AND seq = ?",
                (msgpack.packb(plain, use_bin_type=True), origin, generation, seq),
            )
    conn.close()
    return len(rows)


def test_a_task_record_edited_in_the_ledger_file_is_refused_on_load(
    cli: Cli, daemon: Callable[..., Daemon]
) -> None:
    tasks = write_tasks(
        cli.cwd / "edit.jsonl", [{"name": "victim", "cmd": "echo original", "requires": NEVER}]
    )
    first = daemon("--bind", f"127.0.0.1:{free_port()}")
    cli.ok("submit", str(tasks))
    (row,) = export_rows(cli)
    first.stop()
    assert _edit_task_commands(cli.home / "ledger.db", "echo edited") == 1
    daemon("--bind", f"127.0.0.1:{free_port()}")
    assert export_rows(cli) == []  # not under its id, nor under any other
    snap = cli.status()
    assert snap["jobs"] == [] and snap["refused_tasks"] == 1
    assert row["task_id"][:16] in snap["refused_reason"]
    text = " ".join(cli.ok("status", "--once").stdout.split())
    assert "1 task record in the ledger was refused" in text
    net = json.loads(cli.ok("members", "--json").stdout)["net"]
    assert net["refused_tasks"] == 1
    assert "swarm: 1 task record in the ledger refused (" in cli.ok("export").stderr


def _push(cli: Cli, port: int, origin: str, body: TaskRecord) -> None:
    """A RecordsPush of one record of `origin`, sealed with the swarm key, as a peer sends it."""
    from swarm.core import wire

    key = bytes.fromhex((cli.home / "swarm.key").read_text().strip())
    sealer = wire.Sealer(b"m" * 16, wire.KeyRing.of(key), counter=_push.counter, boot=bytes(8))
    me = bytes.fromhex(str(json.loads(cli.ok("members", "--json").stdout)["members"][0]["id"]))
    _push.counter += 1
    push = wire.RecordsPush(((origin, 1, 1, db.encode(body)),))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(
            sealer.seal(wire.encode(wire.ledger_message_to_plain(push)), me), ("127.0.0.1", port)
        )


_push.counter = 1  # type: ignore[attr-defined]


def test_a_forged_task_record_from_a_peer_is_refused_and_a_genuine_copy_taken(
    swarm: Swarm,
) -> None:
    cli, _ = swarm.start(0)
    port = swarm.nodes[0][2]
    spec = TaskSpec("echo original", None, Resources(1.0, 2**20), requires=(("zone", "x"),))
    genuine = TaskRecord(task_id("far", spec, "t"), "far", "t", spec, 1)
    forged = TaskRecord(genuine.task_id, "far", "t", TaskSpec("echo forged", None, spec.need), 1)
    origin = "ab" * 32
    _push(cli, port, origin, forged)
    wait_for("the forgery to be counted", lambda: swarm.members(0)["net"]["refused_tasks"] == 1)
    assert export_rows(cli) == []
    _push(cli, port, origin, genuine)  # the same version, as its origin wrote it
    wait_for("the genuine record to be taken", lambda: len(export_rows(cli)) == 1)
    (row,) = export_rows(cli)
    assert row["task_id"] == genuine.task_id and row["command"] == "echo original"
    assert swarm.members(0)["net"]["refused_tasks"] == 1


def test_an_unreadable_record_is_said_in_status(cli: Cli, daemon: Callable[..., Daemon]) -> None:
    tasks = write_tasks(
        cli.cwd / "two.jsonl",
        [{"name": n, "cmd": "true", "requires": NEVER} for n in ("kept", "lost")],
    )
    first = daemon()
    cli.ok("submit", str(tasks))
    first.stop()
    with sqlite3.connect(cli.home / "ledger.db") as conn:
        conn.execute(
            "UPDATE records SET body = ? WHERE seq = (SELECT MAX(seq) FROM records WHERE kind = ?)",
            (b"\xc1 not msgpack", int(Kind.TASK)),
        )
    conn.close()
    for running in (False, True):  # read from the file, and from the daemon
        if running:
            daemon()
        snap = cli.status()
        assert snap["unreadable_records"] == 1, snap
        assert snap["jobs"][0]["total"] == 1
        text = " ".join(cli.ok("status", "--once").stdout.split())
        assert "1 record in the ledger could not be read (" in text
        assert "the tasks it describes are not shown" in text
    assert "swarm: 1 record in the ledger could not be read (" in cli.ok("export").stderr


def _damage(ledger: Path, how: str) -> None:
    whole = ledger.read_bytes()
    for extra in (Path(f"{ledger}-wal"), Path(f"{ledger}-shm")):
        extra.unlink(missing_ok=True)
    ledger.write_bytes(bytes(range(256)) * 64 if how == "garbage" else whole[: len(whole) // 2])


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_a_corrupt_ledger_is_one_sentence_from_every_command(
    cli: Cli, daemon: Callable[..., Daemon], how: str
) -> None:
    tasks = write_tasks(
        cli.cwd / "many.jsonl", [{"cmd": f"echo {i} {'x' * 200}"} for i in range(200)]
    )
    cli.ok("run", str(tasks), "--out", str(cli.cwd / "out"))
    _damage(cli.home / "ledger.db", how)
    for args in (
        ("start",),
        ("status", "--once"),
        ("status", "--json"),
        ("results", "many", "--out", str(cli.cwd / "again")),
        ("export",),
    ):
        done = cli(*args, timeout=30)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0, (args, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)
        assert len(lines) == 1, (args, done.stderr)
        assert f"the ledger {cli.home / 'ledger.db'} is corrupt" in lines[0], lines
        assert "move it aside" in lines[0] and "catches up from its peers" in lines[0]
    # And the advice works: moved aside, the node starts empty.
    (cli.home / "ledger.db").rename(cli.home / "ledger.db.corrupt")
    daemon()
    assert cli.status()["jobs"] == []


def _edit_one_task_command(ledger: Path, name: str, cmd: str) -> None:
    """Rewrite the command of the TASK record named `name`, keeping its version and its id."""
    with sqlite3.connect(ledger) as conn:
        rows = conn.execute(
            "SELECT origin, generation, seq, body FROM records WHERE kind = ?", (int(Kind.TASK),)
        ).fetchall()
        (found,) = [r for r in rows if msgpack.unpackb(r[3], raw=False)[3] == name]
        origin, generation, seq, body = found
        plain = msgpack.unpackb(body, raw=False)
        plain[4]["cmd"] = cmd
        conn.execute(
            "UPDATE records SET body = ? WHERE origin = ? AND generation = ? AND seq = ?",
            (msgpack.packb(plain, use_bin_type=True), origin, generation, seq),
        )
    conn.close()


def test_a_task_record_edited_in_the_ledger_file_never_stalls_its_origin_at_peers(
    swarm: Swarm,
) -> None:
    """The node refuses the edited record itself, so it never serves it: a peer that joins
    later takes everything else of that origin, records written after the edited one too."""
    first = [{"name": f"first-{i}", "cmd": f"echo {i}", "requires": NEVER} for i in range(3)]
    second = [{"name": f"second-{i}", "cmd": f"echo {i}", "requires": NEVER} for i in range(3)]
    cli, node = swarm.start(0)
    cli.ok("submit", str(write_tasks(cli.cwd / "first.jsonl", first)))
    (victim,) = [r for r in export_rows(cli) if r["name"] == "first-1"]
    node.stop()
    _edit_one_task_command(cli.home / "ledger.db", "first-1", "echo edited")
    swarm.nodes[0] = (cli, Daemon(cli, node.args).start(), swarm.nodes[0][2])
    cli.ok("submit", str(write_tasks(cli.cwd / "second.jsonl", second)))
    expected = {"first-0", "first-2", *(t["name"] for t in second)}
    assert {r["name"] for r in export_rows(cli)} == expected
    joined, _ = swarm.start(1, join=0)
    wait_for(
        "the joined node to take every intact task of node 0",
        lambda: {r["name"] for r in export_rows(joined)} == expected,
        detail=lambda: sorted(r["name"] for r in export_rows(joined)),
    )
    for c in (cli, joined):
        assert victim["task_id"] not in {r["task_id"] for r in export_rows(c)}
    assert swarm.members(1)["net"]["refused_tasks"] == 0  # never sent to it
