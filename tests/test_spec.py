"""A spec error carries the field it is about as an attribute, not only inside its message."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from swarm.core.spec import (
    ARG_BYTES_MAX,
    PyCall,
    Resources,
    TaskSpec,
    check,
    shared_resources,
    task_id,
)
from swarm.errors import SpecError, UserError

GOOD = TaskSpec(cmd="true", argv=None, need=Resources(1.0, 1 << 20))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (replace(GOOD, cmd=None), "cmd"),
        (replace(GOOD, cmd=None, argv=("",)), "argv"),
        (replace(GOOD, need=Resources(0.0, 1 << 20)), "cpus"),
        (replace(GOOD, need=Resources(1.0, 0)), "memory"),
        (replace(GOOD, need=Resources(1.0, 1 << 20, -1)), "gpus"),
        (replace(GOOD, retries=-1), "retries"),
        (replace(GOOD, retry_backoff_s=-1.0), "retry_backoff"),
        (replace(GOOD, retry_backoff_s=1e9), "retry_backoff"),
        (replace(GOOD, timeout_s=0.0), "timeout"),
        (replace(GOOD, cwd="relative"), "cwd"),
        (replace(GOOD, env=(("A=B", "x"),)), "env"),
        (replace(GOOD, requires=(("n", ">=x"),)), "requires"),
        (replace(GOOD, outputs=("../up",)), "outputs"),
        (replace(GOOD, cmd="x" * (ARG_BYTES_MAX + 1)), "cmd"),
    ],
)
def test_check_names_the_field_as_an_attribute(spec: TaskSpec, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        check(spec)
    assert caught.value.field == field
    assert str(caught.value) == f"{field}: {caught.value.problem}"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"cmd": "true", "cpus": "1", "memory": 1}, "cpus"),
        ({"cmd": "true", "cpus": 1.0, "memory": 1.5}, "memory"),
        ({"cmd": "true", "cpus": 1.0, "memory": 1, "retries": True}, "retries"),
        ({"cmd": "true", "cpus": 1.0, "memory": 1, "env": []}, "env"),
        ({"cmd": "true", "cpus": 1.0, "memory": 1, "requires": 5}, "requires"),
        ({"argv": "true", "cpus": 1.0, "memory": 1}, "argv"),
        ({"cmd": "true", "cpus": 1.0, "memory": 1, "colour": "red"}, "spec"),
        ("true", "spec"),
    ],
)
def test_from_wire_names_the_field_as_an_attribute(raw: Any, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        TaskSpec.from_wire(raw)
    assert caught.value.field == field


def test_a_spec_error_is_a_user_error_and_a_value_error() -> None:
    # Readers of peers' records and of the ledger file refuse any ValueError as bad data.
    with pytest.raises(ValueError):
        TaskSpec.from_wire({"cmd": "", "cpus": 1.0, "memory": 1})
    with pytest.raises(UserError):
        TaskSpec.from_wire({"cmd": "", "cpus": 1.0, "memory": 1})


FN = "ab" * 32
CALL = PyCall(FN, "", "fits.fit_enet", "3.11", "gAWVBQAAAAAAAAA=")
CALL_SPEC = TaskSpec(cmd=None, argv=None, need=Resources(1.0, 1 << 20), retries=0, call=CALL)


def test_a_python_call_round_trips_and_names_its_function() -> None:
    by_digest = replace(CALL_SPEC, call=PyCall(FN, "cd" * 32, "m.f", "3.12"))
    for spec in (CALL_SPEC, by_digest):
        assert TaskSpec.from_wire(spec.to_wire()) == spec
    assert CALL_SPEC.command_text() == "python: fits.fit_enet"
    assert task_id("j", CALL_SPEC, None) != task_id("j", by_digest, None)


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        ({**CALL.to_wire(), "fn": "AB" * 32}, "fn must be a sha256 digest"),
        ({**CALL.to_wire(), "fn": "../etc/passwd"}, "fn must be a sha256 digest"),
        ({**CALL.to_wire(), "args": FN}, "not both"),  # a digest and inline arguments
        ({**CALL.to_wire(), "inline": ""}, "args must be"),  # neither
        ({**CALL.to_wire(), "inline": "not base64!"}, "args must be"),
        ({**CALL.to_wire(), "inline": "A" * 5000}, "inline arguments over"),
        ({**CALL.to_wire(), "python": "three"}, "python must be a version"),
        ({**CALL.to_wire(), "name": ""}, "name must be a string"),
        ({**CALL.to_wire(), "extra": 1}, "has keys other than"),
        ({"fn": FN}, "must be a map of"),
    ],
)
def test_a_bad_call_is_refused_naming_what(call: dict[str, Any], fragment: str) -> None:
    raw = {**CALL_SPEC.to_wire(), "call": call}
    with pytest.raises(SpecError) as caught:
        TaskSpec.from_wire(raw)
    assert caught.value.field == "call" and fragment in str(caught.value), caught.value


def test_a_call_is_neither_a_command_nor_has_outputs() -> None:
    with pytest.raises(SpecError, match="exactly one"):
        check(replace(CALL_SPEC, cmd="true"))
    with pytest.raises(SpecError, match="declares no outputs"):
        check(replace(CALL_SPEC, outputs=("*.txt",)))


def test_a_retry_waits_its_backoff_doubled_per_failure_and_capped() -> None:
    assert [GOOD.retry_wait_s(n) for n in range(5)] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert GOOD.retry_wait_s(200) == 600.0
    assert replace(GOOD, retry_backoff_s=0.0).retry_wait_s(3) == 0.0
    slow = replace(GOOD, retry_backoff_s=30.0)
    assert TaskSpec.from_wire(slow.to_wire()) == slow
    assert "retry_backoff" not in GOOD.to_wire()  # the default leaves ids as they were


@pytest.mark.parametrize(
    "raw",
    [
        {"cmd": "echo 1", "cpus": 1.0, "memory": 1 << 20},
        {"cmd": "echo 1", "cpus": 2, "memory": 1 << 20},
        {"cmd": "", "cpus": 1.0, "memory": 1 << 20},
        {"cmd": "a\x00b", "cpus": 1.0, "memory": 1 << 20},
        {"cmd": "true", "cpus": 0.0, "memory": 1 << 20},
        {"cmd": "true", "cpus": float("nan"), "memory": 1 << 20},
        {"cmd": "true", "cpus": 1.0, "memory": 0},
        {"cmd": "true", "cpus": True, "memory": 1 << 20},
        {"cmd": "true", "memory": 1 << 20},
        {"cmd": 5, "cpus": 1.0, "memory": 1 << 20},
        {"cmd": "x" * (ARG_BYTES_MAX + 1), "cpus": 1.0, "memory": 1 << 20},
        {"cmd": "é" * (ARG_BYTES_MAX // 2 + 1), "cpus": 1.0, "memory": 1 << 20},
        {"cmd": " \t ", "cpus": 1.0, "memory": 1 << 20},
        {"cmd": "true", "cpus": 5000.0, "memory": 1 << 20},
        {"cmd": "true", "cpus": 1.0, "memory": 1 << 63},
        {"cmd": "true", "cpus": 1.0, "memory": 1.5},
    ],
)
def test_a_plain_command_spec_is_checked_as_strictly_as_any_other(raw: dict[str, Any]) -> None:
    """The short way for a spec of a command and its needs gives the same spec, or the same
    error, as the whole way (taken here because a default is spelled out)."""
    whole = {**raw, "gpus": 0}
    try:
        expected: TaskSpec | str = TaskSpec.from_wire(whole)
    except SpecError as exc:
        expected = str(exc)
    try:
        got: TaskSpec | str = TaskSpec.from_wire(raw)
    except SpecError as exc:
        got = str(exc)
    assert got == expected


def test_specs_of_one_need_share_one_resources_object() -> None:
    a = TaskSpec.from_wire({"cmd": "echo a", "cpus": 1.0, "memory": 1 << 20})
    b = TaskSpec.from_wire({"cmd": "echo b", "cpus": 1, "memory": 1 << 20, "gpus": 0})
    assert a.need is b.need and a.need == Resources(1.0, 1 << 20)


def _task_id_by_json(job: str, spec: TaskSpec, explicit_name: str | None) -> str:
    """The task id as its contract defines it: sha256 of json.dumps of the job and the spec."""
    body: dict[str, Any] = {"job": job, "spec": spec.to_wire()}
    if explicit_name is not None:
        body["name"] = explicit_name
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)


@settings(max_examples=300, database=None)
@given(
    _texts,
    _texts,
    st.floats(min_value=1e-9, max_value=4096.0),
    st.integers(min_value=1, max_value=2**63 - 1),
    st.none() | _texts,
)
def test_the_id_of_a_command_spec_is_the_hash_of_its_json(
    job: str, cmd: str, cpus: float, memory: int, name: str | None
) -> None:
    """A spec of a command and its need has its id text written out directly, not by
    json.dumps: the id must be the same, for every string json escapes and every number."""
    spec = TaskSpec(cmd, None, shared_resources(cpus, memory, 0))
    assert task_id(job, spec, name) == _task_id_by_json(job, spec, name)


@pytest.mark.parametrize(
    "spec",
    [
        TaskSpec("echo", None, Resources(1.0, 1 << 20, 1)),
        TaskSpec("echo", None, Resources(2, 1 << 20)),
        TaskSpec(None, ("echo", "a"), Resources(1.0, 1 << 20)),
        TaskSpec("echo", None, Resources(1.0, 1 << 20), priority=3),
    ],
)
def test_the_id_of_any_other_spec_is_the_hash_of_its_json(spec: TaskSpec) -> None:
    assert task_id("j", spec, "n") == _task_id_by_json("j", spec, "n")
    assert task_id("j", spec, None) == _task_id_by_json("j", spec, None)


def test_a_command_spec_read_from_a_record_is_the_spec_the_dataclass_makes() -> None:
    """A command spec is made past the dataclass's __init__ (at half its cost): every field
    is set, to the same values, and it hashes and compares as one made the usual way."""
    need = Resources(2.0, 1 << 30)
    read = TaskSpec.from_wire({"cmd": "echo hi", "cpus": 2.0, "memory": 1 << 30})
    made = TaskSpec("echo hi", None, need)
    assert type(read) is TaskSpec
    assert read == made and hash(read) == hash(made) and repr(read) == repr(made)
    with pytest.raises(AttributeError):
        read.cmd = "rm -rf ~"  # type: ignore[misc]  # still frozen


_numbers = (
    st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.sampled_from([True, False, None, "1", -0.0, 5e-324, 4096.0, 2**63 - 1, 2**63])
)


@settings(max_examples=500, database=None)
@given(
    st.text() | st.sampled_from(["", " \t", "a\x00b", "é" * (ARG_BYTES_MAX // 2 + 1)]) | _numbers,
    st.none() | _numbers,
    st.none() | _numbers,
)
@example(cmd=None, cpus=1.0, memory=1 << 20)  # a command of null: "exactly one of cmd and argv"
def test_any_plain_command_spec_is_read_as_the_whole_way_reads_it(
    cmd: Any, cpus: Any, memory: Any
) -> None:
    """The short way (a command and its need, checked by the rules those can break) gives
    the same spec, or the same error, as the whole way, for any values."""
    raw = {"cmd": cmd} | ({} if cpus is None else {"cpus": cpus})
    raw |= {} if memory is None else {"memory": memory}

    def read(raw: dict[str, Any]) -> TaskSpec | str:
        try:
            return TaskSpec.from_wire(raw)
        except SpecError as exc:
            return str(exc)

    assert read(raw) == read({**raw, "gpus": 0})
