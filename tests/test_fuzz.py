"""Fuzzing every decoder of outside bytes: a value of the expected type, or the typed error.

Each decoder gets two kinds of input: anything at all (random bytes, or random structures as
msgpack or JSON decodes them, with huge ints, NaN and deep nesting), and real messages built by
the encoders, then mutated (bits flipped, cut short, spliced, or one field of the plain structure
replaced by anything). What comes out must be a value of the type the decoder promises, usable
downstream (it encodes again, its signature checks to a bool), or the decoder's own error: never
another exception, which would drop a connection, stop a receive loop or print a traceback.

Hypothesis is derandomized, so a run in CI is the same run every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import math
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from swarm import connection, control
from swarm.cli.taskfile import NewTask, parse_jsonl, parse_lines
from swarm.core import gossip, identity, wire
from swarm.core.ledger import (
    Body,
    CancelRecord,
    ClaimRecord,
    DrainRecord,
    HeartbeatRecord,
    Ledger,
    LostRecord,
    Outcome,
    ReplicaRecord,
    ResultRecord,
    RetryRecord,
    TaskRecord,
    body_from_plain,
    body_to_plain,
    task_record_problem,
)
from swarm.core.manifest import Manifest, manifest_bytes, parse_manifest
from swarm.core.spec import Resources, TaskSpec, task_id
from swarm.daemon import db
from swarm.daemon.control_server import checked_task
from swarm.errors import (
    BadRecordError,
    ControlError,
    CorruptBlobError,
    SwarmError,
    TaskFileError,
    UserInputError,
    shown,
)

FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI is repeatable
    database=None,
    # No "explain" phase: it formats every traceback, and a RecursionError's is a thousand deep.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(FUZZ, max_examples=100)  # examples that touch the disk or start an event loop
PER_BASE = settings(FUZZ, max_examples=80)  # for each real message (parametrized)

# A daemon decodes under Python's default recursion limit (1,000 frames, of which asyncio and the
# receive loop take a few dozen). Hypothesis raises the limit while a test runs, which would hide
# a RecursionError: each property runs its decoders with no more frames free than this.
FRAMES_FREE = 900


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def like_the_daemon(test: Callable[..., None]) -> Callable[..., None]:
    """Run `test` with FRAMES_FREE frames of stack left, as a daemon has (at most)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(_stack_depth() + FRAMES_FREE)
        try:
            test(*args, **kwargs)
        finally:
            sys.setrecursionlimit(limit)

    return run


KEY = bytes(range(32))
ALICE = b"a" * 16  # the sender
ME = b"m" * 16  # the node that opens
# Fixed keys, so that every run fuzzes the very same messages.
NODE = identity.Identity(Ed25519PrivateKey.from_private_bytes(b"\x01" * 32))
PEER = identity.Identity(Ed25519PrivateKey.from_private_bytes(b"\x02" * 32))
DIGEST = "ab" * 32

# -- anything at all -------------------------------------------------------------------------

MSGPACK_INTS = st.integers(-(2**63), 2**64 - 1)
HUGE_INTS = st.integers(min_value=2**64, max_value=2**2000) | st.integers(
    min_value=-(2**2000), max_value=-(2**63) - 1
)
SCALARS = (
    st.none()
    | st.booleans()
    | MSGPACK_INTS
    | st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)])
    | st.floats()  # NaN and infinities included
    | st.text(max_size=12)
    | st.binary(max_size=12)
    | st.sampled_from(["F", "C", "R", "S", "B", "H", "ok", "op", "tasks", "end", "cmd", DIGEST])
)
KEYS = (
    st.none()
    | st.booleans()
    | MSGPACK_INTS
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=6) | st.dictionaries(KEYS, children, max_size=4)


# What msgpack can carry: any of it may come out of `unpack`.
PACKABLE = st.recursive(SCALARS, _containers, max_leaves=24)


class _Deep(list[Any]):
    """The outer level of a deep nest of lists; Hypothesis prints it short, where printing
    every level would pass the recursion limit. `repr()` (what a decoder sees) is a list's."""

    depth = 0

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"nested({self.depth})")


class _DeepMap(dict[Any, Any]):
    """The same, of maps."""

    depth = 0

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"nested({self.depth}, as_map=True)")


def nested(depth: int, innermost: Any = None, as_map: bool = False) -> Any:
    """`depth` levels of one-item lists (or maps): deeper than Python's recursion limit."""
    value = innermost
    for _ in range(depth - 1):
        value = {"k": value} if as_map else [value]
    outer: _Deep | _DeepMap = _DeepMap(k=value) if as_map else _Deep([value])
    outer.depth = depth
    return outer


