"""Several real daemons on 127.0.0.1 form one swarm: membership over real UDP and TCP."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from swarm.daemon.store import BlobStore

from .conftest import (
    Cli,
    Daemon,
    Swarm,
    drained_attempts,
    export_rows,
    free_port,
    running_by_node,
    wait_for,
    write_tasks,
)

pytestmark = pytest.mark.integration


def test_three_daemons_form_a_swarm_and_a_killed_one_is_declared_dead(swarm: Swarm) -> None:
    swarm.start(0)
    swarm.start(1, join=0)
    swarm.start(2, join=0)
    ids = [swarm.node_id(i) for i in range(3)]
    for i in range(3):
        wait_for(
            f"node {i} to see all three", lambda i=i: swarm.states(i) == dict.fromkeys(ids, "alive")
        )
    swarm.nodes[2][1].kill(signal.SIGKILL)
    for i in range(2):
        wait_for(
            f"node {i} to declare the killed node dead",
            lambda i=i: swarm.states(i).get(ids[2]) == "dead",
        )
    status = json.loads(swarm.nodes[0][0].ok("status", "--json").stdout)
    assert {n["id"] for n in status["nodes"]} == set(ids)  # status shows every member


def test_a_stopped_node_is_seen_as_left(swarm: Swarm) -> None:
    swarm.start(0)
    swarm.start(1, join=0)
    ids = [swarm.node_id(i) for i in range(2)]
    wait_for("both to see each other", lambda: swarm.states(0) == dict.fromkeys(ids, "alive"))
    swarm.nodes[1][0].ok("leave")
    wait_for("the leave to be seen", lambda: swarm.states(0).get(ids[1]) == "left")


def test_a_node_with_the_wrong_key_never_joins_and_its_packets_are_dropped(
    swarm: Swarm,
) -> None:
    swarm.start(0)
    swarm.start(1, join=0, key_from=None)  # a swarm key of its own
    # It tries again every second: two tries dropped, the first was handled and went nowhere.
    wait_for("two tries to join to be dropped", lambda: swarm.members(0)["net"]["dropped"] >= 2)
    assert len(swarm.states(0)) == 1
    assert len(swarm.states(1)) == 1
    assert swarm.members(1)["net"]["received"] == 0  # nothing came back


def test_a_job_submitted_on_one_node_is_seen_and_finished_on_all(swarm: Swarm) -> None:
    swarm.start(0)
    swarm.start(1, join=0)
    swarm.start(2, join=0)
    ids = [swarm.node_id(i) for i in range(3)]
    wait_for("all three to see each other", lambda: swarm.states(2) == dict.fromkeys(ids, "alive"))
    cli0 = swarm.nodes[0][0]
    tasks = cli0.cwd / "shared.jsonl"
    tasks.write_text(
        "".join(json.dumps({"name": f"t{i}", "cmd": f"echo {i}"}) + "\n" for i in range(12))
    )
    cli0.ok("submit", str(tasks))

    def finished_everywhere() -> bool:
        for cli, _, _ in swarm.nodes:
            jobs = {j["job"]: j for j in json.loads(cli.ok("status", "--json").stdout)["jobs"]}
            row = jobs.get("shared")
            if row is None or row["done"] != 12:
                return False
        return True

    wait_for("the job to be done in every node's ledger", finished_everywhere, timeout=60)
    exports = [
        sorted((r["name"], r["state"], r["attempts"]) for r in export_rows(cli))
        for cli, _, _ in swarm.nodes
    ]
    assert exports[0] == exports[1] == exports[2]  # every replica derives the same states
    runners = {r["node"] for r in export_rows(cli0)}
    assert runners <= set(ids)


def test_a_submit_host_started_with_no_work_holds_the_ledger_and_runs_nothing(
    swarm: Swarm,
) -> None:
    swarm.start(0, extra=("--no-work",))
    swarm.start(1, join=0, cpus=2)
    ids = [swarm.node_id(i) for i in range(2)]
    wait_for("both to see each other", lambda: swarm.states(0) == dict.fromkeys(ids, "alive"))
    host = swarm.nodes[0][0]
    assert swarm.own_row(0)["not_claiming"] == "it takes no work (started with --no-work)"
    assert swarm.own_row(0)["capacity"]["cpus"] == 0
    tasks = write_tasks(host.cwd / "hosted.jsonl", [{"cmd": f"echo {i}"} for i in range(6)])
    host.ok("submit", str(tasks))
    wait_for("the job to be done", lambda: host.job("hosted")["done"] == 6)
    assert {r["node"] for r in export_rows(host)} == {ids[1]}  # every task ran on the worker
    # Its output is printed on the submit host, fetched from the node that holds it.
    shown = host.ok("logs", "hosted/3")
    assert shown.stdout == "2\n" and f"attempt 1 on node {ids[1][:8]}: ok" in shown.stderr


def test_a_restarted_node_rejoins_and_catches_up(swarm: Swarm) -> None:
    swarm.start(0)
    cli1, daemon1 = swarm.start(1, join=0)
    ids = [swarm.node_id(i) for i in range(2)]
    wait_for("both to see each other", lambda: swarm.states(0) == dict.fromkeys(ids, "alive"))
    before = {m["id"]: m for m in swarm.members(0)["members"]}[ids[1]]["incarnation"]
    daemon1.kill(signal.SIGKILL)
    wait_for("the killed node to be declared dead", lambda: swarm.states(0)[ids[1]] == "dead")
    cli0 = swarm.nodes[0][0]
    tasks = cli0.cwd / "meanwhile.jsonl"
    tasks.write_text(json.dumps({"cmd": "echo while you were away"}) + "\n")
    # Submitted while it is away (node 0 runs it, unless it has heard no peer for a lease by
    # then: a node cut off claims nothing, and node 1 runs it once back).
    cli0.ok("submit", str(tasks))
    daemon1.start()  # same state dir, same address
    wait_for("it to be alive again", lambda: swarm.states(0)[ids[1]] == "alive")
    after = {m["id"]: m for m in swarm.members(0)["members"]}[ids[1]]["incarnation"]
    assert after > before
    wait_for(
        "it to catch up on the ledger",
        lambda: any(j["job"] == "meanwhile" and j["done"] == 1 for j in cli1.status()["jobs"]),
    )


def test_a_node_restarted_without_join_rejoins_through_the_members_it_saw(swarm: Swarm) -> None:
    swarm.start(0)
    cli1, daemon1 = swarm.start(1, join=0)
    ids = [swarm.node_id(i) for i in range(2)]
    wait_for("both to see each other", lambda: swarm.states(0) == dict.fromkeys(ids, "alive"))
    port0 = swarm.nodes[0][2]
    peers_file = cli1.home / "peers"
    wait_for("node 1 to keep node 0's address", lambda: peers_file.exists())
    assert peers_file.read_text() == f"127.0.0.1:{port0}\n"
    daemon1.stop()
    wait_for("node 1 to have left", lambda: swarm.states(0)[ids[1]] == "left")
    i = daemon1.args.index("--join")
    again = Daemon(cli1, daemon1.args[:i] + daemon1.args[i + 2 :]).start()  # no --join
    swarm.nodes.append((cli1, again, 0))  # stopped with the others
    wait_for("it to be alive again", lambda: swarm.states(0)[ids[1]] == "alive")
    assert "rejoining through 1 member(s)" in again.log.read_text()


def test_junk_truncated_flipped_replayed_and_oversized_packets_are_dropped(swarm: Swarm) -> None:
    from swarm.core import wire

    cli0, daemon0 = swarm.start(0)
    port = swarm.nodes[0][2]
    key = bytes.fromhex((cli0.home / "swarm.key").read_text().strip())
    sealer = wire.Sealer(b"x" * 16, wire.KeyRing.of(key), counter=1, boot=bytes(8))
    genuine = sealer.seal(wire.encode([[wire.MessageType.GOSSIP], []]))
    flipped = bytearray(genuine)
    flipped[-1] ^= 1
    bad = [b"", b"junk", genuine[:20], bytes(flipped), b"x" * 2000, genuine, genuine]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for packet in bad:
            udp.sendto(packet, ("127.0.0.1", port))
    # All but the first copy of the genuine packet are dropped; the empty one may not arrive.
    wait_for("the drops to be counted", lambda: swarm.members(0)["net"]["dropped"] >= 5)
    assert daemon0.proc is not None and daemon0.proc.poll() is None
    assert len(swarm.states(0)) == 1


def test_results_are_fetched_from_the_node_that_ran_the_tasks(swarm: Swarm, tmp_path: Path) -> None:
    swarm.start(0)
    work = tmp_path / "work1"
    work.mkdir()
    cli1 = Cli(home=tmp_path / "home1", cwd=work)
    cli1.ok("init", "--key-file", str(swarm.nodes[0][0].home / "swarm.key"))
    port = free_port()
    args = ("--bind", f"127.0.0.1:{port}", "--profile", "test", "--label", "zone=b",
            "--join", f"127.0.0.1:{swarm.nodes[0][2]}")  # fmt: skip
    swarm.nodes.append((cli1, Daemon(cli1, args).start(), port))
    ids = [swarm.node_id(i) for i in range(2)]
    wait_for("both to see each other", lambda: swarm.states(0) == dict.fromkeys(ids, "alive"))
    cli0 = swarm.nodes[0][0]
    tasks = cli0.cwd / "remote.jsonl"
    lines = [
        {"name": f"r{i}", "cmd": f"echo ran on b {i}; echo out{i} > f.txt", "outputs": ["f.txt"],
         "requires": {"zone": "b"}}
        for i in range(3)
    ]  # fmt: skip
    tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cli0.ok("submit", str(tasks))
    wait_for(
        "node 0 to see the job done",
        lambda: any(j["job"] == "remote" and j["done"] == 3 for j in cli0.status()["jobs"]),
    )
    out = tmp_path / "out"
    done = cli0.ok("results", "remote", "--out", str(out))
    assert "fetched" in done.stderr
    for i in range(3):
        assert (out / f"r{i}/stdout").read_text() == f"ran on b {i}\n"
        assert (out / f"r{i}/f.txt").read_text() == f"out{i}\n"
    assert {r["node"] for r in export_rows(cli0)} == {ids[1]}
    # A copy held here that went bad is set aside as it is read, and fetched anew at once
    # from the node that holds a good one (the first `results` failed, the second passed).
    held = BlobStore(cli0.home / "blobs").path(hashlib.sha256(b"ran on b 0\n").hexdigest())
    held.chmod(0o644)
    held.write_bytes(b"ran on X 0\n")
    again = cli0.ok("results", "remote", "--out", str(tmp_path / "again"))
    assert "1 result file held here found corrupt: set aside" in again.stderr
    assert (tmp_path / "again/r0/stdout").read_text() == "ran on b 0\n"


def test_key_rotation_across_a_running_swarm_keeps_it_together(
    swarm: Swarm, tmp_path: Path
) -> None:
    swarm.start(0)
    swarm.start(1, join=0)
    ids = [swarm.node_id(i) for i in range(2)]
    together = dict.fromkeys(ids, "alive")
    wait_for("both to see each other", lambda: swarm.states(0) == together)
    cli0, cli1 = swarm.nodes[0][0], swarm.nodes[1][0]
    new_key = tmp_path / "new.key"
    cli0.ok("key", "new", str(new_key))
    old_id = cli0.ok("key", "list").stdout.split()[2]
    # 1. install everywhere, 2. use everywhere, 3. remove the old key everywhere
    for cli in (cli0, cli1):
        cli.ok("key", "install", str(new_key))
    listed = cli0.ok("key", "list").stdout.splitlines()
    new_id = next(line.split()[1] for line in listed if line.startswith("installed"))
    dropped_before = swarm.members(0)["net"]["dropped"] + swarm.members(1)["net"]["dropped"]
    for cli in (cli0, cli1):
        cli.ok("key", "use", new_id)
        wait_for("packets both ways since the switch", _traffic_mark(swarm, 2))
        assert swarm.states(0) == together and swarm.states(1) == together
    for cli in (cli0, cli1):
        cli.ok("key", "remove", old_id)
    wait_for("packets both ways since the removal", _traffic_mark(swarm, 2))
    assert swarm.states(0) == together and swarm.states(1) == together
    dropped_after = swarm.members(0)["net"]["dropped"] + swarm.members(1)["net"]["dropped"]
    assert dropped_after == dropped_before  # no packet of a member was lost to the rotation
    assert f"in use:    {new_id}" in cli1.ok("key", "list").stdout


# About a second of probes and acks at the test profile's 0.1 s probe interval.
TRAFFIC_PACKETS = 20


def _taken(swarm: Swarm, i: int) -> int:
    """Packets node i took in (received and not dropped)."""
    net = swarm.members(i)["net"]
    return int(net["received"]) - int(net["dropped"])


def _traffic_mark(swarm: Swarm, count: int) -> Callable[[], bool]:
    """Whether each of the first `count` nodes has taken TRAFFIC_PACKETS packets since now."""
    marks = [_taken(swarm, i) for i in range(count)]
    return lambda: all(_taken(swarm, i) >= marks[i] + TRAFFIC_PACKETS for i in range(count))


def test_forged_alives_and_results_are_refused_and_counted(swarm: Swarm) -> None:
    """A holder of the swarm key still cannot speak for another node: its Alive and RESULT
    records must carry that node's own signature."""
    from swarm.core import gossip, wire
    from swarm.core.identity import Identity
    from swarm.core.ledger import Outcome, ResultRecord
    from swarm.core.spec import Resources
    from swarm.daemon import db

    cli0, daemon0 = swarm.start(0)
    port = swarm.nodes[0][2]
    task = cli0.cwd / "never.jsonl"
    task.write_text(
        json.dumps({"name": "t", "cmd": "true", "requires": {"zone": "nowhere"}}) + "\n"
    )
    cli0.ok("submit", str(task))
    (row,) = export_rows(cli0)
    key = bytes.fromhex((cli0.home / "swarm.key").read_text().strip())
    sealer = wire.Sealer(b"m" * 16, wire.KeyRing.of(key), counter=1, boot=bytes(8))
    me = bytes.fromhex(swarm.node_id(0))
    victim, forger = Identity.generate(), Identity.generate()
    done = ResultRecord(
        task_id=row["task_id"],
        epoch=1,
        attempt=1,
        outcome=Outcome.OK,
        exit_code=0,
        started_ms=1,
        ended_ms=2,
        wall_s=0.0,
        cpu_s=0.0,
        max_rss_kb=0,
        digest=None,
        node_capacity=Resources(cpus=1, memory_bytes=1 << 30),
    )
    forged_result = forger.sign_result(done)  # signed, but not by the victim
    forged_alive = forger.sign_alive(gossip.Alive(victim.node_id, 1, ("127.0.0.1", 9), {}))
    packets = [
        wire.encode(
            wire.ledger_message_to_plain(
                wire.RecordsPush(((victim.node_id, 1, 1, db.encode(forged_result)),))
            )
        ),
        wire.encode_datagram(gossip.Packet(gossip.Gossip(), (forged_alive,)))[0],
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for body in packets:
            udp.sendto(sealer.seal(body, me), ("127.0.0.1", port))
    wait_for("both forgeries to be counted", lambda: swarm.members(0)["net"]["forged"] >= 2)
    assert victim.node_id not in swarm.states(0)
    assert cli0.job("never")["done"] == 0
    # The same statements signed by the victim itself are taken: the check is not a wall.
    genuine_alive = victim.sign_alive(gossip.Alive(victim.node_id, 1, ("127.0.0.1", 9), {}))
    genuine_result = victim.sign_result(done)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for body in [
            wire.encode_datagram(gossip.Packet(gossip.Gossip(), (genuine_alive,)))[0],
            wire.encode(
                wire.ledger_message_to_plain(
                    wire.RecordsPush(((victim.node_id, 1, 1, db.encode(genuine_result)),))
                )
            ),
        ]:
            udp.sendto(sealer.seal(body, me), ("127.0.0.1", port))
    wait_for("the genuine Alive to be taken", lambda: victim.node_id in swarm.states(0))
    wait_for("the genuine result to be taken", lambda: cli0.job("never")["done"] == 1)
    assert swarm.members(0)["net"]["forged"] == 2
    assert daemon0.proc is not None and daemon0.proc.poll() is None


def test_a_task_that_kills_its_node_fails_after_the_interruption_cap(swarm: Swarm) -> None:
    """Each node that runs it dies (and is brought back, as a supervisor would); whether the
    restarted node records its cut-off attempt or another node takes the task over, every time
    counts, and after the cap the task fails with the reason. Other work finishes."""
    swarm.form(3)
    cli0 = swarm.nodes[0][0]
    killer = cli0.cwd / "killer.jsonl"
    killer.write_text(json.dumps({"name": "k", "cmd": "kill -9 $PPID; sleep 30"}) + "\n")
    calm = cli0.cwd / "calm.jsonl"
    calm.write_text(
        "".join(json.dumps({"name": f"c{i}", "cmd": "echo ok"}) + "\n" for i in range(4))
    )
    cli0.ok("submit", str(calm))
    cli0.ok("submit", str(killer))
    deaths = 0
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        for _, daemon, _ in swarm.nodes:
            assert daemon.proc is not None
            if daemon.proc.poll() is not None:
                deaths += 1
                with contextlib.suppress(AssertionError):
                    daemon.start()  # it may take the task again, and die, before it is ready
        alive = [c for c, d, _ in swarm.nodes if d.proc is not None and d.proc.poll() is None]
        try:
            if alive and alive[0].job("killer")["failed"] == 1:
                break
        except (AssertionError, KeyError):
            pass  # it died while we asked
        time.sleep(0.2)
    for _, daemon, _ in swarm.nodes:  # the last attempt may have taken one down
        assert daemon.proc is not None
        if daemon.proc.poll() is not None:
            daemon.start()
    cli = swarm.nodes[0][0]
    wait_for(
        f"node 0 to see the task failed ({deaths} node deaths so far)",
        lambda: cli.job("killer")["failed"] == 1,
        timeout=30,
    )
    (row,) = [r for r in export_rows(cli) if r["name"] == "k"]
    assert "interrupted" in row["reason"] or row["outcome"] == "interrupted"
    assert deaths >= 5
    wait_for("the other job to be done", lambda: cli.job("calm")["done"] == 4, timeout=60)


def test_a_drained_node_finishes_its_tasks_then_leaves(swarm: Swarm) -> None:
    ids = swarm.form(3)
    cli0, cli2 = swarm.nodes[0][0], swarm.nodes[2][0]
    tasks = cli0.cwd / "drain.jsonl"
    tasks.write_text(
        "".join(json.dumps({"name": f"t{i}", "cmd": f"sleep 2; echo {i}"}) + "\n" for i in range(8))
    )
    cli0.ok("submit", str(tasks))
    wait_for("node 2 to run a task", lambda: running_by_node(cli0).get(ids[2], 0) > 0)
    held = {r["name"] for r in export_rows(cli0) if r["node"] == ids[2] and r["state"] == "running"}
    drained = cli2.ok("drain", "--wait")
    assert "drained" in drained.stdout
    daemon2 = swarm.nodes[2][1]
    assert daemon2.proc is not None and daemon2.proc.wait(timeout=10) == 0
    wait_for("node 2 to be seen as left", lambda: swarm.states(0)[ids[2]] == "left")
    wait_for("every task to be done", lambda: cli0.job("drain")["done"] == 8, timeout=60)
    ran = drained_attempts(cli0, ids[2], held)
    # What it was running when told to drain, it finished: no interruption, no second run.
    assert ran and all(r["outcome"] == "ok" for r in ran)
    # Remote: drain node 1 from node 0, by a prefix of its id; it has nothing to run, so it
    # goes, and --wait returns once node 0 has seen it leave.
    waited = cli0.ok("drain", ids[1][:10], "--wait")
    assert f"drained: node {ids[1][:8]} has left the swarm" in waited.stdout
    wait_for("node 1 to be seen as left", lambda: swarm.states(0)[ids[1]] == "left")


def test_a_node_that_leaves_hands_over_the_attempts_it_interrupted(swarm: Swarm) -> None:
    """Drained with a short grace, a node interrupts what still runs; the records of those
    attempts reach a peer before it goes, so they are not lost if it never comes back."""
    swarm.start(0)
    cli1, _ = swarm.start(1, join=0, cpus=2, extra=("--label", "only=here"))
    ids = [swarm.node_id(0), swarm.node_id(1)]
    wait_for("both to see each other", lambda: swarm.states(0) == dict.fromkeys(ids, "alive"))
    cli0 = swarm.nodes[0][0]
    tasks = write_tasks(
        cli0.cwd / "pinned.jsonl",
        [{"name": f"p{i}", "cmd": "sleep 60", "requires": {"only": "here"}} for i in range(2)],
    )
    cli0.ok("submit", str(tasks))
    wait_for("node 1 to run both", lambda: running_by_node(cli0).get(ids[1], 0) == 2)
    cli1.ok("drain", "--grace", "0.5", "--wait")
    daemon1 = swarm.nodes[1][1]
    assert daemon1.proc is not None and daemon1.proc.wait(timeout=10) == 0
    interrupted = [
        r
        for r in export_rows(cli0, "--attempts")
        if r["node"] == ids[1] and r["outcome"] == "interrupted"
    ]
    assert sorted(r["name"] for r in interrupted) == ["p0", "p1"]  # on node 0, node 1 gone


HEARTBEATS = 4  # a second of them, at the test profile's 0.25 s


def _newest_record(home: Path, origin: str) -> tuple[int, int]:
    """(generation, seq) of the newest record of `origin` in a node's ledger file."""
    uri = f"file:{home / 'ledger.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        row = db.execute(
            "SELECT generation, seq FROM records WHERE origin = ?"
            " ORDER BY generation DESC, seq DESC LIMIT 1",
            (origin,),
        ).fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def test_a_restarted_node_catches_up_before_it_claims_and_runs_nothing_twice(
    swarm: Swarm,
) -> None:
    ids = swarm.form(3)
    cli0 = swarm.nodes[0][0]
    tasks = cli0.cwd / "once.jsonl"
    tasks.write_text(
        "".join(json.dumps({"name": f"t{i}", "cmd": f"sleep 2; echo {i}"}) + "\n" for i in range(3))
    )
    cli0.ok("submit", str(tasks))
    wait_for("node 2 to run a task", lambda: running_by_node(cli0).get(ids[2], 0) > 0)
    daemon2 = swarm.nodes[2][1]
    daemon2.kill(signal.SIGKILL)
    wait_for("every task to be done elsewhere", lambda: cli0.job("once")["done"] == 3, timeout=60)
    daemon2.start()  # its ledger still says its task was running, and nothing of the rest
    cli2 = swarm.nodes[2][0]
    wait_for("node 2 to catch up", lambda: cli2.job("once")["done"] == 3, timeout=30)
    # A claim it made after that would reach node 0 before its later heartbeats (in order).
    caught_up = _newest_record(cli2.home, ids[2])
    later = (caught_up[0], caught_up[1] + HEARTBEATS)
    wait_for(
        f"node 0 to hold node 2's records {HEARTBEATS} heartbeats after it caught up",
        lambda: _newest_record(cli0.home, ids[2]) >= later,
    )
    runs = [r for r in export_rows(cli0, "--attempts") if r["node"] == ids[2]]
    # Only the attempt the kill cut off; nothing started again after the restart.
    assert [(r["outcome"], r["reason"]) for r in runs] == [
        ("interrupted", "the node stopped while it ran")
    ], runs
    assert all(r["state"] == "done" for r in export_rows(cli2))


