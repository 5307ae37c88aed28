"""The one framing of swarm's streams, shared by the peers' TCP streams (daemon/net.py, where each
frame is a sealed envelope) and the control socket (control.py, where each is a msgpack map): a
4-byte big-endian length, then that many bytes. A frame over the reader's bound is refused before
any of it is read."""

from __future__ import annotations

import asyncio
import struct

LENGTH = struct.Struct(">I")


class FrameTooLarge(Exception):
    def __init__(self, length: int, size_max: int) -> None:
        super().__init__(f"frame of {length} bytes is over the {size_max} byte limit")
        self.length = length


class FrameCut(Exception):
    """The stream ended inside a frame (`where`: its header, or its body)."""

    def __init__(self, where: str) -> None:
        super().__init__(
            f"connection closed inside a frame{' header' if where == 'header' else ''}"
        )
        self.where = where


def frame(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


async def read_frame_body(reader: asyncio.StreamReader, size_max: int) -> bytes | None:
    """The next frame's bytes; None at a clean end of stream (between frames). FrameTooLarge
    (nothing of it read) or FrameCut otherwise."""
    try:
        header = await reader.readexactly(LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameCut("header") from exc
        return None
    (length,) = LENGTH.unpack(header)
    if length > size_max:
        raise FrameTooLarge(length, size_max)
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise FrameCut("body") from exc
