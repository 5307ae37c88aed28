"""Tests for `swarm.cli.status`: the status view drawn from example snapshots, and its helpers."""

from __future__ import annotations

import copy
import io
import math
import re
from typing import Any

import pytest
from rich.console import Console

from swarm.cli.status import render
from swarm.core.units import format_bytes, format_count, format_duration, format_rate

GiB = 2**30
MiB = 2**20
NOW = 1_700_000_000_000


def text_of(snapshot: dict[str, Any], *, now_ms: int | None = None) -> str:
    console = Console(record=True, width=120, file=io.StringIO(), color_system=None)
    console.print(render(snapshot, now_ms=now_ms))
    return console.export_text()


def ansi_of(snapshot: dict[str, Any]) -> str:
    console = Console(width=120, file=io.StringIO(), color_system="standard", force_terminal=True)
    console.print(render(snapshot))
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def node(
    node_id: str,
    *,
    state: str = "alive",
    hostname: str = "",
    cpus: float = 8,
    memory: int = 16 * GiB,
    gpus: int = 0,
    used: dict[str, Any] | None = None,
    running: int = 0,
    extra_labels: dict[str, Any] | None = None,
) -> dict[str, Any]:
    labels: dict[str, Any] = {
        "cpus": cpus,
        "memory_gb": round(memory / GiB, 1),
        "gpus": gpus,
        "arch": "x86_64",
        "hostname": hostname,
        **(extra_labels or {}),
    }
    return {
        "id": node_id,
        "state": state,
        "pid": 4242,
        "data_dir": "/var/lib/swarm",
        "labels": labels,
        "capacity": {"cpus": cpus, "memory_bytes": memory, "gpus": gpus},
        "used": used or {"cpus": 0, "memory_bytes": 0, "gpus": 0},
        "running": running,
    }


def job(
    name: str,
    *,
    done: int = 0,
    running: int = 0,
    pending: int = 0,
    failed: int = 0,
    cancelled: int = 0,
    rate: float = 0.0,
    eta: float | None = None,
) -> dict[str, Any]:
    return {
        "job": name,
        "total": done + running + pending + failed + cancelled,
        "pending": pending,
        "running": running,
        "done": done,
        "failed": failed,
        "cancelled": cancelled,
        "rate_per_s": rate,
        "eta_s": eta,
    }


def empty_snapshot() -> dict[str, Any]:
    return {"generated_ms": NOW, "nodes": [], "jobs": [], "running": [], "infeasible": []}


def busy_snapshot() -> dict[str, Any]:
    """Three nodes (one with GPUs, one dead), three jobs (one with failures), 25 running tasks
    of which the oldest started 89s before `generated_ms`, and three infeasible tasks."""
    running = [
        {
            "task_id": f"t{i:03d}",
            "job": "render-frames" if i < 20 else "train-model",
            "name": f"frame-{i:02d}",
            "node": "ffee0011aabbccdd",
            "epoch": 1 + i % 3,
            "started_ms": NOW - 65_000 - i * 1000,
        }
        for i in range(25)
    ]
    return {
        "generated_ms": NOW,
        "nodes": [
            node(
                "a1b2c3d4e5f6a7b8",
                hostname="worker-1",
                used={"cpus": 2.5, "memory_bytes": 512 * MiB, "gpus": 0},
                running=3,
                extra_labels={"zone": "eu-1", "disk": "ssd"},
            ),
            node(
                "ffee0011aabbccdd",
                hostname="gpu-box",
                cpus=32,
                memory=128 * GiB,
                gpus=2,
                used={"cpus": 16, "memory_bytes": 64 * GiB, "gpus": 1},
                running=22,
            ),
            node("deadbeef99887766", state="dead", hostname="old-box", memory=8 * GiB),
        ],
        "jobs": [
            job(
                "render-frames",
                done=10_000,
                running=20,
                pending=1_700,
                failed=240,
                cancelled=40,
                rate=12.34,
                eta=200.0,
            ),
            job("train-model", running=5, pending=300),  # nothing finished yet: no rate or ETA
            job("thumbnails", done=10, rate=0.5),
        ],
        "running": running,
        "infeasible": ["t900", "t901", "t902"],
    }


# --- render: empty states ------------------------------------------------------------------------


def test_empty_snapshot_says_how_to_start() -> None:
    out = text_of(empty_snapshot())
    assert "no jobs yet — submit one with `swarm submit FILE`" in out
    assert "no live nodes" in out
    assert "0 nodes (0 alive)" in out
    assert "0 tasks: 0 done, 0 running, 0 pending, 0 failed, 0 cancelled" in out
    assert "ETA —" in out
    assert "Running" not in out
    assert "cannot run" not in out
    assert not out.endswith("\n\n")  # no trailing blank line