def test_results_are_replicated_to_three_nodes_and_again_when_a_holder_dies(
    swarm: Swarm, tmp_path: Path
) -> None:
    ids = swarm.form(4)
    cli0 = swarm.nodes[0][0]
    tasks = cli0.cwd / "kept.jsonl"
    tasks.write_text(
        "".join(json.dumps({"name": f"t{i}", "cmd": f"echo result {i}"}) + "\n" for i in range(6))
    )
    cli0.ok("submit", str(tasks))

    def replicas() -> dict[str, int]:
        return {r["name"]: int(r["replicas"] or 0) for r in export_rows(cli0)}

    # The 3 nodes chosen for it hold it; the node that ran it keeps its copy too (4 at most).
    wait_for(
        "every result to be held by at least 3 nodes",
        lambda: all(3 <= n <= 4 for n in replicas().values()),
    )
    # Kill a node other than node 0 (which we ask): the results it held are copied to the node
    # that was not chosen before, so each is again held by 3 live nodes.
    from swarm.daemon.store import BlobStore

    victim = 3
    victim_store = BlobStore(swarm.nodes[victim][0].home / "blobs")
    digests = {r["name"]: r["digest"] for r in export_rows(cli0)}
    held = {name for name, digest in digests.items() if victim_store.has(digest)}
    assert held  # with 3 of 4 nodes chosen per result, it holds most of them
    swarm.nodes[victim][1].kill(signal.SIGKILL)
    wait_for("the victim to be declared dead", lambda: swarm.states(0)[ids[victim]] == "dead")
    wait_for(
        "the results to be held by 3 live nodes again",
        lambda: all(n - (name in held) >= 3 for name, n in replicas().items()),
    )
    out = tmp_path / "out"
    cli0.ok("results", "kept", "--out", str(out))
    for i in range(6):
        assert (out / f"t{i}" / "stdout").read_text() == f"result {i}\n"


