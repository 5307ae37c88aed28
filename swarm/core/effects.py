"""What the node core is told, and what it asks its adapter to do.

The core (node.py) is driven by inputs that carry a `Time` and answers with effects: plain frozen
values that the adapter (the daemon, or the simulator) carries out in the order given, and whose
outcomes it reports back as further inputs (a claim written, an attempt ended, a result copied).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from swarm.core.ledger import Attempt, Body, ClaimRecord, Outcome, Version


@dataclass(frozen=True, slots=True)
class Time:
    """The moment of an input, on the node's two clocks."""

    mono: float  # monotonic seconds: timers, leases, stagger
    wall_ms: int  # the node's wall clock: the stamps of the records it writes


class Level(enum.IntEnum):
    """A log line's level (the values of the logging module's)."""

    INFO = 20
    WARNING = 30
    ERROR = 40


@dataclass(frozen=True, slots=True)
class Write:
    """Version, commit and apply these records (then gossip them). `claim_of`: the task whose
    claim (or claim release) this is; the adapter reports the outcome with `claim_written`.
    `what` names the records for a log line should the write fail. `first`: to be written
    before any other record of this life (the close of the claims its last stop cut off)."""

    bodies: tuple[Body, ...]
    what: str
    replaces: Version | None = None
    claim_of: str | None = None
    first: bool = False


@dataclass(frozen=True, slots=True)
class Start:
    """Start an attempt of `task_id` under `claim`. `write_claim`: the claim is not on disk
    yet; write it while the process starts (a short task should not wait for an fsync), and
    report the outcome with `claim_written`; the attempt's result may be written only after it."""

    task_id: str
    claim: ClaimRecord
    attempt: int  # its number among the task's attempts, 1 for the first
    gpu_ids: tuple[int, ...]
    write_claim: bool


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop a running attempt; it is recorded with `outcome`. `grace`: SIGTERM first, then the
    kill grace; else at once. `evict`: stopped by memory pressure (the record says so)."""

    task_id: str
    outcome: Outcome
    reason: str
    grace: bool = True
    evict: bool = False


@dataclass(frozen=True, slots=True)
class CopyResult:
    """Copy a result (its manifest and every file it names) here from its holders, or (no
    attempt) one input blob of a Python call from its holders and the node that submitted it
    (`source`); report with `copied`."""

    digest: str
    attempt: Attempt | None
    source: str = ""


@dataclass(frozen=True, slots=True)
class CheckDisk:
    """See whether the state disk, full when an attempt last ended, has room; report with
    `disk_checked`."""


@dataclass(frozen=True, slots=True)
class Announce:
    """The node's gossiped meta changed (it is draining): tell the members."""

    draining: bool


@dataclass(frozen=True, slots=True)
class Leave:
    """Leave the swarm and stop (a drain is over)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Log:
    level: Level
    text: str


Effect = Write | Start | Stop | CopyResult | CheckDisk | Announce | Leave | Log
