"""The Python API end to end: scripts that use `SwarmExecutor` run as real processes, on a node
they start themselves or on real daemons, with real warm workers.

Each script prints one JSON line of what it saw; the test reads it, and reads the ledger with the
CLI as a user would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from swarm import pycall

from .conftest import REPO, Cli, Daemon, Swarm, export_rows, wait_for

pytestmark = pytest.mark.integration

SCRIPT_TIMEOUT_S = 120.0


def run_script(
    path: Path, home: Path, *, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(path)],
        cwd=path.parent,
        env={**os.environ, "SWARM_HOME": str(home), "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )
    if check:
        assert done.returncode == 0, f"{path.name} -> {done.returncode}\n{done.stderr}"
    return done


def start_script(path: Path, home: Path) -> subprocess.Popen[str]:
    """A script left running (in its own dir, as run_script runs one), its output piped."""
    return subprocess.Popen(
        [sys.executable, str(path)],
        cwd=path.parent,
        env={**os.environ, "SWARM_HOME": str(home), "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def last_json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout.strip().splitlines()[-1])


def script(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


FITS = """
    import concurrent.futures as cf
    import json
    import os

    from swarm import SwarmExecutor

    class Oops(Exception):
        pass

    def square(x):
        return x * x

    def boom(x):
        raise Oops(f"bad {x}")

    seen = {}
    offset = 10
    with SwarmExecutor(job="fits") as ex:
        seen["map"] = list(ex.map(square, range(25)))
        seen["chunks"] = list(ex.map(lambda x: x + offset, range(9), chunksize=4))
        futures = [ex.submit(lambda y: y * offset, i) for i in range(6)]
        seen["as_completed"] = sorted(f.result() for f in cf.as_completed(futures, timeout=60))
        done, not_done = cf.wait(futures, timeout=60)
        seen["waited"] = [len(done), len(not_done)]
        try:
            ex.submit(boom, 3).result(timeout=60)
        except Oops as exc:
            seen["raised"] = [type(exc).__name__, str(exc), "\\n".join(getattr(exc, "__notes__", []))]
        seen["kwargs"] = ex.submit(divmod, 17, 5).result(timeout=60)
        # A large value, and a call that prints, keep their outcome in blobs, not the ledger.
        seen["big"] = len(ex.submit(lambda n: "x" * n, 100_000).result(timeout=60))
        seen["printed"] = ex.submit(print, "hello from a call").result(timeout=60)
        seen["mode"] = "serial" if ex.serial else "swarm"
    print(json.dumps(seen))
