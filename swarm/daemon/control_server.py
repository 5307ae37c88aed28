"""The control server: the daemon's side of the local control socket (`swarm/control.py` holds the
protocol both sides share: the frames, and the typed contract of every operation).

Theory of operation
-------------------
A connection is served one request at a time: a frame is read, answered, and only then is the
next one read, so replies stay in step with requests. Every operation is a row of `OPERATIONS`:
its contract (the request's and the reply's types, and the check of every request field) and its
handler. The request is checked against its contract before its handler runs, so a malformed one
is answered with the field that is wrong and the connection goes on. A submission streams its
tasks after its request; that stream is read to its end frame before anything is added or
refused, so a client that dies mid-stream adds nothing and the reply stays in step.

Handlers are thin: they call the node's methods (`NodeControl`), which make the decisions, and
put what those return into the typed reply. A `UserError` is answered with its sentence, any other
`SwarmError` with its class name too; a frame that cannot be read ends the connection, after a
reply saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol

from swarm import connection, control
from swarm.control import (
    CancelReply,
    CancelRequest,
    Contract,
    DrainReply,
    DrainRequest,
    EndedTask,
    FetchResultsReply,
    FetchResultsRequest,
    JoinReply,
    JoinRequest,
    LogsReply,
    LogsRequest,
    MembersReply,
    MembersRequest,
    NetStats,
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
    SubmitReply,
    SubmitRequest,
    SubmittedTask,
    WatchReply,
    WatchRequest,
    WhyReply,
    WhyRequest,
)
from swarm.core.ledger import Version
from swarm.core.requests import CheckedTask
from swarm.core.snapshot import NodeRow, Snapshot
from swarm.core.spec import TaskSpec, name_problem, task_id
from swarm.daemon import heap
from swarm.daemon.net import GossipNet
from swarm.daemon.watches import Watch
from swarm.errors import ControlError, SwarmError, UserError

log = logging.getLogger("swarm.daemon.control_server")

SUBMIT_TASKS_MAX = 10_000_000  # one submission; bounds the daemon's memory for a single stream
BLOB_BYTES_MAX = 16 << 30  # one put blob (it goes to a file, not to memory)
WATCH_ADD_MAX = 1_000_000  # tasks added to a watch by one request
# Tasks in one watch reply: each carries at most a small outcome (spec.INLINE_OUTCOME_BYTES_MAX),
# so a reply stays far below connection.FRAME_BYTES_MAX.
WATCH_REPLY_TASKS_MAX = 10_000
STATUS_WAIT_MS_MAX = 10_000  # longest a status long poll may wait for a change
RECORDS_PAGE_ROWS = 10_000  # ledger records in one `records` reply
RECORDS_PAGE_BYTES = 4 << 20  # and about this many bytes of them


class NodeControl(Protocol):
    """What the control server asks of the node. The decisions are the node's; the server only
    checks requests, calls these, and shapes the replies."""

    @property
    def node_id(self) -> str: ...
    @property
    def net(self) -> GossipNet | None: ...

    # What the node counted of its peers' records (the `members` reply's stats); the ledger-sync
    # counters are read-only, kept by its LedgerSync (core/sync.py).

    @property
    def forged_records(self) -> int: ...
    @property
    def bad_records(self) -> int: ...
    @property
    def refused_records(self) -> int: ...
    @property
    def refused_tasks(self) -> int: ...
    @property
    def gap_pulls(self) -> int: ...

    @property
    def stamps_ahead(self) -> int: ...
    @property
    def changes(self) -> int: ...
    async def wait_for_change(self, seen: int, timeout_s: float) -> None: ...
    async def snapshot(self, jobs: list[str] | None = None) -> Snapshot: ...
    def members(self) -> list[NodeRow]: ...
    def has_job(self, job: str) -> bool: ...
    async def add_tasks(
        self, job: str, tasks: list[CheckedTask], rerun_failed: bool = False
    ) -> int:
        """Add a submission's tasks; how many were new. It empties `tasks` once their records
        are made (a million checked tasks are not held while their records are added)."""

    async def put_blob(self, chunks: AsyncIterator[bytes]) -> tuple[str, int]: ...
    def watch(self, watch: Watch, task_ids: list[str]) -> list[str]: ...
    def unwatch(self, watch: Watch) -> None: ...
    def why(self, target: str) -> WhyReply: ...
    def unfit(self, specs: list[TaskSpec]) -> dict[str, int]: ...
    async def logs(self, target: str, number: int | None, fetch: bool = True) -> LogsReply: ...
    async def ended(self, task_id: str) -> EndedTask | None: ...
    async def cancel(self, target: str) -> tuple[Literal["job", "task"], str]: ...
    async def retry(self, job: str) -> int: ...
    async def fetch_results(self, job: str) -> dict[str, int]: ...
    def reload_keys(self) -> str: ...
    async def join_peers(self, peers: list[str]) -> list[str]: ...
    def stop(self) -> None: ...
    async def drain_request(
        self, node_prefix: str | None, grace_s: float | None
    ) -> tuple[str, int | None]: ...
    async def read_records(
        self, after: Version | None, rows_max: int, bytes_max: int
    ) -> tuple[list[list[Any]], bool]: ...
    async def read_blob(self, digest: str, offset: int, size_max: int) -> tuple[bytes, int]: ...


@dataclass(slots=True)
class Session:
    """What one connection keeps between its requests: the operations it may ask for (None:
    every one), and the tasks it watches, once it does."""

    ops: frozenset[str] | None = None
    watch: Watch | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler has: the node, and the connection (a submission reads its stream on it)."""

    node: NodeControl
    channel: connection.Channel
    session: Session


