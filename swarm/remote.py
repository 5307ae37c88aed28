"""A client on a machine with no daemon: the control protocol to another machine's node, sealed.

Theory of operation
-------------------
`swarm status --peer HOST:PORT` (or SWARM_PEER) speaks the same control protocol as on the
local socket (swarm/control.py), to a node's peer port. The connection opens as a node's does:
the node sends a fresh challenge, and the client answers with a Hello sealed by the swarm key.
Every control frame then travels as a wire.ControlFrame in a sealed envelope, so whoever lacks
the key can neither read nor forge nor replay one. The client seals as a sender of its own, a
random id drawn for each connection, with the envelope's CLIENT flag (core/envelope.py): the
node opens such envelopes only on the stream they came on (daemon/net.py), and seals its
replies for that id alone. The swarm key comes from this machine's state dir: `swarm init
--key-file swarm.key` puts it there.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from typing import Any

from swarm import connection, framing, statedir
from swarm.connection import Client, StreamChannel
from swarm.core import wire
from swarm.errors import ConfigError, ControlError, NotRunningError

CONNECT_TIMEOUT_S = 5.0
# A sealed control frame: the control protocol's own bound, and the envelope around it.
FRAME_BYTES_MAX = connection.FRAME_BYTES_MAX + 1024


async def connect(peer: str, state: statedir.StateDir) -> Client:
    """A client of the node at `peer` (HOST:PORT), sealed with the swarm key of `state`."""
    from swarm.daemon.config import parse_addr
    from swarm.daemon.peers import reload_key_ring

    host, port = parse_addr(peer)
    if not state.swarm_key_path.exists():
        raise ConfigError(
            f"no swarm key in {state.root}: to reach another machine's node, put its swarm key "
            f"here with `swarm init --data-dir {state.root} --key-file swarm.key`"
        )
    ring = wire.KeyRing()
    reload_key_ring(ring, state)
    sender = os.urandom(wire.SENDER_BYTES)
    sealer = wire.Sealer(sender, ring, counter=0, boot=os.urandom(wire.BOOT_BYTES), client=True)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
            challenge = await reader.readexactly(wire.CHALLENGE_BYTES)
    except socket.gaierror as exc:
        raise NotRunningError(f"{host} does not resolve ({exc.strerror})") from exc
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        why = f"no answer within {CONNECT_TIMEOUT_S:g} s" if isinstance(exc, TimeoutError) else exc
        if isinstance(exc, asyncio.IncompleteReadError):
            why = "it closed the connection without a challenge: is that a swarm node's port?"
        raise NotRunningError(
            f"no swarm node answers at {host}:{port} ({why}): is one started there with "
            "--bind, and this port open to this machine?"
        ) from exc
    channel = SealedClientChannel(
        f"{host}:{port}", reader, writer, sealer, wire.Opener(ring, sender)
    )
    client = Client(channel)
    try:
        await channel.send(wire.hello_to_plain(wire.Hello(challenge)))
        # At once: the node learns this is a client (whose streams it counts apart from its
        # peers'), and a wrong key or a node with no room is said here, not at the first use.
        await client.ping()
    except BaseException:
        await client.close()
        raise
    return client


class SealedClientChannel(StreamChannel):
    """The client's side of a sealed control connection (daemon/clients.py's SealedChannel is
    the node's): a stream channel whose frames are sealed envelopes."""

    def __init__(
        self,
        peer: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sealer: wire.Sealer,
        opener: wire.Opener,
    ) -> None:
        super().__init__(reader, writer)
        self._peer = peer
        self._sealer = sealer
        self._opener = opener
        self._node: bytes | None = None  # the node's id, once a reply has said who it is

    async def read(self) -> dict[str, Any] | None:
        try:
            data = await framing.read_frame_body(self._reader, FRAME_BYTES_MAX)
        except (framing.FrameTooLarge, framing.FrameCut, OSError) as exc:
            if self._node is None:
                raise self._refused() from exc
            raise ControlError(f"the connection to {self._peer} broke: {exc}") from exc
        if data is None:
            if self._node is None:
                raise self._refused()
            return None
        try:
            opened = self._opener.open(data, FRAME_BYTES_MAX)
            frame = wire.decode_any(opened.body)
        except wire.BadPacket as exc:
            raise ControlError(f"a reply from {self._peer} did not open: {exc}") from exc
        if not isinstance(frame, wire.ControlFrame) or not opened.addressed:
            raise ControlError(f"{self._peer} answered with something not a control reply")
        if self._node is None:
            self._node = opened.sender
        elif opened.sender != self._node:
            raise ControlError(f"a reply from {self._peer} came from another node")
        return connection.decode_body(frame.body)

    def _refused(self) -> ControlError:
        """The node closes a stream whose Hello does not open, before any reply: another key."""
        return ControlError(
            f"{self._peer} closed the connection before answering: is it a node of this swarm, "
            f"with the key in use here (key id {self._sealer.ring.in_use.hex()})?"
        )

    async def write(self, message: Mapping[str, Any]) -> None:
        frame = wire.ControlFrame(connection.encode_body(message))
        await self.send(wire.control_frame_to_plain(frame))

    async def send(self, plain: list[Any]) -> None:
        """Seal one message (for the node alone, once it is known) and send it as a frame."""
        data = self._sealer.seal(wire.encode(plain), self._node)
        self._writer.write(framing.frame(data))
        await self._writer.drain()
