"""`swarm start --bind` and joins that go wrong say so at once, as real processes."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Cli, Daemon, Swarm, free_port, swarm_cmd, wait_for

pytestmark = pytest.mark.integration

EXIT_WAIT_S = 20.0  # far longer than it takes; a hang would fail here, not block the suite
# A joiner refused at first retries within 4 s of its start (0.25, 0.5, 1, 2 s later), then
# every 4 s, 8 s, 10 s: it meets a seed started 1.5 s after it within a few seconds (at the
# LAN reconnect interval, it would wait till 10 s after its own start).
JOINED_WITHIN_S = 6.0


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_start_on_a_taken_port_exits_at_once_naming_the_address(cli: Cli, kind: int) -> None:
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            taken.listen()
        port = taken.getsockname()[1]
        done = cli("start", "--bind", f"127.0.0.1:{port}", timeout=EXIT_WAIT_S)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "Errno" not in done.stderr, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the address is in use" in done.stderr
    # The lock went with the process: the next start on a free port comes up.
    fine = subprocess.Popen(
        swarm_cmd("start", "--bind", f"127.0.0.1:{free_port()}"),
        cwd=cli.cwd,
        env=cli.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # `status` answers from the ledger file alone ("stopped") until the daemon listens, so
        # what is waited for is the live answer.
        wait_for("the next start to answer", lambda: _own_state(cli) == "alive")
    finally:
        fine.terminate()
        fine.wait(timeout=EXIT_WAIT_S)


def _own_state(cli: Cli) -> str | None:
    done = cli("status", "--json")
    nodes = json.loads(done.stdout)["nodes"] if done.returncode == 0 else []
    return str(nodes[0]["state"]) if nodes else None


def _log_says(daemon: Daemon, text: str) -> Callable[[], bool]:
    return lambda: text in daemon.log.read_text()


@pytest.mark.parametrize(
    "seed", ["nothing-listens", "no-such-host.invalid"], ids=["no-listener", "no-such-name"]
)
def test_start_with_a_join_that_reaches_nobody_says_so(
    cli: Cli, daemon: Callable[..., Daemon], seed: str
) -> None:
    target = f"127.0.0.1:{free_port()}" if seed == "nothing-listens" else f"{seed}:7946"
    node = daemon("--bind", f"127.0.0.1:{free_port()}", "--profile", "test", "--join", target)
    expected = (
        f"no answer from {target} after 5 s: is a node running there, with this swarm key?"
        if seed == "nothing-listens"
        else f"{target} does not resolve ("
    )
    wait_for(f"the log to say {expected!r}", _log_says(node, expected), timeout=30)
    assert node.proc is not None and node.proc.poll() is None  # it keeps trying


def test_nodes_started_before_their_seed_join_it_within_seconds(tmp_path: Path) -> None:
    """Nodes started together (a fleet booting, the seed restarting): a joiner whose first
    join found nothing listening tries again soon, not only at the LAN timers' 10 s reconnect
    interval, so it is in the swarm seconds after its seed starts."""
    seed_cli = Cli(home=tmp_path / "seed", cwd=tmp_path)
    seed_cli.ok("init")
    joiner_cli = Cli(home=tmp_path / "joiner", cwd=tmp_path)
    joiner_cli.ok("init", "--key-file", str(seed_cli.home / "swarm.key"))
    port = free_port()
    # LAN timers (the default profile), the seed not yet started: its first join is refused.
    joiner = Daemon(joiner_cli, ("--bind", f"127.0.0.1:{free_port()}", "--join",
                                 f"127.0.0.1:{port}")).start()  # fmt: skip
    seed = None
    try:
        time.sleep(1.5)  # past the first retries
        seed = Daemon(seed_cli, ("--bind", f"127.0.0.1:{port}")).start()
        started = time.monotonic()

        def joined() -> bool:
            listed = json.loads(joiner_cli.ok("members", "--json").stdout)["members"]
            return sum(m["state"] == "alive" for m in listed) == 2

        wait_for("the joiner to see its seed", joined, timeout=30)
        assert time.monotonic() - started < JOINED_WITHIN_S
    finally:
        joiner.stop()
        if seed is not None:
            seed.stop()


def test_a_join_with_another_swarm_key_says_no_answer(swarm: Swarm) -> None:
    swarm.start(0)
    _, node = swarm.start(1, join=0, key_from=None)  # a swarm key of its own
    port = swarm.nodes[0][2]
    wait_for(
        "the log to say no answer",
        _log_says(node, f"no answer from 127.0.0.1:{port} after 5 s"),
        timeout=30,
    )


def test_join_through_a_running_daemon_says_what_is_wrong(swarm: Swarm) -> None:
    swarm.start(0)
    cli1, _ = swarm.start(1, key_from=None)
    nobody = free_port()
    # With the wrong key, a live node is as silent as a port where nothing listens. (One join
    # for all three: each silent one costs the join's 5 s wait.)
    port0 = swarm.nodes[0][2]
    done = cli1("join", f"127.0.0.1:{nobody}", "no-such-host.invalid:7946", f"127.0.0.1:{port0}")
    assert done.returncode == 1, done.stderr
    assert "no-such-host.invalid:7946 does not resolve (" in done.stderr
    silent = f"127.0.0.1:{nobody}, 127.0.0.1:{port0}"
    assert f"no answer from {silent} after 5 s" in done.stderr
    # A node with this swarm's key answers, and the join says so.
    cli2, _ = swarm.start(2, key_from=0)
    done = cli2("join", f"127.0.0.1:{port0}")
    assert done.returncode == 0, done.stderr
    assert "joined the swarm through" in done.stdout
