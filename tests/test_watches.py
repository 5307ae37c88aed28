"""What a Python client's watch reports (swarm/daemon/watches.py): each watched task once it has
ended, the ones already ended at once, none of another connection's, and in bounded replies."""

from __future__ import annotations

import asyncio

from swarm.core.ledger import ClaimRecord, Ledger, Outcome, ResultRecord, TaskRecord, Version
from swarm.core.spec import Resources, TaskSpec
from swarm.daemon.watches import LOOK_AGAIN_S, Watch, Watches

SPEC = TaskSpec(cmd="true", argv=None, need=Resources(1.0, 1 << 20))


def ledger_with(*names: str) -> Ledger:
    ledger = Ledger()
    for i, name in enumerate(names, start=1):
        ledger.apply(Version("sub", 1, i), TaskRecord(name, "job", name, SPEC, 1))
    return ledger


def finish(ledger: Ledger, task: str, seq: int) -> list:  # type: ignore[type-arg]
    ledger.apply(Version("n", 1, 2 * seq), ClaimRecord(task, 1, seq))
    result = ResultRecord(
        task, 1, 1, Outcome.OK, 0, 0, 1, 0.1, 0.0, 0, None, Resources(1.0, 1 << 20), value=b"v"
    )
    return ledger.apply(Version("n", 1, 2 * seq + 1), result)


def test_a_watch_hears_each_end_once_and_only_its_own_tasks() -> None:
    async def main() -> None:
        ledger = ledger_with("a", "b", "c")
        watches = Watches()
        mine, other = Watch(), Watch()
        finish(ledger, "c", 1)
        assert watches.add(ledger, mine, ["a", "c", "nope"]) == ["nope"]
        watches.add(ledger, other, ["b"])
        assert mine.take(0.0, 100) == ["c"]  # ended already: at once
        watches.changed(finish(ledger, "a", 2))
        watches.changed(finish(ledger, "b", 3))
        await mine.wait(5.0, 0.0)  # returns at once: one has ended
        assert mine.take(0.0, 100) == ["a"] and other.take(0.0, 100) == ["b"]
        watches.changed(finish(ledger, "a", 4))  # a later result of a: not reported again
        assert mine.take(0.0, 100) == []

    asyncio.run(main())


def test_a_reply_is_bounded_and_a_task_looked_at_later_comes_back_when_due() -> None:
    async def main() -> None:
        ledger = ledger_with(*(f"t{i}" for i in range(5)))
        for i in range(5):
            finish(ledger, f"t{i}", i + 1)
        watch = Watch()
        Watches().add(ledger, watch, [f"t{i}" for i in range(5)])
        assert watch.take(0.0, 3) == ["t0", "t1", "t2"]
        watch.look_again("t0", now=10.0)
        assert watch.take(10.0, 3) == ["t3", "t4"]
        assert watch.take(10.0 + LOOK_AGAIN_S / 2, 3) == []
        assert watch.take(10.0 + LOOK_AGAIN_S, 3) == ["t0"]

    asyncio.run(main())


def test_a_closed_watch_is_forgotten() -> None:
    ledger = ledger_with("a")
    watches, watch = Watches(), Watch()
    watches.add(ledger, watch, ["a"])
    watches.close(watch)
    watches.changed(finish(ledger, "a", 1))
    assert watch.take(0.0, 10) == []