@dataclass(frozen=True, slots=True)
class Operation(Generic[Req, Rep]):
    """One row of the table: the contract, and the handler that serves it. `streamed`: frames
    follow the request, and are read to their end even when the request is refused."""

    contract: Contract[Req, Rep]
    handler: Callable[[Call, Req], Awaitable[Rep]]
    streamed: bool = False


class ControlServer:
    """Serves the control connections of one node: the local socket's, and remote clients' on its
    peer port (daemon/net.py). `clients` is the node's set of open connections, which it closes
    when it stops, so that none outlives it."""

    def __init__(self, node: NodeControl, clients: set[connection.Channel]) -> None:
        self._node = node
        self._clients = clients

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection to the local socket (`asyncio.start_unix_server`'s callback)."""
        await self.serve(connection.StreamChannel(reader, writer))

    async def serve(self, channel: connection.Channel, ops: frozenset[str] | None = None) -> None:
        """Serve one connection until the client closes it; `ops`: the only operations served
        on it (None: every one)."""
        self._clients.add(channel)
        session = Session(ops)
        try:
            while (request := await channel.read()) is not None:
                reply = await self._answer(request, channel, session)
                await channel.write(reply)
        except ControlError as exc:
            # The stream cannot be read on (a frame that is not a map, or not msgpack, or too
            # big): say why before closing, so the client is not left with a bare EOF.
            log.debug("control connection dropped: %s", exc)
            with contextlib.suppress(ConnectionError, ControlError):
                await channel.write(control.ErrorReply(ok=False, error=str(exc)))
        except ConnectionError as exc:
            log.debug("control connection dropped: %s", exc)
        finally:
            self._clients.discard(channel)
            channel.close()
            if session.watch is not None:
                self._node.unwatch(session.watch)

    async def _answer(
        self, request: dict[str, Any], channel: connection.Channel, session: Session
    ) -> control.Reply | control.ErrorReply:
        try:
            return await serve(Call(self._node, channel, session), request)
        except UserError as exc:
            return control.ErrorReply(ok=False, error=str(exc))
        except SwarmError as exc:
            return control.ErrorReply(ok=False, error=f"{type(exc).__name__}: {exc}")


async def serve(call: Call, request: dict[str, Any]) -> control.Reply:
    """The reply to one request, by its row of the table. UserError if the request is malformed,
    or not served on this connection."""
    op = request.get("op")
    operation = OPERATIONS.get(op) if isinstance(op, str) else None
    problem = control.request_problem(request)
    if problem is None and call.session.ops is not None and op not in call.session.ops:
        problem = f"{op!r} is not served to remote clients: ask the node's own machine"
    if problem is not None:
        if operation is not None and operation.streamed:
            await _skip_stream(call.channel)  # the reply must come after the whole stream
        raise UserError(problem)
    assert operation is not None  # request_problem knows every op of the table
    reply: control.Reply = await operation.handler(call, request)
    return reply


# -- the handlers ---------------------------------------------------------------------------------


async def _ping(call: Call, request: PingRequest) -> PingReply:
    return {"ok": True, "node_id": call.node.node_id, "pid": os.getpid()}


async def _submit(call: Call, request: SubmitRequest) -> SubmitReply:
    """Read the submission's stream to its end, checking each frame's tasks as it comes, then
    add them in one commit, or none if anything in it is wrong."""
    job = request["job"]
    tasks = await _read_tasks(call.channel, job)
    count = len(tasks)
    unfit = call.node.unfit([t.spec for t in tasks])  # before add_tasks, which empties `tasks`
    with heap.bulk(count):  # a large submission's views live as long as the node
        added = await call.node.add_tasks(job, tasks, bool(request.get("rerun_failed")))
    reply: SubmitReply = {"ok": True, "job": job, "added": added, "existing": count - added}
    if unfit:
        reply["unfit"] = unfit
    return reply


async def _put_blob(call: Call, request: PutBlobRequest) -> PutBlobReply:
    """Store the blob streamed after the request. Its stream is read to the end frame whatever
    happens, so that the reply stays in step."""
    stream = BlobStream(call.channel)
    try:
        digest, size = await call.node.put_blob(stream.chunks())
    finally:
        await stream.finish()
    if stream.problem is not None:
        raise UserError(stream.problem)
    return {"ok": True, "digest": digest, "size": size}


async def _logs(call: Call, request: LogsRequest) -> LogsReply:
    return await call.node.logs(request["target"], request.get("attempt"))


async def _why(call: Call, request: WhyRequest) -> WhyReply:
    return call.node.why(request["target"])


async def _watch(call: Call, request: WatchRequest) -> WatchReply:
    if call.session.watch is None:
        call.session.watch = Watch()
    watch = call.session.watch
    add = request.get("add") or []
    if len(add) > WATCH_ADD_MAX:
        raise UserError(f"more than {WATCH_ADD_MAX:,} tasks added to a watch at once")
    unknown = call.node.watch(watch, add)
    wait_s = min(request.get("wait_ms") or 0, STATUS_WAIT_MS_MAX) / 1000
    await watch.wait(wait_s, time.monotonic())
    ended = []
    for task in watch.take(time.monotonic(), WATCH_REPLY_TASKS_MAX):
        row = await call.node.ended(task)
        if row is None:  # it runs again, or its outcome is not here yet
            watch.look_again(task, time.monotonic())
        else:
            ended.append(row)
    return {"ok": True, "ended": ended, "unknown": unknown}


async def _status(call: Call, request: StatusRequest) -> StatusReply:
    wait_ms, seen = request.get("wait_ms"), request.get("changes")
    if wait_ms and seen is not None:
        # A long poll: answer at the next change of any task's state, or at the deadline (at
        # once if something changed since the client's last snapshot).
        await call.node.wait_for_change(seen, min(wait_ms, STATUS_WAIT_MS_MAX) / 1000)
    snapshot = await call.node.snapshot(request.get("jobs"))
    return {"ok": True, "snapshot": snapshot, "changes": call.node.changes}


async def _cancel(call: Call, request: CancelRequest) -> CancelReply:
    what, target = await call.node.cancel(request["target"])
    return {"ok": True, "cancelled": what, "target": target}


async def _retry(call: Call, request: RetryRequest) -> RetryReply:
    requeued = await call.node.retry(request["job"])
    return {"ok": True, "job": request["job"], "requeued": requeued}


async def _members(call: Call, request: MembersRequest) -> MembersReply:
    return {"ok": True, "members": call.node.members(), "net": net_stats(call.node)}


async def _fetch_results(call: Call, request: FetchResultsRequest) -> FetchResultsReply:
    job = request["job"]
    if not call.node.has_job(job):
        raise UserError(f"no job {job!r}")
    counts = await call.node.fetch_results(job)
    return {"ok": True, "fetched": counts["fetched"], "missing": counts["missing"]}


async def _reload_keys(call: Call, request: ReloadKeysRequest) -> ReloadKeysReply:
    try:
        return {"ok": True, "in_use": call.node.reload_keys()}
    except ValueError as exc:
        raise UserError(f"the key ring was not changed: {exc}") from exc


async def _join(call: Call, request: JoinRequest) -> JoinReply:
    return {"ok": True, "problems": await call.node.join_peers(request["peers"])}


async def _shutdown(call: Call, request: ShutdownRequest) -> ShutdownReply:
    call.node.stop()
    return {"ok": True}


async def _drain(call: Call, request: DrainRequest) -> DrainReply:
    grace = request.get("grace_s")
    node, running = await call.node.drain_request(
        request.get("node"), None if grace is None else float(grace)
    )
    return {"ok": True, "node": node, "running": running}


async def _records(call: Call, request: RecordsRequest) -> RecordsReply:
    after = request.get("after")
    records, done = await call.node.read_records(
        None if after is None else Version(*after), RECORDS_PAGE_ROWS, RECORDS_PAGE_BYTES
    )
    return {"ok": True, "records": records, "done": done}


async def _read_blob(call: Call, request: ReadBlobRequest) -> ReadBlobReply:
    data, size = await call.node.read_blob(
        request["digest"], request.get("offset") or 0, connection.BLOB_FRAME_BYTES
    )
    return {"ok": True, "data": data, "size": size}


OPERATIONS: dict[str, Operation[Any, Any]] = {
    row.contract.op: row
    for row in (
        Operation(control.PING, _ping),
        Operation(control.SUBMIT, _submit, streamed=True),
        Operation(control.STATUS, _status),
        Operation(control.CANCEL, _cancel),
        Operation(control.RETRY, _retry),
        Operation(control.MEMBERS, _members),
        Operation(control.FETCH_RESULTS, _fetch_results),
        Operation(control.RELOAD_KEYS, _reload_keys),
        Operation(control.JOIN, _join),
        Operation(control.SHUTDOWN, _shutdown),
        Operation(control.DRAIN, _drain),
        Operation(control.PUT_BLOB, _put_blob, streamed=True),
        Operation(control.WATCH, _watch),
        Operation(control.WHY, _why),
        Operation(control.LOGS, _logs),
        Operation(control.RECORDS, _records),
        Operation(control.READ_BLOB, _read_blob),
    )
}
# The protocol's contracts and this table are one set: an op with no handler would be refused as
# unknown by the daemon though the client's types offer it.
assert set(OPERATIONS) == set(control.REQUEST_FIELDS), "every contract needs its handler"


# -- what the handlers use --------------------------------------------------------------------------


async def _read_tasks(channel: connection.Channel, job: str) -> list[CheckedTask]:
    """A submission's tasks, its stream read to the end frame, each frame's checked as it
    comes (so a million tasks are never held twice, as the client sent them and as checked).
    UserError, raised after the end frame so that the reply is in step: a malformed frame, a
    bad job name, more than SUBMIT_TASKS_MAX tasks, or the first bad task."""
    tasks: list[CheckedTask] = []
    problem: str | None = None
    bad_task: UserError | None = None
    while True:
        frame = await _next_frame(channel)
        problem = problem or control.submit_frame_problem(frame)
        if frame.get("end"):
            break
        if problem is None and bad_task is None and len(tasks) <= SUBMIT_TASKS_MAX:
            raws = frame.get("tasks") or []
            try:
                with heap.bulk(len(raws)):  # what is checked lives on as the node's records
                    tasks.extend(checked_task(job, raw) for raw in raws)
            except UserError as exc:
                bad_task = exc  # the rest is read, and not checked
    if problem is not None:
        raise UserError(problem)
    name = name_problem(job)
    if name is not None:
        raise UserError(f"job name {job!r} {name}")
    if len(tasks) > SUBMIT_TASKS_MAX:
        raise UserError(f"more than {SUBMIT_TASKS_MAX:,} tasks in one submission")
    if bad_task is not None:
        raise bad_task
    return tasks


class BlobStream:
    """A put blob's frames, read as chunks of bytes; `problem` says what was wrong with them
    (read to the end frame all the same)."""

    def __init__(self, channel: connection.Channel) -> None:
        self.channel = channel
        self.problem: str | None = None
        self.size = 0
        self._ended = False

    async def chunks(self) -> AsyncIterator[bytes]:
        while not self._ended:
            frame = await _next_frame(self.channel)
            self._ended = bool(frame.get("end"))
            self.problem = self.problem or control.blob_frame_problem(frame)
            data = frame.get("data") or b""
            self.size += len(data)
            if self.size > BLOB_BYTES_MAX:
                self.problem = self.problem or f"a blob over {BLOB_BYTES_MAX:,} bytes"
            if self.problem is not None:
                raise UserError(self.problem)
            if data:
                yield data

    async def finish(self) -> None:
        """Read what is left of the stream, keeping nothing."""
        if not self._ended:
            self._ended = True
            await _skip_stream(self.channel)


async def _skip_stream(channel: connection.Channel) -> None:
    """Read a refused submission's frames to its end frame, keeping nothing."""
    while not (await _next_frame(channel)).get("end"):
        pass


async def _next_frame(channel: connection.Channel) -> dict[str, Any]:
    frame = await channel.read()
    if frame is None:
        raise ControlError("the client went away mid-submission; nothing was added")
    return frame


def checked_task(job: str, raw: SubmittedTask) -> CheckedTask:
    """A submitted task, its id checked against its content (a client cannot mislabel one).
    UserError naming what is wrong."""
    try:
        spec = TaskSpec.from_wire(raw["spec"])
        name = raw["name"]
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(f"task name {name!r} {problem}")
        explicit = bool(raw.get("explicit_name"))
        expected = task_id(job, spec, name if explicit else None)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise UserError(f"malformed task in submission: {exc}") from exc
    if raw.get("task_id") != expected:
        raise UserError(f"task {name!r}: its id does not match its content")
    return CheckedTask(expected, name, spec, raw.get("line"))


def net_stats(node: NodeControl) -> NetStats | dict[str, int]:
    """What the node's transport and record intake counted ({} with no gossip address)."""
    if node.net is None:
        return {}
    net = node.net
    return {
        "dropped": net.dropped,
        "forged": net.membership.forged + node.forged_records,
        "bad_records": node.bad_records,
        "refused_records": node.refused_records,
        "stamps_ahead": node.stamps_ahead,
        "streams_refused": net.streams_refused,
        "refused_tasks": node.refused_tasks,
        "gap_pulls": node.gap_pulls,
        "sent": net.sent,
        "received": net.received,
        "bytes_sent": net.bytes_sent,
        "bytes_received": net.bytes_received,
    }