def test_missing_keys_render_like_an_empty_snapshot() -> None:
    out = text_of({})
    assert "no jobs yet" in out
    assert "0 nodes (0 alive)" in out


def test_nodes_but_no_jobs() -> None:
    snapshot = empty_snapshot()
    snapshot["nodes"] = [node("0123456789abcdef", hostname="solo")]
    out = text_of(snapshot)
    assert "1 node (1 alive)" in out
    assert "01234567" in out
    assert "0123456789" not in out
    assert "no jobs yet" in out
    assert "no live nodes" not in out


# --- render: a busy cluster ----------------------------------------------------------------------


def test_header_totals_rate_and_unknown_eta() -> None:
    out = text_of(busy_snapshot())
    first_line = out.splitlines()[0]
    assert first_line.startswith("3 nodes (2 alive)")
    assert "12,315 tasks: 10,010 done, 25 running, 2,000 pending, 240 failed, 40 cancelled" in out
    assert "12.8/s" in first_line  # 12.34 + 0 + 0.5
    # train-model still has work but no rate yet, so the overall ETA is unknown, not 3m 20s.
    assert first_line.endswith("ETA —")


def test_header_eta_is_the_slowest_job() -> None:
    snapshot = empty_snapshot()
    snapshot["jobs"] = [
        job("quick", done=5, pending=5, rate=1.0, eta=200.0),
        job("slow", done=1, pending=99, rate=0.025, eta=3900.0),
        job("finished", done=10),  # no ETA but nothing left: must not make the total unknown
    ]
    first_line = text_of(snapshot).splitlines()[0]
    assert first_line.endswith("1.0/s · ETA 1h 05m")  # 1.0 + 0.025


def test_nodes_table() -> None:
    out = text_of(busy_snapshot())
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    worker = rows["a1b2c3d4"]
    assert "worker-1" in worker
    assert "alive" in worker
    assert "2.5/8" in worker
    assert "512.0 MiB / 16.0 GiB" in worker
    assert "disk=ssd zone=eu-1" in worker  # user labels, sorted
    assert "0/0" in worker  # gpu column shown because another node has GPUs
    gpu = rows["ffee0011"]
    assert "gpu-box" in gpu
    assert "16/32" in gpu
    assert "64.0 GiB / 128.0 GiB" in gpu
    assert "1/2" in gpu
    assert gpu.rstrip().endswith("22")
    assert "dead" in rows["deadbeef"]
    # Built-in labels have their own columns and must not be repeated as k=v.
    for builtin in ("arch=", "hostname=", "cpus=", "memory_gb=", "gpus="):
        assert builtin not in out
    assert "a1b2c3d4e5" not in out  # ids are shortened


def test_a_node_that_claims_nothing_says_why() -> None:
    paused = node("a1b2c3d4e5")
    paused["not_claiming"] = "catching up with the swarm first"
    claiming = node("ffee0011")
    claiming["not_claiming"] = ""
    out = text_of({"generated_ms": 0, "nodes": [paused, claiming], "jobs": [], "running": []})
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "not claiming: catching" in out
    assert "not claiming" not in rows["ffee0011"]


def test_gpu_column_only_when_some_node_has_gpus() -> None:
    snapshot = busy_snapshot()
    assert " gpus " in text_of(snapshot)
    snapshot["nodes"] = [n for n in snapshot["nodes"] if n["capacity"]["gpus"] == 0]
    out = text_of(snapshot)
    assert " gpus " not in out
    assert "cpus" in out


def test_jobs_table() -> None:
    out = text_of(busy_snapshot())
    lines = out.splitlines()
    render_row = next(line for line in lines if line.startswith(" render-frames"))
    assert "10,000/12,000" in render_row
    assert "83.3%" in render_row  # 10,000 done / 12,000, floored: not the 240 failed, 40 cancelled
    assert "━" in render_row  # the progress bar
    assert "1,700" in render_row
    assert "240" in render_row
    assert "12.3/s" in render_row
    assert render_row.rstrip().endswith("3m 20s")
    train_row = next(line for line in lines if line.startswith(" train-model"))
    assert "0/305" in train_row
    assert "0.0%" in train_row
    assert "0/s" in train_row
    assert train_row.rstrip().endswith("—")
    done_row = next(line for line in lines if line.startswith(" thumbnails"))
    assert "10/10" in done_row
    assert "100.0%" in done_row


def test_percent_never_rounds_up_to_100() -> None:
    snapshot = empty_snapshot()
    snapshot["jobs"] = [job("almost", done=9_999, running=1, rate=1.0, eta=1.0)]
    out = text_of(snapshot)
    assert "99.9%" in out
    assert "100.0%" not in out


