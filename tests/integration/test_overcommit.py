"""--overcommit on a real daemon: tasks admitted by measured memory, the newest evicted under
pressure and run again, and a task that never fits failed after the eviction cap."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import datetime

import pytest

from swarm.core.ledger import EVICTION_CAP
from swarm.daemon.memory import MEMORY_SAMPLE_S

from .conftest import Cli, Daemon, export_rows, write_tasks

pytestmark = pytest.mark.integration

# Touches every page, so the memory is resident (a bare bytearray may not be); says when it is.
HOG = (
    'python3 -c \'import time; b = b"x" * ({mib} << 20); print("held", flush=True);'
    " time.sleep({hold})'"
)


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _holds(cli: Cli) -> bool:
    """A running hog has its memory resident (its stdout says so)."""
    for out in (cli.home / "run").glob("*/stdout"):
        with contextlib.suppress(OSError):  # an attempt that ended meanwhile
            if b"held" in out.read_bytes():
                return True
    return False


def test_running_tasks_count_for_their_measured_memory(
    cli: Cli, daemon: Callable[..., Daemon]
) -> None:
    """Four tasks that declare 150M each but use ~1M: 400M with a 64M floor fits two by what
    they declare, and all four by what they use. Without --overcommit, this never gets to 4."""
    daemon("--cpus", "4", "--memory", "400M", "--overcommit", "--memfree", "64M")
    tasks = write_tasks(
        cli.cwd / "light.jsonl",
        [{"name": f"t{i}", "cmd": "sleep 6", "memory": "150M"} for i in range(4)],
    )
    cli.ok("submit", str(tasks))
    cli.wait_for("all four to run at once", lambda: cli.job("light")["running"] == 4, 20)
    cli.wait_for("the job to finish", lambda: cli.job("light")["done"] == 4)
    assert {r["outcome"] for r in export_rows(cli, "--attempts")} == {"ok"}

    # A task that really uses 150M (declaring 20M) leaves 400 - 150 - 64 = 186M: room for one
    # of two tasks declaring 150M; once it is measured at 100M, 86M: still no room for the other.
    hog = write_tasks(cli.cwd / "hog.jsonl", [{"cmd": HOG.format(mib=150, hold=120), "memory": 20}])
    cli.ok("submit", str(hog))
    cli.wait_for("the hog to hold its 150M", lambda: _holds(cli))
    # The sampler shows no sign of a sample: two of its periods, from when the memory is held.
    time.sleep(2 * MEMORY_SAMPLE_S)
    pair = write_tasks(
        cli.cwd / "pair.jsonl",
        [{"name": n, "cmd": HOG.format(mib=100, hold=1), "memory": "150M"} for n in "ab"],
    )
    cli.ok("submit", str(pair), "--wait")
    assert cli.job("hog")["running"] == 1, "the pair should have run while the hog held 150M"
    a, b = sorted(export_rows(cli, "--job", "pair"), key=lambda r: r["started"])
    # Run at once, the two would overlap by about the hold (1 s). The times are wall-clock
    # stamps, and an end is the start plus a monotonic duration: a step of the wall clock
    # between them (seen once in CI, 2 ms) may put the next start a little before an end.
    overlap_s = _when(a["ended"]) - _when(b["started"])
    assert overlap_s < 0.5, f"both ran at once ({overlap_s:.3f} s): the hog's use was not counted"
    cli.ok("cancel", "hog")


def test_the_newest_task_is_evicted_under_pressure_and_runs_again(
    cli: Cli, daemon: Callable[..., Daemon]
) -> None:
    """300M offered, 100M floor: eviction below 50M left. `grows` outgrows its declared 20M on
    its first attempt only; `never-fits` always does, until its eviction cap fails it."""
    daemon(
        "--cpus", "4", "--memory", "300M", "--overcommit", "--memfree", "100M",
        "--lease-ttl", "1",
    )  # fmt: skip
    grows = f'if [ "$SWARM_ATTEMPT" = 1 ]; then {HOG.format(mib=270, hold=30)}; fi; echo fine'
    tasks = write_tasks(
        cli.cwd / "pressure.jsonl",
        [
            {"name": "steady", "cmd": "sleep 4; echo steady", "memory": "20M", "priority": 9},
            {"name": "grows", "cmd": grows, "memory": "20M", "priority": 5},
            {"name": "never-fits", "cmd": HOG.format(mib=290, hold=30), "memory": "20M"},
        ],
    )
    assert cli("submit", str(tasks), "--wait", timeout=120).returncode == 1  # never-fits failed
    by_name: dict[str, list[dict[str, str]]] = {}
    for row in sorted(export_rows(cli, "--attempts"), key=lambda r: int(r["attempt"])):
        by_name.setdefault(row["name"], []).append(row)

    assert [r["outcome"] for r in by_name["steady"]] == ["ok"]  # older: never the one evicted
    first, *rest = by_name["grows"]
    assert first["outcome"] == "interrupted"
    assert first["reason"].startswith("evicted under memory pressure")
    assert [r["outcome"] for r in rest][-1:] == ["ok"]

    never = by_name["never-fits"]
    assert len(never) == EVICTION_CAP + 1
    assert all(r["reason"].startswith("evicted under memory pressure") for r in never)
    assert f"evicted more than {EVICTION_CAP} times" in never[-1]["reason"]
    (task,) = [r for r in export_rows(cli) if r["name"] == "never-fits"]
    assert task["state"] == "failed"
