"""`swarm why`'s answers (swarm/core/why.py), from a node's records and its view of the swarm."""

from __future__ import annotations

from swarm.core.lease import Leases
from swarm.core.ledger import (
    CancelRecord,
    ClaimRecord,
    Ledger,
    Outcome,
    ResultRecord,
    TaskRecord,
    TaskView,
    Version,
)
from swarm.core.scheduler import Peer
from swarm.core.spec import Resources, TaskSpec
from swarm.core.why import Swarm, explain

GIB = 1 << 30
ME, OTHER = "me" * 16, "ot" * 16
PEERS = [
    Peer(ME, Resources(4.0, 8 * GIB, 0), {"zone": "us"}),
    Peer(OTHER, Resources(2.0, 16 * GIB, 1), {"zone": "us", "disk": "ssd"}),
]


def view_of(spec: TaskSpec, *bodies: object) -> TaskView:
    ledger = Ledger()
    ledger.apply(Version("sub", 1, 1), TaskRecord("t1", "job", "one", spec, 1))
    for seq, body in enumerate(bodies, start=2):
        origin = OTHER if isinstance(body, ClaimRecord | ResultRecord) else "sub"
        ledger.apply(Version(origin, 1, seq), body)  # type: ignore[arg-type]
    return ledger.tasks["t1"]


def swarm(**kw: object) -> Swarm:
    base: dict[str, object] = {
        "me": ME, "peers": PEERS, "holds": {}, "leases": Leases(ME, 10.0), "not_claiming": "",
    }  # fmt: skip
    return Swarm(**{**base, **kw})  # type: ignore[arg-type]


def spec(cpus: float = 1.0, memory: int = GIB, gpus: int = 0, **requires: str) -> TaskSpec:
    return TaskSpec("true", None, Resources(cpus, memory, gpus), requires=tuple(requires.items()))


def failed(epoch: int, evicted: bool = False) -> ResultRecord:
    outcome = Outcome.INTERRUPTED if evicted else Outcome.FAILED
    return ResultRecord(
        "t1", epoch, epoch, outcome, 1, 0, 1, 0.1, 0.0, 0, None, PEERS[1].capacity,
        "exit 1", evicted=evicted,
    )  # fmt: skip


def test_a_task_that_fits_no_live_node_names_the_first_need_none_meets() -> None:
    cases = {
        spec(cpus=8): "it needs 8 CPUs, and the most a live node offers is 4",
        spec(
            memory=32 * GIB
        ): "it needs 32.0 GiB of memory, and the most a live node offers is 16.0 GiB",
        spec(gpus=2): "it needs 2 GPUs, and the most a live node offers is 1",
        spec(zone="eu"): "it requires zone=eu: no live node matches (the nodes have zone=us)",
        spec(rack="r1"): "it requires rack=r1: no live node matches (no node has rack)",
        spec(cpus=4, disk="ssd"): "no single live node has all it needs at once",
    }
    for task_spec, said in cases.items():
        reasons = explain(view_of(task_spec), swarm(), now=0.0)
        assert reasons[0].startswith(said), (task_spec, reasons)


def test_a_task_that_fits_waits_for_a_slot_or_its_hold_or_for_this_node() -> None:
    assert explain(view_of(spec()), swarm(), 0.0) == [
        "it waits for a free slot: 2 live nodes can run it, and the tasks of higher priority, "
        "or queued before it, go first"
    ]
    after_failure = view_of(spec(), ClaimRecord("t1", 1, 5), failed(1))
    (said,) = explain(after_failure, swarm(holds={"t1": 12.0}), now=10.0)
    assert said == "it waits 2s more: its retry backoff after a failed attempt"
    after_eviction = view_of(spec(), ClaimRecord("t1", 1, 5), failed(1, evicted=True))
    (said,) = explain(after_eviction, swarm(holds={"t1": 70.0}), now=10.0)
    assert said == "it is held back for 1m 00s after an eviction under memory pressure"
    cut_off = explain(view_of(spec()), swarm(not_claiming="catching up with the swarm first"), 0.0)
    assert cut_off[0] == (
        f"node {ME[:8]}, the node asked, claims no new task: catching up with the swarm first"
    )
    assert cut_off[1].startswith("it waits for a free slot: 2 live nodes")  # the swarm's answer too


def test_a_submit_host_alone_says_no_live_node_takes_work() -> None:
    host = Peer(ME, Resources(0.0, 0, 0), {})  # started --no-work
    reasons = explain(view_of(spec()), swarm(peers=[host], not_claiming="it takes no work"), 0.0)
    assert reasons[0].startswith("no live node takes work")


def test_a_running_task_says_where_and_whether_its_holder_went_silent() -> None:
    running = view_of(spec(), ClaimRecord("t1", 1, 5))
    leases = Leases(ME, 10.0)
    leases.heartbeat(OTHER, 1, 1, now=0.0)
    assert explain(running, swarm(leases=leases), now=2.0) == [
        f"it runs on node {OTHER[:8]} (epoch 1)"
    ]
    (silent,) = explain(running, swarm(leases=leases), now=7.0)
    assert "not heard from lately: its lease runs out in 3s" in silent
    (gone,) = explain(running, swarm(leases=leases), now=11.0)
    assert "its lease has run out" in gone


def test_an_ended_task_says_how() -> None:
    assert explain(view_of(spec(), CancelRecord("job", "t1", 9)), swarm(), 0.0)[0].startswith(
        "it was cancelled"
    )
    once = TaskSpec("true", None, Resources(1.0, GIB), retries=0)
    (said,) = explain(view_of(once, ClaimRecord("t1", 1, 5), failed(1)), swarm(), 0.0)
    assert said == "it failed (the last attempt: failed, exit 1): `swarm retry job` runs it again"
    done = ResultRecord("t1", 1, 1, Outcome.OK, 0, 0, 1, 0.1, 0.0, 0, None, PEERS[1].capacity)
    (said,) = explain(view_of(spec(), ClaimRecord("t1", 1, 5), done), swarm(), 0.0)
    assert said == f"it is done: it ran to the end on node {OTHER[:8]}"