def test_failed_count_is_red_only_when_nonzero() -> None:
    # The style covers the cell's right-justification padding too, hence the \s*.
    assert re.search(r"\x1b\[1;31m\s*240\x1b\[0m", ansi_of(busy_snapshot()))
    snapshot = busy_snapshot()
    snapshot["jobs"][0]["failed"] = 0
    assert not re.search(r"\x1b\[1;31m\s*0\x1b\[0m", ansi_of(snapshot))


def test_running_table_is_capped_oldest_first() -> None:
    out = text_of(busy_snapshot())
    assert "Running (25)" in out
    assert "… and 5 more" in out
    # The oldest claim (frame-24, started 89s ago) comes first; the 5 newest are cut.
    assert "frame-24" in out
    assert "1m 29s" in out
    assert "frame-05" in out
    assert "1m 10s" in out
    for hidden in ("frame-00", "frame-01", "frame-02", "frame-03", "frame-04"):
        assert hidden not in out
    assert out.index("frame-24") < out.index("frame-05")
    row = next(line for line in out.splitlines() if "frame-24" in line)
    assert row.split() == ["train-model", "frame-24", "ffee0011", "1", "1m", "29s"]


def test_running_elapsed_uses_now_ms() -> None:
    out = text_of(busy_snapshot(), now_ms=NOW + 3_600_000)
    assert "1h 01m" in out  # frame-24: 89s + 1h
    assert "1m 29s" not in out


def test_running_more_count_uses_job_totals_when_list_is_capped() -> None:
    # The snapshot lists at most 200 running tasks; the jobs' counts know the real number.
    snapshot = busy_snapshot()
    snapshot["jobs"][0]["running"] = 295
    out = text_of(snapshot)
    assert "Running (300)" in out
    assert "… and 280 more" in out


def test_no_more_line_when_everything_fits() -> None:
    snapshot = busy_snapshot()
    snapshot["running"] = snapshot["running"][:3]
    snapshot["jobs"][0]["running"] = 3
    snapshot["jobs"][1]["running"] = 0
    out = text_of(snapshot)
    assert "Running (3)" in out
    assert "… and" not in out


def test_infeasible_line() -> None:
    out = text_of(busy_snapshot())
    assert (
        "3 pending tasks cannot run on any live node "
        "(they need more CPU/memory/GPUs or labels than any node has)"
    ) in out
    assert out.rstrip().splitlines()[-1].startswith("3 pending tasks")


def test_infeasible_line_singular_and_absent() -> None:
    snapshot = busy_snapshot()
    snapshot["infeasible"] = ["t900"]
    assert "1 pending task cannot run on any live node (it needs" in text_of(snapshot)
    snapshot["infeasible"] = []
    assert "cannot run" not in text_of(snapshot)


def test_user_text_is_not_read_as_markup() -> None:
    snapshot = busy_snapshot()
    snapshot["jobs"][0]["job"] = "[b]odd[/b]"
    snapshot["nodes"][0]["labels"]["team"] = "[red]ops"
    out = text_of(snapshot)
    assert "[b]odd[/b]" in out
    assert "team=[red]ops" in out


def test_render_is_pure() -> None:
    snapshot = busy_snapshot()
    before = copy.deepcopy(snapshot)
    assert text_of(snapshot) == text_of(snapshot)
    assert snapshot == before


def test_zero_total_job_has_no_bar() -> None:
    snapshot = empty_snapshot()
    snapshot["jobs"] = [job("empty")]
    row = next(line for line in text_of(snapshot).splitlines() if line.startswith(" empty"))
    assert "━" not in row
    assert "0/0" in row


# --- helpers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, "—"),
        (math.nan, "—"),
        (math.inf, "—"),
        (-5, "0s"),
        (0, "0s"),
        (0.4, "0s"),
        (1, "1s"),
        (59, "59s"),
        (59.6, "1m 00s"),
        (60, "1m 00s"),
        (65, "1m 05s"),
        (200, "3m 20s"),
        (3599, "59m 59s"),
        (3600, "1h 00m"),
        (3900, "1h 05m"),
        (86_399, "23h 59m"),
        (86_400, "1d 00h"),
        (3 * 86_400 + 7 * 3600 + 59, "3d 07h"),
    ],
)
def test_format_duration(seconds: float | None, expected: str) -> None:
    assert format_duration(seconds) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (MiB, "1.0 MiB"),
        (512 * MiB, "512.0 MiB"),
        (GiB - 1, "1.0 GiB"),  # would print "1024.0 MiB" without the unit bump
        (GiB, "1.0 GiB"),
        (int(15.6 * GiB), "15.6 GiB"),
        (128 * GiB, "128.0 GiB"),
        (2 * 1024 * GiB, "2.0 TiB"),
        (-2 * GiB, "-2.0 GiB"),
    ],
)
def test_format_bytes(n: int, expected: str) -> None:
    assert format_bytes(n) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0"),
        (999, "999"),
        (1000, "1,000"),
        (12_345, "12,345"),
        (1_234_567, "1,234,567"),
        (-4_000, "-4,000"),
    ],
)
def test_format_count(n: int, expected: str) -> None:
    assert format_count(n) == expected