"""


def test_a_script_maps_submits_and_raises_on_a_node_it_starts_and_serially_alike(
    tmp_path: Path,
) -> None:
    path = script(tmp_path / "fits.py", FITS)
    home = tmp_path / "home"
    on_swarm = last_json(run_script(path, home))
    serial = last_json(run_script(path, tmp_path / "unused", env={"SWARM_SERIAL": "1"}))
    assert on_swarm["map"] == [x * x for x in range(25)]
    assert on_swarm["chunks"] == [x + 10 for x in range(9)]
    assert on_swarm["as_completed"] == [y * 10 for y in range(6)]
    assert on_swarm["waited"] == [6, 0]
    assert on_swarm["kwargs"] == [3, 2]
    assert on_swarm["big"] == 100_000 and on_swarm["printed"] is None
    kind, text, notes = on_swarm["raised"]
    assert (kind, text) == ("Oops", "bad 3")
    assert "the call raised this on node" in notes and "in boom" in notes  # remote traceback
    assert on_swarm["mode"] == "swarm" and serial["mode"] == "serial"
    for key in ("map", "chunks", "as_completed", "waited", "kwargs", "big", "printed"):
        assert serial[key] == on_swarm[key], key
    assert serial["raised"][:2] == on_swarm["raised"][:2]
    assert not (tmp_path / "unused").exists()  # serial mode starts no node

    # A job like any other: the CLI shows it, the command column names the function.
    cli = Cli(home=home, cwd=tmp_path)
    rows = [r for r in export_rows(cli) if r["job"] == "fits"]
    assert {r["command"] for r in rows} >= {"python: __main__.square", "python: __main__.boom"}
    assert len(rows) == 25 + 3 + 6 + 1 + 1 + 2  # the chunks of 4: three calls

    # `swarm results` writes each call's outcome file, whether it came in the ledger or a blob.
    out = tmp_path / "out"
    cli.ok("results", "fits", "--out", str(out))
    outcomes = {}
    for task in out.iterdir():
        returned, value = pycall.read_outcome((task / pycall.VALUE_FILE).read_bytes())
        outcomes[task.name] = (returned, value, (task / "stdout").read_text())
    assert sorted(v for r, v, _ in outcomes.values() if r and isinstance(v, int)) == sorted(
        [x * x for x in range(25)] + [y * 10 for y in range(6)]
    )
    assert (True, None, "hello from a call\n") in outcomes.values()
    assert any(r and v == "x" * 100_000 for r, v, _ in outcomes.values())

    # Results later, from another process: in submission order; the call that raised, raised.
    later = script(
        tmp_path / "later.py",
        """
        import json
        from swarm import results
        values = results("fits", errors="return")
        print(json.dumps([v if not isinstance(v, Exception) else type(v).__name__ for v in values]))
        """,
    )
    values = last_json(run_script(later, home))
    assert values[:25] == [x * x for x in range(25)]
    assert values[25:34] == list(range(10, 19))  # the chunks' values, one by one
    assert "Oops" in values  # its exception object, with errors="return"

    # Run again: every call is reused (no new attempt), none runs twice.
    assert last_json(run_script(path, home))["map"] == on_swarm["map"]
    attempts = [r for r in export_rows(cli, "--attempts") if r["job"] == "fits"]
    ran = [r["task_id"] for r in attempts if r["outcome"] == "ok"]
    assert len(ran) == len(set(ran)) == len(rows) - 1  # all but the one that raised


def test_a_call_that_cannot_be_loaded_names_the_node_its_python_and_the_module(
    cli: Cli, daemon: Any, tmp_path: Path
) -> None:
    """A function of a library the node lacks (here: a module on the client's PYTHONPATH only);
    one of the user's own files beside the script is sent with the call instead."""
    daemon("--cpus", "1")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "fancylib.py").write_text("def twice(x):\n    return 2 * x\n")
    project = tmp_path / "project"  # the script's dir and working dir: not the library's
    project.mkdir()
    path = script(
        project / "uses_lib.py",
        """
        import json
        from fancylib import twice
        from mine import thrice
        from swarm import SwarmExecutor

        def via_main(x):
            return thrice(x) + 1  # a helper beside the script, called from __main__

        with SwarmExecutor(job="lib") as ex:
            helped = ex.submit(via_main, 4).result(timeout=60)  # first: nothing sent it before
            mine = ex.submit(thrice, 4).result(timeout=60)  # beside the script: sent by value
            try:
                ex.submit(twice, 4).result(timeout=60)
            except ModuleNotFoundError as exc:
                print(json.dumps([helped, mine, str(exc)]))
        """,
    )
    (project / "mine.py").write_text("def thrice(x):\n    return 3 * x\n")
    helped, mine, text = last_json(run_script(path, cli.home, env={"PYTHONPATH": f"{REPO}:{lib}"}))
    assert (helped, mine) == (13, 12)
    node = json.loads(cli.ok("members", "--json").stdout)["members"][0]["id"]
    assert f"node {node[:8]}" in text and "Python 3." in text and "fancylib" in text, text


def test_cancel_stops_the_call_in_the_swarm(cli: Cli, daemon: Any, tmp_path: Path) -> None:
    daemon("--cpus", "1")
    flag = tmp_path / "started"
    path = script(
        tmp_path / "cancel.py",
        f"""
        import json, time
        from pathlib import Path
        from swarm import SwarmExecutor

        def slow():
            Path({str(flag)!r}).write_text("x")
            time.sleep(60)

        with SwarmExecutor(job="cancel") as ex:
            future = ex.submit(slow)
            deadline = time.monotonic() + 60
            while not Path({str(flag)!r}).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            print(json.dumps([future.cancel(), future.cancelled()]))
        """,
    )
    assert last_json(run_script(path, cli.home)) == [True, True]
    wait_for("the call's task to be cancelled", lambda: cli.job("cancel")["cancelled"] == 1)
    (row,) = [r for r in export_rows(cli, "--attempts") if r["job"] == "cancel"]
    assert row["outcome"] == "interrupted" and "cancel" in row["reason"]


