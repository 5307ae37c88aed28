"""Membership: SWIM with the Lifeguard refinements, as hashicorp/memberlist does it.

Theory of operation
-------------------
Each node probes one member per probe interval (round robin over a shuffled list): a direct ping,
then, if no ack comes within the probe timeout, indirect pings through `indirect_checks` other
members, which answer with a nack if they could not reach the target either. A member that does
not answer by the end of the interval is *suspected*; a suspicion becomes *dead* after a timeout
that shrinks as independent members confirm it (Lifeguard's dynamic suspicion), unless the member
refutes it by raising its incarnation number. A node's own health (missed acks and nacks) scales
its probe timeouts (Lifeguard's local health multiplier), so a slow node does not accuse healthy
ones. Every change is a rumour (Alive, Suspect, Dead) piggybacked on probes and gossip packets a
limited number of times (`retransmit_mult * ceil(log10(N+1))`); a newer rumour about a member
replaces an older one. A full state exchange (push-pull, over a stream) runs at join,
periodically, and towards dead members now and then, so a healed partition merges again.

Invariants: a member's incarnation never decreases; only the member itself raises it; a
rumour older (lower incarnation) than what is known changes nothing; a dead or left member comes
back only with a higher incarnation.

The probe cycle and the local health multiplier are the `Prober`'s (probing.py), a part the
membership owns; the messages, events and timeout math are swim.py's. This module keeps the
member table, the rumours and suspicions that change it, dissemination and push-pull.

Pure (sans-IO, as aioquic): every entry point takes `now` (seconds, monotonic); randomness comes
from the injected `random.Random`; packets to send and events pile up in `outbox` and `events` for
the adapter to take.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from swarm.core.gossip_config import Config as Config  # the timers: imported apart
from swarm.core.probing import Prober
from swarm.core.swim import (
    Ack,
    Addr,
    Alive,
    Dead,
    Event,
    Gossip,
    IdentityClash,
    IndirectPing,
    MemberDied,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    MemberSuspected,
    MemberUpdated,
    Message,
    Nack,
    Packet,
    Ping,
    PushPull,
    Rumour,
    Suspect,
    remaining_suspicion_s,
    retransmit_limit,
    suspicion_timeout_s,
)

# Re-exported: the protocol's vocabulary is used as gossip.Packet, gossip.MemberJoined, ...
__all__ = [
    "GONE",
    "INCARNATION_MAX",
    "Ack",
    "Addr",
    "Alive",
    "Config",
    "Dead",
    "Event",
    "Gossip",
    "IdentityClash",
    "IndirectPing",
    "Member",
    "MemberDied",
    "MemberJoined",
    "MemberLeft",
    "MemberRecovered",
    "MemberState",
    "MemberSuspected",
    "MemberUpdated",
    "Membership",
    "Message",
    "Nack",
    "Packet",
    "Ping",
    "PushPull",
    "Rumour",
    "Suspect",
    "remaining_suspicion_s",
    "retransmit_limit",
    "suspicion_timeout_s",
]

if TYPE_CHECKING:
    # Only the types: randomness is injected, never the global generator.
    import random
    from collections.abc import Callable

INCARNATION_MAX = 2**62  # far beyond any real count; the wire allows up to 2**63
# Alives of another life of ours outranking ours before it is taken for a second live process
# with our identity (IdentityClash). An earlier life's never do (each life's first incarnation is
# its clock in ms), unless the clock stepped back over a restart: then one or two, at most.
CLASH_OUTBIDS = 3


class MemberState(enum.StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


GONE = frozenset({MemberState.DEAD, MemberState.LEFT})


@dataclass(slots=True)
class Member:
    node: str
    addr: Addr
    incarnation: int
    state: MemberState
    meta: dict[str, Any]
    changed_at: float
    proof: bytes = b""  # the member's signature of its current Alive, passed on with it


# -- internals ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Suspicion:
    incarnation: int
    started: float
    min_s: float
    max_s: float
    expected: int
    confirmers: set[str] = field(default_factory=set)

    def deadline(self) -> float:
        remaining = remaining_suspicion_s(
            len(self.confirmers), self.expected, 0.0, self.min_s, self.max_s
        )
        return self.started + remaining


@dataclass(slots=True)
class _Broadcast:
    rumour: Rumour
    transmits: int = 0


class Membership:
    """The SWIM state of one node."""

    def __init__(
        self,
        node: str,
        addr: Addr,
        meta: dict[str, Any],
        config: Config,
        rng: random.Random,
        now: float,
        incarnation: int = 1,
        sign: Callable[[Alive], Alive] | None = None,
        check: Callable[[Alive], bool] | None = None,
    ) -> None:
        self.node = node
        # Only the member itself can vouch for its Alive: it signs, and others check the
        # signature before an Alive changes anything (the simulator runs without both).
        self._sign = sign
        self._check = check
        self.forged = 0  # Alive rumours whose signature did not check: ignored
        self.outbids = 0  # Alives of another life of ours that outranked ours (_outbid_by)
        self.config = config
        self.rng = rng
        self.members: dict[str, Member] = {
            node: Member(node, addr, incarnation, MemberState.ALIVE, meta, now)
        }
        self.outbox: list[tuple[Addr, Packet]] = []
        self.events: list[Event] = []
        self.leaving = False
        # The probe cycle and the local health (probing.py): it sends through this membership,
        # and suspects through it.
        self.prober = Prober(
            node, addr, config, rng,
            nodes=lambda: list(self.members), present=self._present,
            helpers=lambda count: self._random_members(count, live=True),
            send=self._send, suspect=self._on_suspect,
        )  # fmt: skip
        self._suspicions: dict[str, _Suspicion] = {}
        self._broadcasts: dict[str, _Broadcast] = {}
        self._next_probe = now
        self._next_gossip = now
        self._next_push_pull = now + config.push_pull_interval_s
        self._next_reconnect = now + config.reconnect_interval_s
        self._announce()

    # -- reading ---------------------------------------------------------------------------

    @property
    def me(self) -> Member:
        return self.members[self.node]

    @property
    def awareness(self) -> int:
        """Lifeguard's local health multiplier (0: healthy): probe timeouts scale with it."""
        return self.prober.awareness

    def live_members(self) -> list[Member]:
        return [m for m in self.members.values() if m.state not in GONE]

    def state(self) -> tuple[Rumour, ...]:
        """Everything known, as rumours: what a push-pull sends."""
        out: list[Rumour] = []
        for m in self.members.values():
            if m.state is MemberState.ALIVE:
                out.append(Alive(m.node, m.incarnation, m.addr, m.meta, m.proof))
            elif m.state is MemberState.SUSPECT:
                out.append(Suspect(m.node, m.incarnation, self.node))
            else:
                accuser = m.node if m.state is MemberState.LEFT else self.node
                out.append(Dead(m.node, m.incarnation, accuser))
        return tuple(out)

    def next_deadline(self) -> float:
        times = [self._next_probe, self._next_gossip, self._next_push_pull, self._next_reconnect]
        times += self.prober.deadlines()
        times += [s.deadline() for s in self._suspicions.values()]
        return min(times)

    # -- handing over what to send -----------------------------------------------------------

    def take_outbox(self) -> list[tuple[Addr, Packet]]:
        """What to send, in order, handed over: the outbox is empty after."""
        outbox, self.outbox = self.outbox, []
        return outbox

    def take_events(self) -> list[Event]:
        """What happened since the last call, handed over."""
        events, self.events = self.events, []
        return events

    def take_push_pull_reply(self) -> Packet | None:
        """The answer to a push-pull just received, taken out of the outbox: it goes back on
        the stream the exchange came on, not as a datagram. None if there is none."""
        for i, (_, packet) in enumerate(self.outbox):
            if isinstance(packet.message, PushPull) and packet.message.reply:
                del self.outbox[i]
                return packet
        return None

    # -- commands ----------------------------------------------------------------------------

    def join(self, now: float, seeds: list[Addr]) -> None:
        """Ask each seed for a full state exchange."""
        for addr in seeds:
            self.outbox.append((addr, Packet(PushPull(self.state(), self.me.addr))))

    def leave(self, now: float) -> None:
        """A graceful leave: a dead rumour about ourselves, accused by ourselves."""
        self.leaving = True
        self._on_dead(now, Dead(self.node, self.me.incarnation, self.node))

    def update_meta(self, now: float, meta: dict[str, Any]) -> None:
        me = self.me
        me.meta = meta
        me.incarnation += 1
        self._announce()

    # -- input -------------------------------------------------------------------------------

    def receive(self, now: float, packet: Packet) -> None:
        for rumour in packet.rumours:
            self._on_rumour(now, rumour)
        match packet.message:
            case Ping():
                self.prober.on_ping(packet.message)
            case IndirectPing():
                self.prober.on_indirect_ping(now, packet.message)
            case Ack():
                self.prober.on_ack(packet.message)
            case Nack():
                self.prober.on_nack(packet.message)
            case PushPull():
                self._on_push_pull(now, packet.message)
            case Gossip():
                pass

    def tick(self, now: float) -> None:
        """Run every timer that is due."""
        self.prober.tick(now)
        for node, suspicion in list(self._suspicions.items()):
            if suspicion.deadline() <= now:
                del self._suspicions[node]
                self._on_dead(now, Dead(node, suspicion.incarnation, self.node))
        if now >= self._next_probe:
            self._next_probe = now + self.config.probe_interval_s * (self.awareness + 1)
            self.prober.probe_next(now)
        if now >= self._next_gossip:
            self._next_gossip = now + self.config.gossip_interval_s
            self._gossip(now)
        if now >= self._next_push_pull:
            self._next_push_pull = now + self.config.push_pull_interval_s
            self._push_pull_with(self._random_members(1, live=True))
        if now >= self._next_reconnect:
            self._next_reconnect = now + self.config.reconnect_interval_s
            dead = [m for m in self.members.values() if m.state is MemberState.DEAD]
            self._push_pull_with(self.rng.sample(dead, 1) if dead else [])

    # -- rumours -----------------------------------------------------------------------------

    def _on_rumour(self, now: float, rumour: Rumour) -> None:
        match rumour:
            case Alive():
                self._on_alive(now, rumour)
            case Suspect():
                self._on_suspect(now, rumour)
            case Dead():
                self._on_dead(now, rumour)

    def _on_alive(self, now: float, alive: Alive) -> None:
        if alive.node == self.node:
            if alive.incarnation > self.me.incarnation or (
                alive.incarnation == self.me.incarnation and alive.addr != self.me.addr
            ):
                if self._check is not None and not self._check(alive):
                    self.forged += 1  # not even our own earlier word: nothing to outrank
                    return
                self._refute(alive.incarnation)  # an older life of ours speaks: outrank it
                self._outbid_by(alive)
            return
        member = self.members.get(alive.node)
        if member is not None and alive.incarnation <= member.incarnation:
            return
        # Checked only here, where it would change something: most Alives are repeats.
        if self._check is not None and not self._check(alive):
            self.forged += 1
            return
        if member is None:
            self.members[alive.node] = Member(
                alive.node,
                alive.addr,
                alive.incarnation,
                MemberState.ALIVE,
                alive.meta,
                now,
                alive.proof,
            )
            self.events.append(MemberJoined(alive.node))
            self._queue(alive)
            return
        was, updated = member.state, member.meta != alive.meta
        member.incarnation, member.addr, member.meta = alive.incarnation, alive.addr, alive.meta
        member.proof = alive.proof
        self._suspicions.pop(alive.node, None)
        if was is not MemberState.ALIVE:
            member.state, member.changed_at = MemberState.ALIVE, now
            self.events.append(
                MemberRecovered(alive.node)
                if was is MemberState.SUSPECT
                else MemberJoined(alive.node)
            )
        elif updated:
            self.events.append(MemberUpdated(alive.node))
        self._queue(alive)

    def _on_suspect(self, now: float, suspect: Suspect) -> None:
        member = self.members.get(suspect.node)
        if suspect.node == self.node and suspect.incarnation < self.me.incarnation:
            self._reassert()  # someone missed our refutation: say it again
            return
        if member is None or member.state in GONE:
            return
        if suspect.incarnation < member.incarnation:
            self._correct(member)
            return
        if suspect.node == self.node:
            if not self.leaving:
                self._refute(suspect.incarnation)
                self.prober.adjust_awareness(1)  # others cannot hear us well: we may be the problem
            return
        if member.state is MemberState.SUSPECT:
            suspicion = self._suspicions.get(suspect.node)
            if (
                suspicion is not None
                and suspect.accuser != self.node
                and suspect.accuser not in suspicion.confirmers
            ):
                suspicion.confirmers.add(suspect.accuser)
                self._queue(suspect)  # a new confirmation is news: pass it on
            return
        member.state, member.incarnation, member.changed_at = (
            MemberState.SUSPECT,
            suspect.incarnation,
            now,
        )
        live = len(self.live_members())
        min_s = suspicion_timeout_s(self.config.suspicion_mult, live, self.config.probe_interval_s)
        expected = self.config.suspicion_mult - 2
        if live - 2 < expected:
            expected = 0
        self._suspicions[suspect.node] = _Suspicion(
            suspect.incarnation,
            now,
            min_s,
            min_s * self.config.suspicion_max_timeout_mult,
            expected,
        )
        self.events.append(MemberSuspected(suspect.node))
        self._queue(suspect)

    def _on_dead(self, now: float, dead: Dead) -> None:
        member = self.members.get(dead.node)
        if dead.node == self.node and dead.incarnation < self.me.incarnation and not self.leaving:
            self._reassert()
            return
        if member is None or member.state in GONE:
            return
        if dead.incarnation < member.incarnation:
            self._correct(member)
            return
        if dead.node == self.node and not self.leaving:
            self._refute(dead.incarnation)
            return
        left = dead.accuser == dead.node
        member.state = MemberState.LEFT if left else MemberState.DEAD
        member.incarnation, member.changed_at = dead.incarnation, now
        self._suspicions.pop(dead.node, None)
        if dead.node != self.node:
            self.events.append(MemberLeft(dead.node) if left else MemberDied(dead.node))
        self._queue(dead)

    def _correct(self, member: Member) -> None:
        """A stale accusation is going round (someone missed a refutation): spread what we know
        of the member again, so the correction travels where the accusation does."""
        if member.state is MemberState.ALIVE and member.node not in self._broadcasts:
            self._queue(
                Alive(member.node, member.incarnation, member.addr, member.meta, member.proof)
            )

    def _reassert(self) -> None:
        """Spread our current Alive again, unless it is still being spread."""
        if self.node not in self._broadcasts:
            self._announce()

    def _outbid_by(self, alive: Alive) -> None:
        """An Alive of ours from another life (its meta's "life") outranked ours (refuted
        already). A live process
        with our identity outbids each of our refutations in turn, and after CLASH_OUTBIDS of
        them is reported (once) as an IdentityClash. Rumours of an earlier life of ours cannot
        do that: the daemon starts each life's incarnation at its clock (in ms), above any
        incarnation an earlier life reached, so they never outrank us (unless the clock
        stepped back over the restart: then a few, each once). Our refutation is also pushed
        to a member at once (a push-pull), so that the members who heard the other last do
        not keep our id pointed at its address."""
        life = alive.meta.get("life")
        if life is None or life == self.me.meta.get("life"):
            return
        self.outbids += 1
        if self.outbids == CLASH_OUTBIDS:
            self.events.append(IdentityClash(self.node, alive.addr, str(life)))
        self._push_pull_with(self._random_members(1, live=True))

    def _refute(self, incarnation: int) -> None:
        if incarnation >= INCARNATION_MAX:
            # No node gets here by refuting; a rumour that drives us to the top of the counter
            # would leave us unable to refute again. (Suspects and Deads are not signed.)
            self.forged += 1
            return
        me = self.me
        me.incarnation = max(me.incarnation, incarnation) + 1
        self._announce()

    def _announce(self) -> None:
        """Spread our current Alive, signed (and kept, so push-pulls send the same one)."""
        me = self.me
        alive = Alive(self.node, me.incarnation, me.addr, me.meta)
        if self._sign is not None:
            alive = self._sign(alive)
        me.proof = alive.proof
        self._queue(alive)

    # -- push-pull ---------------------------------------------------------------------------

    def _push_pull_with(self, members: list[Member]) -> None:
        for member in members:
            self.outbox.append((member.addr, Packet(PushPull(self.state(), self.me.addr))))

    def _on_push_pull(self, now: float, push: PushPull) -> None:
        if not push.reply:
            self.outbox.append(
                (push.sender_addr, Packet(PushPull(self.state(), self.me.addr, reply=True)))
            )
        for rumour in push.states:
            if isinstance(rumour, Dead) and rumour.accuser != rumour.node:
                # As memberlist: a dead member in someone's full state is only a suspect to us,
                # so that it gets the chance to refute (and a healed partition merges).
                self._on_suspect(now, Suspect(rumour.node, rumour.incarnation, rumour.accuser))
            else:
                self._on_rumour(now, rumour)

    # -- sending -----------------------------------------------------------------------------

    def _queue(self, rumour: Rumour) -> None:
        """A rumour to spread; it replaces an older one about the same member."""
        self._broadcasts[rumour.node] = _Broadcast(rumour)

    def _piggyback(self) -> tuple[Rumour, ...]:
        limit = retransmit_limit(self.config.retransmit_mult, len(self.members))
        chosen = sorted(self._broadcasts.items(), key=lambda item: item[1].transmits)
        out = []
        for node, broadcast in chosen[: self.config.piggyback_max]:
            out.append(broadcast.rumour)
            broadcast.transmits += 1
            if broadcast.transmits >= limit:
                del self._broadcasts[node]
        return tuple(out)

    def _send(self, addr: Addr, message: Message, target: Member | None = None) -> None:
        rumours = self._piggyback()
        if target is not None and target.state is MemberState.SUSPECT:
            # Lifeguard's buddy system: tell a suspect it is suspected, so it can refute at once.
            buddy = Suspect(target.node, target.incarnation, self.node)
            rumours = (buddy, *(r for r in rumours if r.node != target.node))
        self.outbox.append((addr, Packet(message, rumours)))

    def _gossip(self, now: float) -> None:
        if not self._broadcasts:
            return
        recent_dead = [
            m
            for m in self.members.values()
            if m.state is MemberState.DEAD and now - m.changed_at < self.config.gossip_to_the_dead_s
        ]
        candidates = [m for m in self.live_members() if m.node != self.node] + recent_dead
        for member in self.rng.sample(candidates, min(self.config.gossip_nodes, len(candidates))):
            self._send(member.addr, Gossip())
            if not self._broadcasts:
                return

    def _present(self, node: str) -> Member | None:
        """The member of that name, unless it is unknown, dead or gone."""
        member = self.members.get(node)
        return None if member is None or member.state in GONE else member

    def _random_members(self, count: int, live: bool) -> list[Member]:
        pool = [
            m
            for m in self.members.values()
            if m.node != self.node and (m.state is MemberState.ALIVE or not live)
        ]
        return self.rng.sample(pool, min(count, len(pool)))
