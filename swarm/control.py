"""The control protocol between the CLI (or a Python script) and a daemon: on this machine over
the Unix socket, from another over the sealed channel (swarm/connection.py carries the frames).

A request is `{"op": NAME, ...}`; every reply is `{"ok": true, ...}` or `{"ok": false, "error":
text}`. A submission is streamed: a `submit` frame, then `{"tasks": [...]}` chunks, then `{"end":
true}`; the daemon adds nothing until the end frame, then adds all tasks in one commit, so a
client that dies mid-stream adds nothing.

Both sides share this module: a `Contract` per operation (its request's and its reply's
TypedDicts; the request's fields carry their checks). The daemon's table of handlers is in
`swarm/daemon/control_server.py`; clients call `connection.Client`'s typed methods, one per
operation.
"""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Generic,
    Literal,
    NotRequired,
    Required,
    TypedDict,
    TypeVar,
)

from swarm.core.snapshot_rows import NodeRow, Snapshot
from swarm.errors import shown

if TYPE_CHECKING:
    from swarm.core.ledger import TaskView

# -- the contracts ---------------------------------------------------------------------------
# Every request and reply is a TypedDict, so mypy checks the fields on both sides. A request's
# fields carry, in `Annotated`, the check the daemon applies before acting on it and what the
# field must be (for the error), so the types are the one table: a malformed request is answered
# with the field that is wrong, never a TypeError that drops the connection. A field left out
# counts as null. The op's name is its request's `op` literal.