# Past Python's recursion limit (1,000), as deep as msgpack decodes (it stops past 1,024 levels).
DEEP = st.builds(nested, st.integers(990, 1024), SCALARS, st.booleans())
# What the plain decoders may be handed: msgpack's output, and more (a caller in Python).
PLAIN = st.recursive(SCALARS | HUGE_INTS | DEEP, _containers, max_leaves=24)
# Values that break decoders: wrong types, the edges of msgpack's ints, huge ints, floats that
# do not convert (NaN, infinities, beyond any int64), deep nests. Every field of every real
# message is replaced by each of them in turn, and they stand in for a field half the time in
# the random mutations.
EDGE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1,
    2**200, -(2**200), 1e300, -1e300, 1e19, math.nan, math.inf, -math.inf, "", "x", "nan",
    "1e400", "\x00", b"", b"\x01", [], [None], {}, {"": None}, {1: "a", "b": 2},
]  # fmt: skip
# (Hypothesis takes the repr of what it samples from, so the deep ones are built, not sampled.)
EDGES = st.sampled_from(EDGE_VALUES) | DEEP
EDGE_VALUES += [nested(1000), nested(1024, 0, as_map=True)]
FIELDS = EDGES | PLAIN
# msgpack bytes of a deep structure, built by hand (msgpack's packer stops at 512 levels).
DEEP_BYTES = st.builds(
    lambda depth, as_map: (b"\x81\xa1k" if as_map else b"\x91") * depth + b"\xc0",
    st.integers(990, 1100),
    st.booleans(),
)
RANDOM_BYTES = (
    st.binary(max_size=300)
    | DEEP_BYTES
    | PACKABLE.map(lambda v: msgpack.packb(v, use_bin_type=True))
)

