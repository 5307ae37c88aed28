"""The SWIM protocol's vocabulary (gossip.py runs it): the messages members exchange, the events
membership reports, and the math of its timeouts and retransmits (table-tested, as memberlist's
util.go). Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Addr = tuple[str, int]


# -- messages --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alive:
    node: str
    incarnation: int
    addr: Addr
    meta: dict[str, Any]
    proof: bytes = b""  # the node's own signature of the other fields (identity.py)


@dataclass(frozen=True, slots=True)
class Suspect:
    node: str
    incarnation: int
    accuser: str


@dataclass(frozen=True, slots=True)
class Dead:
    node: str
    incarnation: int
    accuser: str  # the node itself: it left


Rumour = Alive | Suspect | Dead


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str
    sender: str
    sender_addr: Addr


@dataclass(frozen=True, slots=True)
class IndirectPing:
    seq: int
    target: str
    target_addr: Addr
    sender: str
    sender_addr: Addr


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    sender: str


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int
    sender: str


@dataclass(frozen=True, slots=True)
class Gossip:
    """Nothing but the piggybacked rumours."""


@dataclass(frozen=True, slots=True)
class PushPull:
    """A full state exchange, sent over a stream; `reply` marks the answer to one."""

    states: tuple[Rumour, ...]
    sender_addr: Addr
    reply: bool = False


Message = Ping | IndirectPing | Ack | Nack | Gossip | PushPull


@dataclass(frozen=True, slots=True)
class Packet:
    message: Message
    rumours: tuple[Rumour, ...] = ()


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberJoined:
    member: str


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    member: str


@dataclass(frozen=True, slots=True)
class MemberRecovered:
    member: str


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    """A live member's meta changed (it began to drain, say)."""

    member: str


@dataclass(frozen=True, slots=True)
class MemberDied:
    member: str


@dataclass(frozen=True, slots=True)
class MemberLeft:
    member: str


@dataclass(frozen=True, slots=True)
class IdentityClash:
    """Another live process speaks as this node (`member` is our own id): its Alive, from
    `addr`, kept outbidding our refutations. `life` is the other's (Alive meta "life")."""

    member: str
    addr: Addr
    life: str


Event = (
    MemberJoined
    | MemberSuspected
    | MemberRecovered
    | MemberUpdated
    | MemberDied
    | MemberLeft
    | IdentityClash
)


# -- the math (table-tested, as memberlist's util.go) -----------------------------------------


def suspicion_timeout_s(mult: int, members: int, interval_s: float) -> float:
    """The least time a suspicion lasts: grows with log10 of the swarm's size."""
    node_scale = max(1.0, math.log10(max(1.0, members)))
    return mult * node_scale * interval_s


def retransmit_limit(mult: int, members: int) -> int:
    return mult * math.ceil(math.log10(members + 1))


def remaining_suspicion_s(
    confirmations: int, expected: int, elapsed_s: float, min_s: float, max_s: float
) -> float:
    """Lifeguard: the timeout falls from max towards min as independent confirmations come."""
    if expected <= 0:
        return min_s - elapsed_s
    fraction = math.log(confirmations + 1) / math.log(expected + 1)
    timeout = max(min_s, max_s - fraction * (max_s - min_s))
    return timeout - elapsed_s
