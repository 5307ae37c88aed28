"""Remote clients on the node's peer port (`swarm status --peer`, `SwarmExecutor(peer=...)`): the
node's side of swarm/remote.py.

Theory of operation
-------------------
A stream whose first frame after its Hello is a control frame is a client's. It is served by the
control server, as the local socket is, with every frame sealed for the client alone (a
wire.ControlFrame; daemon/net.py opens and seals them). Whoever has no swarm key never gets
this far; what a key holder's client may cost the node is bounded here:
- at most CONTROL_STREAMS_MAX connections at once, counted apart from the peers' streams, so
  clients never leave replication without one (the net moves a client's stream out of the
  peers' count once its first control frame has come);
- at most REQUESTS_AT_ONCE of their requests that read or write files (HEAVY_OPS: pages of
  the ledger, pieces of blobs, submissions) served at once, the rest waiting their turn (long
  polls only wait, and take none); each frame no larger than a peer's (wire.FRAME_BYTES_MAX);
- a client that asks nothing for IDLE_S, or does not take a reply within WRITE_S, is let go, so
  a laptop that slept or lost its route frees its slot;
- only REMOTE_OPS are served: stopping the node, joining it elsewhere or reloading its keys are
  done on its own machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from swarm import connection, control
from swarm.core import wire
from swarm.errors import ControlError

log = logging.getLogger("swarm.daemon.clients")

CONTROL_STREAMS_MAX = 256  # remote clients' connections served at once
REQUESTS_AT_ONCE = 8  # remote clients' requests of HEAVY_OPS served at once; more wait
HEAVY_OPS = frozenset({"records", "read_blob", "put_blob", "submit", "fetch_results", "logs"})
FRAME_BYTES_MAX = wire.FRAME_BYTES_MAX  # one frame from a client: no more than a peer's
IDLE_S = 600.0  # a client that sends no request for this long is let go
WRITE_S = 60.0  # a reply the client does not take within this long ends its connection
# The operations served to remote clients: everything a user does from another machine.
REMOTE_OPS = frozenset(
    {
        "ping", "submit", "status", "cancel", "retry", "members", "fetch_results", "drain",
        "put_blob", "watch", "why", "logs", "records", "read_blob",
    }
)  # fmt: skip

ReadFrame = Callable[[int], Awaitable[wire.StreamMessage | None]]
WriteFrame = Callable[[list[Any]], Awaitable[None]]


class Turns:
    """Turns for the requests of HEAVY_OPS: at most `count` served at once, the others waiting."""

    def __init__(self, count: int) -> None:
        self._free = asyncio.Semaphore(count)
        self.waiting = 0  # requests waiting for a turn now

    async def take(self) -> None:
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1

    def give(self) -> None:
        self._free.release()


class RemoteClients:
    """The node's remote clients: their count and their turns. `serve` is the control
    server's (control_server.ControlServer.serve); None refuses every client."""

    def __init__(
        self, serve: Callable[[connection.Channel, frozenset[str] | None], Awaitable[None]] | None
    ) -> None:
        self._serve = serve
        self.connected = 0
        self.turns = Turns(REQUESTS_AT_ONCE)

    async def serve(self, channel: SealedChannel) -> None:
        """Serve one client's connection to its end (or refuse it, saying why)."""
        if self._serve is None or self.connected >= CONTROL_STREAMS_MAX:
            why = (
                "this node serves no remote clients"
                if self._serve is None
                else f"this node already serves {CONTROL_STREAMS_MAX} remote clients; try again"
            )
            await channel.write(control.ErrorReply(ok=False, error=why))
            raise ControlError(why)
        self.connected += 1
        try:
            await self._serve(channel, REMOTE_OPS)
        except Exception:  # one client's connection: logged, never the node's stream loop
            log.warning("a remote client's connection failed", exc_info=True)
        finally:
            self.connected -= 1
            channel.release()


class SealedChannel:
    """A remote client's control connection, the node's side: control frames (msgpack maps, as
    on the local socket) sealed for the client alone, each as a wire.ControlFrame. A request
    of HEAVY_OPS holds one of the clients' turns from its first frame to its reply."""

    def __init__(
        self,
        first: wire.ControlFrame,
        read_frame: ReadFrame,
        write_frame: WriteFrame,
        writer: asyncio.StreamWriter,
        turns: Turns,
    ) -> None:
        self._first: wire.ControlFrame | None = first
        self._read_frame = read_frame
        self._write_frame = write_frame
        self._writer = writer
        self._turns = turns
        self._holding = False

    async def read(self) -> dict[str, Any] | None:
        frame: wire.StreamMessage | None
        if self._first is not None:
            frame, self._first = self._first, None
        else:
            try:
                async with asyncio.timeout(IDLE_S):  # mid-stream too: a dead laptop holds no turn
                    frame = await self._read_frame(FRAME_BYTES_MAX)
            except asyncio.IncompleteReadError:
                return None  # the client closed the connection
            except TimeoutError:
                raise ControlError(
                    f"no request for {IDLE_S:g} s: the connection is closed"
                ) from None
        if not isinstance(frame, wire.ControlFrame):
            raise ControlError("a frame that is not a sealed control frame")
        message = connection.decode_body(frame.body)
        if not self._holding and message.get("op") in HEAVY_OPS:
            await self._turns.take()
            self._holding = True
        return message

    async def write(self, message: Mapping[str, Any]) -> None:
        self.release()
        frame = wire.ControlFrame(connection.encode_body(message))
        try:
            async with asyncio.timeout(WRITE_S):
                await self._write_frame(wire.control_frame_to_plain(frame))
        except TimeoutError:
            raise ConnectionError(f"a reply not taken in {WRITE_S:g} s") from None

    def release(self) -> None:
        """Give back the turn a request holds (its reply is being written, or it ended)."""
        if self._holding:
            self._turns.give()
        self._holding = False

    def close(self) -> None:
        self._writer.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