# -- mutations -------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, base: bytes, others: tuple[bytes, ...] = ()) -> bytes:
    """`base` after one to three edits: bits flipped, cut, bytes put in or taken out, spliced."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "overwrite", "splice"]))
        if op == "flip" and data:
            bit = draw(st.integers(0, len(data) * 8 - 1))
            data[bit // 8] ^= 1 << (bit % 8)
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8) | DEEP_BYTES)
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(patch)] = patch
        elif op == "splice" and others:
            other = draw(st.sampled_from(others))
            data[at:] = other[draw(st.integers(0, len(other))) :]
    return bytes(data)


Path_ = tuple[Any, ...]


def _paths(value: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    yield prefix
    if isinstance(value, _Deep | _DeepMap):  # not into a deep value put in by an earlier edit
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*prefix, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))


_DROP = object()


def _edit(value: Any, path: Path_, change: Callable[[Any], Any]) -> Any:
    """A copy of `value` with the item at `path` replaced by `change(item)`, or left out if
    that is _DROP (a copy all along the path: the original stays as it was)."""
    if not path:
        return change(value)
    head, rest = path[0], path[1:]
    copy: Any = list(value) if isinstance(value, list) else dict(value)
    new = _edit(value[head], rest, change)
    if new is _DROP:
        del copy[head]
    else:
        copy[head] = new
    return copy


@st.composite
def mutated_plain(draw: st.DrawFn, base: Any, values: st.SearchStrategy[Any] = FIELDS) -> Any:
    """`base` (a plain structure) with one to three fields replaced by anything, dropped,
    wrapped in a list, or given an extra item."""
    value = base
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(value))))
        op = draw(st.sampled_from(["replace", "replace", "drop", "wrap", "extend"]))
        if op == "replace":
            new = draw(values)
            value = _edit(value, path, lambda _, new=new: new)
        elif op == "drop" and path:
            value = _edit(value, path, lambda _: _DROP)
        elif op == "wrap":
            value = _edit(value, path, lambda item: [item])
        elif op == "extend":
            extra = draw(values)
            value = _edit(
                value,
                path,
                lambda item, extra=extra: [*item, extra] if type(item) is list else item,
            )
    return value


def one_field_replaced(base: Any) -> Iterator[Any]:
    """`base` with each of its fields, at any depth, replaced by each edge value in turn, or
    left out."""
    for path in _paths(base):
        for value in EDGE_VALUES:
            yield _edit(base, path, lambda _, value=value: value)
        if path:
            yield _edit(base, path, lambda _: _DROP)


def packable(value: Any) -> bytes | None:
    """msgpack of `value`, or None when msgpack cannot carry it (a huge int, 512+ levels)."""
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return None
    return packed


# -- real messages, as the encoders make them ------------------------------------------------


def _spec() -> TaskSpec:
    return TaskSpec(
        cmd=None,
        argv=("python3", "fit.py", "--alpha", "0.5"),
        need=Resources(2.0, 2 << 30, 1),
        priority=3,
        timeout_s=60.0,
        retries=1,
        env=(("OMP_NUM_THREADS", "1"),),
        cwd="/srv/work",
        requires=(("cpus", ">=4"), ("zone", ("eu", "us"))),
        outputs=("out/*.csv",),
    )


def _result() -> ResultRecord:
    body = ResultRecord(
        task_id="t" * 64,
        epoch=2,
        attempt=1,
        outcome=Outcome.OK,
        exit_code=0,
        started_ms=1_700_000_000_000,
        ended_ms=1_700_000_001_000,
        wall_s=1.25,
        cpu_s=0.5,
        max_rss_kb=2048,
        digest=DIGEST,
        node_capacity=Resources(4.0, 8 << 30, 0),
        reason="",
        evicted=True,
    )
    return NODE.sign_result(body)


SPEC = _spec()
BODIES: tuple[Body, ...] = (
    TaskRecord(task_id("sweep", SPEC, "fit-1"), "sweep", "fit-1", SPEC, 12345),
    ClaimRecord("t" * 64, 2, 12346, released=False, stolen=True),
    HeartbeatRecord(77),
    _result(),
    replace(_result(), digest=None, value=b"\x80\x05a call's outcome"),
    ReplicaRecord(DIGEST),
    ReplicaRecord(DIGEST, dropped=True, round=2),
    CancelRecord("sweep"),
    CancelRecord("sweep", "t" * 64, 12347),
    RetryRecord("t" * 64, 2, 1, 1),
    DrainRecord(NODE.node_id, 12348, 30.0),
    LostRecord("t" * 64, 2, NODE.node_id),
)
RECORD_BLOBS = tuple(db.encode(b) for b in BODIES)
COPIES = tuple((NODE.node_id, 1, seq, blob) for seq, blob in enumerate(RECORD_BLOBS, start=1))

ADDR = ("10.0.0.5", 7946)
ALIVE = NODE.sign_alive(
    gossip.Alive(
        NODE.node_id, 3, ADDR, {"capacity": {"cpus": 4.0, "memory": 8 << 30}, "labels": {"z": "eu"}}
    )
)
RUMOURS: tuple[gossip.Rumour, ...] = (
    ALIVE,
    gossip.Suspect(PEER.node_id, 2, NODE.node_id),
    gossip.Dead(PEER.node_id, 3, PEER.node_id),
)
PACKETS = (
    gossip.Packet(gossip.Ping(9, PEER.node_id, NODE.node_id, ADDR), RUMOURS),
    gossip.Packet(gossip.IndirectPing(10, PEER.node_id, ("10.0.0.6", 7946), NODE.node_id, ADDR)),
    gossip.Packet(gossip.Ack(9, PEER.node_id), RUMOURS[1:]),
    gossip.Packet(gossip.Nack(9, PEER.node_id)),
    gossip.Packet(gossip.Gossip(), RUMOURS),
    gossip.Packet(gossip.PushPull(RUMOURS, ADDR, reply=True)),
)
LEDGER_MESSAGES: tuple[wire.LedgerMessage, ...] = (
    wire.RecordsPush(COPIES[:3]),
    wire.SyncRequest({(NODE.node_id, 1): 10, (PEER.node_id, 2): 0}),
    wire.SyncBatch(COPIES, done=True, upto={(NODE.node_id, 1): len(COPIES)}),
)
PLAINS: tuple[Any, ...] = (
    *(wire.packet_to_plain(p) for p in PACKETS),
    *(wire.ledger_message_to_plain(m) for m in LEDGER_MESSAGES),
    wire.blob_message_to_plain(wire.FetchRequest(DIGEST)),
    wire.blob_message_to_plain(wire.FetchRequest(DIGEST, "cd" * 32)),
    wire.blob_message_to_plain(wire.BlobChunk(b"chunk of a blob", last=True)),
    wire.blob_message_to_plain(wire.BlobChunk(b"", last=True, missing=True)),
    wire.hello_to_plain(wire.Hello(bytes(16))),
)
PLAIN_IDS = [
    *(type(p.message).__name__ for p in PACKETS),
    *(type(m).__name__ for m in LEDGER_MESSAGES),
    "FetchRequest", "FetchRequest-task", "BlobChunk", "BlobChunk-missing", "Hello",
]  # fmt: skip
BODIES_ON_THE_WIRE = tuple(wire.encode(p) for p in PLAINS)
DATAGRAM_BODY, _ = wire.encode_datagram(PACKETS[0])


def sealer() -> wire.Sealer:
    return wire.Sealer(ALICE, wire.KeyRing.of(KEY), 1000, bytes(wire.BOOT_BYTES))


def opener() -> wire.Opener:
    return wire.Opener(wire.KeyRing.of(KEY), ME)


# -- what a value must be good for -------------------------------------------------------------


def off_the_wire(raw: Any) -> bool:
    """Whether msgpack could have decoded `raw`: its ints fit 64 bits. A value decoded from
    something else (a huge int a Python caller passed) need only be of the right type."""
    stack = [raw]
    while stack:
        value = stack.pop()
        if isinstance(value, int) and not -(2**63) <= value < 2**64:
            return False
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
    return True


def assert_usable_packet(packet: gossip.Packet, encodes: bool = True) -> None:
    """A decoded packet encodes again, and every Alive in it checks to a bool."""
    assert isinstance(packet, gossip.Packet)
    if not encodes:
        return
    wire.encode(wire.packet_to_plain(packet))
    rumours = list(packet.rumours)
    if isinstance(packet.message, gossip.PushPull):
        rumours += packet.message.states
    for rumour in rumours:
        if isinstance(rumour, gossip.Alive):
            assert isinstance(identity.check_alive(rumour), bool)


BODY_TYPES = (
    TaskRecord, ClaimRecord, HeartbeatRecord, ResultRecord, ReplicaRecord, CancelRecord,
    RetryRecord, DrainRecord, LostRecord,
)  # fmt: skip


def assert_usable_body(body: Body, encodes: bool = True, origin: str = NODE.node_id) -> None:
    """A decoded record body encodes again (it is stored, signed and checked as such), its
    signature or id checks, and a ledger takes it."""
    assert isinstance(body, BODY_TYPES)
    if isinstance(body, TaskRecord):
        problem = task_record_problem(body)
        assert problem is None or isinstance(problem, str)
    Ledger().apply(db.Version(origin, 1, 1), body)
    if not encodes:
        return
    db.encode(body)
    if isinstance(body, ResultRecord):
        assert isinstance(identity.check_result(origin, body), bool)


def assert_usable_stream_message(message: wire.StreamMessage, encodes: bool = True) -> None:
    if isinstance(message, gossip.Packet):
        assert_usable_packet(message, encodes)
        return
    assert isinstance(
        message, wire.RecordsPush | wire.SyncRequest | wire.SyncBatch | wire.FetchRequest
        | wire.BlobChunk | wire.Hello
    )  # fmt: skip
    if not encodes:
        return
    if isinstance(message, wire.RecordsPush | wire.SyncRequest | wire.SyncBatch):
        wire.encode(wire.ledger_message_to_plain(message))
    elif isinstance(message, wire.FetchRequest | wire.BlobChunk):
        wire.encode(wire.blob_message_to_plain(message))


def test_the_real_messages_decode_as_they_were() -> None:
    """The bases the mutations start from are what the decoders take."""
    assert [wire.decode_packet(wire.encode(wire.packet_to_plain(p))) for p in PACKETS] == list(
        PACKETS
    )
    assert [wire.decode_any(b) for b in BODIES_ON_THE_WIRE[len(PACKETS) :]] == [
        *LEDGER_MESSAGES,
        wire.FetchRequest(DIGEST),
        wire.FetchRequest(DIGEST, "cd" * 32),
        wire.BlobChunk(b"chunk of a blob", last=True),
        wire.BlobChunk(b"", last=True, missing=True),
        wire.Hello(bytes(16)),
    ]
    assert [db.decode(b) for b in RECORD_BLOBS] == list(BODIES)
    assert identity.check_alive(ALIVE) and identity.check_result(NODE.node_id, BODIES[3])
    assert all(task_record_problem(b) is None for b in BODIES if isinstance(b, TaskRecord))


# -- the control socket ----------------------------------------------------------------------

JOB = "sweep"
TASKS: list[NewTask] = parse_jsonl(
    b'{"cmd": "echo 1", "name": "one", "env": {"A": "b"}, "outputs": ["*.txt"]}\n'
    b'{"argv": ["python3", "-c", "print(2)"], "memory": "1G", "requires": {"cpus": ">=2"}}\n',
    "sweep.jsonl",
    JOB,
    Path("/srv"),
)
REQUESTS: tuple[dict[str, Any], ...] = (
    {"op": "ping"},
    {"op": "status", "jobs": [JOB], "wait_ms": 500, "changes": 12},
    {"op": "cancel", "target": JOB},
    {"op": "join", "peers": ["10.0.0.5:7946"]},
    {"op": "drain", "node": "ab12", "grace_s": 2.5},
    {"op": "submit", "job": JOB},
    {
        "tasks": [
            {
                "task_id": t.task_id,
                "name": t.name,
                "explicit_name": t.explicit_name,
                "spec": t.spec.to_wire(),
                "line": t.line,
            }
            for t in TASKS
        ]
    },
    {"end": True},
)
REQUEST_IDS = [str(r.get("op", next(iter(r)))) for r in REQUESTS]
CONTROL_FRAMES = tuple(connection.encode_frame(r) for r in REQUESTS)
SUBMISSION = b"".join(CONTROL_FRAMES[-3:])


def _read_all_frames(data: bytes) -> list[dict[str, Any]]:
    """Every frame `read_frame` takes from a stream of `data`, to its end or its error."""

    async def go() -> list[dict[str, Any]]:
        reader = asyncio.StreamReader(limit=connection.FRAME_BYTES_MAX)
        reader.feed_data(data)
        reader.feed_eof()
        frames = []
        try:
            while (frame := await connection.read_frame(reader)) is not None:
                frames.append(frame)
        except ControlError:
            pass
        return frames

    return asyncio.run(go())


def assert_served_or_refused(frame: dict[str, Any]) -> None:
    """What the daemon does with a frame before acting (control_server.py `serve`, `_submit`):
    the table says what is wrong with it, or each task is made a record or refused in words."""
    assert isinstance(frame, dict)
    problem = control.request_problem(frame)
    assert problem is None or isinstance(problem, str)
    problem = control.submit_frame_problem(frame)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        for task in frame.get("tasks") or []:
            try:
                checked = checked_task(JOB, task)
            except UserInputError:
                continue
            assert_usable_body(TaskRecord(checked.task_id, JOB, checked.name, checked.spec, 1))


# -- the envelope ----------------------------------------------------------------------------


@FUZZ
@given(RANDOM_BYTES)
@like_the_daemon
def test_open_takes_random_bytes(packet: bytes) -> None:
    with pytest.raises(wire.BadPacket):
        opener().open(packet)


@FUZZ
@given(st.data())
@like_the_daemon
def test_open_takes_a_mutated_datagram_only_unchanged(data: st.DataObject) -> None:
    real = sealer().seal(DATAGRAM_BODY, to=ME)
    other = sealer().seal(wire.encode(wire.hello_to_plain(wire.Hello(bytes(16)))), to=ME)
    packet = data.draw(mutated(real, (other,)))
    try:
        opened = opener().open(packet)
    except wire.BadPacket:
        return
    # Only a whole envelope opens: the one sealed, or the other one spliced in whole.
    assert (packet, opened.sender, opened.body) in (
        (real, ALICE, DATAGRAM_BODY),
        (other, ALICE, wire.encode(wire.hello_to_plain(wire.Hello(bytes(16))))),
    )


# -- message bodies --------------------------------------------------------------------------


@FUZZ
@given(RANDOM_BYTES)
@like_the_daemon
def test_message_bodies_of_random_bytes_are_dropped_or_messages(body: bytes) -> None:
    with contextlib.suppress(wire.BadPacket):
        message = wire.decode(body)
        assert isinstance(message, list) and isinstance(message[0], int)
    with contextlib.suppress(wire.BadPacket):
        assert_usable_packet(wire.decode_packet(body))
    with contextlib.suppress(wire.BadPacket):
        assert_usable_stream_message(wire.decode_any(body))


@PER_BASE
@pytest.mark.parametrize("base", BODIES_ON_THE_WIRE, ids=PLAIN_IDS)
@given(data=st.data())
@like_the_daemon
def test_a_mutated_sealed_message_is_a_message_or_dropped(base: bytes, data: st.DataObject) -> None:
    """The whole path of a datagram or a frame (net.GossipNet._open): an authentic envelope
    whose body is a real message, mutated."""
    body = data.draw(mutated(base, BODIES_ON_THE_WIRE))
    try:
        opened = opener().open(sealer().seal(body, to=ME), wire.FRAME_BYTES_MAX)
        message = wire.decode_any(opened.body)
    except wire.BadPacket:
        pass
    else:
        assert_usable_stream_message(message)
    with contextlib.suppress(wire.BadPacket):
        assert_usable_packet(wire.decode_packet(body))


@PER_BASE
@pytest.mark.parametrize("base", PLAINS, ids=PLAIN_IDS)
@given(data=st.data())
@like_the_daemon
def test_a_message_with_a_field_replaced_is_a_message_or_dropped(
    base: Any, data: st.DataObject
) -> None:
    """Each of a real message's fields replaced by anything: as its decoder sees it, and
    through msgpack when msgpack can carry it."""
    raw = data.draw(mutated_plain(base))
    decoders = [_decode_any_plain]
    decoders.append(wire.packet_from_plain if base in PLAINS[: len(PACKETS)] else _ledger_or_blob)
    for decoder in decoders:
        try:
            message = decoder(raw)
        except wire.BadPacket:
            continue
        assert_usable_stream_message(message, off_the_wire(raw))


def _ledger_or_blob(raw: Any) -> wire.StreamMessage:
    if isinstance(raw, list) and raw and raw[0] in ("F", "C", "H"):
        return _decode_any_plain(raw)  # their decoder is decode_any's
    return wire.ledger_message_from_plain(raw)


def _decode_any_plain(raw: Any) -> wire.StreamMessage:
    body = packable(raw)
    if body is None:
        raise wire.BadPacket("not msgpack")
    return wire.decode_any(body)


# -- ledger rows -----------------------------------------------------------------------------

KIND_IDS = [type(b).__name__ for b in BODIES]


@PER_BASE
@pytest.mark.parametrize("base", RECORD_BLOBS, ids=KIND_IDS)
@given(data=st.data())
@like_the_daemon
def test_a_mutated_record_body_is_a_record_or_a_bad_record(
    base: bytes, data: st.DataObject
) -> None:
    blob = data.draw(mutated(base, RECORD_BLOBS))
    try:
        body = db.decode(blob)
    except BadRecordError:
        return
    assert_usable_body(body)


@PER_BASE
@pytest.mark.parametrize("base", [body_to_plain(b) for b in BODIES], ids=KIND_IDS)
@given(data=st.data())
@like_the_daemon
def test_a_record_with_a_field_replaced_is_a_record_or_a_bad_record(
    base: Any, data: st.DataObject
) -> None:
    raw = data.draw(mutated_plain(base))
    try:
        body = body_from_plain(raw)
    except BadRecordError:
        return
    assert_usable_body(body, off_the_wire(raw))


@FUZZ
@given(RANDOM_BYTES)
@like_the_daemon
def test_a_record_body_of_random_bytes_is_a_record_or_a_bad_record(blob: bytes) -> None:
    try:
        body = db.decode(blob)
    except BadRecordError:
        return
    assert_usable_body(body)


@FUZZ
@given(st.just(SPEC.to_wire()).flatmap(mutated_plain))
@like_the_daemon
def test_a_spec_with_a_field_replaced_is_a_spec_or_a_value_error(raw: Any) -> None:
    """TaskSpec.from_wire's documented contract: ValueError for anything that is not a spec."""
    try:
        spec = TaskSpec.from_wire(raw)
    except ValueError:
        return
    assert_usable_spec(spec)