def test_a_result_whose_every_copy_rotted_is_found_lost_and_runs_again(
    swarm: Swarm, tmp_path: Path
) -> None:
    """Bit rot on every holder: each finds its copy corrupt (read here, or as it serves a peer)
    and drops it; with no good copy left, the result is lost, and the task runs again."""
    from swarm.core.manifest import parse_manifest

    swarm.form(3)
    cli0 = swarm.nodes[0][0]
    cli0.ok("submit", str(write_tasks(cli0.cwd / "rot.jsonl", [{"name": "r", "cmd": "echo kept"}])))
    wait_for("its result to be held by all 3", lambda: export_rows(cli0)[0]["replicas"] == "3")
    (row,) = export_rows(cli0)
    stores = [BlobStore(cli.home / "blobs") for cli, _, _ in swarm.nodes]
    stdout = parse_manifest(stores[0].read_bytes(row["digest"])).stdout
    for store in stores:
        path = store.path(stdout)
        path.write_bytes(b"KEPT\n")  # the same size, other bytes

    first = cli0("results", "rot", "--out", str(tmp_path / "first"))
    assert first.returncode == 1, first.stderr
    assert "found corrupt: set aside" in first.stderr and "missing:" in first.stderr

    def ran_again() -> bool:
        attempts = export_rows(cli0, "--attempts")
        return len(attempts) == 2 and export_rows(cli0)[0]["state"] == "done"

    wait_for("the task to run again", ran_again, timeout=60)
    # The rerun makes the same digest: each node holds it again (a round later), once only.
    wait_for("its new result to be held by all 3", lambda: export_rows(cli0)[0]["replicas"] == "3")
    out = tmp_path / "out"
    cli0.ok("results", "rot", "--out", str(out))
    assert (out / "r" / "stdout").read_text() == "kept\n"
    assert len(export_rows(cli0, "--attempts")) == 2  # not lost a second time
    for cli, daemon, _ in swarm.nodes:
        assert "held here is damaged; dropped" in daemon.log.read_text(), cli.home


