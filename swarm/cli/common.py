"""What the commands share: the two consoles, counting words, the time, and one call to the
local daemon."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from rich.console import Console

from swarm import statedir
from swarm.control import Client
from swarm.errors import ControlError

CALL_ANSWER_S = 30.0  # a command gives up on a daemon that does not answer in this long
Reply = TypeVar("Reply")  # of a control request (swarm/control.py)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "s")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _call(args: argparse.Namespace, ask: Callable[[Client], Awaitable[Reply]]) -> Reply:
    """One request to the local daemon (`ask` makes it, with the client), and its typed reply."""
    state = statedir.resolve(args.data_dir)

    async def call() -> Reply:
        client = await Client.connect(state)
        try:
            return await asyncio.wait_for(ask(client), CALL_ANSWER_S)
        except TimeoutError:
            raise ControlError(
                f"the daemon for {state.root} did not answer within {CALL_ANSWER_S:g}s "
                "(is it paused, or overloaded?)"
            ) from None
        finally:
            await client.close()

    return asyncio.run(call())