def assert_usable_spec(spec: TaskSpec) -> None:
    assert isinstance(spec, TaskSpec)
    assert TaskSpec.from_wire(spec.to_wire()) == spec
    task_id("job", spec, None)


def for_each(inputs: Iterator[Any], check: Callable[[Any], None]) -> None:
    """`check` every input; fail naming the inputs that broke it, and how."""
    failures = []
    for raw in inputs:
        try:
            check(raw)
        except Exception as exc:  # whatever it is, it is what this test is for
            failures.append(f"{shown(raw)}: {type(exc).__name__}: {shown(str(exc))}")
    assert not failures, f"{len(failures)} inputs broke it, among them:\n" + "\n".join(
        failures[:10]
    )


def _message_decoded(decoder: Callable[[Any], wire.StreamMessage]) -> Callable[[Any], None]:
    def check(raw: Any) -> None:
        with contextlib.suppress(wire.BadPacket):
            assert_usable_stream_message(decoder(raw), off_the_wire(raw))

    return check


def _record_decoded(raw: Any) -> None:
    with contextlib.suppress(BadRecordError):
        assert_usable_body(body_from_plain(raw), off_the_wire(raw))


def _spec_decoded(raw: Any) -> None:
    with contextlib.suppress(ValueError):
        assert_usable_spec(TaskSpec.from_wire(raw))


