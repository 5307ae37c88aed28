"""A spec error carries the field it is about as an attribute, not only inside its message."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from swarm.core.spec import ARG_BYTES_MAX, Resources, TaskSpec, check
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
