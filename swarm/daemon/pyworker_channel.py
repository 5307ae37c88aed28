"""The channel between a warm Python worker (pyworker.py) and its pool (workers.py): its frames
and the messages they carry.

Theory of operation
-------------------
The pool and the worker share one end each of a socketpair. Everything on it is a frame: a
4-byte big-endian length, then a msgpack map, at most FRAME_BYTES_MAX. The pool's first frame is
the worker's setup (`Hello`); then each of its frames is one call (`Call`: where the call's blobs
are, where its stdout, stderr and outcome go, its cwd and environment), answered by one frame
(`Reply`: how it went, its CPU time and peak memory, whether the worker exits now, and a small
outcome inline). Each message has `to_wire` and `from_wire`; a reply's outcome kind and inline
outcome are checked, since the pool reads what a call's process may have left corrupt.

The worker reads and writes its end with blocking calls (`read_frame`, `write_all`): it has no
event loop, and imports little (stdlib, msgpack) so that its start-up stays short.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from swarm.core.spec import INLINE_OUTCOME_BYTES_MAX

LENGTH = struct.Struct(">I")  # the frame header of swarm/framing.py (which imports asyncio)
FRAME_BYTES_MAX = 4 << 20  # a call's frame is paths and an environment: this is plenty

# What a call's outcome was, as the reply says it.
RETURNED = "returned"
RAISED = "raised"
UNLOADABLE = "unloadable"  # the function or its arguments cannot be loaded on this node


@dataclass(frozen=True, slots=True)
class Hello:
    """The worker's setup, the first frame the pool sends."""

    node_id: str
    sys_path: list[str]  # the daemon's: the worker imports what it imports
    calls_max: int
    rss_max_bytes: int
    pythonpath: str | None  # the daemon's PYTHONPATH, which calls' subprocesses should see

    def to_wire(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "sys_path": self.sys_path,
            "calls_max": self.calls_max,
            "rss_max_bytes": self.rss_max_bytes,
            "pythonpath": self.pythonpath,
        }

    @staticmethod
    def from_wire(raw: dict[str, Any]) -> Hello:
        return Hello(
            str(raw["node_id"]),
            [str(p) for p in raw["sys_path"]],
            int(raw["calls_max"]),
            int(raw["rss_max_bytes"]),
            None if raw["pythonpath"] is None else str(raw["pythonpath"]),
        )


@dataclass(frozen=True, slots=True)
class Call:
    """One call: where its blobs are, and where and how it runs."""

    fn_path: str  # the pickled function's blob
    fn_digest: str  # its sha256: the key of the loaded-function cache
    args_path: str  # the pickled (args, kwargs); "" when they are `args_inline`
    stdout: str
    stderr: str
    value: str  # where its outcome goes (run_dir/VALUE_FILE)
    cwd: str
    env: dict[str, str]  # entries set for this call only
    python: str  # the version that pickled it, such as "3.11"
    args_inline: bytes = b""  # small arguments, which travel in the task's spec

    def to_wire(self) -> dict[str, Any]:
        return {
            "fn_path": self.fn_path,
            "fn_digest": self.fn_digest,
            "args_path": self.args_path,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "value": self.value,
            "cwd": self.cwd,
            "env": self.env,
            "python": self.python,
            "args_inline": self.args_inline,
        }

    @staticmethod
    def from_wire(raw: dict[str, Any]) -> Call:
        return Call(
            fn_path=str(raw["fn_path"]),
            fn_digest=str(raw["fn_digest"]),
            args_path=str(raw["args_path"]),
            stdout=str(raw["stdout"]),
            stderr=str(raw["stderr"]),
            value=str(raw["value"]),
            cwd=str(raw["cwd"]),
            env={str(k): str(v) for k, v in dict(raw["env"]).items()},
            python=str(raw["python"]),
            args_inline=bytes(raw["args_inline"]),
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """How a call went."""

    kind: str  # RETURNED, RAISED or UNLOADABLE
    reason: str  # one line: the exception's summary ("" when it returned)
    value_written: bool  # its outcome is in the value file
    cpu_s: float  # user + system seconds of the call and the children it reaped
    max_rss_kb: int  # peak resident memory during the call
    recycle: bool  # the worker exits now
    # The outcome itself, when it is small and the call printed nothing (then no value file
    # was written): it goes in the RESULT record (spec.INLINE_OUTCOME_BYTES_MAX).
    inline: bytes = b""

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reason": self.reason,
            "value_written": self.value_written,
            "cpu_s": self.cpu_s,
            "max_rss_kb": self.max_rss_kb,
            "recycle": self.recycle,
            "inline": self.inline,
        }

    @staticmethod
    def from_wire(raw: dict[str, Any]) -> Reply:
        kind = str(raw["kind"])
        if kind not in (RETURNED, RAISED, UNLOADABLE):
            raise ValueError(f"unknown outcome kind {kind!r}")
        return Reply(
            kind,
            str(raw["reason"]),
            bool(raw["value_written"]),
            float(raw["cpu_s"]),
            int(raw["max_rss_kb"]),
            bool(raw["recycle"]),
            _inline_of(raw.get("inline", b"")),
        )


def _inline_of(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) > INLINE_OUTCOME_BYTES_MAX:
        raise ValueError("an inline outcome must be bytes, and small")
    return value


def encode(body: dict[str, Any]) -> bytes:
    """One frame: the length, then the msgpack body."""
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return LENGTH.pack(len(data)) + data


# -- the channel ---------------------------------------------------------------------------------


def read_frame(fd: int) -> dict[str, Any] | None:
    """The next frame's map; None at the end of the channel (the pool is gone)."""
    header = _read_exactly(fd, LENGTH.size)
    if header is None:
        return None
    (length,) = LENGTH.unpack(header)
    if length > FRAME_BYTES_MAX:
        raise ValueError(f"a frame of {length} bytes is over {FRAME_BYTES_MAX}")
    body = _read_exactly(fd, length)
    if body is None:
        return None
    raw = msgpack.unpackb(body, raw=False)
    if not isinstance(raw, dict):
        raise ValueError("a frame is not a map")
    return raw


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
