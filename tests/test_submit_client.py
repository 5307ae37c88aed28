"""Tests of the client side of a submission (cli/jobs.py `send_tasks`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from swarm import statedir
from swarm.cli import common, jobs, taskfile
from swarm.connection import Client
from swarm.errors import ControlError


def test_a_daemon_that_does_not_answer_is_sent_no_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stopped daemon's socket still takes connections (the kernel's backlog). The submission
    # waited on it for ever, and a submit killed meanwhile had its tasks added once it woke.
    monkeypatch.setattr(common, "CALL_ANSWER_S", 0.3)
    state = statedir.StateDir(tmp_path)
    received = bytearray()
    tasks = taskfile.parse_lines(b"echo one\n", "t.txt", "t")

    async def submit() -> None:
        held = asyncio.Event()

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while chunk := await reader.read(1 << 16):  # read, never answered
                    received.extend(chunk)
            finally:
                writer.close()
                held.set()

        server = await asyncio.start_unix_server(hold, path=str(state.socket_path))
        async with server:
            client = await Client.connect(state)
            try:
                await jobs.send_tasks(client, "t", tasks, "the daemon for here")
            finally:
                await client.close()
                await asyncio.wait_for(held.wait(), 10)

    with pytest.raises(
        ControlError,
        match=r"^the daemon for here did not answer within 0\.3s .*; nothing was submitted$",
    ):
        asyncio.run(submit())
    assert b"ping" in received
    assert b"submit" not in received and b"echo one" not in received
