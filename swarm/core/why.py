"""Why a task is where it is (`swarm why`): the node's reading of its records and of the swarm.

Theory of operation: a pure function of what the node knows: the task's view, the live members
and what each offers (their gossiped capacity and labels), this node's holds on the task (a
retry's backoff, an eviction's hold-back), its leases on other nodes, and why this node itself
claims nothing, if it does not. It answers in sentences, the most telling first: for a pending
task, the first requirement no live node meets (naming it, and what the nearest node has), else
what it waits for; for a running one, where, and whether its holder went silent (and when its
lease runs out). Pure: no I/O, no clock reads (`now` is the node's monotonic time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from swarm.core.lease import Leases
from swarm.core.ledger import Outcome, State, TaskView
from swarm.core.policy import labels_match
from swarm.core.scheduler import Peer
from swarm.core.spec import TaskSpec
from swarm.core.units import format_bytes, format_duration


@dataclass(frozen=True, slots=True)
class Swarm:
    """What a node knows of the others, for the answer."""

    me: str
    peers: list[Peer]  # the live members (this node among them), as gossip describes them
    holds: Mapping[str, float]  # task -> when this node's hold on it ends (monotonic)
    leases: Leases
    not_claiming: str  # why this node claims nothing new ("" if it claims)


def explain(view: TaskView, swarm: Swarm, now: float) -> list[str]:
    """Sentences that say why the task is not running (or where it runs, or how it ended)."""
    spec = view.spec
    if spec is None or view.state is None:
        return ["its TASK record has not reached this node yet: only other records name it"]
    ordered = view.ordered_attempts()
    last = ordered[-1].result if ordered else None
    if view.state is State.DONE:
        ok = view.ok_attempt()
        node = ok.version.origin[:8] if ok is not None else "?"
        return [f"it is done: it ran to the end on node {node}"]
    if view.state is State.CANCELLED:
        return ["it was cancelled: it will not run (a Python script run again revives its calls)"]
    if view.state is State.FAILED:
        why = f" (the last attempt: {last.outcome}, {last.reason})" if last and last.reason else ""
        return [f"it failed{why}: `swarm retry {view.job}` runs it again"]
    if view.state is State.RUNNING:
        return _running(view, swarm, now)
    return _pending(view, swarm, now, last.outcome if last else None, bool(last and last.evicted))


def _running(view: TaskView, swarm: Swarm, now: float) -> list[str]:
    claim = view.active_claim()
    if claim is None:
        return ["it is running"]
    epoch, node = claim
    if node == swarm.me:
        return [f"it runs on node {node[:8]}, the node asked (epoch {epoch})"]
    if swarm.leases.expired(node, now):
        return [
            f"its claim is held by node {node[:8]}, which went silent: its lease has run out, "
            "and a live node takes it over"
        ]
    expiry = swarm.leases.expiry(node)
    if expiry is not None and expiry - now < swarm.leases.ttl_s / 2:  # silent half a lease
        left = format_duration(max(expiry - now, 0.0))
        return [
            f"it runs on node {node[:8]}, not heard from lately: its lease runs out in {left} "
            "if it stays silent, and then a live node takes the task over"
        ]
    return [f"it runs on node {node[:8]} (epoch {epoch})"]


def _pending(
    view: TaskView, swarm: Swarm, now: float, outcome: Outcome | None, evicted: bool
) -> list[str]:
    spec = view.spec
    assert spec is not None
    said: list[str] = []
    unmet = unmet_need(spec, swarm.peers)
    if unmet:
        said.append(unmet)
    held_until = swarm.holds.get(view.task_id, 0.0)
    if held_until > now:
        left = format_duration(held_until - now)
        if evicted:
            said.append(f"it is held back for {left} after an eviction under memory pressure")
        elif outcome in (Outcome.FAILED, Outcome.TIMEOUT):
            said.append(f"it waits {left} more: its retry backoff after a failed attempt")
        else:
            said.append(f"it is left to other nodes for {left} more")
    if swarm.not_claiming:
        said.append(
            f"node {swarm.me[:8]}, the node asked, claims no new task: {swarm.not_claiming}"
        )
    if not unmet and held_until <= now:
        fits = sum(1 for p in swarm.peers if _fits(spec, p))
        said.append(
            f"it waits for a free slot: {fits} live node{'s' if fits != 1 else ''} can run it, "
            "and the tasks of higher priority, or queued before it, go first"
        )
    return said


def _fits(spec: TaskSpec, peer: Peer) -> bool:
    return (
        not peer.draining
        and spec.need.fits_in(peer.capacity)
        and labels_match(spec.requires, peer.labels)
    )


def unmet_need(spec: TaskSpec, peers: list[Peer]) -> str:
    """The first requirement of a task no live node meets, said with what the nearest node
    offers; "" if some node can run it. (`swarm submit` warns with it too.)"""
    # Draining members, and those that offer nothing (started --no-work), take no task.
    working = [p for p in peers if not p.draining and p.capacity.cpus > 0]
    if any(_fits(spec, p) for p in working):
        return ""
    if not working:
        return "no live node takes work: every member is draining, gone, or started --no-work"
    need = spec.need
    most_cpus = max(p.capacity.cpus for p in working)
    if need.cpus > most_cpus:
        return f"it needs {need.cpus:g} CPUs, and the most a live node offers is {most_cpus:g}"
    most_memory = max(p.capacity.memory_bytes for p in working)
    if need.memory_bytes > most_memory:
        return (
            f"it needs {format_bytes(need.memory_bytes)} of memory, and the most a live node "
            f"offers is {format_bytes(most_memory)}"
        )
    most_gpus = max(p.capacity.gpus for p in working)
    if need.gpus > most_gpus:
        return f"it needs {need.gpus} GPUs, and the most a live node offers is {most_gpus}"
    for key, wanted in spec.requires:
        if not any(labels_match(((key, wanted),), p.labels) for p in working):
            seen = sorted({str(p.labels[key]) for p in working if key in p.labels})
            has = f"the nodes have {key}={', '.join(seen)}" if seen else f"no node has {key}"
            return f"it requires {key}={_shown(wanted)}: no live node matches ({has})"
    return "no single live node has all it needs at once (CPUs, memory, GPUs and labels together)"


def _shown(value: object) -> str:
    return "|".join(map(str, value)) if isinstance(value, tuple) else str(value)
