"""The control protocol as a table: every operation, through the real client and the real server
over a socket pair, with a node that records what it was asked. Each op: a good request is served
with a reply of its contract's type, a bad field is answered naming it, an unknown op is refused;
the connection goes on after each refusal."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, NotRequired, Required

import pytest

from swarm import control
from swarm.connection import Client, StreamChannel, checked_reply
from swarm.control import (
    REQUEST_FIELDS,
    Contract,
    request_problem,
    submit_frame_problem,
)
from swarm.core import snapshot
from swarm.core.ledger import Ledger, Version
from swarm.core.requests import CheckedTask
from swarm.core.spec import Resources, TaskSpec, task_id
from swarm.daemon.control_server import OPERATIONS, ControlServer
from swarm.daemon.watches import Watch
from swarm.errors import ControlError, UserError

NODE_ID = "f00d" + "0" * 60
JOB = "sweep"
SPEC = TaskSpec(cmd="true", argv=None, need=Resources(1.0, 1 << 20))
TASK: control.SubmittedTask = {
    "task_id": task_id(JOB, SPEC, None),
    "name": "1",
    "explicit_name": False,
    "spec": SPEC.to_wire(),
    "line": 1,
}
NODE_ROW: snapshot.NodeRow = {
    "id": NODE_ID,
    "state": "alive",
    "pid": 1,
    "data_dir": "/tmp/swarm",
    "labels": {"zone": "eu"},
    "capacity": snapshot.resources_dict(Resources(4.0, 1 << 30, 0)),
    "used": snapshot.resources_dict(Resources(0.0, 0, 0)),
    "running": 0,
    "started_ms": 1,
}


class FakeNode:
    """A node for the control server (control_server.NodeControl) that records its calls."""

    node_id = NODE_ID
    net = None
    forged_records = bad_records = refused_records = stamps_ahead = refused_tasks = gap_pulls = 0

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.changes = 7

    async def wait_for_change(self, seen: int, timeout_s: float) -> None:
        self.calls.append(("wait_for_change", seen, timeout_s))

    async def snapshot(self, jobs: list[str] | None = None) -> snapshot.Snapshot:
        self.calls.append(("snapshot", jobs))
        return snapshot.build(Ledger(), 1_000, self.members(), jobs)

    def members(self) -> list[snapshot.NodeRow]:
        return [NODE_ROW]

    def has_job(self, job: str) -> bool:
        return job == JOB

    async def add_tasks(
        self, job: str, tasks: list[CheckedTask], rerun_failed: bool = False
    ) -> int:
        self.calls.append(("add_tasks", job, [t.task_id for t in tasks]))
        return len(tasks)

    async def put_blob(self, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        data = b"".join([chunk async for chunk in chunks])
        self.calls.append(("put_blob", data))
        return hashlib.sha256(data).hexdigest(), len(data)

    def watch(self, watch: Watch, task_ids: list[str]) -> list[str]:
        self.calls.append(("watch", task_ids))
        for task in task_ids:
            if task == TASK["task_id"]:
                watch.saw_end(task)
        return [t for t in task_ids if t != TASK["task_id"]]

    def unwatch(self, watch: Watch) -> None:
        self.calls.append(("unwatch",))

    async def logs(self, target: str, number: int | None) -> control.LogsReply:
        self.calls.append(("logs", target, number))
        return {
            "ok": True, "task_id": TASK["task_id"], "job": JOB, "name": "1", "state": "done",
            "attempt": 1, "node": NODE_ID, "outcome": "ok", "stdout": None, "stderr": None,
            "running_on": "", "running_attempt": 0, "run_dir": None,
        }  # fmt: skip

    def unfit(self, specs: list[TaskSpec]) -> dict[str, int]:
        return {}

    async def read_records(
        self, after: Version | None, rows_max: int, bytes_max: int
    ) -> tuple[list[list[Any]], bool]:
        self.calls.append(("read_records", after))
        return [[NODE_ID, 1, 1, b"body"]], True

    async def read_blob(self, digest: str, offset: int, size_max: int) -> tuple[bytes, int]:
        self.calls.append(("read_blob", digest, offset))
        return b"data", 10

    def why(self, target: str) -> control.WhyReply:
        self.calls.append(("why", target))
        return {
            "ok": True, "task_id": TASK["task_id"], "job": JOB, "name": "1", "state": "pending",
            "reasons": ["it waits for a free slot"],
        }  # fmt: skip

    async def ended(self, task: str) -> control.EndedTask | None:
        return {
            "task_id": task, "state": "done", "outcome": "ok", "reason": "", "node": NODE_ID,
            "exit_code": 0, "evicted": False, "value": None, "inline": b"",
        }  # fmt: skip

    async def cancel(self, target: str) -> tuple[Literal["job", "task"], str]:
        self.calls.append(("cancel", target))
        return "job", target

    async def retry(self, job: str) -> int:
        self.calls.append(("retry", job))
        return 2

    async def fetch_results(self, job: str) -> dict[str, int]:
        self.calls.append(("fetch_results", job))
        return {"fetched": 3, "missing": 1}

    def reload_keys(self) -> str:
        self.calls.append(("reload_keys",))
        return "0a1b2c3d"

    async def join_peers(self, peers: list[str]) -> list[str]:
        self.calls.append(("join_peers", peers))
        return []

    def stop(self) -> None:
        self.calls.append(("stop",))

    async def drain_request(
        self, node_prefix: str | None, grace_s: float | None
    ) -> tuple[str, int | None]:
        self.calls.append(("drain_request", node_prefix, grace_s))
        return NODE_ID, 0


Ask = Callable[[Client], Awaitable[Any]]

# op -> (the typed call the CLI makes, what the node must have been asked)
GOOD: dict[str, tuple[Ask, tuple[Any, ...] | None]] = {
    "ping": (lambda c: c.ping(), None),
    "submit": (lambda c: c.submit(JOB, [[TASK], []]), ("add_tasks", JOB, [TASK["task_id"]])),
    "status": (lambda c: c.status(jobs=[JOB], wait_ms=500, changes=7), ("snapshot", [JOB])),
    "cancel": (lambda c: c.cancel(JOB), ("cancel", JOB)),
    "retry": (lambda c: c.retry(JOB), ("retry", JOB)),
    "members": (lambda c: c.members(), None),
    "fetch_results": (lambda c: c.fetch_results(JOB), ("fetch_results", JOB)),
    "reload_keys": (lambda c: c.reload_keys(), ("reload_keys",)),
    "join": (lambda c: c.join(["10.0.0.5:7946"]), ("join_peers", ["10.0.0.5:7946"])),
    "shutdown": (lambda c: c.shutdown(), ("stop",)),
    "drain": (lambda c: c.drain("f00d", 2.5), ("drain_request", "f00d", 2.5)),
    "put_blob": (lambda c: c.put_blob(b"fn" * 3_000_000), ("put_blob", b"fn" * 3_000_000)),
    "watch": (
        lambda c: c.watch([TASK["task_id"], "nope"], 100),
        ("watch", [TASK["task_id"], "nope"]),
    ),
    "logs": (lambda c: c.logs(f"{JOB}/1", 2), ("logs", f"{JOB}/1", 2)),
    "why": (lambda c: c.why(f"{JOB}/1"), ("why", f"{JOB}/1")),
    "records": (
        lambda c: c.records([NODE_ID, 1, 5]),
        ("read_records", Version(NODE_ID, 1, 5)),
    ),
    "read_blob": (lambda c: c.read_blob("ab" * 32, 6), ("read_blob", "ab" * 32, 6)),
}

# op -> (a request with a bad field, what the error must say); an op with no fields has none.
BAD: dict[str, tuple[dict[str, Any], str]] = {
    "submit": ({"op": "submit", "job": 5}, "'job' must be a job name (a string), got int"),
    "status": ({"op": "status", "wait_ms": 1.5}, "'wait_ms' must be a whole number"),
    "cancel": ({"op": "cancel"}, "'target' must be a job name or a task id prefix"),
    "retry": ({"op": "retry", "job": [1]}, "'job' must be a job name (a string), got list"),
    "fetch_results": ({"op": "fetch_results", "job": None}, "'job' must be a job name"),
    "join": ({"op": "join", "peers": []}, "'peers' must be a non-empty list of HOST:PORT"),
    "drain": ({"op": "drain", "grace_s": -1}, "'grace_s' must be a number of seconds, 0 or more"),
    "watch": ({"op": "watch", "add": "abc"}, "'add' must be a list of task ids"),
    "why": ({"op": "why", "target": 7}, "'target' must be JOB/NAME or a task id prefix"),
    "records": ({"op": "records", "after": ["x", 1]}, "'after' must be a version"),
    "read_blob": ({"op": "read_blob", "digest": "../etc"}, "'digest' must be a blob's sha256"),
    "logs": (
        {"op": "logs", "target": "j/n", "attempt": "2"},
        "'attempt' must be an attempt number",
    ),
}
UNKNOWN: list[tuple[dict[str, Any], str]] = [
    ({"op": "launch"}, "unknown request 'launch'"),
    ({"op": 5}, "unknown request 5"),
    ({"target": JOB}, "unknown request None"),
]


async def _connected(node: FakeNode) -> tuple[Client, asyncio.Task[None]]:
    """A client joined to a control server by a socket pair: the real frames, no daemon."""
    ours, theirs = socket.socketpair()
    server_reader, server_writer = await asyncio.open_unix_connection(sock=theirs)
    serving = asyncio.create_task(ControlServer(node, set()).handle(server_reader, server_writer))
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return Client(StreamChannel(reader, writer)), serving


def _run_with_client(node: FakeNode, body: Callable[[Client], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        client, serving = await _connected(node)
        try:
            return await body(client)
        finally:
            await client.close()
            await serving

    return asyncio.run(go())


def conforms(value: Any, hint: Any) -> bool:
    """Whether `value`, as decoded from the wire, is of the type `hint` (the shapes the
    contracts use: TypedDicts, unions, literals, lists, maps, plain types)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (NotRequired, Required, typing.Annotated):
        return conforms(value, args[0])
    if hint is Any:
        return True
    if typing.is_typeddict(hint):
        if not isinstance(value, dict):
            return False
        hints = typing.get_type_hints(hint, include_extras=True)
        required = {k for k, h in hints.items() if typing.get_origin(h) is not NotRequired}
        return required <= value.keys() <= hints.keys() and all(
            conforms(value[k], hints[k]) for k in value
        )
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items()
        )
    if hint is type(None):
        return value is None
    if hint in (int, float):  # a bool is no number here; an int is a float, as JSON has it
        ok = (int,) if hint is int else (int, float)
        return isinstance(value, ok) and not isinstance(value, bool)
    return isinstance(value, hint)


