"""The membership and ledger scenarios on the simulated swarm (world.py), and the figures of
`python -m swarm.sim`: formation and failure detection, rumour spread, ledger replication under
faults, and (scenarios.py) work sharing."""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass

from swarm.core.gossip import Config, MemberState
from swarm.core.ledger import (
    Body,
    ClaimRecord,
    Ledger,
    Outcome,
    ResultRecord,
    State,
    TaskRecord,
    Version,
)
from swarm.core.spec import Resources, TaskSpec
from swarm.sim.replica import InvariantBroken
from swarm.sim.world import LARGE_SWARM, Network, Sim, everyone

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
    source.update_meta(sim.local_now(0), {"cpus": 4})
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


_SPEC = TaskSpec(cmd="true", argv=None, need=Resources(cpus=1, memory_bytes=1 << 20))
_CAPACITY = Resources(cpus=2, memory_bytes=1 << 30)


@dataclass(slots=True)
class LedgerRun:
    converged_s: float | None  # liveness phase: seconds until every replica agreed
    records: int
    lost: int  # written by the wiped node and held nowhere else when its disk went
    tasks: int
    done: int


def scenario_ledger(
    seed: int, n: int = 6, loss: float = 0.2, drift: float = 0.05, safety_s: float = 20.0
) -> LedgerRun:
    """Nodes submit, claim and finish tasks while the network loses, duplicates, delays and
    reorders messages, sync streams are cut, 5% of the batches of peers' records fail to be
    stored, the swarm splits in two and heals, a node crashes, and another is wiped (its ledger
    comes back as a new generation). Every step is checked (see the module doc). Then the
    liveness phase: faults off, everyone back; every replica must reach the same ledger as the
    union of every record still held somewhere, and every member must see all others alive.
    (A record the wiped node wrote and had not yet passed on is gone with its disk: counted.)"""
    sim = Sim(
        n,
        seed,
        net=Network(
            loss=loss,
            duplicate=0.05,
            delay_min_s=0.0005,
            delay_max_s=0.03,
            write_failure=0.05,
            cut=0.1,
        ),
        drift=drift,
        ledger=True,
    )
    assert sim.replicas is not None
    sim.join_all()
    sim.run_for(2)
    rng = random.Random(seed)
    counter = 0
    held: dict[int, list[tuple[str, int]]] = {i: [] for i in range(n)}
    events: dict[float, Callable[[], object]] = {
        round(safety_s * 0.25, 1): lambda: sim.partition(
            list(range(n // 2)), list(range(n // 2, n))
        ),
        round(safety_s * 0.5, 1): lambda: sim.crash(n - 1),
        round(safety_s * 0.6, 1): sim.heal,
        round(safety_s * 0.7, 1): lambda: sim.wipe(1),
    }
    start = sim.now
    while sim.now - start < safety_s:
        event = events.pop(round(sim.now - start, 1), None)
        if event is not None:
            event()
        for i in sim.live_indexes():
            if rng.random() >= 0.15:
                continue
            counter += 1
            ledger = sim.replicas[sim.addr(i)].ledger
            roll = rng.random()
            if roll < 0.4:
                task = f"t{counter:05d}"
                sim.write(i, TaskRecord(task, "sim", task, _SPEC, counter))
            elif roll < 0.75:
                pending = [v for v in ledger.tasks.values() if v.state is State.PENDING]
                if pending:
                    view = pending[rng.randrange(len(pending))]
                    epoch = view.next_epoch()
                    sim.write(i, ClaimRecord(view.task_id, epoch, counter))
                    held[i].append((view.task_id, epoch))
            elif held[i]:
                task, epoch = held[i].pop(rng.randrange(len(held[i])))
                sim.write(i, _ok(task, epoch))
        sim.run_for(0.1)
    sim.net = Network()
    sim.heal()
    for i in range(n):
        if sim.addr(i) in sim.down:
            sim.restart(i)
    surviving = {
        Version(*key, seq): body
        for replica in sim.replicas.values()
        for key, held in replica.records.items()
        for seq, body in held.items()
    }
    reference = _reference(surviving)
    expected = reference.fingerprint()
    began = sim.now
    converged: float | None = None
    while sim.now - began < 60:
        if sim.all_agree(everyone(n)) and all(
            r.ledger.fingerprint() == expected for r in sim.replicas.values()
        ):
            converged = sim.now - began
            break
        sim.run_for(0.05)
    if converged is None:
        raise InvariantBroken(f"seed {seed}: the replicas did not converge within 60 s")
    done = sum(1 for v in reference.tasks.values() if v.state is State.DONE)
    lost = len(sim.truth) - len(surviving)
    return LedgerRun(converged, len(sim.truth), lost, len(reference.tasks), done)


def _ok(task: str, epoch: int) -> ResultRecord:
    return ResultRecord(task, epoch, 1, Outcome.OK, 0, 0, 1, 0.001, 0.0, 0, None, _CAPACITY)


def _reference(truth: dict[Version, Body]) -> Ledger:
    ledger = Ledger()
    for version in sorted(truth):
        ledger.apply(version, truth[version])
    return ledger


def print_ledger_figures(seeds: int, sizes: list[int]) -> None:
    print("Ledger replication under faults (20% loss, 5% duplication, 0.5-30 ms delay, a split,")
    print("a crash, a wiped node, clocks drifting 5%), then faults off; test timers, simulated:")
    print(
        f"{'N':>5} {'seeds':>6} {'records (median)':>17} {'lost in the wipe (total)':>25}"
        f" {'converged s (median, max)':>26}"
    )
    for n in sizes:
        runs = [scenario_ledger(seed, n) for seed in range(seeds)]
        times = sorted(r.converged_s or 0.0 for r in runs)
        records = sorted(r.records for r in runs)[len(runs) // 2]
        lost = sum(r.lost for r in runs)
        print(
            f"{n:>5} {seeds:>6} {records:>17} {lost:>25}"
            f" {times[len(times) // 2]:>18.2f}, {times[-1]:.2f}"
        )


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
    parser.add_argument("--ledger", action="store_true", help="ledger replication under faults")
    parser.add_argument(
        "--work", action="store_true", help="claims, leases and takeovers under faults (5 nodes)"
    )
    parser.add_argument(
        "--no-results",
        action="store_true",
        help="with --work: attempts leave no result files to hold and copy",
    )
    args = parser.parse_args(argv)
    if args.work:
        from swarm.sim.scenarios import print_work_figures  # it builds on this module

        return print_work_figures(args.seeds, results=not args.no_results)
    if args.spread:
        print_spread_figures(args.seeds, args.nodes)
        return 0
    if args.ledger:
        print_ledger_figures(args.seeds, args.nodes)
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
