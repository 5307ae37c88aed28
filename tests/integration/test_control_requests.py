"""Every control request is checked field by field over the real Unix socket of a real daemon:
a malformed one is answered with the field that is wrong, and the connection and the daemon
go on."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from swarm import connection, control, statedir
from swarm.control import NetStats
from swarm.core.spec import Resources, TaskSpec, task_id
from swarm.errors import ControlError

from ..test_control import conforms
from .conftest import Cli, Daemon, free_port

pytestmark = pytest.mark.integration

GOOD_TASK = {"task_id": "0" * 64, "name": "n", "spec": {"cmd": "true", "cpus": 1.0, "memory": 1}}

# (request, the field the error must name)
BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"op": 5}, "unknown request 5"),
    ({"op": "launch"}, "unknown request 'launch'"),
    ({"op": "status", "jobs": [{"a": 1}]}, "'jobs' must be a list of job names"),
    ({"op": "status", "jobs": "job"}, "'jobs' must be a list of job names"),
    ({"op": "status", "wait_ms": "soon"}, "'wait_ms' must be a whole number"),
    ({"op": "status", "wait_ms": True}, "'wait_ms' must be a whole number"),
    ({"op": "status", "changes": 1.5}, "'changes' must be a whole number"),
    ({"op": "cancel"}, "'target' must be a job name or a task id prefix (a string), got nothing"),
    ({"op": "cancel", "target": 5}, "'target' must be a job name"),
    ({"op": "retry", "job": [1]}, "'job' must be a job name (a string), got list"),
    ({"op": "fetch_results", "job": None}, "'job' must be a job name"),
    ({"op": "join", "peers": "127.0.0.1:1"}, "'peers' must be a non-empty list"),
    ({"op": "join", "peers": []}, "'peers' must be a non-empty list"),
    ({"op": "join", "peers": [7946]}, "'peers' must be a non-empty list"),
    ({"op": "drain", "grace_s": True}, "'grace_s' must be a number of seconds"),
    ({"op": "drain", "grace_s": -1}, "'grace_s' must be a number of seconds"),
    ({"op": "drain", "node": 5}, "'node' must be a member's id"),
]

# (frames of a submission after its request, the field the error must name)
BAD_SUBMISSIONS: list[tuple[dict[str, Any], list[dict[str, Any]], str]] = [
    ({"op": "submit", "job": 5}, [{"tasks": [GOOD_TASK]}], "'job' must be a job name"),
    ({"op": "submit", "job": "j"}, [{"tasks": 5}], "'tasks' must be a list of tasks"),
    ({"op": "submit", "job": "j"}, [{"tasks": [5]}], "tasks[0] must be a map, got int"),
    (
        {"op": "submit", "job": "j"},
        [{"tasks": [GOOD_TASK]}, {"tasks": [{**GOOD_TASK, "task_id": 1}]}],
        "tasks[0]: 'task_id' must be the task's id (a string), got int",
    ),
    (
        {"op": "submit", "job": "j"},
        [{"tasks": [{**GOOD_TASK, "spec": "true"}]}],
        "'spec' must be the task's spec (a map), got str",
    ),
    (
        {"op": "submit", "job": "j"},
        [{"tasks": [{**GOOD_TASK, "explicit_name": "yes"}]}],
        "'explicit_name' must be true or false",
    ),
    ({"op": "submit", "job": "j"}, [{"tasks": [GOOD_TASK], "end": "now"}], "'end' must be"),
]


def test_every_malformed_request_is_answered_naming_its_field(
    cli: Cli, daemon: Callable[..., Daemon]
) -> None:
    node = daemon()
    state = statedir.StateDir(cli.home)

    async def ask() -> list[str]:
        client = await connection.Client.connect(state)
        answers = []
        try:
            for request, _ in BAD_REQUESTS:
                await client.send(request)
                with pytest.raises(ControlError) as refused:
                    await client.reply()
                answers.append(str(refused.value))
            for request, frames, _ in BAD_SUBMISSIONS:
                await client.send(request)
                for frame in frames:
                    await client.send(frame)
                if not any("end" in frame for frame in frames):
                    await client.send({"end": True})
                with pytest.raises(ControlError) as refused:
                    await client.reply()
                answers.append(str(refused.value))
            assert (await client.call("ping"))["ok"]  # the same connection still serves
        finally:
            await client.close()
        return answers

    answers = asyncio.run(ask())
    wanted = [field for _, field in BAD_REQUESTS] + [field for _, _, field in BAD_SUBMISSIONS]
    for answer, field in zip(answers, wanted, strict=True):
        assert field in answer, (field, answer)
    assert node.proc is not None and node.proc.poll() is None
    assert cli.status()["jobs"] == []  # nothing of a refused submission was added


def test_a_frame_that_is_not_a_map_is_answered_before_the_connection_closes(
    cli: Cli, daemon: Callable[..., Daemon]
) -> None:
    node = daemon()

    async def send_list() -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(statedir.StateDir(cli.home).socket_path)
        body = msgpack.packb(["op", "status"])
        writer.write(struct.pack(">I", len(body)) + body)
        await writer.drain()
        reply = await connection.read_frame(reader)
        writer.close()
        assert reply is not None
        return reply

    reply = asyncio.run(send_list())
    assert reply == {"ok": False, "error": "a frame must be a map"}
    assert node.proc is not None and node.proc.poll() is None
    cli.ok("status", "--json")


def test_a_real_daemon_answers_every_op_with_a_reply_of_its_type(
    cli: Cli, daemon: Callable[..., Daemon]
) -> None:
    """The contracts hold for what the real node builds (its snapshot, its member rows, the
    transport's stats), not only for the test's fake node."""
    daemon("--bind", f"127.0.0.1:{free_port()}", "--profile", "test")
    state = statedir.StateDir(cli.home)
    spec = TaskSpec(cmd="true", argv=None, need=Resources(0.1, 1 << 20))
    task: control.SubmittedTask = {
        "task_id": task_id("typed", spec, None),
        "name": "1",
        "spec": spec.to_wire(),
    }

    async def ask() -> list[tuple[str, Any]]:
        client = await connection.Client.connect(state)
        try:
            submitted = await client.submit("typed", [[task]])
            replies = [("submit", submitted), ("ping", await client.ping())]
            status = await client.status(jobs=["typed"])
            while status["snapshot"]["jobs"][0]["done"] < 1:  # a long poll: no sleeping
                status = await client.status(["typed"], wait_ms=1_000, changes=status["changes"])
            replies += [
                ("status", status),
                ("members", await client.members()),
                ("fetch_results", await client.fetch_results("typed")),
                ("retry", await client.retry("typed")),
                ("cancel", await client.cancel("typed")),
                ("drain", await client.drain(None, 30.0)),
            ]
            return replies
        finally:
            await client.close()

    replies = asyncio.run(asyncio.wait_for(ask(), 60))
    for op, reply in replies:
        contract = next(c for c in control.CONTRACTS if c.op == op)
        assert conforms(reply, contract.reply), (op, reply)
    members = dict(replies)["members"]
    assert members["net"].keys() == NetStats.__annotations__.keys()
