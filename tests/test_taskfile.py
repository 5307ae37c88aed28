"""Tests of swarm.cli.taskfile: the task file contract of DESIGN.md 2.2 (JSON Lines and `--lines`).

Every error must name "file:line: field:"; a file with any bad line adds nothing and lists every
problem; ids are content hashes of the normalized spec plus the job (a defaulted name is not part of
the id); relative `cwd` resolves against the file's directory.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.cli.taskfile import LINE_BYTES_MAX, PROBLEMS_MAX, NewTask, parse_jsonl, parse_lines, read
from swarm.core.spec import (
    DEFAULT_CPUS,
    DEFAULT_GPUS,
    DEFAULT_MEMORY_BYTES,
    DEFAULT_PRIORITY,
    DEFAULT_RETRIES,
)
from swarm.errors import TaskFileError, UserInputError

SRC = "jobs/tasks.jsonl"
BASE = Path("/data/jobs")
JOB = "job-1"
KIB = 1024
MIB = 1024**2
GIB = 1024**3

Line = str | bytes | dict[str, Any]


# --- helpers -------------------------------------------------------------------------------------


def encode(line: Line) -> bytes:
    if isinstance(line, dict):
        return json.dumps(line).encode("utf-8")
    if isinstance(line, str):
        return line.encode("utf-8")
    return line


def jsonl(*lines: Line) -> bytes:
    return b"\n".join(encode(line) for line in lines) + b"\n"


def parse(*lines: Line, job: str = JOB, base: Path = BASE) -> list[NewTask]:
    return parse_jsonl(jsonl(*lines), SRC, job, base)


def one(line: Line, job: str = JOB, base: Path = BASE) -> NewTask:
    tasks = parse(line, job=job, base=base)
    assert len(tasks) == 1
    return tasks[0]


def problems_of(data: bytes, *, lines_mode: bool = False) -> list[str]:
    with pytest.raises(TaskFileError) as info:
        if lines_mode:
            parse_lines(data, SRC, JOB)
        else:
            parse_jsonl(data, SRC, JOB, BASE)
    return info.value.problems


def problems(*lines: Line) -> list[str]:
    return problems_of(jsonl(*lines))


def the_problem(line: Line) -> str:
    found = problems(line)
    assert len(found) == 1, found
    return found[0]


def tid(line: Line, job: str = JOB, base: Path = BASE) -> str:
    return one(line, job=job, base=base).task_id


# --- a minimal line and its defaults -------------------------------------------------------------


def test_minimal_cmd_line_gets_every_default() -> None:
    task = one({"cmd": "echo hi"})
    spec = task.spec
    assert spec.cmd == "echo hi"
    assert spec.argv is None
    assert spec.need.cpus == DEFAULT_CPUS == 1.0
    assert spec.need.memory_bytes == DEFAULT_MEMORY_BYTES == 512 * MIB
    assert spec.need.gpus == DEFAULT_GPUS == 0
    assert spec.priority == DEFAULT_PRIORITY == 0
    assert spec.timeout_s is None
    assert spec.retries == DEFAULT_RETRIES == 2
    assert spec.env == ()
    assert spec.cwd is None
    assert spec.requires == ()
    assert spec.outputs == ()
    assert task.name == "1"
    assert task.line == 1
    assert task.explicit_name is False
    assert re.fullmatch(r"[0-9a-f]{64}", task.task_id)  # a sha256, in lower-case hex


def test_task_file_error_is_a_user_input_error() -> None:
    with pytest.raises(UserInputError):
        parse({"cmd": 1})


# --- every key, valid ----------------------------------------------------------------------------

VALID: list[tuple[str, dict[str, Any], Any, Any]] = [
    # (id, line, getter, expected)
    ("cmd", {"cmd": "echo hi"}, lambda t: t.spec.cmd, "echo hi"),
    ("cmd-spaces-kept", {"cmd": "  ls  "}, lambda t: t.spec.cmd, "  ls  "),
    ("argv", {"argv": ["echo", "a b"]}, lambda t: t.spec.argv, ("echo", "a b")),
    ("argv-no-cmd", {"argv": ["true"]}, lambda t: t.spec.cmd, None),
    ("argv-empty-arg", {"argv": ["echo", ""]}, lambda t: t.spec.argv, ("echo", "")),
    ("name", {"cmd": "a", "name": "first"}, lambda t: (t.name, t.explicit_name), ("first", True)),
    ("name-dots", {"cmd": "a", "name": "..."}, lambda t: t.name, "..."),
    ("name-dot-inside", {"cmd": "a", "name": "a.b"}, lambda t: t.name, "a.b"),
    ("name-255-bytes", {"cmd": "a", "name": "x" * 255}, lambda t: t.name, "x" * 255),
    (
        "name-255-bytes-multibyte",
        {"cmd": "a", "name": "é" * 127 + "x"},
        lambda t: t.name,
        "é" * 127 + "x",
    ),
    (
        "requires-comparator-spaced",
        {"cmd": "a", "requires": {"cpus": "> 2.5"}},
        lambda t: t.spec.requires,
        (("cpus", "> 2.5"),),
    ),
    (
        "requires-not-equal-text",
        {"cmd": "a", "requires": {"zone": "!=eu"}},
        lambda t: t.spec.requires,
        (("zone", "!=eu"),),
    ),
    ("name-unicode", {"cmd": "a", "name": "héllo 日本"}, lambda t: t.name, "héllo 日本"),
    ("cpus-half", {"cmd": "a", "cpus": 0.5}, lambda t: t.spec.need.cpus, 0.5),
    ("cpus-int", {"cmd": "a", "cpus": 2}, lambda t: t.spec.need.cpus, 2.0),
    ("cpus-max", {"cmd": "a", "cpus": 4096}, lambda t: t.spec.need.cpus, 4096.0),
    ("cpus-tiny", {"cmd": "a", "cpus": 0.001}, lambda t: t.spec.need.cpus, 0.001),
    ("memory-G", {"cmd": "a", "memory": "2G"}, lambda t: t.spec.need.memory_bytes, 2 * GIB),
    ("memory-M", {"cmd": "a", "memory": "512M"}, lambda t: t.spec.need.memory_bytes, 512 * MIB),
    ("memory-int-MiB", {"cmd": "a", "memory": 100}, lambda t: t.spec.need.memory_bytes, 100 * MIB),
    (
        "memory-float-MiB",
        {"cmd": "a", "memory": 1.5},
        lambda t: t.spec.need.memory_bytes,
        3 * MIB // 2,
    ),
    (
        "memory-fraction-G",
        {"cmd": "a", "memory": "1.5G"},
        lambda t: t.spec.need.memory_bytes,
        3 * GIB // 2,
    ),
    ("memory-K", {"cmd": "a", "memory": "64K"}, lambda t: t.spec.need.memory_bytes, 64 * KIB),
    ("memory-GiB", {"cmd": "a", "memory": "1GiB"}, lambda t: t.spec.need.memory_bytes, GIB),
    ("memory-lower", {"cmd": "a", "memory": "1g"}, lambda t: t.spec.need.memory_bytes, GIB),
    ("memory-bytes", {"cmd": "a", "memory": "4096B"}, lambda t: t.spec.need.memory_bytes, 4096),
    ("gpus-0", {"cmd": "a", "gpus": 0}, lambda t: t.spec.need.gpus, 0),
    ("gpus-2", {"cmd": "a", "gpus": 2}, lambda t: t.spec.need.gpus, 2),
    ("gpus-max", {"cmd": "a", "gpus": 1024}, lambda t: t.spec.need.gpus, 1024),
    ("priority-neg", {"cmd": "a", "priority": -5}, lambda t: t.spec.priority, -5),
    ("priority-max", {"cmd": "a", "priority": 2**31 - 1}, lambda t: t.spec.priority, 2**31 - 1),
    ("priority-min", {"cmd": "a", "priority": -(2**31)}, lambda t: t.spec.priority, -(2**31)),
    ("timeout-int", {"cmd": "a", "timeout": 60}, lambda t: t.spec.timeout_s, 60.0),
    ("timeout-float", {"cmd": "a", "timeout": 0.25}, lambda t: t.spec.timeout_s, 0.25),
    ("timeout-null", {"cmd": "a", "timeout": None}, lambda t: t.spec.timeout_s, None),
    ("retries-0", {"cmd": "a", "retries": 0}, lambda t: t.spec.retries, 0),
    ("retries-max", {"cmd": "a", "retries": 1000}, lambda t: t.spec.retries, 1000),
    (
        "env-sorted",
        {"cmd": "a", "env": {"B": "2", "A": "1", "EMPTY": ""}},
        lambda t: t.spec.env,
        (("A", "1"), ("B", "2"), ("EMPTY", "")),
    ),
    ("env-empty", {"cmd": "a", "env": {}}, lambda t: t.spec.env, ()),
    ("cwd-relative", {"cmd": "a", "cwd": "sub"}, lambda t: t.spec.cwd, "/data/jobs/sub"),
    ("cwd-dot", {"cmd": "a", "cwd": "."}, lambda t: t.spec.cwd, "/data/jobs"),
    ("cwd-parent", {"cmd": "a", "cwd": "../x"}, lambda t: t.spec.cwd, "/data/x"),
    ("cwd-normalized", {"cmd": "a", "cwd": "a/./b/"}, lambda t: t.spec.cwd, "/data/jobs/a/b"),
    ("cwd-absolute", {"cmd": "a", "cwd": "/srv/work"}, lambda t: t.spec.cwd, "/srv/work"),
    ("cwd-null", {"cmd": "a", "cwd": None}, lambda t: t.spec.cwd, None),
    (
        "requires-string",
        {"cmd": "a", "requires": {"zone": "eu"}},
        lambda t: t.spec.to_wire()["requires"],
        {"zone": "eu"},
    ),
    (
        "requires-number",
        {"cmd": "a", "requires": {"cpus": 4}},
        lambda t: t.spec.to_wire()["requires"],
        {"cpus": 4},
    ),
    (
        "requires-list",
        {"cmd": "a", "requires": {"zone": ["eu", "us"]}},
        lambda t: t.spec.to_wire()["requires"],
        {"zone": ["eu", "us"]},
    ),
    (
        "requires-comparator",
        {"cmd": "a", "requires": {"cpus": ">=4"}},
        lambda t: t.spec.to_wire()["requires"],
        {"cpus": ">=4"},
    ),
    (
        "requires-bool-and-float",
        {"cmd": "a", "requires": {"ssd": True, "memory_gb": 15.5}},
        lambda t: t.spec.to_wire()["requires"],
        {"memory_gb": 15.5, "ssd": True},
    ),
    (
        "requires-sorted",
        {"cmd": "a", "requires": {"zone": "eu", "arch": "x86_64"}},
        lambda t: [k for k, _ in t.spec.requires],
        ["arch", "zone"],
    ),
    (
        "outputs",
        {"cmd": "a", "outputs": ["out/*.csv", "log.txt", "a..b", "..."]},
        lambda t: t.spec.outputs,
        ("out/*.csv", "log.txt", "a..b", "..."),
    ),
    ("outputs-empty", {"cmd": "a", "outputs": []}, lambda t: t.spec.outputs, ()),
]


@pytest.mark.parametrize(
    ("line", "get", "expected"), [v[1:] for v in VALID], ids=[v[0] for v in VALID]
)
def test_valid_key(line: dict[str, Any], get: Any, expected: Any) -> None:
    assert get(one(line)) == expected


def test_every_key_at_once() -> None:
    task = one(
        {
            "cmd": "make all",
            "name": "build",
            "cpus": 2.5,
            "memory": "3G",
            "gpus": 1,
            "priority": 7,
            "timeout": 90,
            "retries": 5,
            "env": {"CC": "gcc"},
            "cwd": "src",
            "requires": {"zone": "eu"},
            "outputs": ["bin/*"],
        }
    )
    spec = task.spec
    assert (task.name, task.explicit_name) == ("build", True)
    assert (spec.cmd, spec.need.cpus, spec.need.memory_bytes, spec.need.gpus) == (
        "make all",
        2.5,
        3 * GIB,
        1,
    )
    assert (spec.priority, spec.timeout_s, spec.retries) == (7, 90.0, 5)
    assert spec.env == (("CC", "gcc"),)
    assert spec.cwd == "/data/jobs/src"
    assert spec.to_wire()["requires"] == {"zone": "eu"}
    assert spec.outputs == ("bin/*",)


# --- every key, invalid: "file:line: field: why" -------------------------------------------------

INVALID: list[tuple[str, Line, str, str]] = [
    # (id, line, field, a key part of the message)
    ("cmd-number", {"cmd": 5}, "cmd", "must be a non-empty string"),
    ("cmd-empty", {"cmd": ""}, "cmd", "must be a non-empty string"),
    ("cmd-blank", {"cmd": " \t "}, "cmd", "must be a non-empty string"),
    ("cmd-null", {"cmd": None}, "cmd", "must be a non-empty string"),
    ("cmd-list", {"cmd": ["echo"]}, "cmd", "must be a non-empty string"),
    ("cmd-bool", {"cmd": True}, "cmd", "must be a non-empty string"),
    ("cmd-nul", {"cmd": "echo a\x00b"}, "cmd", "NUL"),
    ("argv-string", {"argv": "echo hi"}, "argv", "must be a non-empty list of strings"),
    ("argv-empty", {"argv": []}, "argv", "must be a non-empty list of strings"),
    ("argv-object", {"argv": {}}, "argv", "must be a non-empty list of strings"),
    ("argv-empty-program", {"argv": [""]}, "argv", "item 0"),
    ("argv-number-item", {"argv": ["echo", 1]}, "argv", "item 1 must be a string"),
    ("argv-null-item", {"argv": ["echo", None]}, "argv", "item 1 must be a string"),
    ("argv-nul", {"argv": ["echo", "a\x00"]}, "argv", "item 1 contains a NUL"),
    ("both-cmd-and-argv", {"cmd": "a", "argv": ["a"]}, "cmd", "exactly one of 'cmd' and 'argv'"),
    ("neither-cmd-nor-argv", {"name": "x"}, "cmd", "exactly one of 'cmd' and 'argv'"),
    ("empty-object", {}, "cmd", "exactly one of 'cmd' and 'argv'"),
    ("name-empty", {"cmd": "a", "name": ""}, "name", "must be a non-empty string"),
    ("name-number", {"cmd": "a", "name": 5}, "name", "must be a non-empty string"),
    ("name-null", {"cmd": "a", "name": None}, "name", "must be a non-empty string"),
    ("name-bool", {"cmd": "a", "name": True}, "name", "must be a non-empty string"),
    ("name-slash", {"cmd": "a", "name": "a/b"}, "name", "directory name"),
    ("name-leading-slash", {"cmd": "a", "name": "/etc"}, "name", "directory name"),
    ("name-dot", {"cmd": "a", "name": "."}, "name", "directory name"),
    ("name-dotdot", {"cmd": "a", "name": ".."}, "name", "directory name"),
    ("name-nul", {"cmd": "a", "name": "a\x00b"}, "name", "directory name"),
    (
        "name-256-bytes",
        {"cmd": "a", "name": "x" * 256},
        "name",
        "is 256 bytes long in UTF-8, over the limit of 255 bytes",
    ),
    (
        "name-150-chars-300-bytes",
        {"cmd": "a", "name": "é" * 150},
        "name",
        "is 300 bytes long in UTF-8, over the limit of 255 bytes",
    ),
    (
        "requires-compare-text",
        {"cmd": "a", "requires": {"cpus": ">=abc"}},
        "requires",
        "cpus: '>=abc' compares with >=, but 'abc' is not a finite number",
    ),
    (
        "requires-compare-empty",
        {"cmd": "a", "requires": {"cpus": "<"}},
        "requires",
        "cpus: '<' compares with <, but '' is not",
    ),
    (
        "requires-compare-nan",
        {"cmd": "a", "requires": {"memory_gb": ">nan"}},
        "requires",
        "'nan' is not a finite number",
    ),
    (
        "requires-compare-in-list",
        {"cmd": "a", "requires": {"cpus": [4, "<=x"]}},
        "requires",
        "cpus: '<=x' compares with <=",
    ),
    ("cpus-zero", {"cmd": "a", "cpus": 0}, "cpus", "more than 0 and at most 4096"),
    ("cpus-negative", {"cmd": "a", "cpus": -1}, "cpus", "more than 0 and at most 4096"),
    ("cpus-too-many", {"cmd": "a", "cpus": 4097}, "cpus", "more than 0 and at most 4096"),
    ("cpus-1e999", '{"cmd": "a", "cpus": 1e999}', "cpus", "more than 0 and at most 4096"),
    ("cpus-string", {"cmd": "a", "cpus": "2"}, "cpus", 'must be a number, got "2"'),
    ("cpus-true", {"cmd": "a", "cpus": True}, "cpus", "must be a number, got true"),
    ("cpus-false", {"cmd": "a", "cpus": False}, "cpus", "must be a number, got false"),
    ("cpus-null", {"cmd": "a", "cpus": None}, "cpus", "must be a number, got null"),
    ("cpus-list", {"cmd": "a", "cpus": [1]}, "cpus", "must be a number"),
    ("memory-word", {"cmd": "a", "memory": "lots"}, "memory", "'lots' is not a size"),
    ("memory-unit", {"cmd": "a", "memory": "2X"}, "memory", "is not a size"),
    ("memory-exponent", {"cmd": "a", "memory": "1e3"}, "memory", "is not a size"),
    ("memory-empty", {"cmd": "a", "memory": ""}, "memory", "empty value is not a size"),
    ("memory-negative", {"cmd": "a", "memory": -1}, "memory", "negative"),
    ("memory-negative-G", {"cmd": "a", "memory": "-1G"}, "memory", "is not a size"),
    ("memory-zero", {"cmd": "a", "memory": 0}, "memory", "must be more than 0"),
    ("memory-zero-string", {"cmd": "a", "memory": "0G"}, "memory", "must be more than 0"),
    ("memory-rounds-to-zero", {"cmd": "a", "memory": "0.0000001"}, "memory", "more than 0"),
    ("memory-too-large", {"cmd": "a", "memory": "99999999P"}, "memory", "too large"),
    ("memory-1e999", '{"cmd": "a", "memory": 1e999}', "memory", "is not a size"),
    ("memory-true", {"cmd": "a", "memory": True}, "memory", "must be a size"),
    ("memory-null", {"cmd": "a", "memory": None}, "memory", "must be a size"),
    ("memory-list", {"cmd": "a", "memory": [512]}, "memory", "must be a size"),
    ("memory-object", {"cmd": "a", "memory": {"M": 1}}, "memory", "must be a size"),
    ("gpus-negative", {"cmd": "a", "gpus": -1}, "gpus", "between 0 and 1024, got -1"),
    ("gpus-too-many", {"cmd": "a", "gpus": 1025}, "gpus", "between 0 and 1024, got 1025"),
    ("gpus-fraction", {"cmd": "a", "gpus": 1.5}, "gpus", "must be a whole number, got 1.5"),
    ("gpus-float", {"cmd": "a", "gpus": 1.0}, "gpus", "must be a whole number, got 1.0"),
    ("gpus-string", {"cmd": "a", "gpus": "1"}, "gpus", 'must be a whole number, got "1"'),
    ("gpus-true", {"cmd": "a", "gpus": True}, "gpus", "must be a whole number, got true"),
    ("priority-fraction", {"cmd": "a", "priority": 1.5}, "priority", "whole number, got 1.5"),
    ("priority-string", {"cmd": "a", "priority": "high"}, "priority", "whole number"),
    ("priority-true", {"cmd": "a", "priority": True}, "priority", "whole number, got true"),
    ("priority-null", {"cmd": "a", "priority": None}, "priority", "whole number, got null"),
    ("priority-above", {"cmd": "a", "priority": 2**31}, "priority", f"got {2**31}"),
    ("priority-below", {"cmd": "a", "priority": -(2**31) - 1}, "priority", "must be between"),
    ("timeout-zero", {"cmd": "a", "timeout": 0}, "timeout", "seconds above 0, got 0"),
    ("timeout-negative", {"cmd": "a", "timeout": -5}, "timeout", "seconds above 0, got -5"),
    ("timeout-1e999", '{"cmd": "a", "timeout": 1e999}', "timeout", "seconds above 0"),
    ("timeout-string", {"cmd": "a", "timeout": "10"}, "timeout", 'must be a number, got "10"'),
    ("timeout-true", {"cmd": "a", "timeout": True}, "timeout", "must be a number, got true"),
    ("timeout-list", {"cmd": "a", "timeout": [10]}, "timeout", "must be a number"),
    ("retries-negative", {"cmd": "a", "retries": -1}, "retries", "between 0 and 1000, got -1"),
    ("retries-too-many", {"cmd": "a", "retries": 1001}, "retries", "between 0 and 1000"),
    ("retries-fraction", {"cmd": "a", "retries": 1.5}, "retries", "whole number, got 1.5"),
    ("retries-string", {"cmd": "a", "retries": "2"}, "retries", "whole number"),
    ("retries-false", {"cmd": "a", "retries": False}, "retries", "whole number, got false"),
    ("env-list", {"cmd": "a", "env": ["A=1"]}, "env", "must be an object of strings"),
    ("env-string", {"cmd": "a", "env": "A=1"}, "env", "must be an object of strings"),
    ("env-null", {"cmd": "a", "env": None}, "env", "must be an object of strings"),
    ("env-number-value", {"cmd": "a", "env": {"A": 1}}, "env", "A: value must be a string, got 1"),
    ("env-null-value", {"cmd": "a", "env": {"A": None}}, "env", "A: value must be a string"),
    ("env-bool-value", {"cmd": "a", "env": {"A": True}}, "env", "A: value must be a string"),
    ("env-empty-key", {"cmd": "a", "env": {"": "x"}}, "env", "'' is not a valid variable name"),
    ("env-equals-key", {"cmd": "a", "env": {"A=B": "x"}}, "env", "not a valid variable name"),
    ("env-nul-key", {"cmd": "a", "env": {"A\x00": "x"}}, "env", "not a valid variable name"),
    ("env-nul-value", {"cmd": "a", "env": {"A": "x\x00"}}, "env", "A: value contains a NUL"),
    ("cwd-empty", {"cmd": "a", "cwd": ""}, "cwd", "must be a non-empty path"),
    ("cwd-number", {"cmd": "a", "cwd": 5}, "cwd", "must be a non-empty path"),
    ("cwd-list", {"cmd": "a", "cwd": ["a"]}, "cwd", "must be a non-empty path"),
    ("cwd-nul", {"cmd": "a", "cwd": "a\x00b"}, "cwd", "must be a non-empty path"),
    ("requires-list", {"cmd": "a", "requires": ["zone"]}, "requires", "must be an object"),
    ("requires-string", {"cmd": "a", "requires": "zone=eu"}, "requires", "must be an object"),
    ("requires-null", {"cmd": "a", "requires": None}, "requires", "must be an object"),
    ("requires-empty-key", {"cmd": "a", "requires": {"": 1}}, "requires", "label name is empty"),
    (
        "requires-null-value",
        {"cmd": "a", "requires": {"zone": None}},
        "requires",
        "zone: must be a string, number, or list of them",
    ),
    (
        "requires-object-value",
        {"cmd": "a", "requires": {"zone": {"a": 1}}},
        "requires",
        "zone: must be a string, number, or list of them",
    ),
    (
        "requires-empty-list",
        {"cmd": "a", "requires": {"zone": []}},
        "requires",
        "zone: must be a string, number, or list of them",
    ),
    (
        "requires-nested-list",
        {"cmd": "a", "requires": {"zone": [["eu"]]}},
        "requires",
        "zone: must be a string, number, or list of them",
    ),
    (
        "requires-null-in-list",
        {"cmd": "a", "requires": {"zone": ["eu", None]}},
        "requires",
        "zone: must be a string, number, or list of them",
    ),
    ("requires-1e999", '{"cmd": "a", "requires": {"x": 1e999}}', "requires", "x: must be finite"),
    (
        "requires-1e999-in-list",
        '{"cmd": "a", "requires": {"x": [1, -1e999]}}',
        "requires",
        "x: must be finite",
    ),
    ("outputs-string", {"cmd": "a", "outputs": "out/*"}, "outputs", "must be a list of glob"),
    ("outputs-null", {"cmd": "a", "outputs": None}, "outputs", "must be a list of glob"),
    ("outputs-number-item", {"cmd": "a", "outputs": [1]}, "outputs", "must be a list of glob"),
    ("outputs-empty-item", {"cmd": "a", "outputs": [""]}, "outputs", "must be a list of glob"),
    ("outputs-absolute", {"cmd": "a", "outputs": ["/etc/passwd"]}, "outputs", "'/etc/passwd'"),
    ("outputs-dotdot", {"cmd": "a", "outputs": [".."]}, "outputs", "without '..'"),
    ("outputs-dotdot-start", {"cmd": "a", "outputs": ["../x"]}, "outputs", "'../x'"),
    ("outputs-dotdot-middle", {"cmd": "a", "outputs": ["a/../../b"]}, "outputs", "without '..'"),
    ("outputs-dotdot-end", {"cmd": "a", "outputs": ["a/.."]}, "outputs", "without '..'"),
    ("outputs-backslash", {"cmd": "a", "outputs": ["a\\..\\b"]}, "outputs", "without '..'"),
    ("outputs-second-bad", {"cmd": "a", "outputs": ["ok", "/abs"]}, "outputs", "'/abs'"),
    ("outputs-nul", {"cmd": "a", "outputs": ["a\x00"]}, "outputs", "relative to the working dir"),
    ("unknown-key", {"cmd": "a", "command": "b"}, "command", "known keys: cmd, argv"),
    ("unknown-key-case", {"CMD": "a"}, "CMD", "unknown key (did you mean 'cmd'?"),
    ("unknown-key-typo", {"cmd": "a", "memroy": "1G"}, "memroy", "did you mean 'memory'?"),
    ("a-shell-command", "echo hello", "json", "is read with --lines"),
    ("unknown-first-sorted", {"cmd": "a", "zz": 1, "aa": 2}, "aa", "unknown key"),
    ("duplicate-cmd", '{"cmd": "a", "cmd": "b"}', "cmd", "given twice on one line"),
    ("duplicate-cpus", '{"cmd": "a", "cpus": 1, "cpus": 1}', "cpus", "given twice on one line"),
    ("nan-cpus", '{"cmd": "a", "cpus": NaN}', "json", "NaN is not a number JSON allows"),
    ("inf-timeout", '{"cmd": "a", "timeout": Infinity}', "json", "Infinity is not a number"),
    ("neg-inf-priority", '{"cmd": "a", "priority": -Infinity}', "json", "-Infinity is not a"),
    ("nan-memory", '{"cmd": "a", "memory": NaN}', "json", "NaN is not a number"),
    ("nan-requires", '{"cmd": "a", "requires": {"x": NaN}}', "json", "NaN is not a number"),
    ("not-json", "echo hi", "json", "not valid JSON"),
    ("truncated", '{"cmd": "a"', "json", "not valid JSON"),
    ("trailing-garbage", '{"cmd": "a"} x', "json", "not valid JSON"),
    ("two-objects", '{"cmd": "a"} {"cmd": "b"}', "json", "not valid JSON"),
    ("single-quotes", "{'cmd': 'a'}", "json", "not valid JSON"),
    ("raw-nul-byte", b'{"cmd": "a\x00b"}', "json", "not valid JSON"),
    ("array", '["echo", "hi"]', "json", "expected an object {...}, got list"),
    ("string", '"echo hi"', "json", "expected an object {...}, got str"),
    ("number", "5", "json", "expected an object {...}, got int"),
    ("null", "null", "json", "expected an object {...}, got NoneType"),
    # Sizes: what the kernel could never exec, and what is too large to replicate.
    ("cmd over exec's limit", {"cmd": "x" * 128 * KIB}, "cmd", "over the kernel's limit"),
    ("cmd counted in bytes", {"cmd": "é" * 64 * KIB}, "cmd", "131072 bytes"),
    ("argv item over exec's limit", {"argv": ["echo", "x" * 128 * KIB]}, "argv", "the kernel's"),
    ("env over exec's limit", {"cmd": "a", "env": {"BIG": "x" * 128 * KIB}}, "env", "BIG is"),
    ("task over its limit", {"argv": ["echo", *["x" * 100 * KIB] * 3]}, "argv", "262144 bytes"),
    ("a million empty arguments", {"argv": ["true", *[""] * 1_000_000]}, "argv", "262144 bytes"),
]


@pytest.mark.parametrize(
    ("line", "field", "fragment"), [v[1:] for v in INVALID], ids=[v[0] for v in INVALID]
)
def test_invalid_key(line: Line, field: str, fragment: str) -> None:
    problem = the_problem(line)
    assert problem.startswith(f"{SRC}:1: {field}: "), problem
    assert fragment in problem, problem


@pytest.mark.parametrize(
    ("line", "field", "fragment"), [v[1:] for v in INVALID], ids=[v[0] for v in INVALID]
)
def test_invalid_key_names_the_right_line(line: Line, field: str, fragment: str) -> None:
    data = jsonl({"cmd": "ok 1"}, "", {"cmd": "ok 2"}, line, {"cmd": "ok 3"})
    found = problems_of(data)
    assert len(found) == 1, found
    assert found[0].startswith(f"{SRC}:4: {field}: "), found
    assert fragment in found[0]


def test_the_largest_command_exec_takes_is_accepted() -> None:
    assert one({"cmd": "x" * (128 * KIB - 1)}).spec.cmd == "x" * (128 * KIB - 1)


def test_a_line_too_long_to_exec_in_lines_mode_names_its_line() -> None:
    found = problems_of(b"echo ok\n" + b"x" * 200 * KIB + b"\n", lines_mode=True)
    assert len(found) == 1 and found[0].startswith(f"{SRC}:2: cmd: "), found


def test_message_shows_the_exception_text_too() -> None:
    with pytest.raises(TaskFileError) as info:
        parse({"cmd": "ok"}, {"cmd": "a", "cpus": 0})
    assert f"{SRC}:2: cpus: must be more than 0 and at most 4096, got 0" in str(info.value)


# --- memory forms and normalization: same meaning, same id ---------------------------------------


@pytest.mark.parametrize(
    "memory", ["512M", 512, 512.0, "0.5G", "0.5g", "512MiB", "512mb", "524288K", " 512M "]
)
def test_memory_forms_are_equal(memory: Any) -> None:
    task = one({"cmd": "a", "memory": memory})
    assert task.spec.need.memory_bytes == 512 * MIB
    assert task.task_id == tid({"cmd": "a"})  # 512M is the default


SAME_ID: list[tuple[str, Line, Line]] = [
    ("cpus-int-float", {"cmd": "a", "cpus": 1}, {"cmd": "a", "cpus": 1.0}),
    ("cpus-default", {"cmd": "a"}, {"cmd": "a", "cpus": 1}),
    ("cpus-2", {"cmd": "a", "cpus": 2}, {"cmd": "a", "cpus": 2.0}),
    ("memory-G-M", {"cmd": "a", "memory": "2G"}, {"cmd": "a", "memory": "2048M"}),
    ("memory-G-number", {"cmd": "a", "memory": "2G"}, {"cmd": "a", "memory": 2048}),
    ("gpus-0-default", {"cmd": "a"}, {"cmd": "a", "gpus": 0}),
    ("priority-0-default", {"cmd": "a"}, {"cmd": "a", "priority": 0}),
    ("retries-2-default", {"cmd": "a"}, {"cmd": "a", "retries": 2}),
    ("timeout-null-default", {"cmd": "a"}, {"cmd": "a", "timeout": None}),
    ("timeout-int-float", {"cmd": "a", "timeout": 5}, {"cmd": "a", "timeout": 5.0}),
    ("env-empty-default", {"cmd": "a"}, {"cmd": "a", "env": {}}),
    ("requires-empty-default", {"cmd": "a"}, {"cmd": "a", "requires": {}}),
    ("outputs-empty-default", {"cmd": "a"}, {"cmd": "a", "outputs": []}),
    ("cwd-null-default", {"cmd": "a"}, {"cmd": "a", "cwd": None}),
    (
        "env-order",
        {"cmd": "a", "env": {"A": "1", "B": "2"}},
        {"cmd": "a", "env": {"B": "2", "A": "1"}},
    ),
    (
        "requires-order",
        {"cmd": "a", "requires": {"zone": "eu", "arch": "x86_64"}},
        {"cmd": "a", "requires": {"arch": "x86_64", "zone": "eu"}},
    ),
    ("key-order", '{"cmd": "a", "cpus": 2}', '{"cpus": 2, "cmd": "a"}'),
    ("json-whitespace", '{"cmd":"a","cpus":2}', '  {  "cmd" : "a" ,  "cpus" : 2 }  '),
    ("json-escapes", '{"cmd": "\\u00e9"}', '{"cmd": "é"}'),
    ("cwd-relative-forms", {"cmd": "a", "cwd": "sub"}, {"cmd": "a", "cwd": "./sub/"}),
    ("cwd-relative-absolute", {"cmd": "a", "cwd": "sub"}, {"cmd": "a", "cwd": "/data/jobs/sub"}),
    ("same-explicit-name", {"cmd": "a", "name": "n"}, {"name": "n", "cmd": "a"}),
]


@pytest.mark.parametrize(("a", "b"), [v[1:] for v in SAME_ID], ids=[v[0] for v in SAME_ID])
def test_normalization_gives_equal_ids(a: Line, b: Line) -> None:
    ta, tb = one(a), one(b)
    assert ta.spec == tb.spec
    assert ta.task_id == tb.task_id


DIFFERENT_ID: list[tuple[str, Line, Line]] = [
    ("cmd", {"cmd": "a"}, {"cmd": "b"}),
    ("cmd-whitespace", {"cmd": "a"}, {"cmd": "a "}),
    ("cmd-vs-argv", {"cmd": "echo a"}, {"argv": ["echo", "a"]}),
    ("argv", {"argv": ["echo", "a"]}, {"argv": ["echo", "a", ""]}),
    ("cpus", {"cmd": "a", "cpus": 1}, {"cmd": "a", "cpus": 2}),
    ("memory", {"cmd": "a", "memory": "1G"}, {"cmd": "a", "memory": "2G"}),
    ("gpus", {"cmd": "a"}, {"cmd": "a", "gpus": 1}),
    ("priority", {"cmd": "a"}, {"cmd": "a", "priority": 1}),
    ("timeout", {"cmd": "a"}, {"cmd": "a", "timeout": 10}),
    ("retries", {"cmd": "a"}, {"cmd": "a", "retries": 0}),
    ("env", {"cmd": "a"}, {"cmd": "a", "env": {"A": "1"}}),
    ("env-value", {"cmd": "a", "env": {"A": "1"}}, {"cmd": "a", "env": {"A": "2"}}),
    ("cwd", {"cmd": "a"}, {"cmd": "a", "cwd": "sub"}),
    ("requires", {"cmd": "a"}, {"cmd": "a", "requires": {"zone": "eu"}}),
    ("outputs", {"cmd": "a"}, {"cmd": "a", "outputs": ["*.csv"]}),
    ("explicit-name", {"cmd": "a"}, {"cmd": "a", "name": "x"}),
    ("explicit-name-equal-to-line", {"cmd": "a"}, {"cmd": "a", "name": "1"}),
    ("two-names", {"cmd": "a", "name": "x"}, {"cmd": "a", "name": "y"}),
]


@pytest.mark.parametrize(
    ("a", "b"), [v[1:] for v in DIFFERENT_ID], ids=[v[0] for v in DIFFERENT_ID]
)
def test_different_meaning_gives_different_ids(a: Line, b: Line) -> None:
    assert tid(a) != tid(b)


# --- ids: jobs, re-parsing, reordering, collapsing -----------------------------------------------


def test_ids_differ_across_jobs() -> None:
    assert tid({"cmd": "a"}, job="job-1") != tid({"cmd": "a"}, job="job-2")
    assert tid({"cmd": "a"}, job="job-1") == tid({"cmd": "a"}, job="job-1")


def test_lines_ids_differ_across_jobs() -> None:
    a = parse_lines(b"echo a\n", SRC, "job-1")[0].task_id
    b = parse_lines(b"echo a\n", SRC, "job-2")[0].task_id
    assert a != b


def test_same_file_reparsed_gives_same_ids() -> None:
    data = jsonl({"cmd": "a"}, {"argv": ["b"], "cpus": 2}, {"cmd": "c", "name": "third"})
    first = parse_jsonl(data, SRC, JOB, BASE)
    second = parse_jsonl(data, "other/name.jsonl", JOB, BASE)
    assert [t.task_id for t in first] == [t.task_id for t in second]
    assert len({t.task_id for t in first}) == 3


def test_reordered_lines_keep_their_ids_but_names_follow_lines() -> None:
    forward = parse({"cmd": "a"}, {"cmd": "b"}, {"cmd": "c"})
    backward = parse({"cmd": "c"}, {"cmd": "b"}, {"cmd": "a"})
    by_cmd_fwd = {t.spec.cmd: t for t in forward}
    by_cmd_back = {t.spec.cmd: t for t in backward}
    for cmd in "abc":
        assert by_cmd_fwd[cmd].task_id == by_cmd_back[cmd].task_id
    assert (by_cmd_fwd["a"].name, by_cmd_back["a"].name) == ("1", "3")


def test_blank_lines_inserted_keep_ids() -> None:
    plain = parse({"cmd": "a"}, {"cmd": "b"})
    spaced = parse("", "", {"cmd": "a"}, "   ", {"cmd": "b"})
    assert [t.task_id for t in plain] == [t.task_id for t in spaced]
    assert [t.line for t in spaced] == [3, 5]
    assert [t.name for t in spaced] == ["3", "5"]


def test_identical_lines_collapse_into_one_task() -> None:
    tasks = parse({"cmd": "a"}, {"cmd": "b"}, {"cmd": "a"}, {"cmd": "a"})
    assert [(t.spec.cmd, t.line, t.name) for t in tasks] == [("a", 1, "1"), ("b", 2, "2")]


def test_the_lines_left_out_as_repeats_are_counted() -> None:
    data = jsonl({"cmd": "a"}, {"cmd": "b"}, {"cmd": "a"}, {"cmd": "a", "cpus": 1}, {"cmd": "c"})
    parsed = read(io.BytesIO(data), SRC, JOB, BASE)
    assert [t.spec.cmd for t in parsed.tasks] == ["a", "b", "c"]
    assert parsed.repeats == 2
    lines = read(io.BytesIO(b"echo x\necho x\necho y\n"), SRC, JOB, lines=True)
    assert (len(lines.tasks), lines.repeats) == (2, 1)
    assert read(io.BytesIO(jsonl({"cmd": "a"})), SRC, JOB, BASE).repeats == 0


class Endless(io.RawIOBase):
    """An endless stream of one byte (/dev/zero, or a binary with no line end), counting what
    is read of it."""

    def __init__(self, byte: bytes) -> None:
        self.byte = byte
        self.taken = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = len(buffer) // len(self.byte) * len(self.byte)
        buffer[:size] = self.byte * (size // len(self.byte))
        self.taken += size
        return size


@pytest.mark.parametrize("lines_mode", [False, True])
def test_an_endless_line_stops_the_reading_and_names_its_line(lines_mode: bool) -> None:
    endless = Endless(b"\x00")
    head = io.BytesIO(jsonl({"cmd": "a"}) if not lines_mode else b"echo a\n")
    stream = io.BufferedReader(_Chain(head, endless))
    with pytest.raises(TaskFileError) as info:
        read(stream, SRC, JOB, BASE, lines=lines_mode)
    assert info.value.problems == [
        f"{SRC}:2: the line is longer than 4 MiB, more than any task can be (at most 256 KiB of "
        "text): stopped reading there"
    ]
    assert endless.taken < 2 * LINE_BYTES_MAX  # refused at the bound, not read whole


class _Chain(io.RawIOBase):
    """Two binary streams, one after the other."""

    def __init__(self, *streams: Any) -> None:
        self.streams = list(streams)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self.streams:
            data = self.streams[0].read(len(buffer))
            if data:
                buffer[: len(data)] = data
                return len(data)
            self.streams.pop(0)
        return 0


def test_a_line_of_exactly_the_bound_is_read_as_a_line() -> None:
    # The bound is on the line, not on its end or a BOM: such a line is judged as any other.
    bound = b"x" * LINE_BYTES_MAX
    data = b"\xef\xbb\xbf" + bound + b"\r\n" + bound + b"\n" + bound
    found = problems_of(data, lines_mode=True)
    assert len(found) == 3 and all("longer than 4 MiB" not in f for f in found), found
    assert [f.split(": ")[0] for f in found] == [f"{SRC}:1", f"{SRC}:2", f"{SRC}:3"]
    assert problems_of(bound + b"x\n", lines_mode=True) == [
        f"{SRC}:1: the line is longer than 4 MiB, more than any task can be (at most 256 KiB of "
        "text): stopped reading there"
    ]


def test_random_bytes_are_refused_after_the_problems_bound_not_read_whole() -> None:
    endless = Endless(b"\xff\n")
    stream = io.BufferedReader(endless)
    with pytest.raises(TaskFileError) as info:
        read(stream, SRC, JOB, BASE)
    assert len(info.value.problems) == PROBLEMS_MAX
    assert info.value.problems[-1] == f"{SRC}: stopped reading after {PROBLEMS_MAX - 1} problems"
    assert endless.taken < 1 << 20


def test_lines_meaning_the_same_collapse() -> None:
    tasks = parse(
        {"cmd": "a", "cpus": 1, "memory": "512M"},
        {"cmd": "a", "cpus": 1.0, "memory": 512},
        {"memory": "0.5G", "cmd": "a"},
    )
    assert len(tasks) == 1
    assert tasks[0].line == 1


def test_identical_lines_with_the_same_explicit_name_collapse() -> None:
    tasks = parse({"cmd": "a", "name": "x"}, {"cmd": "a", "name": "x"})
    assert [(t.name, t.line) for t in tasks] == [("x", 1)]


def test_same_command_with_and_without_a_name_are_two_tasks() -> None:
    tasks = parse({"cmd": "a", "name": "x"}, {"cmd": "a"})
    assert [(t.name, t.explicit_name) for t in tasks] == [("x", True), ("2", False)]
    assert tasks[0].task_id != tasks[1].task_id


def test_explicit_names_are_kept_and_ids_depend_on_them() -> None:
    tasks = parse({"cmd": "a", "name": "one"}, {"cmd": "a", "name": "two"})
    assert [t.name for t in tasks] == ["one", "two"]
    assert tasks[0].task_id != tasks[1].task_id


# --- duplicate names -----------------------------------------------------------------------------


def test_duplicate_explicit_names_for_different_tasks_name_both_lines() -> None:
    found = problems({"cmd": "a", "name": "x"}, {"cmd": "b"}, {"cmd": "c", "name": "x"})
    assert len(found) == 1, found
    assert found[0].startswith(f"{SRC}:3: name: 'x'"), found
    assert "line 1" in found[0]
    assert "different task" in found[0]


def test_explicit_name_clashing_with_a_later_default_name() -> None:
    found = problems({"cmd": "a", "name": "2"}, {"cmd": "b"})
    assert found == [f"{SRC}:2: name: '2' is already the name of line 1, a different task"]


def test_explicit_name_clashing_with_an_earlier_default_name() -> None:
    found = problems({"cmd": "a"}, {"cmd": "b", "name": "1"})
    assert found == [f"{SRC}:2: name: '1' is already the name of line 1, a different task"]


def test_every_duplicate_name_is_reported() -> None:
    found = problems(
        {"cmd": "a", "name": "x"}, {"cmd": "b", "name": "x"}, {"cmd": "c", "name": "x"}
    )
    assert [p.split(": name:")[0] for p in found] == [f"{SRC}:2", f"{SRC}:3"]
    assert all("line 1" in p for p in found)


# --- line handling: blank lines, CRLF, UTF-8 -----------------------------------------------------


def test_blank_and_whitespace_lines_are_skipped_and_numbers_kept() -> None:
    data = b'\n  \n\t\n{"cmd": "a"}\n\n{"cmd": "b"}\n   \n'
    tasks = parse_jsonl(data, SRC, JOB, BASE)
    assert [(t.spec.cmd, t.line, t.name) for t in tasks] == [("a", 4, "4"), ("b", 6, "6")]


def test_no_final_newline() -> None:
    tasks = parse_jsonl(b'{"cmd": "a"}\n{"cmd": "b"}', SRC, JOB, BASE)
    assert [t.spec.cmd for t in tasks] == ["a", "b"]


def test_crlf_line_endings() -> None:
    crlf = parse_jsonl(b'{"cmd": "a"}\r\n\r\n{"cmd": "b"}\r\n', SRC, JOB, BASE)
    lf = parse_jsonl(b'{"cmd": "a"}\n\n{"cmd": "b"}\n', SRC, JOB, BASE)
    assert [(t.spec.cmd, t.line) for t in crlf] == [("a", 1), ("b", 3)]
    assert [t.task_id for t in crlf] == [t.task_id for t in lf]


def test_crlf_error_names_the_right_line() -> None:
    found = problems_of(b'{"cmd": "a"}\r\n\r\n{"cmd": 5}\r\n')
    assert found == [f"{SRC}:3: cmd: must be a non-empty string"]


def test_invalid_utf8_is_reported_with_its_line() -> None:
    found = problems_of(b'{"cmd": "a"}\n{"cmd": "caf\xe9"}\n{"cmd": "b"}\n')
    assert len(found) == 1, found
    assert found[0].startswith(f"{SRC}:2: ")
    assert "not valid UTF-8" in found[0]
    assert "byte 12" in found[0]


def test_invalid_utf8_in_lines_mode() -> None:
    found = problems_of(b"echo a\necho \xff\xfe\n", lines_mode=True)
    assert found == [f"{SRC}:2: not valid UTF-8 (byte 5)"]


def test_unicode_passes_through() -> None:
    task = one({"cmd": "echo 日本語 🎉 café", "name": "名前", "env": {"GREETING": "héllo"}})
    assert task.spec.cmd == "echo 日本語 🎉 café"
    assert task.name == "名前"
    raw = '{"cmd": "echo 日本語 🎉"}'.encode()
    assert parse_jsonl(raw + b"\n", SRC, JOB, BASE)[0].spec.cmd == "echo 日本語 🎉"


# --- all problems collected; nothing added -------------------------------------------------------


def test_three_bad_lines_give_three_messages_in_order() -> None:
    found = problems(
        {"cmd": "good 1"},
        {"cmd": "a", "cpus": -1},
        {"cmd": "good 2"},
        "not json",
        {"cmd": "a", "wat": 1},
        {"cmd": "good 3"},
    )
    assert len(found) == 3, found
    assert found[0].startswith(f"{SRC}:2: cpus: ")
    assert found[1].startswith(f"{SRC}:4: json: ")
    assert found[2].startswith(f"{SRC}:5: wat: unknown key")


def test_utf8_json_and_name_problems_are_all_collected() -> None:
    data = (
        b'{"cmd": "a", "name": "n"}\n'
        b'{"cmd": "\xff"}\n'
        b'{"cmd": "b", "name": "n"}\n'
        b'{"cmd": "c", "gpus": -1}\n'
    )
    found = problems_of(data)
    assert [p.split(": ")[0] for p in found] == [f"{SRC}:2", f"{SRC}:3", f"{SRC}:4"]


def test_one_problem_per_line_even_with_several_bad_fields() -> None:
    found = problems({"cmd": "a", "cpus": -1, "gpus": -1, "retries": -1})
    assert len(found) == 1


def test_error_message_is_truncated_after_twenty_but_problems_kept() -> None:
    data = jsonl(*[{"cmd": "a", "cpus": 0, "name": str(i)} for i in range(25)])
    with pytest.raises(TaskFileError) as info:
        parse_jsonl(data, SRC, JOB, BASE)
    assert len(info.value.problems) == 25
    text = str(info.value)
    assert f"{SRC}:20: cpus:" in text
    assert f"{SRC}:21: cpus:" not in text
    assert "... and 5 more" in text


@pytest.mark.parametrize("data", [b"", b"\n", b"\n  \n\t\r\n", b"\r\n"])
def test_empty_file_is_an_error(data: bytes) -> None:
    assert problems_of(data) == [f"{SRC}: no tasks (the file is empty)"]
    assert problems_of(data, lines_mode=True) == [f"{SRC}: no tasks (the file is empty)"]


# --- cwd -----------------------------------------------------------------------------------------


def test_relative_cwd_follows_the_files_directory() -> None:
    a = one({"cmd": "a", "cwd": "work"}, base=Path("/one"))
    b = one({"cmd": "a", "cwd": "work"}, base=Path("/two"))
    assert (a.spec.cwd, b.spec.cwd) == ("/one/work", "/two/work")
    assert a.task_id != b.task_id


def test_absolute_cwd_does_not_depend_on_the_files_directory() -> None:
    a = one({"cmd": "a", "cwd": "/srv/work"}, base=Path("/one"))
    b = one({"cmd": "a", "cwd": "/srv/work"}, base=Path("/two"))
    assert a.spec.cwd == b.spec.cwd == "/srv/work"
    assert a.task_id == b.task_id


def test_no_cwd_does_not_depend_on_the_files_directory() -> None:
    assert tid({"cmd": "a"}, base=Path("/one")) == tid({"cmd": "a"}, base=Path("/two"))


# --- --lines -------------------------------------------------------------------------------------

TRICKY_COMMANDS = [
    'echo "hello world"',
    "echo 'single quotes'",
    """echo "mixed 'quotes'" 'and "more"'""",
    "echo $HOME ${PATH} $(date) `id`",
    "ls | wc -l && echo ok || echo bad; true &",
    "printf '%s\\n' \\\\ \\t \\n",
    "echo back\\slash\\\\double",
    "echo tab\there\tand\tthere",
    "  leading and trailing spaces  ",
    "echo héllo 日本語 🎉 \u200b",
    "echo {} {1} % %% #notacomment",
    "echo 'a\rb'",
    'echo \'{"cmd": "json-looking"}\'',
    "x" * 10000,
]


def test_lines_mode_keeps_every_command_exactly() -> None:
    data = "\n".join(TRICKY_COMMANDS).encode("utf-8") + b"\n"
    tasks = parse_lines(data, SRC, JOB)
    assert [t.spec.cmd for t in tasks] == TRICKY_COMMANDS
    assert [t.line for t in tasks] == list(range(1, len(TRICKY_COMMANDS) + 1))
    assert [t.name for t in tasks] == [str(n) for n in range(1, len(TRICKY_COMMANDS) + 1)]
    for task in tasks:
        assert task.spec.argv is None
        assert task.explicit_name is False
        assert task.spec.need.cpus == DEFAULT_CPUS
        assert task.spec.need.memory_bytes == DEFAULT_MEMORY_BYTES
        assert task.spec.need.gpus == 0
        assert task.spec.retries == DEFAULT_RETRIES
        assert task.spec.cwd is None


def test_lines_mode_blank_lines_crlf_and_duplicates() -> None:
    data = b"echo a\r\n\r\n   \necho b\r\necho a\r\necho a\n"
    tasks = parse_lines(data, SRC, JOB)
    assert [(t.spec.cmd, t.line) for t in tasks] == [("echo a", 1), ("echo b", 4)]


def test_lines_mode_json_is_just_a_command() -> None:
    task = parse_lines(b'{"cmd": "a", "cpus": 4}\n', SRC, JOB)[0]
    assert task.spec.cmd == '{"cmd": "a", "cpus": 4}'
    assert task.spec.need.cpus == 1.0


def test_lines_mode_nul_byte_is_an_error() -> None:
    found = problems_of(b"echo a\necho \x00 b\necho c\x00\n", lines_mode=True)
    assert found == [f"{SRC}:2: cmd: contains a NUL byte", f"{SRC}:3: cmd: contains a NUL byte"]


def test_lines_and_jsonl_give_the_same_id_for_the_same_command() -> None:
    cmd = "echo 'a b' $X"
    from_lines = parse_lines(cmd.encode() + b"\n", SRC, JOB)[0]
    from_json = one({"cmd": cmd})
    assert from_lines.spec == from_json.spec
    assert from_lines.task_id == from_json.task_id


# --- Hypothesis: commands round-trip -------------------------------------------------------------

_line_commands = st.text(min_size=1).filter(
    lambda s: "\x00" not in s and "\n" not in s and not s.endswith("\r") and s.strip() != ""
)
_json_commands = st.text(min_size=1).filter(lambda s: "\x00" not in s and s.strip() != "")


@settings(max_examples=300, database=None)
@given(_line_commands)
def test_any_command_round_trips_through_lines(cmd: str) -> None:
    tasks = parse_lines(cmd.encode("utf-8") + b"\n", SRC, JOB)
    assert len(tasks) == 1
    assert tasks[0].spec.cmd == cmd


@settings(max_examples=300, database=None)
@given(_json_commands, st.booleans())
def test_any_command_round_trips_through_jsonl(cmd: str, ensure_ascii: bool) -> None:
    data = json.dumps({"cmd": cmd}, ensure_ascii=ensure_ascii).encode("utf-8")
    tasks = parse_jsonl(data, SRC, JOB, BASE)
    assert len(tasks) == 1
    assert tasks[0].spec.cmd == cmd
    assert tasks[0].spec.command_text() == cmd


@settings(max_examples=100, database=None)
@given(st.lists(_json_commands, min_size=1, max_size=8))
def test_reparse_and_shuffle_keep_ids(cmds: list[str]) -> None:
    forward = jsonl(*[{"cmd": c} for c in cmds])
    backward = jsonl(*[{"cmd": c} for c in reversed(cmds)])
    ids_fwd = {t.task_id for t in parse_jsonl(forward, SRC, JOB, BASE)}
    assert ids_fwd == {t.task_id for t in parse_jsonl(forward, SRC, JOB, BASE)}
    assert ids_fwd == {t.task_id for t in parse_jsonl(backward, SRC, JOB, BASE)}
    assert len(ids_fwd) == len(set(cmds))


# --- bugs found: each shows the contract and is expected to fail until fixed ---------------------


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"cmd": "echo \\ud800"}', "cmd"),
        ('{"cmd": "a", "name": "\\udc80"}', "name"),
        ('{"cmd": "a", "env": {"A": "\\ud800"}}', "env"),
    ],
    ids=["cmd", "name", "env"],
)
def test_lone_surrogate_is_a_located_error(line: str, field: str) -> None:
    found = problems({"cmd": "good"}, line)
    assert len(found) == 1
    assert found[0].startswith(f"{SRC}:2: {field}: ")


def test_deeply_nested_json_is_a_located_error() -> None:
    deep = '{"cmd": "a", "requires": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    found = problems({"cmd": "good"}, deep)
    assert len(found) == 1
    assert found[0].startswith(f"{SRC}:2: ")


def test_huge_integer_literal_is_a_located_error() -> None:
    found = problems({"cmd": "good"}, '{"cmd": "a", "priority": ' + "9" * 5000 + "}")
    assert len(found) == 1
    assert found[0].startswith(f"{SRC}:2: ")


@pytest.mark.parametrize("field", ["cpus", "timeout"])
def test_integer_too_large_for_a_float_is_a_located_error(field: str) -> None:
    line = f'{{"cmd": "a", "{field}": 1{"0" * 400}}}'
    found = problems({"cmd": "good"}, line)
    assert len(found) == 1
    assert found[0].startswith(f"{SRC}:2: {field}: ")


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"cmd": "a", "env": {"A": "1", "A": "2"}}', "env"),
        ('{"cmd": "a", "requires": {"zone": "eu", "zone": "us"}}', "requires"),
    ],
    ids=["env", "requires"],
)
def test_duplicate_key_inside_an_object_names_the_field(line: str, field: str) -> None:
    assert the_problem(line).startswith(f"{SRC}:1: {field}: ")


def test_problems_are_bounded() -> None:
    data = jsonl(*[{"cmd": 1}] * (PROBLEMS_MAX + 500))
    found = problems_of(data)
    assert len(found) <= PROBLEMS_MAX