def test_a_copy_of_a_running_node_s_state_dir_stops_and_leaves_the_node_be(
    swarm: Swarm, tmp_path: Path
) -> None:
    """A daemon started from a copy of a running node's state dir, on the same machine, at
    once: it finds at its first sync records of its own that it never wrote, and stops with an
    error that says so, having written nothing in the node's name (it would have closed, as
    its own, the claim the node holds). The node goes on: heard at its own address, its
    attempt neither killed nor interrupted, and it still runs what only it may run."""
    swarm.start(0)
    cli1, _ = swarm.start(1, join=0, extra=("--label", "only=one"))
    ids = [swarm.node_id(0), swarm.node_id(1)]
    wait_for("both to see each other", lambda: swarm.states(0) == dict.fromkeys(ids, "alive"))
    cli0 = swarm.nodes[0][0]
    pinned = [{"name": "long", "cmd": "sleep 4; echo done", "requires": {"only": "one"}}]
    cli0.ok("submit", str(write_tasks(cli0.cwd / "pinned.jsonl", pinned)))
    wait_for("node 1 to run it", lambda: running_by_node(cli0).get(ids[1], 0) == 1)
    copy = tmp_path / "copy"
    shutil.copytree(
        cli1.home, copy, ignore=shutil.ignore_patterns("control.sock", "ledger.db*", "run")
    )
    source, dest = sqlite3.connect(cli1.home / "ledger.db"), sqlite3.connect(copy / "ledger.db")
    with contextlib.closing(source), contextlib.closing(dest):
        source.backup(dest)  # as the running node had it (its WAL too), its claim in it
    _, twin = swarm.start(2, join=0, key_from=None, home=copy, wait=False)
    assert twin.proc is not None and twin.proc.wait(timeout=60) == 2  # a usage error
    said = twin.log.read_text()
    assert "another daemon runs with this node's identity" in said, said
    wait_for("the task to be done", lambda: cli0.job("pinned")["done"] == 1)
    (attempt,) = export_rows(cli0, "--attempts")
    assert (attempt["node"], attempt["outcome"]) == (ids[1], "ok")
    assert export_rows(swarm.nodes[1][0], "--attempts") == [attempt]
    wait_for("node 0 to see node 1 alive at its own address", lambda: _heard_at_home(swarm, 0, 1))


