"""SWIM's failure detector for one member: the probe cycle, with Lifeguard's local health.

Theory of operation
-------------------
`Prober` is owned by `Membership` (gossip.py), which calls it from its timer and its input, and
lends it the member table and its way of sending (with rumours piggybacked). Each probe
interval it pings the next member of a shuffled round-robin order; if no ack comes within the
probe timeout, it asks `indirect_checks` others to ping the target for it, and they answer with
an ack or, when they could not reach it either, a nack (a `_Relay` is such a ping made for
someone else). A target that has not answered by the end of the interval is suspected, through
the membership's own suspicion rules.

Lifeguard's local health: `awareness` goes up when this node misses acks, hears too few nacks
or is itself suspected, and down with each ack; probe timeouts and the interval are scaled by
`awareness + 1`, so a slow node gives others more time rather than accusing healthy ones.
Invariants: `0 <= awareness < config.awareness_max`; every probe and relay has a deadline, and
ends at it at the latest. Pure: `now` comes in; randomness is the injected `random.Random`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from swarm.core.swim import Ack, Addr, IndirectPing, Message, Nack, Ping, Suspect

if TYPE_CHECKING:
    # Only the types: randomness is injected, never the global generator.
    import random

    from swarm.core.gossip import Config, Member


@dataclass(slots=True)
class _Probe:
    target: str
    started: float
    deadline: float  # the direct timeout, then the end of the interval
    indirect: bool = False
    nacks_expected: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    """An indirect ping we make for someone else: ack or nack them by `deadline`."""

    requester: Addr
    requester_seq: int
    deadline: float


class Prober:
    """The probes and relays of one member under way, and its local health."""

    def __init__(
        self,
        node: str,
        addr: Addr,
        config: Config,
        rng: random.Random,
        *,
        nodes: Callable[[], list[str]],
        present: Callable[[str], Member | None],
        helpers: Callable[[int], list[Member]],
        send: Callable[[Addr, Message, Member | None], None],
        suspect: Callable[[float, Suspect], None],
    ) -> None:
        self.node = node
        self.addr = addr
        self.config = config
        self.rng = rng
        self._nodes = nodes  # every member known, this one among them
        self._present = present  # the member of that name, unless unknown, dead or gone
        self._helpers = helpers  # that many live members other than this one, at random
        self._send = send  # with rumours piggybacked
        self._suspect = suspect
        self.awareness = 0
        self._seq = 0
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, _Relay] = {}
        self._order: list[str] = []

    def deadlines(self) -> Iterator[float]:
        yield from (p.deadline for p in self._probes.values())
        yield from (r.deadline for r in self._relays.values())

    def tick(self, now: float) -> None:
        """End the probes and relays whose deadline came."""
        for seq, probe in list(self._probes.items()):
            if probe.deadline <= now:
                self._timed_out(now, seq, probe)
        for seq, relay in list(self._relays.items()):
            if relay.deadline <= now:
                del self._relays[seq]
                self._send(relay.requester, Nack(relay.requester_seq, self.node), None)

    def probe_next(self, now: float) -> None:
        for _ in range(2):  # at most one refill of the order per tick
            while self._order:
                target = self._present(self._order.pop())
                if target is not None and target.node != self.node:
                    self._probe(now, target)
                    return
            self._order = [n for n in self._nodes() if n != self.node]
            self.rng.shuffle(self._order)

    def adjust_awareness(self, delta: int) -> None:
        self.awareness = min(max(self.awareness + delta, 0), self.config.awareness_max - 1)

    def on_ping(self, ping: Ping) -> None:
        if ping.target == self.node:  # a ping for an earlier owner of this address is ignored
            self._send(ping.sender_addr, Ack(ping.seq, self.node), None)

    def on_indirect_ping(self, now: float, request: IndirectPing) -> None:
        self._seq += 1
        deadline = now + self.config.probe_timeout_s * (self.awareness + 1)
        self._relays[self._seq] = _Relay(request.sender_addr, request.seq, deadline)
        ping = Ping(self._seq, request.target, self.node, self.addr)
        self._send(request.target_addr, ping, None)

    def on_ack(self, ack: Ack) -> None:
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:
            self._send(relay.requester, Ack(relay.requester_seq, self.node), None)
            return
        probe = self._probes.pop(ack.seq, None)
        if probe is not None:
            self.adjust_awareness(-1)

    def on_nack(self, nack: Nack) -> None:
        probe = self._probes.get(nack.seq)
        if probe is not None:
            probe.nacks += 1

    def _probe(self, now: float, target: Member) -> None:
        self._seq += 1
        timeout = self.config.probe_timeout_s * (self.awareness + 1)
        self._probes[self._seq] = _Probe(target.node, now, now + timeout)
        self._send(target.addr, Ping(self._seq, target.node, self.node, self.addr), target)

    def _timed_out(self, now: float, seq: int, probe: _Probe) -> None:
        target = self._present(probe.target)
        if target is None:
            del self._probes[seq]
            return
        if not probe.indirect:
            helpers = [
                m for m in self._helpers(self.config.indirect_checks) if m.node != probe.target
            ]
            probe.indirect = True
            probe.nacks_expected = len(helpers)
            probe.deadline = probe.started + self.config.probe_interval_s * (self.awareness + 1)
            for helper in helpers:
                message = IndirectPing(seq, target.node, target.addr, self.node, self.addr)
                self._send(helper.addr, message, None)
            return
        del self._probes[seq]
        # Lifeguard: missed nacks mean *we* may be the slow one; so does no helper at all.
        missed = probe.nacks_expected - probe.nacks if probe.nacks_expected else 1
        self.adjust_awareness(missed)
        self._suspect(now, Suspect(target.node, target.incarnation, self.node))
