"""A control connection: its frames, its channel, and the client's typed calls over it.

Frames are a 4-byte big-endian length then a msgpack map (swarm/framing.py). A `Channel` carries
them: the local socket's is `StreamChannel`; a remote client's is sealed with the swarm key
(swarm/remote.py on the client's side, daemon/clients.py on the node's). The requests and replies
they carry, and the checks of their fields, are the contracts of swarm/control.py; `Client` has a
typed method per operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NotRequired, Protocol

import msgpack

from swarm import framing
from swarm.control import (
    CANCEL,
    DRAIN,
    FETCH_RESULTS,
    JOIN,
    LOGS,
    MEMBERS,
    PING,
    PUT_BLOB,
    READ_BLOB,
    RECORDS,
    RELOAD_KEYS,
    RETRY,
    SHUTDOWN,
    STATUS,
    SUBMIT,
    WATCH,
    WHY,
    BlobFrame,
    CancelReply,
    CancelRequest,
    Contract,
    DrainReply,
    DrainRequest,
    FetchResultsReply,
    FetchResultsRequest,
    JoinReply,
    JoinRequest,
    LogsReply,
    LogsRequest,
    MembersReply,
    MembersRequest,
    PingReply,
    PingRequest,
    PutBlobReply,
    PutBlobRequest,
    ReadBlobReply,
    ReadBlobRequest,
    RecordsReply,
    RecordsRequest,
    ReloadKeysReply,
    ReloadKeysRequest,
    Rep,
    Req,
    RetryReply,
    RetryRequest,
    ShutdownReply,
    ShutdownRequest,
    StatusReply,
    StatusRequest,
    SubmitFrame,
    SubmitReply,
    SubmitRequest,
    SubmittedTask,
    WatchReply,
    WatchRequest,
    WhyReply,
    WhyRequest,
)
from swarm.core.decoding import unpack
from swarm.errors import ControlError, NotRunningError
from swarm.statedir import StateDir

FRAME_BYTES_MAX = 64 << 20
SUBMIT_CHUNK_TASKS = 5_000
SUBMIT_FRAME_BYTES = 4 << 20  # a submission's frame, at most (a remote node takes up to 8 MiB)
BLOB_FRAME_BYTES = 4 << 20  # a put blob's frames
CONNECT_TIMEOUT_S = 2.0


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame, or None at a clean end of stream."""
    try:
        body = await framing.read_frame_body(reader, FRAME_BYTES_MAX)
    except (framing.FrameTooLarge, framing.FrameCut) as exc:
        raise ControlError(str(exc)) from exc
    return None if body is None else decode_body(body)


def decode_body(body: bytes) -> dict[str, Any]:
    """A frame's message, from its msgpack body. ControlError if it is not a map."""
    message = unpack(body, ControlError, "frame")
    if not isinstance(message, dict):
        raise ControlError("a frame must be a map")
    return message