def test_a_map_inside_a_call_runs_in_that_call_and_cannot_wait_on_its_own_slots(
    cli: Cli, daemon: Any, tmp_path: Path
) -> None:
    # With SWARM_HOME in the daemon's environment, the inner calls went to the same node and
    # waited for the slots their outer calls held: a deadlock on a node of 2 slots.
    daemon("--cpus", "2")  # its tasks see its SWARM_HOME
    path = script(
        tmp_path / "nested.py",
        """
        import json, os
        from swarm import SwarmExecutor

        def inner(x):
            return x * x

        def outer(n):
            with SwarmExecutor(job="inner") as ex:
                return [sum(ex.map(inner, range(n))), ex.serial, os.environ["SWARM_TASK_ID"][:6]]

        with SwarmExecutor(job="outer") as ex:
            print(json.dumps(list(ex.map(outer, [3, 4, 5, 6]))))
        """,
    )
    done = last_json(run_script(path, cli.home))
    assert [(total, serial) for total, serial, _ in done] == [
        (5, True), (14, True), (30, True), (55, True)
    ]  # fmt: skip
    assert len({task for _, _, task in done}) == 4  # each ran in an outer call's own task
    assert {row["job"] for row in export_rows(cli)} == {"outer"}  # no inner job on any node


def test_a_worker_killed_mid_call_costs_an_interruption_and_the_call_still_returns(
    cli: Cli, daemon: Any, tmp_path: Path
) -> None:
    daemon("--cpus", "1")
    pid_file = tmp_path / "worker.pid"
    path = script(
        tmp_path / "killed.py",
        f"""
        import json, os, time
        from pathlib import Path
        from swarm import SwarmExecutor

        def patient(x):
            pid = Path({str(pid_file)!r})
            if not pid.exists():
                pid.write_text(str(os.getpid()))
                time.sleep(60)
            return x + 1

        with SwarmExecutor(job="killed") as ex:
            print(json.dumps(ex.submit(patient, 41).result(timeout=90)))
        """,
    )
    proc = start_script(path, cli.home)
    try:
        wait_for("the call to start", pid_file.exists)
        wait_for("the pid to be written", lambda: pid_file.read_text().strip().isdigit())
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        out, err = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == 42
    outcomes = [r["outcome"] for r in export_rows(cli, "--attempts") if r["job"] == "killed"]
    assert sorted(outcomes) == ["interrupted", "ok"]


def test_three_daemons_share_a_map_and_lose_one_node_mid_map(swarm: Swarm, tmp_path: Path) -> None:
    ids = swarm.form(3, cpus=2)
    started = tmp_path / "started"
    started.mkdir()
    path = script(
        tmp_path / "spread.py",
        f"""
        import json, os, time
        from pathlib import Path
        from swarm import SwarmExecutor

        def work(x):
            Path({str(started)!r}, str(x)).write_text(os.environ.get("SWARM_NODE", "?"))
            time.sleep(0.4)
            # Every other value is too big for the ledger: it is a blob, copied between nodes.
            return [x, os.environ.get("SWARM_NODE", "?"), "v" * (5000 if x % 2 else 10)]

        with SwarmExecutor(job="spread") as ex:
            print(json.dumps(list(ex.map(work, range(40), timeout=120))))
        """,
    )
    submitter = swarm.nodes[0][0]
    proc = start_script(path, submitter.home)
    try:
        # Once node 2 runs calls, kill it: its calls are taken over, and every result arrives.
        wait_for(
            "node 2 to run calls",
            lambda: any(p.read_text() == ids[2] for p in started.iterdir()),
            timeout=60,
        )
        victim: Daemon = swarm.nodes[2][1]
        victim.kill(signal.SIGKILL)
        out, err = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    values = json.loads(out.strip().splitlines()[-1])
    assert [v[0] for v in values] == list(range(40))  # every result, in order
    assert [len(v[2]) for v in values] == [5000 if x % 2 else 10 for x in range(40)]
    ran_on = {v[1] for v in values}
    assert ran_on <= set(ids) and len(ran_on) >= 2, ran_on  # spread over the swarm
    # And read back later from another node than the one that submitted them.
    later = script(
        tmp_path / "later.py",
        """
        import json
        from swarm import results
        print(json.dumps([v[0] for v in results("spread")]))
        """,
    )
    reader = swarm.nodes[1][0]
    wait_for("node 1 to see the map done", lambda: reader.job("spread")["done"] == 40)
    assert last_json(run_script(later, reader.home)) == list(range(40))