@dataclass(frozen=True, slots=True)
class Want:
    """A field's check, and what the field must be, in words (for the error)."""

    check: Callable[[Any], bool]
    wanted: str


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _is_texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _or_null(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


JobName = Annotated[str, Want(_is_text, "a job name (a string)")]


class PingRequest(TypedDict):
    op: Literal["ping"]


class PingReply(TypedDict):
    ok: Literal[True]
    node_id: str
    pid: int


class SubmitRequest(TypedDict):
    """Opens a submission's stream: `SubmitFrame`s follow, the last with `end` true."""

    op: Literal["submit"]
    job: JobName
    # Tasks of the submission already in the ledger that failed or were cancelled are queued
    # again (a script that makes the same calls again re-runs those that raised or that a cancel
    # stopped, and reuses the rest).
    rerun_failed: NotRequired[
        Annotated[
            bool | None, Want(_or_null(lambda v: isinstance(v, bool)), "true or false, or null")
        ]
    ]


class SubmittedTask(TypedDict):
    task_id: Annotated[str, Want(_is_text, "the task's id (a string)")]
    name: Annotated[str, Want(_is_text, "the task's name (a string)")]
    explicit_name: NotRequired[
        Annotated[
            bool | None, Want(_or_null(lambda v: isinstance(v, bool)), "true or false, or null")
        ]
    ]
    spec: Annotated[dict[str, Any], Want(lambda v: isinstance(v, dict), "the task's spec (a map)")]
    line: NotRequired[Annotated[int | None, Want(_or_null(_is_whole), "a line number, or null")]]


class SubmitFrame(TypedDict):
    tasks: NotRequired[
        Annotated[
            list[SubmittedTask] | None,
            Want(_or_null(lambda v: isinstance(v, list)), "a list of tasks, or null"),
        ]
    ]
    end: NotRequired[
        Annotated[
            bool | None, Want(_or_null(lambda v: isinstance(v, bool)), "true or false, or null")
        ]
    ]


class SubmitReply(TypedDict):
    ok: Literal[True]
    job: str
    added: int  # tasks new to the ledger
    existing: int  # tasks it held already
    # Why some tasks fit no live member now (the reason -> how many tasks): they wait for one.
    unfit: NotRequired[dict[str, int]]


class StatusRequest(TypedDict):
    op: Literal["status"]
    jobs: NotRequired[
        Annotated[
            list[str] | None, Want(_or_null(_is_texts), "a list of job names (strings), or null")
        ]
    ]
    # A long poll: answer at the next change after `changes` (as a reply counted them), or
    # after this long.
    wait_ms: NotRequired[
        Annotated[int | None, Want(_or_null(_is_whole), "a whole number of milliseconds, or null")]
    ]
    changes: NotRequired[
        Annotated[int | None, Want(_or_null(_is_whole), "a whole number, or null")]
    ]


class StatusReply(TypedDict):
    ok: Literal[True]
    snapshot: Snapshot
    changes: int  # how many times a task's state has changed: the next long poll's `changes`


class CancelRequest(TypedDict):
    op: Literal["cancel"]
    target: Annotated[str, Want(_is_text, "a job name or a task id prefix (a string)")]


class CancelReply(TypedDict):
    ok: Literal[True]
    cancelled: Literal["job", "task"]
    target: str  # the job, or the task's whole id


class RetryRequest(TypedDict):
    op: Literal["retry"]
    job: JobName


class RetryReply(TypedDict):
    ok: Literal[True]
    job: str
    requeued: int


class MembersRequest(TypedDict):
    op: Literal["members"]


class NetStats(TypedDict):
    """What the node's transport counted since it started (empty with no gossip address)."""

    dropped: int
    forged: int
    bad_records: int
    refused_records: int
    stamps_ahead: int
    streams_refused: int
    refused_tasks: int
    gap_pulls: int
    sent: int
    received: int
    bytes_sent: int
    bytes_received: int


class MembersReply(TypedDict):
    ok: Literal[True]
    members: list[NodeRow]
    net: NetStats | dict[str, int]  # {} for a node with no gossip address


class FetchResultsRequest(TypedDict):
    op: Literal["fetch_results"]
    job: JobName


class FetchResultsReply(TypedDict):
    ok: Literal[True]
    fetched: int  # result files copied here from other nodes
    missing: int  # result files no live holder could give


class ReloadKeysRequest(TypedDict):
    op: Literal["reload_keys"]


class ReloadKeysReply(TypedDict):
    ok: Literal[True]
    in_use: str  # the id of the key now sealing, in hex


class JoinRequest(TypedDict):
    op: Literal["join"]
    peers: Annotated[
        list[str], Want(lambda v: _is_texts(v) and bool(v), "a non-empty list of HOST:PORT strings")
    ]


class JoinReply(TypedDict):
    ok: Literal[True]
    problems: list[str]  # one sentence per seed that did not answer; none once one has


class WhyRequest(TypedDict):
    """Why a task is not running: `target` is JOB/NAME or a prefix of its id."""

    op: Literal["why"]
    target: Annotated[str, Want(_is_text, "JOB/NAME or a task id prefix (a string)")]


class WhyReply(TypedDict):
    ok: Literal[True]
    task_id: str
    job: str
    name: str
    state: str
    reasons: list[str]  # the most telling first


class LogsRequest(TypedDict):
    """The output of a task's latest attempt (or its `attempt`th), made held on this node."""

    op: Literal["logs"]
    target: Annotated[str, Want(_is_text, "JOB/NAME or a task id prefix (a string)")]
    attempt: NotRequired[
        Annotated[int | None, Want(_or_null(_is_whole), "an attempt number, or null")]
    ]


class LogsReply(TypedDict):
    ok: Literal[True]
    task_id: str
    job: str
    name: str
    state: str
    attempt: int  # the attempt shown (0: none has ended yet)
    node: str  # the node that ran it ("" if none)
    outcome: str  # "" while it runs, or if none ran
    stdout: str | None  # blobs held on this node now; None: none, or no holder could give it
    stderr: str | None
    running_on: str  # the node a running attempt is on ("" if none runs)
    running_attempt: int  # which attempt that is (0: none runs, or not known here yet)
    run_dir: str | None  # a running attempt's dir, when it runs on this node (its files grow)


class ShutdownRequest(TypedDict):
    op: Literal["shutdown"]


class ShutdownReply(TypedDict):
    ok: Literal[True]


class DrainRequest(TypedDict):
    op: Literal["drain"]
    node: NotRequired[
        Annotated[
            str | None, Want(_or_null(_is_text), "a member's id or its prefix (a string), or null")
        ]
    ]
    grace_s: NotRequired[
        Annotated[
            float | None, Want(_or_null(_is_seconds), "a number of seconds, 0 or more, or null")
        ]
    ]


class DrainReply(TypedDict):
    ok: Literal[True]
    node: str  # the whole id of the node asked to drain
    running: int | None  # its running attempts, if it is this node


class PutBlobRequest(TypedDict):
    """Opens a blob's stream (a Python call's pickled function or arguments): `BlobFrame`s
    follow, the last with `end` true. The node stores it under its sha256 and says it holds it."""

    op: Literal["put_blob"]


class BlobFrame(TypedDict):
    data: NotRequired[
        Annotated[bytes | None, Want(_or_null(lambda v: isinstance(v, bytes)), "bytes, or null")]
    ]
    end: NotRequired[
        Annotated[
            bool | None, Want(_or_null(lambda v: isinstance(v, bool)), "true or false, or null")
        ]
    ]


class PutBlobReply(TypedDict):
    ok: Literal[True]
    digest: str
    size: int


class WatchRequest(TypedDict):
    """Watch tasks end, on this connection: `add` tasks to those it watches; the reply lists the
    watched tasks that ended since the last reply (it waits up to `wait_ms` for one)."""

    op: Literal["watch"]
    add: NotRequired[
        Annotated[list[str] | None, Want(_or_null(_is_texts), "a list of task ids, or null")]
    ]
    wait_ms: NotRequired[
        Annotated[int | None, Want(_or_null(_is_whole), "a whole number of milliseconds, or null")]
    ]


class EndedTask(TypedDict):
    task_id: str
    state: str  # done, failed or cancelled
    outcome: str  # of its credited (or last) attempt: ok, failed, timeout, interrupted; "" if none
    reason: str  # why that attempt ended so ("" if it did not say)
    node: str  # the node that ran it ("" if none did)
    exit_code: int | None
    evicted: bool  # the last attempt was evicted under memory pressure
    # The blob of a Python call's outcome (pycall.VALUE_FILE), held on this node; None if the
    # task left none (a command, or a call that never ran to its end), or has it `inline`.
    value: str | None
    inline: bytes  # a call's outcome carried in its RESULT record (b"" if none)


def ended_task(view: TaskView, value: str | None = None) -> EndedTask:
    """How a task ended, as a watch reports it (and `swarm.results` reads it from the ledger):
    from the attempt that says so (TaskView.outcome_attempt); `value`: its outcome blob, held
    where the reader is."""
    attempt = view.outcome_attempt()
    result = None if attempt is None else attempt.result
    return {
        "task_id": view.task_id,
        "state": str(view.state),
        "outcome": "" if result is None else str(result.outcome),
        "reason": "" if result is None else result.reason,
        "node": "" if attempt is None else attempt.version.origin,
        "exit_code": None if result is None else result.exit_code,
        "evicted": bool(result is not None and result.evicted),
        "value": value,
        "inline": b"" if result is None else result.value,
    }


class WatchReply(TypedDict):
    ok: Literal[True]
    ended: list[EndedTask]
    unknown: list[str]  # added ids that name no task of this node's ledger


def _is_counter(value: Any) -> bool:
    """A whole number SQLite and a file offset take: from 0 below 2**63."""
    return _is_whole(value) and 0 <= value < 1 << 63


def _is_version(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and all(_is_counter(n) for n in value[1:])
    )


class RecordsRequest(TypedDict):
    """A page of the node's ledger, its records as its file holds them, in version order from
    just past `after`: what a client with no ledger of its own reads to export or write results."""

    op: Literal["records"]
    after: NotRequired[
        Annotated[
            list[Any] | None,
            Want(_or_null(_is_version), "a version [origin, generation, seq], or null"),
        ]
    ]


class RecordsReply(TypedDict):
    ok: Literal[True]
    records: list[list[Any]]  # [origin, generation, seq, body] each, the body as stored
    done: bool  # the page reached the end of the ledger


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in _HEX for c in value)