def encode_body(message: Mapping[str, Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    if len(body) > FRAME_BYTES_MAX:
        raise ControlError(f"frame of {len(body)} bytes is over the {FRAME_BYTES_MAX} byte limit")
    return body


def encode_frame(message: Mapping[str, Any]) -> bytes:
    return framing.frame(encode_body(message))


class Channel(Protocol):
    """Where a connection's frames go: the local socket (StreamChannel), or a stream to a node's
    peer port with every frame sealed by the swarm key (swarm/remote.py on the client's side,
    daemon/net.py on the node's). The protocol above is the same on both."""

    async def read(self) -> dict[str, Any] | None:
        """The next frame, or None when the other side closed the connection."""

    async def write(self, message: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class StreamChannel:
    """The local socket's frames: a length, then the msgpack map."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self) -> dict[str, Any] | None:
        return await read_frame(self._reader)

    async def write(self, message: Mapping[str, Any]) -> None:
        self._writer.write(encode_frame(message))
        await self._writer.drain()

    def close(self) -> None:
        self._writer.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class Client:
    """One connection to a daemon: the local one (`connect`), or another machine's over the
    sealed channel (swarm/remote.py)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

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
        return cls(StreamChannel(reader, writer))

    # -- the typed calls, one per operation ---------------------------------------------------

    async def ping(self) -> PingReply:
        return await self.ask(PING, PingRequest(op="ping"))

    async def submit(
        self, job: str, chunks: Iterable[list[SubmittedTask]], rerun_failed: bool = False
    ) -> SubmitReply:
        """Stream a submission: its request, a frame per chunk of tasks, then the end frame."""
        request = SubmitRequest(op="submit", job=job)
        if rerun_failed:
            request["rerun_failed"] = True
        await self.send(request)
        for tasks in chunks:
            for part in _fitting(tasks):
                await self.send(SubmitFrame(tasks=part))
        await self.send(SubmitFrame(end=True))
        return checked_reply(SUBMIT, await self.reply())

    async def status(
        self, jobs: list[str] | None = None, wait_ms: int | None = None, changes: int | None = None
    ) -> StatusReply:
        request = StatusRequest(op="status", jobs=jobs, wait_ms=wait_ms, changes=changes)
        return await self.ask(STATUS, request)

    async def cancel(self, target: str) -> CancelReply:
        return await self.ask(CANCEL, CancelRequest(op="cancel", target=target))

    async def retry(self, job: str) -> RetryReply:
        return await self.ask(RETRY, RetryRequest(op="retry", job=job))

    async def members(self) -> MembersReply:
        return await self.ask(MEMBERS, MembersRequest(op="members"))

    async def fetch_results(self, job: str) -> FetchResultsReply:
        return await self.ask(FETCH_RESULTS, FetchResultsRequest(op="fetch_results", job=job))

    async def reload_keys(self) -> ReloadKeysReply:
        return await self.ask(RELOAD_KEYS, ReloadKeysRequest(op="reload_keys"))

    async def join(self, peers: list[str]) -> JoinReply:
        return await self.ask(JOIN, JoinRequest(op="join", peers=peers))

    async def shutdown(self) -> ShutdownReply:
        return await self.ask(SHUTDOWN, ShutdownRequest(op="shutdown"))

    async def put_blob(self, data: bytes) -> PutBlobReply:
        """Stream a blob to the node, in frames of BLOB_FRAME_BYTES."""
        await self.send(PutBlobRequest(op="put_blob"))
        view = memoryview(data)
        for at in range(0, len(data), BLOB_FRAME_BYTES):
            await self.send(BlobFrame(data=bytes(view[at : at + BLOB_FRAME_BYTES])))
        await self.send(BlobFrame(end=True))
        return checked_reply(PUT_BLOB, await self.reply())

    async def logs(self, target: str, attempt: int | None = None) -> LogsReply:
        return await self.ask(LOGS, LogsRequest(op="logs", target=target, attempt=attempt))

    async def why(self, target: str) -> WhyReply:
        return await self.ask(WHY, WhyRequest(op="why", target=target))

    async def watch(self, add: list[str], wait_ms: int | None = None) -> WatchReply:
        return await self.ask(WATCH, WatchRequest(op="watch", add=add, wait_ms=wait_ms))

    async def records(self, after: list[Any] | None) -> RecordsReply:
        return await self.ask(RECORDS, RecordsRequest(op="records", after=after))

    async def read_blob(self, digest: str, offset: int) -> ReadBlobReply:
        return await self.ask(
            READ_BLOB, ReadBlobRequest(op="read_blob", digest=digest, offset=offset)
        )

    async def drain(self, node: str | None, grace_s: float | None = None) -> DrainReply:
        request = DrainRequest(op="drain", node=node)
        if grace_s is not None:
            request["grace_s"] = grace_s
        return await self.ask(DRAIN, request)

    # -- the wire ------------------------------------------------------------------------------

    async def ask(self, contract: Contract[Req, Rep], request: Req) -> Rep:
        """One request and its reply, of the types the contract gives them."""
        await self.send(request)
        return checked_reply(contract, await self.reply())

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """An untyped request, for tools and tests that speak the wire directly."""
        await self.send({"op": op, **fields})
        return await self.reply()

    async def send(self, message: Mapping[str, Any]) -> None:
        await self._channel.write(message)

    async def reply(self) -> dict[str, Any]:
        message = await self._channel.read()
        if message is None:
            raise ControlError("the daemon closed the connection")
        if not message.get("ok"):
            raise ControlError(str(message.get("error", "request failed")))
        return message

    async def close(self) -> None:
        self._channel.close()
        await self._channel.wait_closed()


def _fitting(tasks: list[SubmittedTask]) -> Iterator[list[SubmittedTask]]:
    """`tasks` in parts whose frames stay within SUBMIT_FRAME_BYTES (halving a part that does
    not): a remote node takes frames no larger than a peer's."""
    size = len(msgpack.packb(tasks, use_bin_type=True))
    if size <= SUBMIT_FRAME_BYTES or len(tasks) == 1:
        yield tasks
        return
    half = len(tasks) // 2
    yield from _fitting(tasks[:half])
    yield from _fitting(tasks[half:])


def checked_reply(contract: Contract[Any, Rep], message: dict[str, Any]) -> Rep:
    """A reply as its contract types it, once every key that type requires is in it (a daemon of
    another version may answer otherwise: say so, rather than fail on a missing key later)."""
    missing = sorted(_required_keys(contract.reply) - message.keys())
    if missing:
        raise ControlError(
            f"the daemon's reply to {contract.op!r} lacks {', '.join(missing)} "
            "(is it another version of swarm?)"
        )
    return typing.cast(Rep, message)


@functools.cache
def _required_keys(message: type[Mapping[str, Any]]) -> frozenset[str]:
    # Read from the hints: with postponed annotations, a TypedDict's __required_keys__ counts
    # its NotRequired fields as required.
    hints = typing.get_type_hints(message, include_extras=True)
    return frozenset(k for k, h in hints.items() if typing.get_origin(h) is not NotRequired)


async def is_running(state: StateDir) -> bool:
    try:
        client = await Client.connect(state)
    except NotRunningError:
        return False
    try:
        await client.ping()
        return True
    except (ControlError, OSError):
        return False
    finally:
        await client.close()