def _heard_at_home(swarm: Swarm, observer: int, node: int) -> bool:
    """Whether `observer` sees `node` alive at node's own address (not a copy's)."""
    (row,) = [m for m in swarm.members(observer)["members"] if m["id"] == swarm.node_id(node)]
    return bool(row["state"] == "alive" and row["address"].endswith(f":{swarm.nodes[node][2]}"))


def test_a_second_process_with_a_node_s_identity_and_a_fresh_ledger_stops(
    swarm: Swarm, tmp_path: Path
) -> None:
    """A copy of a node's identity alone (its ledger left behind, so a new life of the node's
    ledger) has no records of its own to find at a peer: the two processes outbid each
    other's Alive instead, and the one started later stops."""
    swarm.start(0)
    cli1, _ = swarm.start(1, join=0)
    ids = [swarm.node_id(0), swarm.node_id(1)]
    wait_for("both to see each other", lambda: swarm.states(0) == dict.fromkeys(ids, "alive"))
    twin_home = tmp_path / "twin"
    twin_home.mkdir(mode=0o700)
    for name in ("identity.key", "swarm.key"):
        shutil.copy2(cli1.home / name, twin_home / name)
    _, twin = swarm.start(2, join=0, key_from=None, home=twin_home, wait=False)
    assert twin.proc is not None and twin.proc.wait(timeout=60) == 2
    said = twin.log.read_text()
    assert "another daemon runs as this node" in said and "started before this one" in said, said
    wait_for("node 0 to see node 1 alive at its own address", lambda: _heard_at_home(swarm, 0, 1))
    assert swarm.nodes[1][1].proc is not None and swarm.nodes[1][1].proc.poll() is None