_HEX = frozenset("0123456789abcdef")


class ReadBlobRequest(TypedDict):
    """A piece of a blob this node holds (a result's manifest or file), from `offset`."""

    op: Literal["read_blob"]
    digest: Annotated[str, Want(_is_digest, "a blob's sha256 (64 lowercase hex characters)")]
    offset: NotRequired[
        Annotated[int | None, Want(_or_null(_is_counter), "a whole number from 0 below 2**63")]
    ]


class ReadBlobReply(TypedDict):
    ok: Literal[True]
    data: bytes  # at most BLOB_FRAME_BYTES, from the offset
    size: int  # the whole blob's


class ErrorReply(TypedDict):
    ok: Literal[False]
    error: str


# Every reply a request may have, when it is served.
Reply = (
    PingReply | SubmitReply | StatusReply | CancelReply | RetryReply | MembersReply
    | FetchResultsReply | ReloadKeysReply | JoinReply | ShutdownReply | DrainReply
    | PutBlobReply | WatchReply | WhyReply | LogsReply | RecordsReply | ReadBlobReply
)  # fmt: skip

Req = TypeVar("Req", bound=Mapping[str, Any])
Rep = TypeVar("Rep", bound=Mapping[str, Any])


@dataclass(frozen=True, slots=True)
class Contract(Generic[Req, Rep]):
    """One operation: its request's and its reply's types, and what each request field must be."""

    request: type[Req]
    reply: type[Rep]

    @property
    def op(self) -> str:
        return _op_of(self.request)

    @property
    def fields(self) -> dict[str, Want]:
        return fields_of(self.request)


