"""The work-sharing scenarios: one fault (or a random series of them) while 60 tasks run on five
simulated nodes (work.py), each checked as it strikes and after, and their figures over many
seeds (`python -m swarm.sim --work`)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from swarm.sim.replica import InvariantBroken
from swarm.sim.work import LEASE_S, SLOTS, STEP_S, TASK_S, WorkSim

SCENARIOS = ("kill", "restart", "freeze", "partition", "loss", "disk", "drain", "mixed")

Event = tuple[float, Callable[["WorkSim"], object]]


@dataclass(slots=True)
class WorkRun:
    ended_s: float  # from faults off until every task ended everywhere
    makespan_s: float  # from the submit until every task ended everywhere
    ideal_s: float  # the tasks' run time over every slot
    duplicates: int
    tasks: int


def scenario_work(
    seed: int, fault: str, n: int = 5, tasks: int = 60, results: bool = True
) -> WorkRun:
    """`tasks` one-second tasks (and one that always crashes) on `n` nodes of 2 slots, with one
    fault while they run: kill (SIGKILL the busiest node), restart (the same, brought back with
    its state after twice the lease), freeze (SIGSTOP it for twice the lease), partition (a 2|3
    split for three leases), loss (10% for the whole run), disk (the busiest node's disk is full
    for twice the lease), drain (of the busiest node), or mixed (a random series of kills,
    freezes and splits). The tasks cut off by the fault must be taken over before it ends."""
    work = WorkSim(seed, n, loss=0.1 if fault == "loss" else 0.0, results=results)
    names = [f"t{k:03d}" for k in range(tasks)] + ["crash0"]
    submitted = work.sim.now
    work.submit(0, names)
    for _ in range(int(1.5 / STEP_S)):
        work.step()
    rng = random.Random(seed * 7 + 1)
    events = _mixed(rng, n) if fault == "mixed" else _plan(work, fault, n)
    elapsed = 0.0
    while events or elapsed < 2 * LEASE_S:
        while events and events[0][0] <= elapsed:
            events.pop(0)[1](work)
        work.step()
        elapsed += STEP_S
    faults_off = work.sim.now
    ended = work.finish(names)
    ideal = tasks * TASK_S / (n * SLOTS)
    makespan = faults_off + ended - submitted
    return WorkRun(ended, makespan, ideal, work.duplicates(names), tasks)


def _busiest(work: WorkSim) -> int:
    return max(range(len(work.workers)), key=lambda i: (len(work.workers[i].running), -i))


def _plan(work: WorkSim, fault: str, n: int) -> list[Event]:
    victim = _busiest(work)
    observer = 0 if victim else 1
    twice = 2 * LEASE_S
    check = (twice - STEP_S, WorkSim.check_taken_over)
    match fault:
        case "kill" | "restart" | "freeze":
            lose = {"kill": WorkSim.kill, "restart": WorkSim.kill, "freeze": WorkSim.freeze}
            events: list[Event] = [
                (0.0, partial(WorkSim.note_lost, holders={victim}, observer=observer)),
                (0.0, partial(lose[fault], i=victim)),
                check,
            ]
            if fault == "restart":
                events.append((twice, partial(WorkSim.restart, i=victim)))
            elif fault == "freeze":
                events.append((twice, partial(WorkSim.thaw, i=victim)))
            return events
        case "partition":
            # Three leases: the side of two has 4 slots for the 6 tasks the other side held,
            # so taking them all over takes a second round of tasks.
            side, rest, thrice = [0, 1], list(range(2, n)), 3 * LEASE_S
            return [
                (0.0, partial(WorkSim.note_lost, holders=set(side), observer=rest[0], key="a")),
                (0.0, partial(WorkSim.note_lost, holders=set(rest), observer=side[0], key="b")),
                (0.0, partial(WorkSim.split, sides=(side, rest))),
                (thrice - STEP_S, partial(WorkSim.check_taken_over, key="a")),
                (thrice - STEP_S, partial(WorkSim.check_taken_over, key="b")),
                (thrice, WorkSim.heal),
            ]
        case "loss":
            return [(twice, WorkSim.heal)]  # nothing to undo: the loss lasts the whole run
        case "disk":
            return [
                (0.0, partial(WorkSim.note_lost, holders={victim}, observer=observer)),
                (0.0, partial(WorkSim.fill, i=victim)),
                check,
                (twice, partial(WorkSim.free, i=victim)),
            ]
        case "drain":
            running = {t: a.epoch for t, a in work.workers[victim].running.items()}
            check_drained = partial(
                WorkSim.check_drained, i=victim, observer=observer, tasks=running
            )
            return [(0.0, partial(WorkSim.drain, i=victim)), (twice, check_drained)]
    raise ValueError(f"unknown fault {fault!r}")


def _mixed(rng: random.Random, n: int) -> list[Event]:
    """A random series of faults, each undone a while later (every node is back at the end); a
    node is not hit again before its last fault is undone, and splits do not overlap. A kill or
    freeze that lasts two leases with no split meanwhile must see its tasks taken over (by a
    node spared until then)."""
    events: list[Event] = []
    checks: list[tuple[float, float, int, Event, Event]] = []  # window, victim, note, check
    splits: list[tuple[float, float]] = []
    faults: list[tuple[float, float, int]] = []  # kills and freezes: begin, end, node
    at = 0.0
    free_at = [0.0] * n  # when each node is over its last fault
    for k in range(rng.randint(2, 5)):
        span = rng.uniform(0.5, 3 * LEASE_S)
        kind = rng.choice(("kill", "freeze", "partition"))
        idle = [j for j in range(n) if free_at[j] <= at]
        busy_split = any(begin <= at < end for begin, end in splits)
        if (kind == "partition" and busy_split) or len(idle) < 2:
            at += rng.uniform(0.3, 2.0)
            continue
        victim = rng.choice(idle)
        if kind == "partition":
            side = rng.sample(range(n), rng.randint(1, n // 2))
            rest = [j for j in range(n) if j not in side]
            events += [(at, partial(WorkSim.split, sides=(side, rest))),
                       (at + span, WorkSim.heal)]  # fmt: skip
            splits.append((at, at + span))
        else:
            lose, back = (
                (WorkSim.kill, WorkSim.restart)
                if kind == "kill"
                else (WorkSim.freeze, WorkSim.thaw)
            )
            events += [(at, partial(lose, i=victim)), (at + span, partial(back, i=victim))]
            free_at[victim] = at + span
            faults.append((at, at + span, victim))
            if span > 2 * LEASE_S:
                observer = rng.choice([j for j in idle if j != victim])
                due = at + 2 * LEASE_S
                free_at[observer] = max(free_at[observer], due)
                note = partial(WorkSim.note_lost, holders={victim}, observer=observer, key=str(k))
                check = partial(WorkSim.check_taken_over, key=str(k))
                # Noted just before the fault strikes (a kill forgets what the node ran).
                checks.append((at, due, victim, (at - 1e-6, note), (due, check)))
        at += rng.uniform(0.3, 2.0)
    for begin, end, victim, noted, checked in checks:
        # Judged only where nothing else cut capacity meanwhile: a split, or another node lost
        # (the takeovers would then wait for slots, which is no fault of the rules).
        others = [(b, e) for b, e, node in faults if node != victim]
        if not any(b < end and begin < e for b, e in splits + others):
            events += [noted, checked]
    return sorted(events, key=lambda e: e[0])


def print_work_figures(seeds: int, results: bool = True) -> int:
    """Every scenario over `seeds` seeds; exit status 1 if any invariant broke."""
    print("Work sharing under faults, 5 simulated nodes x 2 slots, 60 one-second tasks and one")
    print("that always crashes, test timers (lease 2 s), clocks drifting 5%, " + (
        "results held by 3 nodes:" if results else "no result files (--no-results):"
    ))  # fmt: skip
    print(f"{'scenario':>10} {'seeds':>6} {'broken':>7} {'duplicates (median, max)':>25}"
          f" {'makespan / ideal (median, max)':>31}")  # fmt: skip
    broken_total = 0
    for fault in SCENARIOS:
        runs: list[WorkRun] = []
        broken = 0
        for seed in range(seeds):
            try:
                runs.append(scenario_work(seed, fault, results=results))
            except InvariantBroken as exc:
                broken += 1
                print(f"  {fault}: {exc}")
        broken_total += broken
        if not runs:
            print(f"{fault:>10} {seeds:>6} {broken:>7}")
            continue
        dups = sorted(r.duplicates for r in runs)
        spans = sorted(r.makespan_s / r.ideal_s for r in runs)
        print(f"{fault:>10} {seeds:>6} {broken:>7} {dups[len(dups) // 2]:>18}, {dups[-1]:>4}"
              f" {spans[len(spans) // 2]:>24.2f}, {spans[-1]:.2f}")  # fmt: skip
    return 1 if broken_total else 0
