"""Clients from anywhere: a machine with no daemon, holding only the swarm key, submits, watches,
reads results, logs and exports, cancels, retries and drains through a node's peer port
(`--peer` or SWARM_PEER), over the sealed channel; many such clients at once."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import Cli, Swarm, wait_for, write_tasks
from .test_python import last_json, run_script, script

pytestmark = pytest.mark.integration


def client_of(swarm: Swarm, tmp_path: Path, node: int = 1) -> tuple[Cli, str]:
    """A machine with the swarm key and no daemon, and the peer (HOST:PORT) it asks."""
    work = tmp_path / "client-work"
    work.mkdir()
    client = Cli(home=tmp_path / "client-home", cwd=work)
    client.ok("init", "--key-file", str(swarm.nodes[0][0].home / "swarm.key"))
    return client, f"127.0.0.1:{swarm.nodes[node][2]}"


def test_a_machine_with_no_daemon_submits_watches_and_reads_everything_back(
    swarm: Swarm, tmp_path: Path
) -> None:
    swarm.form(2)
    client, peer = client_of(swarm, tmp_path)
    tasks = write_tasks(
        client.cwd / "far.jsonl",
        [
            {"name": f"ok{i}", "cmd": f"echo out {i}; echo {i} > result.txt", "outputs": ["*.txt"]}
            for i in range(6)
        ]
        + [{"name": "bad", "cmd": "echo broke here >&2; exit 5", "retries": 0}],
    )
    done = client("submit", str(tasks), "--wait", "--peer", peer)
    assert done.returncode == 1, done.stderr  # one task fails, as meant
    assert "6 done, 1 failed" in done.stderr
    assert not client.ok("export").stdout.splitlines()[1:]  # this machine's ledger: empty

    status = json.loads(client.ok("status", "--json", "--peer", peer).stdout)
    row = next(r for r in status["jobs"] if r["job"] == "far")
    assert (row["done"], row["failed"]) == (6, 1)
    assert len(status["nodes"]) == 2

    out = client.cwd / "results"
    written = client("results", "far", "--out", str(out), "--peer", peer)
    assert written.returncode == 0, written.stderr
    for i in range(6):  # whichever node ran each, its files came over
        assert (out / f"ok{i}" / "stdout").read_text() == f"out {i}\n"
        assert (out / f"ok{i}" / "result.txt").read_text() == f"{i}\n"
    assert (out / "bad" / "stderr").read_text() == "broke here\n"

    rows = list(csv.DictReader(io.StringIO(client.ok("export", "--peer", peer).stdout)))
    assert sorted(r["name"] for r in rows) == sorted([f"ok{i}" for i in range(6)] + ["bad"])
    lines = client.ok("export", "--format", "jsonl", "--what", "attempts", "--peer", peer).stdout
    assert len(lines.splitlines()) == 7

    logs = client("logs", "far/bad", "--peer", peer)
    assert logs.returncode == 0 and "broke here" in logs.stderr
    assert "exit 5" in client.ok("why", "far/bad", "--peer", peer).stdout
    assert "1 failed task of far re-queued" in client.ok("retry", "far", "--peer", peer).stdout


def test_swarm_peer_in_the_environment_and_many_clients_at_once(
    swarm: Swarm, tmp_path: Path
) -> None:
    swarm.form(2)
    client, peer = client_of(swarm, tmp_path, node=0)
    env = {"SWARM_PEER": peer}
    tasks = write_tasks(client.cwd / "slow.jsonl", [{"name": "s", "cmd": "sleep 30"}])
    submitted = client("submit", str(tasks), env=env)
    assert submitted.returncode == 0, submitted.stderr
    askers = [client.spawn("status", "--json", env=env) for _ in range(8)]
    for asker in askers:
        stdout, stderr = asker.communicate(timeout=60)
        assert asker.returncode == 0, stderr
        assert [j["job"] for j in json.loads(stdout)["jobs"]] == ["slow"]
    cancelled = client("cancel", "slow", env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    wait_for("the cancel to reach node 1", lambda: swarm.nodes[1][0].job("slow")["cancelled"] == 1)


def test_a_client_with_another_key_is_refused_and_the_node_serves_on(
    swarm: Swarm, tmp_path: Path
) -> None:
    swarm.form(1)
    peer = f"127.0.0.1:{swarm.nodes[0][2]}"
    stranger = Cli(home=tmp_path / "stranger", cwd=tmp_path)
    stranger.ok("init")  # a swarm key of its own
    refused = stranger("status", "--json", "--peer", peer)
    assert refused.returncode != 0
    assert "closed the connection before answering" in refused.stderr
    client, peer = client_of(swarm, tmp_path, node=0)
    assert json.loads(client.ok("status", "--json", "--peer", peer).stdout)["nodes"]


def test_a_node_is_drained_from_a_machine_with_no_daemon(swarm: Swarm, tmp_path: Path) -> None:
    ids = swarm.form(2)
    client, peer = client_of(swarm, tmp_path, node=0)
    needs_node = client("drain", "--peer", peer)
    assert needs_node.returncode != 0 and "name the node to drain" in needs_node.stderr
    drained = client("drain", ids[1][:8], "--wait", "--peer", peer)
    assert drained.returncode == 0, drained.stderr
    assert f"node {ids[1][:8]} has left the swarm" in drained.stdout
    members: dict[str, Any] = json.loads(client.ok("members", "--json", "--peer", peer).stdout)
    assert {m["id"]: m["state"] for m in members["members"]}[ids[1]] == "left"
    itself = client("drain", ids[0][:8], "--wait", "--peer", peer)  # the node it asks
    assert itself.returncode == 0, itself.stderr
    assert "drained: the daemon has stopped" in itself.stdout
    assert swarm.nodes[0][1].proc is not None and swarm.nodes[0][1].proc.wait(timeout=30) == 0
    assert client("status", "--once", "--peer", peer).returncode == 3  # nobody answers there


def test_a_python_script_on_a_machine_with_no_daemon_maps_through_a_peer(
    swarm: Swarm, tmp_path: Path
) -> None:
    """SwarmExecutor and swarm.results with SWARM_PEER: values small enough for the ledger and
    values that travel as blobs, from whichever node ran them, and an exception with its type."""
    swarm.form(2)
    client, peer = client_of(swarm, tmp_path, node=1)
    mapped = script(
        client.cwd / "far.py",
        """
        import json
        from swarm import SwarmExecutor

        def big(i):
            return [i] * 5_000  # pickles to more than fits in a RESULT record

        def check(i):
            if i == 3:
                raise KeyError(i)
            return i * i

        with SwarmExecutor(job="far") as ex:
            sizes = [len(v) for v in ex.map(big, range(4))]
            caught = ""
            try:
                list(ex.map(check, range(5)))
            except KeyError as exc:
                caught = repr(exc)
        print(json.dumps({"sizes": sizes, "caught": caught}))
        """,
    )
    env = {"SWARM_PEER": peer}
    seen = last_json(run_script(mapped, client.home, env=env))
    assert seen == {"sizes": [5_000] * 4, "caught": "KeyError(3)"}
    later = script(
        client.cwd / "later.py",
        """
        import json
        import swarm

        values = swarm.results("far", errors="return")
        print(json.dumps([len(v) if isinstance(v, list) else repr(v) for v in values]))
        """,
    )
    values = last_json(run_script(later, client.home, env=env))
    # The call after the one that raised was cancelled by map, or had ended already.
    assert values[:8] == [5_000, 5_000, 5_000, 5_000, "0", "1", "4", "KeyError(3)"]
    assert len(values) == 9