def _request_checked(raw: Any) -> None:
    if isinstance(raw, dict):
        assert_served_or_refused(raw)


@pytest.mark.parametrize("base", PLAINS, ids=PLAIN_IDS)
@like_the_daemon
def test_every_field_of_every_message_replaced_by_each_edge_value(base: Any) -> None:
    decoder = wire.packet_from_plain if base in PLAINS[: len(PACKETS)] else _ledger_or_blob
    for_each(one_field_replaced(base), _message_decoded(decoder))
    for_each(one_field_replaced(base), _message_decoded(_decode_any_plain))


@pytest.mark.parametrize("base", BODIES, ids=KIND_IDS)
@like_the_daemon
def test_every_field_of_every_record_replaced_by_each_edge_value(base: Body) -> None:
    for_each(one_field_replaced(body_to_plain(base)), _record_decoded)


@like_the_daemon
def test_every_field_of_a_spec_replaced_by_each_edge_value() -> None:
    for_each(one_field_replaced(SPEC.to_wire()), _spec_decoded)


@pytest.mark.parametrize("base", REQUESTS, ids=REQUEST_IDS)
@like_the_daemon
def test_every_field_of_every_control_request_replaced_by_each_edge_value(
    base: dict[str, Any],
) -> None:
    for_each(one_field_replaced(base), _request_checked)