@pytest.mark.parametrize(
    ("per_s", "expected"),
    [
        (0.0, "0/s"),
        (-1.0, "0/s"),
        (math.nan, "0/s"),
        (0.05, "0.05/s"),
        (0.1, "0.1/s"),
        (12.34, "12.3/s"),
        (1500.0, "1500.0/s"),
    ],
)
def test_format_rate(per_s: float, expected: str) -> None:
    assert format_rate(per_s) == expected


def test_an_80_column_terminal_keeps_job_names_and_etas() -> None:
    snap = {
        "generated_ms": 10_000,
        "nodes": [],
        "jobs": [
            {
                "job": "sweep-2026-a",
                "total": 40_000,
                "pending": 30_000,
                "running": 2,
                "done": 8_000,
                "failed": 1_000,
                "cancelled": 0,
                "rate_per_s": 1.2,
                "eta_s": 2_500,
            }
        ],
        "running": [],
        "infeasible": [],
    }
    console = Console(width=80, file=io.StringIO(), record=True, color_system=None)
    console.print(render(snap, width=80))
    text = console.export_text()
    assert "sweep-2026-a" in text
    assert "41m 40s" in text
    assert "progress" not in text  # the bar goes first when space is short


def test_unreadable_records_are_said_not_hidden() -> None:
    snapshot = busy_snapshot()
    snapshot["unreadable_records"] = 1
    snapshot["unreadable_reason"] = "('n1', 1, 7): malformed record [1]"
    text = text_of(snapshot)
    assert (
        "1 record in the ledger could not be read (('n1', 1, 7): malformed record [1]); "
        "the tasks it describes are not shown"
    ) in " ".join(text.split())
    snapshot["unreadable_records"] = 3
    assert "3 records in the ledger could not be read" in text_of(snapshot)


def test_refused_task_records_are_said() -> None:
    snapshot = empty_snapshot()
    snapshot["refused_tasks"] = 2
    snapshot["refused_reason"] = "task 1234 ('a' of job 'j') does not hash to its id"
    text = " ".join(text_of(snapshot).split())
    assert "2 task records in the ledger were refused: task 1234" in text
    assert "those tasks are not shown and not run" in text


def test_no_left_out_line_when_everything_was_read() -> None:
    snapshot = busy_snapshot()
    snapshot["unreadable_records"] = 0
    snapshot["refused_tasks"] = 0
    text = text_of(snapshot)
    assert "could not be read" not in text and "refused" not in text


def test_nodes_gone_long_ago_fold_into_a_count() -> None:
    live = node("a1b2c3d4e5")
    recent = node("deadbeef01", state="dead")
    recent["last_change_s"] = 30.0
    old = node("0ldd0ne999", state="left")
    old["last_change_s"] = 3600.0
    out = text_of({"generated_ms": 0, "nodes": [live, recent, old], "jobs": [], "running": []})
    assert "a1b2c3d4" in out and "deadbeef" in out  # a node dead for 30 s is still listed
    assert "0ldd0ne9" not in out
    assert "and 1 node dead or gone for over 10 minutes" in out


def test_the_latest_failures_show_with_their_exit_and_last_stderr_line() -> None:
    failure = {
        "task_id": "t9", "job": "sweep", "name": "seed-3", "node": "a1b2c3d4e5", "outcome": "failed",
        "exit_code": 2, "reason": "exit 2", "ended_ms": 0, "digest": None,
        "stderr_tail": "ValueError: bad seed",
    }  # fmt: skip
    timed_out = {**failure, "name": "seed-4", "outcome": "timeout", "exit_code": None,
                 "reason": "timed out after 5s", "stderr_tail": ""}  # fmt: skip
    out = text_of({"generated_ms": 0, "nodes": [], "jobs": [], "running": [],
                   "failures": [failure, timed_out]})  # fmt: skip
    assert "Latest failures" in out
    row = next(line for line in out.splitlines() if "sweep/seed-3" in line)
    assert "a1b2c3d4" in row and " 2 " in row and "ValueError: bad seed" in row
    row = next(line for line in out.splitlines() if "sweep/seed-4" in line)
    assert "timeout" in row and "timed out after 5s" in row  # no stderr: its reason