def test_options_carry_a_calls_needs_and_a_timeout_loses_it_for_a_swarm_reason(
    cli: Cli, daemon: Any, tmp_path: Path
) -> None:
    daemon("--cpus", "2", "--label", "zone=eu")
    path = script(
        tmp_path / "options.py",
        """
        import json, time
        import swarm
        from swarm import SwarmExecutor

        seen = {}
        with SwarmExecutor(job="options") as ex:
            fast = ex.options(cpus=2, memory="64M", requires={"zone": "eu"})
            seen["value"] = fast.submit(pow, 2, 10).result(timeout=60)
            slow = ex.options(timeout=0.5)
            try:
                slow.submit(time.sleep, 30).result(timeout=60)
            except swarm.CallLostError as exc:
                seen["lost"] = [exc.why, str(exc)]
        print(json.dumps(seen))
        """,
    )
    seen = last_json(run_script(path, cli.home))
    assert seen["value"] == 1024
    why, text = seen["lost"]
    assert why == "timeout" and "timed out" in text, text
    rows = {r["command"]: r for r in export_rows(cli) if r["job"] == "options"}
    assert rows["python: builtins.pow"]["cpus"] == "2"
    assert rows["python: time.sleep"]["state"] == "failed"


def test_a_map_that_raised_and_cancelled_the_rest_runs_whole_when_the_script_runs_again(
    tmp_path: Path,
) -> None:
    """Executor.map cancels the calls after one that raises; run again, the script reruns the
    one that raised and the cancelled ones, and reuses the rest."""
    flag = tmp_path / "failed-once"
    path = script(
        tmp_path / "flaky.py",
        f"""
        import json, time
        from pathlib import Path
        from swarm import SwarmExecutor

        def flaky(x):
            if x == 0 and not Path({str(flag)!r}).exists():
                Path({str(flag)!r}).write_text("")
                raise RuntimeError("once")
            time.sleep(0.2)
            return x

        with SwarmExecutor(job="flaky") as ex:
            try:
                print(json.dumps(list(ex.map(flaky, range(8)))))
            except RuntimeError as exc:
                print(json.dumps(str(exc)))
        """,
    )
    home = tmp_path / "home"
    assert last_json(run_script(path, home)) == "once"
    cli = Cli(home=home, cwd=tmp_path)
    assert cli.job("flaky")["cancelled"] >= 1  # the calls map cancelled
    assert last_json(run_script(path, home)) == list(range(8))
    assert cli.job("flaky")["done"] == 8


NODE_FAILS_MID_CALL = """
import asyncio, json, os, sys, time
from pathlib import Path
from swarm import SwarmExecutor
from swarm.daemon import node

PID_FILE = Path(__file__).resolve().parent / "worker.pid"  # the call runs in a dir of its own

async def broken(self):  # a bug in one of the node's loops, once the call runs
    while not PID_FILE.exists():
        await asyncio.sleep(0.05)
    raise RuntimeError("a loop broke")

node.Node._memory_loop = broken

def long_call():
    PID_FILE.with_suffix(".tmp").write_text(str(os.getpid()))
    os.rename(PID_FILE.with_suffix(".tmp"), PID_FILE)
    time.sleep(20)

def gone(pid):
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped
        return True

ex = SwarmExecutor(job="fails")
ex.submit(long_call)
deadline = time.monotonic() + 30
while not PID_FILE.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
pid = int(PID_FILE.read_text())
deadline = time.monotonic() + 15  # from the failure, which follows the call's start at once
while not gone(pid) and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps({"worker_gone": gone(pid)}), flush=True)
os._exit(0)  # the executor's node is gone: nothing to shut down
"""


def test_an_embedded_node_that_fails_ends_its_python_workers(tmp_path: Path) -> None:
    """A node whose own code fails ends its running calls and warm workers on the way out: an
    embedded node's process may live on after it (a notebook), and its workers with it."""
    script = tmp_path / "fails.py"
    script.write_text(NODE_FAILS_MID_CALL)
    done = run_script(script, tmp_path / "home")
    saw = json.loads(done.stdout.splitlines()[-1])
    if saw != {"worker_gone": True}:  # the worker left over: not left running after the test
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.killpg(int((tmp_path / "worker.pid").read_text()), signal.SIGKILL)
    assert saw == {"worker_gone": True}, done.stderr
