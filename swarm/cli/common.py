"""What the commands share: the two consoles, counting words, the time, and the connection to
the daemon: the local one, or with `--peer HOST:PORT` (or SWARM_PEER) another machine's, over
the sealed channel (swarm/remote.py)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from rich.console import Console

from swarm import statedir
from swarm.errors import ControlError

if TYPE_CHECKING:
    from swarm.connection import Client

CALL_ANSWER_S = 30.0  # a command gives up on a daemon that does not answer in this long
Reply = TypeVar("Reply")  # of a control request (swarm/control.py)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "s")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def peer_of(args: argparse.Namespace) -> str | None:
    """The other machine's node this command reaches (--peer, else $SWARM_PEER), for a command
    that takes --peer; None: the local daemon."""
    return statedir.resolve_peer(args.remote_peer) if hasattr(args, "remote_peer") else None


async def connect(args: argparse.Namespace) -> Client:
    """A client of the daemon this command speaks to: the local one, or the --peer."""
    from swarm.connection import Client  # not at the top: `swarm --help` needs none of it

    state = statedir.resolve(args.data_dir)
    peer = peer_of(args)
    if peer is None:
        return await Client.connect(state)
    from swarm import remote  # only a remote client needs the sealing

    return await remote.connect(peer, state)


def where_asked(args: argparse.Namespace) -> str:
    """The daemon this command asks, as its messages name it."""
    return peer_of(args) or f"the daemon for {statedir.resolve(args.data_dir).root}"


async def answered(asking: Awaitable[Reply], where: str, then: str = "") -> Reply:
    """The answer to a request, or ControlError if `where` gives none within CALL_ANSWER_S
    (a stopped daemon's socket still takes connections); `then` ends its message."""
    import asyncio  # not at the top: `swarm --help` needs no event loop

    try:
        return await asyncio.wait_for(asking, CALL_ANSWER_S)
    except TimeoutError:
        raise ControlError(
            f"{where} did not answer within {CALL_ANSWER_S:g}s (is it paused, or overloaded?)"
            + then
        ) from None


def _call(args: argparse.Namespace, ask: Callable[[Client], Awaitable[Reply]]) -> Reply:
    """One request to the daemon (`ask` makes it, with the client), and its typed reply."""
    import asyncio  # not at the top: `swarm --help` needs no event loop

    async def call() -> Reply:
        client = await connect(args)
        try:
            return await answered(ask(client), where_asked(args))
        finally:
            await client.close()

    return asyncio.run(call())