def _contract(op: str) -> Contract[Any, Any]:
    return next(c for c in control.CONTRACTS if c.op == op)


def test_the_table_has_every_op_once() -> None:
    ops = [c.op for c in control.CONTRACTS]
    assert len(ops) == len(set(ops))
    assert set(OPERATIONS) == set(ops) == set(REQUEST_FIELDS) == set(GOOD)
    for op, operation in OPERATIONS.items():
        assert operation.contract is _contract(op)


@pytest.mark.parametrize(
    "message",
    [
        *(c.request for c in control.CONTRACTS),
        control.SubmitFrame,
        control.SubmittedTask,
        control.BlobFrame,
    ],
    ids=lambda m: m.__name__,
)
def test_every_field_of_a_request_is_checked(message: type) -> None:
    # A field with no check in its Annotated would reach a handler unchecked.
    hints = typing.get_type_hints(message)
    assert set(control.fields_of(message)) == set(hints) - {"op"}


@pytest.mark.parametrize("op", sorted(GOOD))
def test_a_good_request_is_served_with_a_reply_of_its_type(op: str) -> None:
    node = FakeNode()
    ask, wanted_call = GOOD[op]
    reply = _run_with_client(node, ask)
    assert conforms(reply, _contract(op).reply), reply
    if wanted_call is not None:
        assert wanted_call in node.calls, node.calls


