"""The control requests' table: what the CLI sends passes; a wrong field is named."""

from __future__ import annotations

from typing import Any

import pytest

from swarm.control import REQUEST_FIELDS, request_problem, submit_frame_problem

# What the CLI sends, op by op (cli.py): every one must pass.
SENT_BY_THE_CLI: list[dict[str, Any]] = [
    {"op": "ping"},
    {"op": "submit", "job": "sweep"},
    {"op": "status", "jobs": None},
    {"op": "status", "jobs": ["sweep"], "wait_ms": 0, "changes": None},
    {"op": "status", "jobs": ["sweep"], "wait_ms": 500, "changes": 12},
    {"op": "cancel", "target": "sweep"},
    {"op": "retry", "job": "sweep"},
    {"op": "members"},
    {"op": "fetch_results", "job": "sweep"},
    {"op": "reload_keys"},
    {"op": "join", "peers": ["10.0.0.5:7946"]},
    {"op": "shutdown"},
    {"op": "drain", "node": ""},
    {"op": "drain", "node": "ab12", "grace_s": 2.5},
]


@pytest.mark.parametrize("request_", SENT_BY_THE_CLI, ids=lambda r: str(r["op"]))
def test_what_the_cli_sends_passes(request_: dict[str, Any]) -> None:
    assert request_problem(request_) is None


def test_every_op_is_covered_here() -> None:
    assert {r["op"] for r in SENT_BY_THE_CLI} == set(REQUEST_FIELDS)


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ({"tasks": 5}, "'tasks' must be a list of tasks, or null, got int"),
        ({"tasks": [None]}, "tasks[0] must be a map, got NoneType"),
        ({"tasks": [{"task_id": "t", "name": "n"}]}, "'spec' must be the task's spec (a map)"),
        ({"end": 1}, "'end' must be true or false"),
    ],
)
def test_a_bad_submission_frame_names_its_field(frame: dict[str, Any], fragment: str) -> None:
    problem = submit_frame_problem(frame)
    assert problem is not None and fragment in problem, problem


def test_good_submission_frames_pass() -> None:
    task = {"task_id": "t", "name": "n", "explicit_name": False, "spec": {}, "line": 3}
    assert submit_frame_problem({"tasks": [task]}) is None
    assert submit_frame_problem({"end": True}) is None
