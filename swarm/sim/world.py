"""The swarm in one process: many pure cores on a simulated network and clock.

Theory of operation: every node is a `gossip.Membership` and, when the ledger is simulated, a
`Replica` (replica.py: its records and the `Ledger` they fold into, replicated through the same
`LedgerSync` as the daemon's, with its held-back pushes and gap pulls). The network is a heap of messages in flight, each delivered after a seeded random
delay, or dropped (loss, partitions, crashed nodes), or delivered twice (duplication); full state
exchanges (push-pull, anti-entropy) go over a simulated stream: not lost, but cut by partitions
and crashes like everything else. Every node reads its own clock, which runs fast or slow by up to
`drift` and starts at its own offset, as real machines' clocks do. Virtual time jumps straight to
the next delivery or timer, so minutes of a swarm run in a moment, and one seed replays a run bit
for bit. After every step the invariants are checked: an incarnation never goes down in any view;
a replica never claims (in its digest) a record it lacks; a stored record is the one its origin
wrote; a done task stays done. A scenario runs a safety phase under faults, then a liveness phase
(faults off, partitions healed, crashed nodes back) that must converge.

The scenarios and `python -m swarm.sim`'s figures are in figures.py; work sharing on top of this
(claims, leases, takeovers) is work.py, `python -m swarm.sim --work`.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any

from swarm.core import wire
from swarm.core.gossip import Addr, Config, Member, Membership, MemberState, Packet, PushPull
from swarm.core.ledger import (
    Body,
    Version,
)
from swarm.core.replication import Key
from swarm.core.sync import SYNC_EVERY_GOSSIPS
from swarm.sim.replica import InvariantBroken, Replica

STEPS_MAX = 50_000_000  # a bound on any run, whatever the scenario
LARGE_SWARM = 500  # from this size, figures run without the per-step invariant check


@dataclass(frozen=True, slots=True)
class Network:
    loss: float = 0.0  # probability that a datagram is dropped
    duplicate: float = 0.0  # probability that a datagram arrives twice
    delay_min_s: float = 0.0005
    delay_max_s: float = 0.005  # uniform; reordering follows from the spread
    write_failure: float = 0.0  # probability that storing one batch of a peer's records fails
    cut: float = 0.0  # probability that a sync answer's stream is cut after some of its frames
    # Nodes no peer can open a connection to (a firewall, NAT): requests to them never arrive,
    # though they may still ask others, and answer back on those streams.
    unreachable: frozenset[Addr] = frozenset()


@dataclass(frozen=True, slots=True)
class _SyncRequest:
    digest: dict[Key, int]
    gap: str | None = None  # the origin whose gap in a push started this pull


@dataclass(frozen=True, slots=True)
class _SyncAnswer:
    frames: tuple[wire.SyncBatch, ...]  # the last one `done`, with the watermarks
    asked: dict[Key, int]  # the digest it answers (the daemon keeps it with its connection)
    # The answerer's own digest, with which the asker sends back what it holds past it (the
    # reverse phase); None in that reverse answer.
    mine: dict[Key, int] | None = None
    gap: str | None = None  # as in the request it answers


# Pushes travel as the daemon's: records as stored bytes, in datagrams that fit.
Message = Packet | wire.RecordsPush | _SyncRequest | _SyncAnswer


@dataclass(order=True, slots=True)
class _InFlight:
    at: float
    seq: int
    dst: Addr = field(compare=False)
    src: Addr = field(compare=False)
    packet: Message = field(compare=False)


class Sim:
    def __init__(
        self,
        nodes: int,
        seed: int,
        config: Config | None = None,
        net: Network | None = None,
        drift: float = 0.0,
        ledger: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.seed = seed
        self.meta = meta or {"cpus": 2}  # what each node gossips of itself
        self.rng = random.Random(seed)
        self.config = config or Config.test()
        self.net = net or Network()
        self.now = 0.0  # true time; each node reads its own clock (`local`)
        self.drift = drift
        self.clocks: dict[Addr, tuple[float, float]] = {}  # node -> (offset s, rate)
        self.cores: dict[Addr, Membership] = {}
        self.replicas: dict[Addr, Replica] | None = {} if ledger else None
        self.truth: dict[Version, Body] = {}
        self.untakeable: set[Version] = set()  # records too large for any peer to take
        self.down: set[Addr] = set()
        self.groups: dict[Addr, int] = {}  # partition group of each node; equal groups talk
        self._flight: list[_InFlight] = []
        self._timers: list[tuple[float, int, Addr]] = []  # (deadline, seq, node), lazily pruned
        self._deadlines: dict[Addr, float] = {}
        self._seq = 0
        self._seen: dict[tuple[Addr, str], int] = {}  # (observer, member) -> incarnation
        self.packets_sent = 0
        self.bytes_sent = 0  # sealed bytes, counted when measure_bytes is on (it costs time)
        self.measure_bytes = False
        # O(members) per step: on for every test; the N = 1,000 figures turn it off (and say so).
        self.check_invariants = True
        for i in range(nodes):
            self.add(i)

    @staticmethod
    def addr(i: int) -> Addr:
        return (f"10.0.{i // 250}.{i % 250 + 1}", 7946)

    def add(self, i: int, incarnation: int = 1) -> Membership:
        addr = self.addr(i)
        if self.drift and addr not in self.clocks:
            rate = 1 + self.rng.uniform(-self.drift, self.drift)
            self.clocks[addr] = (self.rng.uniform(0, 1e6), rate)
        core = Membership(
            f"n{i:04d}",
            addr,
            dict(self.meta),
            self.config,
            random.Random(self.rng.randrange(2**32)),
            self.local(addr),
            incarnation,
        )
        self.cores[addr] = core
        self.down.discard(addr)
        self._deadlines.pop(addr, None)
        # A restarted core starts with an empty view: incarnations only never go down within
        # one life of a view.
        for key in [k for k in self._seen if k[0] == addr]:
            del self._seen[key]
        if self.replicas is not None and addr not in self.replicas:
            self.replicas[addr] = self._replica(core.node, 1)
        return core

    def _replica(self, node: str, generation: int) -> Replica:
        return Replica(node, generation, self.truth, self.seed, self.rng, self.untakeable)

    # -- clocks ------------------------------------------------------------------------------

    def local(self, addr: Addr) -> float:
        """What the node's own monotonic clock reads now."""
        offset, rate = self.clocks.get(addr, (0.0, 1.0))
        return offset + rate * self.now

    def local_now(self, i: int) -> float:
        return self.local(self.addr(i))

    def _true_time(self, addr: Addr, local: float) -> float:
        offset, rate = self.clocks.get(addr, (0.0, 1.0))
        if rate == 1.0 and offset == 0.0:
            return local
        return (local - offset) / rate + 1e-9  # never before the node's clock reaches it

    # -- faults --------------------------------------------------------------------------

    def crash(self, i: int) -> None:
        self.down.add(self.addr(i))

    def resume(self, i: int) -> None:
        """A node that was down (frozen, say) runs on, with the state it had."""
        addr = self.addr(i)
        self.down.discard(addr)
        self._deadlines.pop(addr, None)  # its timer was dropped while it was down
        self._after(addr)

    def restart(self, i: int) -> Membership:
        """The node comes back with its identity (and its ledger: it is on disk), and an
        incarnation above its old one."""
        old = self.cores[self.addr(i)].me.incarnation
        core = self.add(i, incarnation=old + 1)
        if self.replicas is not None:
            self.replicas[self.addr(i)].restarted()
        core.join(self.local_now(i), [self.addr(0 if i else 1)])
        return core

    def wipe(self, i: int) -> Membership:
        """The node comes back with its identity but an empty ledger: a new generation."""
        addr = self.addr(i)
        assert self.replicas is not None
        old = self.replicas[addr]
        self.replicas[addr] = self._replica(old.node, old.generation + 1)
        return self.restart(i)

    def partition(self, *groups: list[int]) -> None:
        self.groups = {self.addr(i): g for g, members in enumerate(groups) for i in members}

    def heal(self) -> None:
        self.groups = {}

    # -- running ---------------------------------------------------------------------------

    def join_all(self) -> None:
        first = self.addr(0)
        for addr, core in self.cores.items():
            if addr != first:
                core.join(self.local(addr), [first])
        for addr in self.cores:
            self._after(addr)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, t: float) -> None:
        # Cores may have been driven from outside since the last run (a leave, a join): take in
        # their outboxes and deadlines once, then only touch the core each step involves.
        for addr in self.cores:
            self._after(addr)
        for _ in range(STEPS_MAX):
            timer = self._next_timer()
            next_timer = timer[0] if timer else t
            next_packet = self._flight[0].at if self._flight else t
            step_at = min(next_timer, next_packet, t)
            if step_at >= t:
                self.now = t
                return
            self.now = max(self.now, step_at)
            if self._flight and self._flight[0].at <= self.now:
                item = heapq.heappop(self._flight)
                if item.dst not in self.down and self.can_talk(item.src, item.dst):
                    self._deliver(item)
                    self._after(item.dst)
                else:
                    self._lost(item.src, item.dst, item.packet)
            elif timer is not None:
                heapq.heappop(self._timers)
                addr = timer[2]
                del self._deadlines[addr]
                local = self.local(addr)
                self.cores[addr].tick(local)
                self._maybe_sync(addr, local)
                self._after(addr)
        raise InvariantBroken(f"seed {self.seed}: no end after {STEPS_MAX} steps")

    def _after(self, addr: Addr) -> None:
        """A core was driven: send what it wants to send, check it, re-arm its timer."""
        self._collect(addr)
        if self.check_invariants:
            self._check(addr)
        if addr in self.down:
            return
        deadline = self._true_time(addr, self._next_local_deadline(addr))
        if self._deadlines.get(addr) != deadline:
            self._deadlines[addr] = deadline
            self._seq += 1
            heapq.heappush(self._timers, (deadline, self._seq, addr))

    def _next_timer(self) -> tuple[float, int, Addr] | None:
        """The earliest live timer (entries made stale by a re-arm or a crash are skipped)."""
        while self._timers:
            deadline, _, addr = self._timers[0]
            if addr not in self.down and self._deadlines.get(addr) == deadline:
                return self._timers[0]
            heapq.heappop(self._timers)
        return None

    def _next_local_deadline(self, addr: Addr) -> float:
        deadline = self.cores[addr].next_deadline()
        if self.replicas is not None:
            deadline = min(deadline, self.replicas[addr].next_sync)
        return deadline

    def _deliver(self, item: _InFlight) -> None:
        message, dst = item.packet, item.dst
        match message:
            case Packet():
                self.cores[dst].receive(self.local(dst), message)
            case wire.RecordsPush():
                assert self.replicas is not None
                replica = self.replicas[dst]
                members = self.cores[dst].members
                for member in replica.take_push(
                    message, self.local(dst), members, self._write_fails
                ):
                    # A gap pull: the same exchange as anti-entropy, from the gap's origin.
                    digest = dict(replica.ledger.high_seq)
                    self._send(dst, member.addr, _SyncRequest(digest, gap=member.node))
            case _SyncRequest():
                assert self.replicas is not None
                answerer = self.replicas[dst]
                mine = dict(answerer.ledger.high_seq)
                frames = answerer.answer(message.digest)
                self._send(dst, item.src, _SyncAnswer(frames, message.digest, mine, message.gap))
            case _SyncAnswer():
                assert self.replicas is not None
                cut = None
                if self.net.cut and self.rng.random() < self.net.cut:
                    cut = self.rng.randrange(len(message.frames))  # 0 .. all but the end
                replica = self.replicas[dst]
                replica.take_answer(message.frames, message.asked, self._write_fails, cut)
                if message.gap is not None:
                    replica.sync.pull_done(message.gap)
                if cut is None and message.mine is not None:  # the reverse phase
                    reverse = _SyncAnswer(replica.answer(message.mine), message.mine)
                    self._send(dst, item.src, reverse)

    def _lost(self, src: Addr, dst: Addr, message: Message) -> None:
        """A message that never arrived: a gap pull it was part of has ended (as the daemon's
        does when its connection fails)."""
        if self.replicas is None:
            return
        if isinstance(message, _SyncRequest) and message.gap is not None:
            self.replicas[src].sync.pull_done(message.gap)
        elif isinstance(message, _SyncAnswer) and message.gap is not None:
            self.replicas[dst].sync.pull_done(message.gap)

    def _write_fails(self) -> bool:
        return bool(self.net.write_failure) and self.rng.random() < self.net.write_failure

    def _maybe_sync(self, addr: Addr, local: float) -> None:
        """Anti-entropy, as the daemon's sync loop: pull from a random live member."""
        if self.replicas is None:
            return
        replica = self.replicas[addr]
        if local < replica.next_sync:
            return
        replica.next_sync = local + self.config.gossip_interval_s * SYNC_EVERY_GOSSIPS
        peers = self._peers(addr)
        if peers:
            peer = peers[self.rng.randrange(len(peers))]
            self._send(addr, peer, _SyncRequest(dict(replica.ledger.high_seq)))

    def _peers(self, addr: Addr) -> list[Addr]:
        core = self.cores[addr]
        return [m.addr for m in core.live_members() if m.node != core.node]

    def write(self, i: int, body: Body, fanout: int | None = None) -> wire.RecordCopy:
        """Node i writes a record and pushes it at once to `fanout` members (default: the
        gossip fanout), as the daemon does (through LedgerSync.spread). Returns it as sent."""
        addr = self.addr(i)
        assert self.replicas is not None and addr not in self.down
        replica = self.replicas[addr]
        copy = replica.write(body)
        wide = self.config.gossip_nodes if fanout is None else fanout
        targets, pushes = replica.sync.spread([copy], self._peers(addr), wide)
        for push in pushes:
            for peer in targets:
                self._send(addr, peer, push)
        return copy

    def push(self, i: int, j: int, *copies: wire.RecordCopy) -> None:
        """Node i pushes these records to node j (a push delayed, repeated or out of order)."""
        self._send(self.addr(i), self.addr(j), wire.RecordsPush(copies))

    def can_talk(self, a: Addr, b: Addr) -> bool:
        return self.groups.get(a, -1) == self.groups.get(b, -1)

    def _collect(self, src: Addr) -> None:
        core = self.cores[src]
        outbox = core.take_outbox()
        if src in self.down:
            return
        for dst, packet in outbox:
            self.packets_sent += 1
            if self.measure_bytes:
                body = wire.encode(wire.packet_to_plain(packet))
                self.bytes_sent += len(body) + wire.HEADER_BYTES + wire.TAG_BYTES
            self._send(src, dst, packet)

    def _send(self, src: Addr, dst: Addr, message: Message) -> None:
        stream = isinstance(message, _SyncRequest | _SyncAnswer) or (
            isinstance(message, Packet) and isinstance(message.message, PushPull)
        )
        if not stream and self.rng.random() < self.net.loss:
            return
        if isinstance(message, _SyncRequest) and dst in self.net.unreachable:
            self._lost(src, dst, message)
            return  # the connection is never made
        copies = 2 if not stream and self.rng.random() < self.net.duplicate else 1
        for _ in range(copies):
            delay = self.rng.uniform(self.net.delay_min_s, self.net.delay_max_s)
            self._seq += 1
            heapq.heappush(self._flight, _InFlight(self.now + delay, self._seq, dst, src, message))

    def _check(self, addr: Addr) -> None:
        core = self.cores[addr]
        for member in core.members.values():
            key = (addr, member.node)
            before = self._seen.get(key, 0)
            if member.incarnation < before:
                raise InvariantBroken(
                    f"seed {self.seed}: {core.node} saw {member.node}'s incarnation go "
                    f"from {before} to {member.incarnation}"
                )
            self._seen[key] = member.incarnation

    # -- reading -----------------------------------------------------------------------------

    def view(self, i: int) -> dict[str, MemberState]:
        return {m.node: m.state for m in self.cores[self.addr(i)].members.values()}

    def live_indexes(self) -> list[int]:
        return [i for i in range(len(self.cores)) if self.addr(i) not in self.down]

    def all_agree(self, expected: dict[str, MemberState]) -> bool:
        """Every live node's view is exactly `expected`."""
        return all(self.view(i) == expected for i in self.live_indexes())

    def run_until_agree(self, expected: dict[str, MemberState], limit_s: float) -> float | None:
        """Seconds until every live node sees `expected`, or None if not within `limit_s`."""
        start = self.now
        while self.now - start < limit_s:
            if self.all_agree(expected):
                return self.now - start
            self.run_for(self.config.probe_interval_s / 2)
        return self.now - start if self.all_agree(expected) else None

    def member(self, observer: int, i: int) -> Member:
        return self.cores[self.addr(observer)].members[f"n{i:04d}"]


def everyone(
    n: int, state: MemberState = MemberState.ALIVE, **others: MemberState
) -> dict[str, MemberState]:
    view = {f"n{i:04d}": state for i in range(n)}
    view.update(others)
    return view
