"""The swarm's membership in one process: many pure cores on a simulated network and clock.

Theory of operation: every node is a `gossip.Membership`; the network is a heap of packets in
flight, each delivered after a seeded random delay, or dropped (loss, partitions, crashed nodes),
or delivered twice (duplication); full state exchanges (push-pull) go over a simulated stream: not
lost, but cut by partitions and crashes like everything else. Virtual time jumps straight to the
next delivery or timer, so minutes of a swarm run in a moment, and one seed replays a run bit for
bit. After every step the invariants are checked (an incarnation never goes down in any view).

This first version simulates membership; the ledger's replication joins it with the next steps of
the swarm work. `python -m swarm.sim` runs the scenarios over many seeds and prints figures.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from dataclasses import dataclass, field

from swarm import wire
from swarm.gossip import Addr, Config, Member, Membership, MemberState, Packet, PushPull

STEPS_MAX = 50_000_000
LARGE_SWARM = 500  # from this size, figures run without the per-step invariant check  # a bound on any run, whatever the scenario


@dataclass(frozen=True, slots=True)
class Network:
    loss: float = 0.0  # probability that a datagram is dropped
    duplicate: float = 0.0  # probability that a datagram arrives twice
    delay_min_s: float = 0.0005
    delay_max_s: float = 0.005  # uniform; reordering follows from the spread


@dataclass(order=True, slots=True)
class _InFlight:
    at: float
    seq: int
    dst: Addr = field(compare=False)
    src: Addr = field(compare=False)
    packet: Packet = field(compare=False)


class InvariantBroken(AssertionError):
    """A property that must hold after every step did not; the message names the seed."""


class Sim:
    def __init__(
        self, nodes: int, seed: int, config: Config | None = None, net: Network | None = None
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config or Config.test()
        self.net = net or Network()
        self.now = 0.0
        self.cores: dict[Addr, Membership] = {}
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
        core = Membership(
            f"n{i:04d}",
            addr,
            {"cpus": 2},
            self.config,
            random.Random(self.rng.randrange(2**32)),
            self.now,
            incarnation,
        )
        self.cores[addr] = core
        self.down.discard(addr)
        return core

    # -- faults --------------------------------------------------------------------------

    def crash(self, i: int) -> None:
        self.down.add(self.addr(i))

    def restart(self, i: int) -> Membership:
        """The node comes back with its identity, and an incarnation above its old one."""
        old = self.cores[self.addr(i)].me.incarnation
        core = self.add(i, incarnation=old + 1)
        core.join(self.now, [self.addr(0 if i else 1)])
        return core

    def partition(self, *groups: list[int]) -> None:
        self.groups = {self.addr(i): g for g, members in enumerate(groups) for i in members}

    def heal(self) -> None:
        self.groups = {}

    # -- running ---------------------------------------------------------------------------

    def join_all(self) -> None:
        first = self.addr(0)
        for addr, core in self.cores.items():
            if addr != first:
                core.join(self.now, [first])
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
                if item.dst not in self.down and self._can_talk(item.src, item.dst):
                    self.cores[item.dst].receive(self.now, item.packet)
                    self._after(item.dst)
            elif timer is not None:
                heapq.heappop(self._timers)
                self.cores[timer[2]].tick(self.now)
                self._after(timer[2])
        raise InvariantBroken(f"seed {self.seed}: no end after {STEPS_MAX} steps")

    def _after(self, addr: Addr) -> None:
        """A core was driven: send what it wants to send, check it, re-arm its timer."""
        self._collect(addr)
        if self.check_invariants:
            self._check(addr)
        if addr in self.down:
            return
        deadline = self.cores[addr].next_deadline()
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

    def _can_talk(self, a: Addr, b: Addr) -> bool:
        return self.groups.get(a, -1) == self.groups.get(b, -1)

    def _collect(self, src: Addr) -> None:
        core = self.cores[src]
        outbox, core.outbox = core.outbox, []
        if src in self.down:
            return
        for dst, packet in outbox:
            self.packets_sent += 1
            if self.measure_bytes:
                body = wire.encode(wire.packet_to_plain(packet))
                self.bytes_sent += len(body) + wire.HEADER_BYTES + wire.TAG_BYTES
            stream = isinstance(packet.message, PushPull)
            if not stream and self.rng.random() < self.net.loss:
                continue
            copies = 2 if not stream and self.rng.random() < self.net.duplicate else 1
            for _ in range(copies):
                delay = self.rng.uniform(self.net.delay_min_s, self.net.delay_max_s)
                self._seq += 1
                heapq.heappush(
                    self._flight, _InFlight(self.now + delay, self._seq, dst, src, packet)
                )

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


# -- scenarios and figures (python -m swarm.sim) -----------------------------------------------


def scenario_join_and_crash(seed: int, n: int, loss: float) -> dict[str, float | None]:
    sim = Sim(n, seed, net=Network(loss=loss))
    sim.join_all()
    joined = sim.run_until_agree(everyone(n), limit_s=60)
    sim.crash(n - 1)
    dead = sim.run_until_agree(everyone(n, **{f"n{n - 1:04d}": MemberState.DEAD}), limit_s=60)
    return {"join_s": joined, "detect_s": dead}


def scenario_false_dead(seed: int, n: int, loss: float, seconds: float) -> int:
    """How many live members were declared dead by someone, under loss, with no real failure."""
    sim = Sim(n, seed, net=Network(loss=loss))
    sim.join_all()
    sim.run_until_agree(everyone(n), limit_s=60)
    deaths = 0
    for core in sim.cores.values():
        core.events.clear()
    sim.run_for(seconds)
    for core in sim.cores.values():
        deaths += sum(1 for e in core.events if type(e).__name__ == "MemberDied")
    return deaths


def scenario_rumour(seed: int, n: int, loss: float) -> tuple[float | None, float]:
    """With memberlist's LAN timers (gossip every 200 ms to 3 members): seconds until 99.9% of
    the nodes have heard a new rumour, and sealed bytes sent per node per second meanwhile."""
    sim = Sim(n, seed, config=Config.lan(), net=Network(loss=loss))
    sim.check_invariants = n < LARGE_SWARM
    sim.join_all()
    # Settle: joins done and their rumours died down (checking full agreement is O(N^2)).
    sim.run_for(15 + n / 50)
    source = sim.cores[sim.addr(0)]
    sim.measure_bytes, sim.bytes_sent, start = True, 0, sim.now
    source.update_meta(sim.now, {"cpus": 4})
    target = source.me.incarnation
    needed = max(1, int(n * 0.999))
    spread: float | None = None
    while sim.now - start < 60:
        sim.run_for(0.05)
        heard = sum(1 for c in sim.cores.values() if c.members[source.node].incarnation >= target)
        if heard >= needed:
            spread = sim.now - start
            break
    sim.run_for(max(0.0, 10 - (sim.now - start)))
    return spread, sim.bytes_sent / n / (sim.now - start)


def print_spread_figures(seeds: int, sizes: list[int]) -> None:
    print("Rumour spread, memberlist LAN timers (probe 1 s, gossip 200 ms to 3), simulated:")
    print(f"{'N':>6} {'loss':>5} {'99.9% heard, s (median)':>24} {'bytes/node/s':>13}")
    for n in sizes:
        for loss in (0.0, 0.1, 0.3):
            spreads, rates = [], []
            for seed in range(seeds):
                spread, rate = scenario_rumour(seed, n, loss)
                spreads.append(spread)
                rates.append(rate)
            print(
                f"{n:>6} {loss:>5.0%} {_median(spreads):>24} {sorted(rates)[len(rates) // 2]:>13,.0f}"
            )
    print(
        "Serf's published epidemic model, no loss: 99.9% in about 1.2 s for 5 nodes, 2.0 s for 1,000."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="swarm's membership over a simulated network")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--spread", action="store_true", help="rumour spread and bytes, LAN timers")
    args = parser.parse_args(argv)
    if args.spread:
        print_spread_figures(args.seeds, args.nodes)
        return 0
    print("Failure detection, test timers (ten times faster than LAN), simulated:")
    print(
        f"{'N':>5} {'loss':>5} {'join s (median)':>16} {'detect s (median)':>18} {'false dead':>11}"
    )
    for n in args.nodes:
        for loss in (0.0, 0.1, 0.3):
            joins, detects, false_dead = [], [], 0
            for seed in range(args.seeds):
                figures = scenario_join_and_crash(seed, n, loss)
                joins.append(figures["join_s"])
                detects.append(figures["detect_s"])
                false_dead += scenario_false_dead(seed, n, loss, seconds=10)
            print(
                f"{n:>5} {loss:>5.0%} {_median(joins):>16} {_median(detects):>18} {false_dead:>11}"
            )
    return 0


def _median(values: list[float | None]) -> str:
    known = sorted(v for v in values if v is not None)
    missing = len(values) - len(known)
    if not known:
        return "never"
    text = f"{known[len(known) // 2]:.2f}"
    return text + (f" ({missing} never)" if missing else "")


if __name__ == "__main__":
    sys.exit(main())
