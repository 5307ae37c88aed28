"""The control protocol between the CLI and its local daemon, over the Unix socket.

Frames are a 4-byte big-endian length then a msgpack map. A request is `{"op": NAME, ...}`; every
reply is `{"ok": true, ...}` or `{"ok": false, "error": text}`. A submission is streamed: a
`submit` frame, then `{"tasks": [...]}` chunks, then `{"end": true}`; the daemon adds nothing until
the end frame, then adds all tasks in one commit, so a client that dies mid-stream adds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from typing import Any

import msgpack

from swarm.errors import ControlError, NotRunningError
from swarm.statedir import StateDir
from swarm.wire import unpack

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