@FUZZ
@given(PLAIN)
@like_the_daemon
def test_every_plain_decoder_takes_anything(raw: Any) -> None:
    """What msgpack may decode, and more: each decoder of a plain structure gives its value
    or its own error."""
    encodes = off_the_wire(raw)
    with contextlib.suppress(wire.BadPacket):
        assert_usable_packet(wire.packet_from_plain(raw), encodes)
    with contextlib.suppress(wire.BadPacket):
        assert_usable_stream_message(wire.ledger_message_from_plain(raw), encodes)
    with contextlib.suppress(BadRecordError):
        assert_usable_body(body_from_plain(raw), encodes)
    with contextlib.suppress(ValueError):
        assert_usable_spec(TaskSpec.from_wire(raw))
    if isinstance(raw, dict):
        assert_served_or_refused(raw)


# Column values as SQLite may hold them, whatever the schema says (a file edited by hand).
SQL_VALUES = (
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=40)
)


@FEW
@given(
    st.lists(
        st.tuples(
            SQL_VALUES | st.sampled_from([NODE.node_id, PEER.node_id]),
            SQL_VALUES | st.integers(0, 3),
            SQL_VALUES | st.integers(0, 30),
            SQL_VALUES | st.integers(0, 9),
            st.sampled_from(RECORD_BLOBS).flatmap(lambda b: mutated(b, RECORD_BLOBS))
            | st.sampled_from(RECORD_BLOBS)
            | SQL_VALUES.filter(lambda v: v is not None),
        ),
        max_size=12,
    )
)
@like_the_daemon
def test_load_ledger_takes_a_file_of_random_rows(rows: list[tuple[Any, ...]]) -> None:
    """Rows that cannot be read are left out and described; the rest make a ledger."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        db.create(path, {"generation": 1})
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.executemany("INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?)", rows)
        loaded = db.load_ledger(path)
    assert isinstance(loaded, db.Loaded) and isinstance(loaded.ledger, Ledger)
    assert all(isinstance(line, str) for line in loaded.unreadable + loaded.refused)


@FEW
@given(st.binary(min_size=1, max_size=2000).map(lambda b: b"SQLite format 3\x00" + b) | st.binary())
@like_the_daemon
def test_load_ledger_takes_a_file_of_random_bytes(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        path.write_bytes(content)
        try:
            loaded = db.load_ledger(path)
        except SwarmError:
            return
    assert isinstance(loaded, db.Loaded)


@FEW
@given(
    st.sampled_from([*CONTROL_FRAMES, SUBMISSION]).flatmap(lambda b: mutated(b, CONTROL_FRAMES))
    | RANDOM_BYTES
    | RANDOM_BYTES.map(lambda b: len(b).to_bytes(4, "big") + b)
)
@like_the_daemon
def test_control_frames_are_read_or_refused(data: bytes) -> None:
    for frame in _read_all_frames(data):
        assert_served_or_refused(frame)


@PER_BASE
@pytest.mark.parametrize("base", REQUESTS, ids=REQUEST_IDS)
@given(data=st.data())
@like_the_daemon
def test_a_control_request_with_a_field_replaced_is_served_or_refused(
    base: dict[str, Any], data: st.DataObject
) -> None:
    """A request as msgpack decodes it (through a real frame when msgpack carries it)."""
    frame = data.draw(mutated_plain(base))
    body = packable(frame)
    if body is not None:
        frames = _read_all_frames(len(body).to_bytes(4, "big") + body)
        assert len(frames) == (1 if isinstance(frame, dict) else 0)
        frame = frames[0] if frames else frame
    if isinstance(frame, dict):
        assert_served_or_refused(frame)


# -- result manifests ------------------------------------------------------------------------

MANIFEST = manifest_bytes(DIGEST, "cd" * 32, {"out/a.csv": "ef" * 32, "b.txt": DIGEST})
JSONABLE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)


def _json(value: Any) -> bytes:
    """JSON text of `value` (non-ASCII and lone surrogates as \\u escapes), or of null when
    JSON cannot carry it (bytes, a nest too deep for the encoder)."""
    try:
        return json.dumps(value).encode("ascii")
    except (TypeError, ValueError, RecursionError):
        return b"null"


@FUZZ
@given(
    mutated(MANIFEST)
    | mutated_plain(json.loads(MANIFEST), JSONABLE).map(_json)
    | RANDOM_BYTES
    | JSONABLE.map(_json)
    | st.builds(lambda d: b"[" * d + b"]" * d, st.integers(900, 5000))
)
@like_the_daemon
def test_a_manifest_parses_or_is_corrupt(data: bytes) -> None:
    try:
        manifest = parse_manifest(data)
    except CorruptBlobError:
        return
    assert isinstance(manifest, Manifest)
    assert (
        parse_manifest(manifest_bytes(manifest.stdout, manifest.stderr, manifest.files)) == manifest
    )


# -- signatures ------------------------------------------------------------------------------


@FUZZ
@given(
    st.text(max_size=40) | st.just(NODE.node_id), st.binary(max_size=64), st.binary(max_size=120)
)
@like_the_daemon
def test_a_proof_of_anything_checks_to_a_bool(node: str, message: bytes, proof: bytes) -> None:
    assert isinstance(identity.check(node, message, proof), bool)


@FUZZ
@given(st.data())
@like_the_daemon
def test_a_mutated_proof_never_checks(data: st.DataObject) -> None:
    proof = data.draw(mutated(ALIVE.proof, (BODIES[3].proof,)))  # type: ignore[union-attr]
    alive = dataclasses.replace(ALIVE, proof=proof)
    assert identity.check_alive(alive) is (proof == ALIVE.proof)


# -- task files ------------------------------------------------------------------------------

TASK_FILE = (
    b'{"cmd": "echo hi", "name": "a", "cpus": 0.5, "memory": "2G", "timeout": 10}\n'
    b'{"argv": ["sim", "--n", "3"], "env": {"X": "1"}, "requires": {"zone": ["eu", "us"]}}\n'
    b'{"cmd": "true", "cwd": "sub", "outputs": ["out/*.csv"], "retries": 0, "priority": -2}\n'
)
TASK_LINES = tuple(line for line in TASK_FILE.split(b"\n") if line)


def _parsed_or_refused(parse: Callable[[bytes], list[NewTask]], data: bytes) -> None:
    try:
        tasks = parse(data)
    except TaskFileError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)
        return
    assert tasks and all(isinstance(t, NewTask) for t in tasks)


def _jsonl(data: bytes) -> list[NewTask]:
    return parse_jsonl(data, "f.jsonl", JOB, Path("/srv"))


def _lines(data: bytes) -> list[NewTask]:
    return parse_lines(data, "f.txt", JOB)


@st.composite
def _mutated_task_file(draw: st.DrawFn) -> bytes:
    lines = list(TASK_LINES)
    at = draw(st.integers(0, len(lines) - 1))
    line = json.loads(lines[at])
    lines[at] = _json(draw(mutated_plain(line, JSONABLE)))
    return b"\n".join(lines)


TASK_FILES = (
    mutated(TASK_FILE)
    | _mutated_task_file()
    | RANDOM_BYTES
    | st.lists(JSONABLE.map(_json), max_size=4).map(b"\n".join)
    | st.builds(lambda d: b"[" * d + b"]" * d, st.integers(900, 5000))
    | st.builds(
        lambda d: b'{"cmd": "x", "env": ' + b"[" * d + b"]" * d + b"}", st.integers(400, 1200)
    )
)


@FUZZ
@given(TASK_FILES)
@like_the_daemon
def test_a_task_file_parses_or_is_refused(data: bytes) -> None:
    _parsed_or_refused(_jsonl, data)
    _parsed_or_refused(_lines, data)


@like_the_daemon
def test_every_field_of_every_task_line_replaced_by_each_edge_value() -> None:
    def check(line: Any) -> None:
        data = b"\n".join([*TASK_LINES, _json(line)])
        _parsed_or_refused(_jsonl, data)
        _parsed_or_refused(_lines, data)

    for text in TASK_LINES:
        for_each(one_field_replaced(json.loads(text)), check)


@like_the_daemon
def test_every_field_of_a_manifest_replaced_by_each_edge_value() -> None:
    def check(raw: Any) -> None:
        with contextlib.suppress(CorruptBlobError):
            assert isinstance(parse_manifest(_json(raw)), Manifest)

    for_each(one_field_replaced(json.loads(MANIFEST)), check)


# -- what the fuzzing found, kept as plain cases -------------------------------------------------


def _result_with_capacity(capacity: Any) -> list[Any]:
    plain = body_to_plain(BODIES[3])
    plain[12] = capacity
    return plain


@pytest.mark.parametrize(
    "raw",
    [
        nested(1000),  # the error message quoted it with repr(): RecursionError
        [nested(1000)],  # the enum's own error message did the same
        _result_with_capacity([4.0, 1e300, 0]),  # int(1e300) decoded, then did not encode
        _result_with_capacity(["nan", "12", b"3"]),  # float() and int() took text and bytes
        b"\x03\x07",  # bytes are not a record, though b[0] is the kind of a heartbeat
    ],
    ids=["deep", "deep-kind", "huge-capacity", "text-capacity", "bytes"],
)
@like_the_daemon
def test_found_a_record_that_is_refused(raw: Any) -> None:
    with pytest.raises(BadRecordError):
        body_from_plain(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {},  # KeyError 'cpus'
        {**SPEC.to_wire(), "cpus": 2**1100},  # OverflowError
        {**SPEC.to_wire(), 1: 0, "x": 0},  # sorting unknown keys of two types: TypeError
        {**SPEC.to_wire(), "env": {"A": "1", 2: "b"}},  # sorting env: TypeError
    ],
    ids=["empty", "huge-cpus", "mixed-keys", "mixed-env"],
)
def test_found_a_spec_that_is_a_value_error(raw: Any) -> None:
    with pytest.raises(ValueError):
        TaskSpec.from_wire(raw)


@like_the_daemon
def test_found_packets_that_are_dropped() -> None:
    alive = wire.packet_to_plain(PACKETS[0])
    alive[1][0][4] = nested(1000, as_map=True)  # meta: checking it recursed past the limit
    for raw in ([[nested(1000)], []], alive):  # a deep type: the enum's message quoted it
        with pytest.raises(wire.BadPacket):
            wire.packet_from_plain(raw)


@pytest.mark.parametrize("digest", ["0x" + "a" * 62, " " + "a" * 62 + " "])
def test_found_a_fetch_request_that_is_dropped(digest: str) -> None:
    with pytest.raises(wire.BadPacket):  # int(digest, 16) took them
        wire.decode_any(wire.encode(["F", digest]))


@like_the_daemon
def test_found_a_control_request_that_is_refused_in_words() -> None:
    problem = control.request_problem({"op": [nested(1000)]})
    assert problem is not None and problem.startswith("unknown request [")


def test_found_ledger_rows_that_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    db.create(path, {"generation": 1})
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?)", (0, 0, "", 0, RECORD_BLOBS[2]))
        conn.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?)", ("n", 1, 1, 3, RECORD_BLOBS[2]))
    loaded = db.load_ledger(path)  # the text seq beside an int one: TypeError in Ledger.apply
    assert len(loaded.unreadable) == 1 and "not a node id and two counters" in loaded.unreadable[0]
    assert loaded.ledger.heartbeats == {"n": 77}
