"""The Python API's parts that need no node: naming and content-addressing calls, options,
serial mode, outcomes and their exceptions. (tests/integration/test_python.py runs it all for
real.)"""

from __future__ import annotations

import concurrent.futures as cf
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest

from swarm import CallLostError, RemoteCallError, SwarmExecutor, pycall
from swarm.cli import api, outcomes
from swarm.control import EndedTask
from swarm.core.spec import INLINE_ARGS_BYTES_MAX, TaskSpec
from swarm.daemon.store import BlobStore
from swarm.errors import SizeError, UserError


def square(x: int) -> int:
    return x * x


class Grumpy(Exception):
    """An exception that pickles but does not unpickle (it needs two arguments)."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def test_a_call_is_named_by_its_content_and_its_job() -> None:
    options = api.Options()
    one = api._prepare("j", square, (3,), {}, options, 0)
    again = api._prepare("j", square, (3,), {}, options, 7)
    other_args = api._prepare("j", square, (4,), {}, options, 1)
    other_job = api._prepare("k", square, (3,), {}, options, 0)
    assert one.task_id == again.task_id  # the same call: one task, whatever its place
    assert len({one.task_id, other_args.task_id, other_job.task_id}) == 3
    assert one.name == f"square-0-{one.task_id[:8]}" and again.name.startswith("square-7-")
    assert TaskSpec.from_wire(one.spec.to_wire()) == one.spec  # what the node will check
    assert one.spec.retries == 0 and one.spec.command_text() == "python: tests.test_api.square"


def test_small_arguments_travel_in_the_spec_and_large_ones_as_a_blob() -> None:
    small = api._prepare("j", len, ("x" * 10,), {}, api.Options(), 0)
    large = api._prepare("j", len, ("x" * (INLINE_ARGS_BYTES_MAX + 1),), {}, api.Options(), 1)
    assert small.spec.call is not None and small.spec.call.inline and not small.spec.call.args
    assert set(small.blobs) == {small.spec.call.fn}
    assert large.spec.call is not None and large.spec.call.args and not large.spec.call.inline
    assert set(large.blobs) == {large.spec.call.fn, large.spec.call.args}
    fn = pickle.loads(large.blobs[large.spec.call.fn])
    args, kwargs = pickle.loads(large.blobs[large.spec.call.args])
    assert fn(*args, **kwargs) == INLINE_ARGS_BYTES_MAX + 1


def test_options_make_a_view_with_the_calls_needs_and_refuse_what_no_task_could_ask() -> None:
    ex = SwarmExecutor(job="opts", serial=True)
    view = ex.options(cpus=2, memory="4G", gpus=1, requires={"zone": "eu"}, timeout=60, retries=1)
    call = api._prepare("opts", square, (1,), {}, view._options, 0)
    need = call.spec.need
    assert (need.cpus, need.memory_bytes, need.gpus) == (2.0, 4 << 30, 1)
    assert call.spec.requires == (("zone", "eu"),)
    assert (call.spec.timeout_s, call.spec.retries) == (60.0, 1)
    assert ex._options == api.Options()  # the executor itself is unchanged
    with pytest.raises(SizeError):
        ex.options(memory="lots")
    with pytest.raises(UserError):
        ex.options(cpus=-1)
    with pytest.raises(UserError):
        SwarmExecutor(job="no/slash", serial=True)


def test_serial_mode_runs_inline_with_the_same_values_and_exceptions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SWARM_SERIAL", "1")
    with SwarmExecutor(job="inline") as ex:
        assert ex.serial
        assert list(ex.map(square, range(5))) == [0, 1, 4, 9, 16]
        assert list(ex.map(square, range(5), chunksize=2)) == [0, 1, 4, 9, 16]
        failed = ex.submit(divmod, 1, 0)
        assert isinstance(failed.exception(), ZeroDivisionError)
        assert [f.result() for f in cf.as_completed([ex.submit(square, 3)])] == [9]
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)


def test_the_default_job_is_the_scripts_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/home/me/fits.py", "--fast"])
    assert api.default_job() == "fits"
    monkeypatch.setattr(sys, "argv", ["-c"])
    assert api.default_job() == "python"


def ended(**fields: Any) -> EndedTask:
    base: EndedTask = {
        "task_id": "ab" * 32, "state": "done", "outcome": "ok", "reason": "",
        "node": "cd" * 32, "exit_code": 0, "evicted": False, "value": None, "inline": b"",
    }  # fmt: skip
    return {**base, **fields}  # type: ignore[typeddict-item]


def test_an_outcome_gives_the_value_or_raises_the_calls_own_exception(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    assert outcomes.outcome_of(store, ended(inline=pycall.returned([1, 2]))) == [1, 2]
    digest, _ = store.put_bytes(pycall.returned("in a blob"))
    assert outcomes.outcome_of(store, ended(value=digest)) == "in a blob"
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError as exc:
        raised = pycall.raised(exc)
    failed = ended(state="failed", outcome="failed", inline=raised)
    with pytest.raises(ZeroDivisionError) as caught:
        outcomes.outcome_of(store, failed)
    notes = "\n".join(caught.value.__notes__)
    assert "the call raised this on node cdcdcdcd" in notes and "1 / 0" in notes


def test_an_exception_that_cannot_be_unpickled_arrives_as_a_remote_call_error(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path / "blobs")
    failed = ended(state="failed", outcome="failed", inline=pycall.raised(Grumpy("a", "b")))
    with pytest.raises(RemoteCallError) as caught:
        outcomes.outcome_of(store, failed)
    assert caught.value.type_name.endswith("Grumpy") and caught.value.text == "a/b"


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"state": "cancelled", "outcome": ""}, "cancelled"),
        ({"state": "failed", "outcome": "timeout", "reason": "timed out after 5s"}, "timeout"),
        ({"state": "failed", "outcome": "interrupted", "reason": "node died"}, "interrupted"),
        ({"state": "failed", "outcome": "interrupted", "evicted": True}, "evicted"),
    ],
)
def test_a_call_lost_for_a_swarm_reason_says_which(
    tmp_path: Path, fields: dict[str, Any], why: str
) -> None:
    with pytest.raises(CallLostError) as caught:
        outcomes.outcome_of(BlobStore(tmp_path / "blobs"), ended(**fields))
    assert caught.value.why == why


def test_an_outcome_that_is_not_one_is_refused_saying_so() -> None:
    with pytest.raises(pycall.OutcomeError, match="not one swarm wrote"):
        pycall.read_outcome(pickle.dumps(("something", "else")))
    with pytest.raises(pycall.OutcomeError, match="cannot be unpickled"):
        pycall.read_outcome(b"not a pickle")


def test_a_users_own_module_is_one_beside_the_script_not_an_installed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mine_here.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import mine_here  # type: ignore[import-not-found]

    assert pycall.users_own(mine_here)
    assert not pycall.users_own(pytest)  # installed
    assert not pycall.users_own(api)  # swarm itself: on every node


def test_a_worker_count_is_taken_and_ignored_and_a_number_is_no_job() -> None:
    with SwarmExecutor(job="drop-in", serial=True, max_workers=4) as ex:
        assert ex.submit(square, 3).result() == 9
    with pytest.raises(TypeError, match="no worker count"):
        SwarmExecutor(2, serial=True)  # type: ignore[arg-type]


def test_the_api_is_listed_in_the_package() -> None:
    import swarm

    assert {"SwarmExecutor", "results", "CallLostError", "RemoteCallError"} <= set(dir(swarm))


def test_inside_a_task_calls_run_serially_unless_a_node_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SWARM_SERIAL", raising=False)
    monkeypatch.delenv("SWARM_TASK_ID", raising=False)
    assert not api._serial_by_default(None, None)  # a script of its own: on the swarm
    monkeypatch.setenv("SWARM_TASK_ID", "ab" * 32)  # inside a task
    assert api._serial_by_default(None, None)
    assert SwarmExecutor(job="inner").serial
    assert not api._serial_by_default("/srv/home", None)
    assert not api._serial_by_default(None, "10.0.0.5:7946")
    monkeypatch.setenv("SWARM_SERIAL", "0")
    assert not api._serial_by_default(None, None)
    monkeypatch.setenv("SWARM_SERIAL", "1")
    monkeypatch.delenv("SWARM_TASK_ID")
    assert api._serial_by_default(None, None)