PING: Contract[PingRequest, PingReply] = Contract(PingRequest, PingReply)
SUBMIT: Contract[SubmitRequest, SubmitReply] = Contract(SubmitRequest, SubmitReply)
STATUS: Contract[StatusRequest, StatusReply] = Contract(StatusRequest, StatusReply)
CANCEL: Contract[CancelRequest, CancelReply] = Contract(CancelRequest, CancelReply)
RETRY: Contract[RetryRequest, RetryReply] = Contract(RetryRequest, RetryReply)
MEMBERS: Contract[MembersRequest, MembersReply] = Contract(MembersRequest, MembersReply)
FETCH_RESULTS: Contract[FetchResultsRequest, FetchResultsReply] = Contract(
    FetchResultsRequest, FetchResultsReply
)
RELOAD_KEYS: Contract[ReloadKeysRequest, ReloadKeysReply] = Contract(
    ReloadKeysRequest, ReloadKeysReply
)
JOIN: Contract[JoinRequest, JoinReply] = Contract(JoinRequest, JoinReply)
SHUTDOWN: Contract[ShutdownRequest, ShutdownReply] = Contract(ShutdownRequest, ShutdownReply)
DRAIN: Contract[DrainRequest, DrainReply] = Contract(DrainRequest, DrainReply)
PUT_BLOB: Contract[PutBlobRequest, PutBlobReply] = Contract(PutBlobRequest, PutBlobReply)
WATCH: Contract[WatchRequest, WatchReply] = Contract(WatchRequest, WatchReply)
WHY: Contract[WhyRequest, WhyReply] = Contract(WhyRequest, WhyReply)
LOGS: Contract[LogsRequest, LogsReply] = Contract(LogsRequest, LogsReply)
RECORDS: Contract[RecordsRequest, RecordsReply] = Contract(RecordsRequest, RecordsReply)
READ_BLOB: Contract[ReadBlobRequest, ReadBlobReply] = Contract(ReadBlobRequest, ReadBlobReply)
CONTRACTS: tuple[Contract[Any, Any], ...] = (
    PING, SUBMIT, STATUS, CANCEL, RETRY, MEMBERS, FETCH_RESULTS, RELOAD_KEYS, JOIN, SHUTDOWN, DRAIN,
    PUT_BLOB, WATCH, WHY, LOGS, RECORDS, READ_BLOB,
)  # fmt: skip


@functools.cache
def fields_of(message: type[Mapping[str, Any]]) -> dict[str, Want]:
    """The checked fields of a request or frame type, from the `Want` in each field's Annotated."""
    out: dict[str, Want] = {}
    for name, hint in typing.get_type_hints(message, include_extras=True).items():
        if typing.get_origin(hint) in (NotRequired, Required):
            hint = typing.get_args(hint)[0]
        wants = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Want)]
        if wants:
            out[name] = wants[0]
    return out


def _op_of(request: type[Mapping[str, Any]]) -> str:
    (op,) = typing.get_args(typing.get_type_hints(request)["op"])
    return str(op)


# Every field of every request, op by op, with what it must be; and of a submission's frames.
REQUEST_FIELDS: dict[str, dict[str, Want]] = {c.op: c.fields for c in CONTRACTS}
SUBMIT_FRAME_FIELDS = fields_of(SubmitFrame)
BLOB_FRAME_FIELDS = fields_of(BlobFrame)
TASK_FIELDS = fields_of(SubmittedTask)


def request_problem(request: Mapping[str, Any]) -> str | None:
    """Why a control request cannot be served, naming the field; None if it can."""
    op = request.get("op")
    if not isinstance(op, str) or op not in REQUEST_FIELDS:
        return f"unknown request {shown(op)}"
    return _fields_problem(request, REQUEST_FIELDS[op], f"{op} request")


def submit_frame_problem(frame: Mapping[str, Any]) -> str | None:
    """Why a frame of a submission's stream is malformed, naming the field; None if it is not."""
    problem = _fields_problem(frame, SUBMIT_FRAME_FIELDS, "submission frame")
    if problem is not None:
        return problem
    for i, task in enumerate(frame.get("tasks") or []):
        if not isinstance(task, dict):
            return f"submission frame: tasks[{i}] must be a map, got {type(task).__name__}"
        problem = _fields_problem(task, TASK_FIELDS, f"submission frame: tasks[{i}]")
        if problem is not None:
            return problem
    return None


def blob_frame_problem(frame: Mapping[str, Any]) -> str | None:
    """Why a frame of a put blob's stream is malformed, naming the field; None if it is not."""
    return _fields_problem(frame, BLOB_FRAME_FIELDS, "blob frame")


def _fields_problem(message: Mapping[str, Any], fields: dict[str, Want], what: str) -> str | None:
    for name, want in fields.items():
        value = message.get(name)
        if not want.check(value):
            got = "nothing" if name not in message else type(value).__name__
            return f"bad {what}: {name!r} must be {want.wanted}, got {got}"
    return None
