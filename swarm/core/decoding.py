"""msgpack from outside (a peer, the disk, a socket), decoded so that whatever is wrong with it
raises the caller's error: one place for the exceptions msgpack may raise. Apart from wire.py so
that a client decoding a control reply loads none of the envelope's cryptography."""

from __future__ import annotations

from typing import Any

import msgpack

from swarm.errors import SwarmError


def unpack(data: bytes, error: type[SwarmError], what: str) -> Any:
    """msgpack-decode bytes from outside (peer, disk, socket); anything wrong raises `error`."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (
        ValueError,  # msgpack's own errors derive from it
        TypeError,  # an unhashable map key
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise error(f"undecodable {what}: {exc}") from exc
