"""The ledger's records: their kinds, their bodies, and their plain encoding.

Theory of operation
-------------------
A record is a frozen body written by exactly one node (its origin) under a `Version(origin,
generation, seq)`. `Kind` numbers the bodies; the numbers are stored on disk and sent on the wire,
so the enum only grows. `body_to_plain` turns a body into msgpack-friendly lists `[kind, field,
...]` and `body_from_plain` reads them back. The encoding is stable: a field added later is encoded
only when set, so a record written before it keeps the layout (and so the signature) it had, and a
reader takes both. Anything malformed raises `BadRecordError` and nothing else, since the input
comes from disk and from peers. `task_record_problem` says whether a TASK record is what its id
claims, as a record edited on disk or forged by a peer would not be.

How records fold into task states is `ledger.py`'s business; this module only says what a record
is. Pure: no I/O, no clock reads.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from swarm.core import spec as specs
from swarm.core.spec import Resources, TaskSpec
from swarm.errors import BadRecordError, shown


class Kind(enum.IntEnum):
    """Record kinds. Append-only: the numbers are stored on disk and sent on the wire."""

    TASK = 1
    CLAIM = 2
    HEARTBEAT = 3
    RESULT = 4
    REPLICA = 5
    CANCEL = 6
    RETRY = 7
    DRAIN = 8
    LOST = 9


class Outcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True, order=True)
class Version:
    origin: str
    generation: int
    seq: int


@dataclass(frozen=True, slots=True)
class TaskRecord:
    task_id: str
    job: str
    name: str
    spec: TaskSpec
    stamp: int  # HLC at submission


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    task_id: str
    epoch: int
    stamp: int  # HLC at claim time: the tie-breaker between competing claims of one epoch
    released: bool = False
    # Made by a node that is not the task's preferred one (work stealing): it loses to a claim
    # of the same epoch that is not stolen, whatever their stamps. The preferred node starts a
    # task at once, while a thief waits a settle before it starts; so when both reach for one
    # task at the same moment, the thief (not yet started) is the one that backs off.
    stolen: bool = False


@dataclass(frozen=True, slots=True)
class HeartbeatRecord:
    counter: int


@dataclass(frozen=True, slots=True)
class ResultRecord:
    task_id: str
    epoch: int
    attempt: int
    outcome: Outcome
    exit_code: int | None
    started_ms: int  # the executing node's wall clock, for people; never used for expiry
    ended_ms: int
    wall_s: float  # measured on the node's monotonic clock
    cpu_s: float
    max_rss_kb: int
    digest: str | None  # sha256 of the result manifest (stdout, stderr, output files)
    node_capacity: Resources  # so runtimes can be compared across machine shapes
    reason: str = ""
    proof: bytes = b""  # the executing node's signature (identity.py); empty only in the simulator
    evicted: bool = False  # interrupted by its node to free memory (an eviction, not a node loss)
    # A Python call's outcome (pycall), when it is small and the call printed nothing: carried
    # in the record, so that it needs no blob, no fsync of its own and no copies (every node
    # has the ledger). `digest` is then None.
    value: bytes = b""


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """Its origin holds the whole result (or call input) `digest`; or, `dropped`, no longer
    does (its copy was found damaged). A node's holding of a digest goes in rounds: a hold of
    round r, then perhaps its drop (round r), then a hold of round r+1 once it has a good copy
    again. Of a node's replica records of a digest, the one of the highest (round, dropped)
    says, whatever the order they arrive in."""

    digest: str
    dropped: bool = False
    round: int = 0

    def key(self) -> tuple[int, bool]:
        return (self.round, self.dropped)


@dataclass(frozen=True, slots=True)
class CancelRecord:
    """Cancel one task, or (task_id None) every task of the job submitted up to `stamp`: tasks
    added to the job later are not cancelled by it."""

    job: str
    task_id: str | None = None
    stamp: int = 0


@dataclass(frozen=True, slots=True)
class RetryRecord:
    """Re-queue a failed task: failures, interruptions and evictions up to these counts are
    forgiven. `revived`, when set (an HLC stamp), also lifts the cancels of the task (and of its
    job) stamped before it: a script run again runs the calls that a cancel stopped."""

    task_id: str
    failures: int
    interruptions: int
    evictions: int = 0
    revived: int = 0


@dataclass(frozen=True, slots=True)
class DrainRecord:
    """Ask `node` to finish what it runs, claim nothing new, and leave (a preemption notice).
    Only a life of the node started before `stamp` obeys it; after `grace_s` (if set) the node
    interrupts what still runs, and those tasks run elsewhere."""

    node: str
    stamp: int
    grace_s: float | None = None


@dataclass(frozen=True, slots=True)
class LostRecord:
    """Every node that held the result of this attempt (epoch, node) is gone: it no longer
    counts, and the task runs again. (The attempt, not the digest: a rerun of a deterministic
    task makes the same digest, held anew.)"""

    task_id: str
    epoch: int
    node: str


Body = (
    TaskRecord
    | ClaimRecord
    | HeartbeatRecord
    | ResultRecord
    | ReplicaRecord
    | CancelRecord
    | RetryRecord
    | DrainRecord
    | LostRecord
)

KIND_OF: dict[type[Any], Kind] = {
    TaskRecord: Kind.TASK,
    ClaimRecord: Kind.CLAIM,
    HeartbeatRecord: Kind.HEARTBEAT,
    ResultRecord: Kind.RESULT,
    ReplicaRecord: Kind.REPLICA,
    CancelRecord: Kind.CANCEL,
    RetryRecord: Kind.RETRY,
    DrainRecord: Kind.DRAIN,
    LostRecord: Kind.LOST,
}


_KINDS = {int(kind): kind for kind in Kind}


def stamp_of(body: Body) -> int | None:
    """The HLC stamp a record carries, if its kind has one."""
    if isinstance(body, TaskRecord | ClaimRecord | CancelRecord | DrainRecord):
        return body.stamp
    if isinstance(body, RetryRecord) and body.revived:
        return body.revived
    return None


def task_record_problem(body: TaskRecord) -> str | None:
    """Why a TASK record cannot be trusted, or None: its id must be the hash of its job and spec
    (and of its name, when the user chose one), as `spec.task_id` derives it at submission. A
    record edited on disk or forged by a peer would otherwise run another command under the
    id, and the results, of the task it claims to be."""
    # A name of digits is most likely a line number, which the id leaves out: try that first.
    names = (None, body.name) if body.name.isdecimal() else (body.name, None)
    for name in names:  # (a loop, not any() of a generator: a million are checked at a start)
        if specs.task_id(body.job, body.spec, name) == body.task_id:
            return None
    return (
        f"task {body.task_id[:16]} ({body.name!r} of job {body.job!r}) does not hash to its id:"
        " its spec was changed after it was submitted"
    )


# -- plain encoding (for the database and the wire) --------------------------------------------


def body_to_plain(body: Body) -> list[Any]:
    """A record body as msgpack-friendly lists: [kind, field, ...]."""
    match body:
        case TaskRecord():
            return [Kind.TASK, body.task_id, body.job, body.name, body.spec.to_wire(), body.stamp]
        case ClaimRecord():
            stolen = [True] if body.stolen else []  # encoded only when set, as `evicted` below
            return [Kind.CLAIM, body.task_id, body.epoch, body.stamp, body.released, *stolen]
        case HeartbeatRecord():
            return [Kind.HEARTBEAT, body.counter]
        case ResultRecord():
            return result_to_plain(body, body.proof)
        case ReplicaRecord():
            tail = [body.dropped, body.round] if body.dropped or body.round else []  # when set
            return [Kind.REPLICA, body.digest, *tail]
        case CancelRecord():
            return [Kind.CANCEL, body.job, body.task_id, body.stamp]
        case RetryRecord():
            # Only when set, as `evicted` above.
            tail = (
                [body.evictions, body.revived]
                if body.revived
                else [body.evictions]
                if body.evictions
                else []
            )
            return [Kind.RETRY, body.task_id, body.failures, body.interruptions, *tail]
        case DrainRecord():
            return [Kind.DRAIN, body.node, body.stamp, body.grace_s]
        case LostRecord():
            return [Kind.LOST, body.task_id, body.epoch, body.node]
    raise AssertionError(f"unknown record body {body!r}")


def result_to_plain(body: ResultRecord, proof: bytes) -> list[Any]:
    """A RESULT body as body_to_plain gives it, with `proof` in place of its own (a signature is
    made and checked over the body with an empty proof)."""
    return [
        Kind.RESULT,
        body.task_id,
        body.epoch,
        body.attempt,
        str(body.outcome),
        body.exit_code,
        body.started_ms,
        body.ended_ms,
        body.wall_s,
        body.cpu_s,
        body.max_rss_kb,
        body.digest,
        body.node_capacity.to_wire(),
        body.reason,
        proof,
        # Only when set: a result written without them keeps the layout (and so the
        # signature) it had before the fields existed.
        *([body.evicted, body.value] if body.value else [True] if body.evicted else []),
    ]


def body_from_plain(raw: Any) -> Body:
    """Inverse of body_to_plain; anything malformed raises BadRecordError, never anything else."""
    try:
        if not isinstance(raw, list):
            raise TypeError(f"a record is a list, not {type(raw).__name__}")
        # The kind and outcome are checked for type before the enum looks them up: its error
        # message quotes the value, and the repr of a deeply nested one raises RecursionError.
        kind = _KINDS.get(_i(raw[0])) or Kind(raw[0])  # (a dict: Kind() costs a record's tenth)
        f = raw[1:]
        match kind:
            case Kind.TASK:
                return TaskRecord(_s(f[0]), _s(f[1]), _s(f[2]), TaskSpec.from_wire(f[3]), _i(f[4]))
            case Kind.CLAIM:
                stolen = len(f) > 4 and bool(f[4])
                return ClaimRecord(_s(f[0]), _i(f[1]), _i(f[2]), bool(f[3]), stolen)
            case Kind.HEARTBEAT:
                return HeartbeatRecord(_i(f[0]))
            case Kind.RESULT:
                return ResultRecord(
                    task_id=_s(f[0]),
                    epoch=_i(f[1]),
                    attempt=_i(f[2]),
                    outcome=Outcome(_s(f[3])),
                    exit_code=None if f[4] is None else _i(f[4]),
                    started_ms=_i(f[5]),
                    ended_ms=_i(f[6]),
                    wall_s=_f(f[7]),
                    cpu_s=_f(f[8]),
                    max_rss_kb=_i(f[9]),
                    digest=None if f[10] is None else _s(f[10]),
                    node_capacity=Resources.from_wire(f[11]),
                    reason=_s(f[12]),
                    proof=_b(f[13]),
                    evicted=len(f) > 14 and bool(f[14]),  # absent from records of before it
                    value=_value(f[15]) if len(f) > 15 else b"",
                )
            case Kind.REPLICA:
                if len(f) == 1:
                    return ReplicaRecord(_s(f[0]))
                if not isinstance(f[1], bool) or (f[1], f[2]) == (False, 0):
                    raise ValueError("a replica's long form is for a drop or a later round")
                return ReplicaRecord(_s(f[0]), f[1], _count(f[2]))
            case Kind.CANCEL:
                return CancelRecord(_s(f[0]), None if f[1] is None else _s(f[1]), _i(f[2]))
            case Kind.RETRY:
                evictions = _i(f[3]) if len(f) > 3 else 0
                return RetryRecord(
                    _s(f[0]), _i(f[1]), _i(f[2]), evictions, _i(f[4]) if len(f) > 4 else 0
                )
            case Kind.LOST:
                return LostRecord(_s(f[0]), _i(f[1]), _s(f[2]))
            case Kind.DRAIN:
                grace = None if f[2] is None else _f(f[2])
                return DrainRecord(_s(f[0]), _i(f[1]), grace)
    except (IndexError, KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise BadRecordError(f"malformed record {shown(raw)}: {exc}") from exc
    raise BadRecordError(f"unknown record kind in {shown(raw)}")


def _s(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _b(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return value


def _value(value: Any) -> bytes:
    """A call's outcome in its RESULT: small, or the record is refused (every node keeps it)."""
    data = _b(value)
    if len(data) > specs.INLINE_OUTCOME_BYTES_MAX:
        raise ValueError(f"an inline outcome of {len(data)} bytes is over the bound")
    return data


def _f(value: Any) -> float:
    # A number, not anything float() takes ("nan" as text, bytes of digits).
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _i(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _count(value: Any) -> int:
    """A round: a whole number from 0, bounded (a record is compared by it, never counted to)."""
    if not 0 <= _i(value) < 2**31:
        raise ValueError(f"a round is from 0 to 2**31-1, not {value}")
    return _i(value)