def test_the_replies_say_what_the_node_answered() -> None:
    node = FakeNode()

    async def ask_all(client: Client) -> list[Any]:
        return [
            await client.submit(JOB, [[TASK]]),
            await client.cancel(JOB),
            await client.retry(JOB),
            await client.fetch_results(JOB),
            await client.drain(None),
            await client.members(),
        ]

    submitted, cancelled, retried, fetched, drained, members = _run_with_client(node, ask_all)
    assert submitted == {"ok": True, "job": JOB, "added": 1, "existing": 0}
    assert cancelled == {"ok": True, "cancelled": "job", "target": JOB}
    assert retried == {"ok": True, "job": JOB, "requeued": 2}
    assert fetched == {"ok": True, "fetched": 3, "missing": 1}
    assert drained == {"ok": True, "node": NODE_ID, "running": 0}
    assert ("drain_request", None, None) in node.calls
    assert members == {"ok": True, "members": [NODE_ROW], "net": {}}


def test_a_watch_reports_what_ended_and_what_it_does_not_know() -> None:
    node = FakeNode()

    async def ask(client: Client) -> Any:
        first = await client.watch([TASK["task_id"], "nope"], wait_ms=50)
        return first, await client.watch([], wait_ms=50)  # reported once

    first, second = _run_with_client(node, ask)
    assert [e["task_id"] for e in first["ended"]] == [TASK["task_id"]]
    assert first["unknown"] == ["nope"]
    assert second["ended"] == [] and second["unknown"] == []


def test_a_blob_stream_that_breaks_its_frames_is_refused_in_step() -> None:
    node = FakeNode()

    async def ask(client: Client) -> tuple[str, Any]:
        await client.send({"op": "put_blob"})
        await client.send({"data": "not bytes"})
        await client.send({"data": b"more"})
        await client.send({"end": True})
        with pytest.raises(ControlError) as refused:
            await client.reply()
        return str(refused.value), await client.ping()

    answer, pong = _run_with_client(node, ask)
    assert "'data' must be bytes" in answer, answer
    assert pong["node_id"] == NODE_ID