def test_a_node_whose_peers_give_no_sync_answer_writes_only_after_a_lease(
    swarm: Swarm, tmp_path: Path
) -> None:
    """Joined to a peer that never answers, a node writes nothing in its name for a lease (it
    could be a copy of a node that runs elsewhere), then writes unchecked, and says so."""
    cli, daemon = swarm.start(0, extra=("--join", f"127.0.0.1:{free_port()}"))
    tasks = write_tasks(cli.cwd / "t.jsonl", [{"name": "t", "cmd": "echo hi"}])
    cli.ok("submit", str(tasks))  # taken when the node may write
    assert "without having checked" in daemon.log.read_text()
    wait_for("the task to be done", lambda: cli.job("t")["done"] == 1)


def test_a_job_too_large_for_one_frame_still_reaches_every_node_and_later_jobs_follow(
    swarm: Swarm,
) -> None:
    # 2,500 tasks of 4.5 KB commands: 11 MB of records, more than a peer takes in one frame.
    # Each is too large for a datagram, so anti-entropy carries them, in frames bounded by bytes.
    swarm.form(2)
    cli0, cli1 = swarm.nodes[0][0], swarm.nodes[1][0]
    padding = "x" * 4500
    big = [
        {"name": f"b{i}", "cmd": f": {padding} {i}", "requires": {"zone": "nowhere"}}
        for i in range(2500)
    ]
    cli0.ok("submit", str(write_tasks(cli0.cwd / "big.jsonl", big)), "--job", "big")
    cli0.ok("submit", str(write_tasks(cli0.cwd / "after.jsonl", [{"cmd": "echo after"}])),
            "--job", "after")  # fmt: skip

    def seen_by_node1() -> dict[str, int]:
        return {j["job"]: j["total"] for j in cli1.status()["jobs"]}

    wait_for(
        "node 1 to hold both jobs whole",
        lambda: seen_by_node1() == {"big": 2500, "after": 1},
        timeout=60,
        detail=seen_by_node1,
    )
    wait_for("node 1 to see the later job done", lambda: cli1.job("after")["done"] == 1)
    assert swarm.members(0)["net"]["refused_records"] == 0
    assert swarm.members(1)["net"]["refused_records"] == 0
