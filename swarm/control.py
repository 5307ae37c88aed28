"""The control protocol between the CLI and its local daemon, over the Unix socket.

Frames are a 4-byte big-endian length then a msgpack map. A request is `{"op": NAME, ...}`; every
reply is `{"ok": true, ...}` or `{"ok": false, "error": text}`. A submission is streamed: a
`submit` frame, then `{"tasks": [...]}` chunks, then `{"end": true}`; the daemon adds nothing until
the end frame, then adds all tasks in one commit, so a client that dies mid-stream adds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import struct
from collections.abc import Callable
from typing import Any

import msgpack

from swarm.core.wire import unpack
from swarm.errors import ControlError, NotRunningError, shown
from swarm.statedir import StateDir

# -- what a request may hold -------------------------------------------------------------------
# Every field of every request, with what it must be. A request is checked against this table
# before the daemon acts on it, so a malformed one is answered with the field that is wrong,
# never a TypeError that drops the connection. A field left out counts as null.


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _is_texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _or_null(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


Field = tuple[Callable[[Any], bool], str]  # the check, and what it wants, for the error
_JOB: Field = (_is_text, "a job name (a string)")
REQUEST_FIELDS: dict[str, dict[str, Field]] = {
    "ping": {},
    "submit": {"job": _JOB},
    "status": {
        "jobs": (_or_null(_is_texts), "a list of job names (strings), or null"),
        "wait_ms": (_or_null(_is_whole), "a whole number of milliseconds, or null"),
        "changes": (_or_null(_is_whole), "a whole number, or null"),
    },
    "cancel": {"target": (_is_text, "a job name or a task id prefix (a string)")},
    "retry": {"job": _JOB},
    "members": {},
    "fetch_results": {"job": _JOB},
    "reload_keys": {},
    "join": {
        "peers": (lambda v: _is_texts(v) and bool(v), "a non-empty list of HOST:PORT strings")
    },
    "shutdown": {},
    "drain": {
        "node": (_or_null(_is_text), "a member's id or its prefix (a string), or null"),
        "grace_s": (_or_null(_is_seconds), "a number of seconds, 0 or more, or null"),
    },
}
# The frames of a submission's stream, after its `submit` request, and each task in them.
SUBMIT_FRAME_FIELDS: dict[str, Field] = {
    "tasks": (_or_null(lambda v: isinstance(v, list)), "a list of tasks, or null"),
    "end": (_or_null(lambda v: isinstance(v, bool)), "true or false, or null"),
}
TASK_FIELDS: dict[str, Field] = {
    "task_id": (_is_text, "the task's id (a string)"),
    "name": (_is_text, "the task's name (a string)"),
    "explicit_name": (_or_null(lambda v: isinstance(v, bool)), "true or false, or null"),
    "spec": (lambda v: isinstance(v, dict), "the task's spec (a map)"),
    "line": (_or_null(_is_whole), "a line number, or null"),
}


def request_problem(request: dict[str, Any]) -> str | None:
    """Why a control request cannot be served, naming the field; None if it can."""
    op = request.get("op")
    if not isinstance(op, str) or op not in REQUEST_FIELDS:
        return f"unknown request {shown(op)}"
    return _fields_problem(request, REQUEST_FIELDS[op], f"{op} request")


def submit_frame_problem(frame: dict[str, Any]) -> str | None:
    """Why a frame of a submission's stream is malformed, naming the field; None if it is not."""
    problem = _fields_problem(frame, SUBMIT_FRAME_FIELDS, "submission frame")
    if problem is not None:
        return problem
    for i, task in enumerate(frame.get("tasks") or []):
        if not isinstance(task, dict):
            return f"submission frame: tasks[{i}] must be a map, got {type(task).__name__}"
        problem = _fields_problem(task, TASK_FIELDS, f"submission frame: tasks[{i}]")
        if problem is not None:
            return problem
    return None


def _fields_problem(message: dict[str, Any], fields: dict[str, Field], what: str) -> str | None:
    for name, (check, wanted) in fields.items():
        value = message.get(name)
        if not check(value):
            got = "nothing" if name not in message else type(value).__name__
            return f"bad {what}: {name!r} must be {wanted}, got {got}"
    return None


FRAME_BYTES_MAX = 64 << 20
SUBMIT_CHUNK_TASKS = 5_000
CONNECT_TIMEOUT_S = 2.0
_HEADER = struct.Struct(">I")


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame, or None at a clean end of stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ControlError("connection closed inside a frame header") from exc
        return None
    (length,) = _HEADER.unpack(header)
    if length > FRAME_BYTES_MAX:
        raise ControlError(f"frame of {length} bytes is over the {FRAME_BYTES_MAX} byte limit")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise ControlError("connection closed inside a frame") from exc
    message = unpack(body, ControlError, "frame")
    if not isinstance(message, dict):
        raise ControlError("a frame must be a map")
    return message


def encode_frame(message: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    if len(body) > FRAME_BYTES_MAX:
        raise ControlError(f"frame of {len(body)} bytes is over the {FRAME_BYTES_MAX} byte limit")
    return _HEADER.pack(len(body)) + body


class Client:
    """One connection to the local daemon."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, state: StateDir) -> Client:
        path = state.socket_path
        with contextlib.suppress(FileNotFoundError):
            if path.lstat().st_uid != os.getuid():
                # Someone else's socket where ours should be: never send it our tasks.
                raise ControlError(f"{path} belongs to another user; refusing to use it")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(path, limit=FRAME_BYTES_MAX), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            raise NotRunningError(
                f"no swarm daemon is running for {state.root} (nothing answers on {path}); "
                f"start one with `swarm start --data-dir {state.root}`, "
                "or use `swarm run FILE`, which starts one for the run"
            ) from exc
        return cls(reader, writer)

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        await self.send({"op": op, **fields})
        return await self.reply()

    async def send(self, message: dict[str, Any]) -> None:
        self._writer.write(encode_frame(message))
        await self._writer.drain()

    async def reply(self) -> dict[str, Any]:
        message = await read_frame(self._reader)
        if message is None:
            raise ControlError("the daemon closed the connection")
        if not message.get("ok"):
            raise ControlError(str(message.get("error", "request failed")))
        return message

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def is_running(state: StateDir) -> bool:
    try:
        client = await Client.connect(state)
    except NotRunningError:
        return False
    try:
        await client.call("ping")
        return True
    except (ControlError, OSError):
        return False
    finally:
        await client.close()