def test_a_status_long_poll_waits_for_the_next_change_and_is_capped() -> None:
    node = FakeNode()

    async def ask(client: Client) -> Any:
        await client.status(jobs=None)  # no wait asked: none made
        return await client.status(jobs=None, wait_ms=60_000, changes=7)

    reply = _run_with_client(node, ask)
    waits = [c for c in node.calls if c[0] == "wait_for_change"]
    assert waits == [("wait_for_change", 7, 10.0)]  # STATUS_WAIT_MS_MAX
    assert reply["changes"] == 7


@pytest.mark.parametrize("op", sorted(BAD))
def test_a_bad_field_is_answered_naming_it(op: str) -> None:
    node = FakeNode()
    request, fragment = BAD[op]

    async def ask(client: Client) -> tuple[str, Any]:
        await client.send(request)
        if op in ("submit", "put_blob"):  # the stream follows the request, refused or not
            await client.send({"tasks": [TASK]})
            await client.send({"end": True})
        with pytest.raises(ControlError) as refused:
            await client.reply()
        return str(refused.value), await client.ping()  # the connection goes on, in step

    answer, pong = _run_with_client(node, ask)
    assert fragment in answer and f"bad {op} request" in answer, answer
    assert pong["node_id"] == NODE_ID
    assert node.calls == []  # nothing was done


def test_only_ops_without_fields_have_no_bad_field_case() -> None:
    assert set(GOOD) - set(BAD) == {op for op, fields in REQUEST_FIELDS.items() if not fields}


@pytest.mark.parametrize(("request_", "fragment"), UNKNOWN, ids=lambda v: str(v))
def test_an_unknown_op_is_refused(request_: dict[str, Any], fragment: str) -> None:
    async def ask(client: Client) -> tuple[str, Any]:
        await client.send(request_)
        with pytest.raises(ControlError) as refused:
            await client.reply()
        return str(refused.value), await client.ping()

    answer, pong = _run_with_client(FakeNode(), ask)
    assert answer == fragment
    assert pong["ok"] is True


def test_a_task_whose_id_is_not_its_content_adds_nothing() -> None:
    node = FakeNode()

    async def ask(client: Client) -> str:
        with pytest.raises(ControlError) as refused:
            await client.submit(JOB, [[TASK, {**TASK, "task_id": "0" * 64, "name": "2"}]])
        return str(refused.value)

    assert "its id does not match its content" in _run_with_client(node, ask)
    assert not [c for c in node.calls if c[0] == "add_tasks"]


def test_a_bad_task_in_an_early_frame_adds_nothing_and_the_rest_is_read_in_step() -> None:
    """Frames are checked as they come; a bad task is told after the end frame, and the tasks of
    the frames before and after it are not added."""
    node = FakeNode()
    bad = {**TASK, "task_id": "0" * 64, "name": "2"}

    async def ask(client: Client) -> tuple[str, Any]:
        with pytest.raises(ControlError) as refused:
            await client.submit(JOB, [[TASK], [bad], [TASK], [TASK]])
        return str(refused.value), await client.ping()

    answer, pong = _run_with_client(node, ask)
    assert "its id does not match its content" in answer and pong["ok"] is True
    assert not [c for c in node.calls if c[0] == "add_tasks"]


def test_a_node_error_is_answered_with_its_sentence() -> None:
    class Refusing(FakeNode):
        async def retry(self, job: str) -> int:
            raise UserError(f"no job {job!r}")

    async def ask(client: Client) -> str:
        with pytest.raises(ControlError) as refused:
            await client.retry("nope")
        return str(refused.value)

    assert _run_with_client(Refusing(), ask) == "no job 'nope'"


def test_a_reply_lacking_what_its_type_requires_is_a_control_error() -> None:
    with pytest.raises(ControlError, match="lacks pid"):
        checked_reply(control.PING, {"ok": True, "node_id": NODE_ID})
    assert checked_reply(control.PING, {"ok": True, "node_id": NODE_ID, "pid": 1})["pid"] == 1


# -- the field checks, as the table states them ----------------------------------------------------

# What the CLI sends, op by op: every one must pass.
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
    {"op": "submit", "job": "sweep", "rerun_failed": True},
    {"op": "put_blob"},
    {"op": "why", "target": "sweep/seed-3"},
    {"op": "logs", "target": "sweep/seed-3", "attempt": None},
    {"op": "watch", "add": ["ab" * 32], "wait_ms": 1000},
    {"op": "watch", "add": None, "wait_ms": None},
    {"op": "records", "after": None},
    {"op": "records", "after": ["ab" * 16, 3, 1_000_000]},
    {"op": "read_blob", "digest": "ab" * 32, "offset": 4 << 20},
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
