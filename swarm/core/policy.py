"""Which pending tasks this node claims, given its free resources, its labels and its peers.

Theory of operation: pending tasks are grouped by shape (what they need, which labels they
require); each group is a heap ordered by (-priority, rank, submission stamp, task id). To fill
free capacity, the best head among the groups that fit is taken, again and again, so a large task
that does not fit never blocks smaller ones behind it (backfill), and among tasks that fit the
highest priority runs first. Entries are removed lazily: a popped task that is no longer pending
is skipped, so the queue never has to be told about claims, results or cancels.

With peers, nodes would race for every task. So each task has a preferred node, by weighted
rendezvous hashing over the live members that could run it (`rendezvous_rank`): the preferred
node (rank 0) takes it at once, the next one only after one stagger, and so on (work stealing). A
node of twice the CPUs is preferred for about twice the tasks. A task not yet ready for this node
waits aside until its time, and does not block the tasks behind it.

Pure: the caller passes in what is pending, what is free, and the time.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from swarm.core.spec import LabelValue, Resources, TaskSpec

Labels = Mapping[str, str | int | float | bool]
Requires = tuple[tuple[str, LabelValue], ...]
_COMPARATORS = (">=", "<=", "!=", ">", "<")


def labels_match(requires: Requires, labels: Labels) -> bool:
    """Every required label must match; a list means any one of its values."""
    for key, wanted in requires:
        have = labels.get(key)
        if have is None:
            return False
        choices = wanted if isinstance(wanted, tuple) else (wanted,)
        if not any(_value_matches(want, have) for want in choices):
            return False
    return True


def _value_matches(want: str | int | float | bool, have: str | int | float | bool) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return type(want) is type(have) and want == have  # True is not 1 here
    if isinstance(want, str):
        for op in _COMPARATORS:
            if want.startswith(op):
                return _compare(op, want[len(op) :].strip(), have)
        if isinstance(have, str):
            return want == have
        return _compare("==", want, have)  # "16" matches memory_gb 16.0
    if isinstance(have, str):
        return str(want) == have
    return want == have  # Python compares ints and floats exactly, however large


def _number(text: str | int | float) -> int | float:
    if isinstance(text, int | float):
        return text
    try:
        return int(text)
    except ValueError:
        return float(text)


def _compare(op: str, bound_text: str, have: str | int | float) -> bool:
    try:
        # Ints stay ints: Python compares ints and floats exactly, with no overflow.
        bound, value = _number(bound_text), _number(have)
    except (ValueError, OverflowError):
        # Not numbers: only (in)equality of the text means anything.
        return {"==": bound_text == str(have), "!=": bound_text != str(have)}.get(op, False)
    return {
        "==": value == bound,
        ">=": value >= bound,
        "<=": value <= bound,
        ">": value > bound,
        "<": value < bound,
        "!=": value != bound,
    }[op]


def rendezvous_rank(task_id: str, me: str, candidates: Iterable[tuple[str, float]]) -> int:
    """How many of `candidates` (node id, weight: its CPUs) are preferred over `me` for this task.

    Weighted rendezvous (highest random weight) hashing: each node scores -weight / ln(u), with
    u in (0, 1) a hash of (task, node); the highest score is preferred. Every node computes the
    same order from the same members, with no coordination, and a member joining or leaving moves
    only the tasks it wins or held."""
    weights = dict(candidates)
    mine = _score(task_id, me, weights.get(me, 1.0))
    return sum(
        1
        for node, weight in weights.items()
        if node != me and (_score(task_id, node, weight), node) > (mine, me)
    )


def rendezvous_top(key: str, nodes: Iterable[str], count: int) -> list[str]:
    """The first `count` of `nodes` for `key` by (unweighted) rendezvous hashing: every node
    computes the same list, and a node leaving moves only the keys it was among the first for."""
    return sorted(nodes, key=lambda node: (-_score(key, node, 1.0), node))[:count]


def _score(task_id: str, node: str, weight: float) -> float:
    digest = hashlib.blake2b(f"{task_id}/{node}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / 2**64
    return -max(weight, 1e-9) / math.log(u)


ShapeKey = tuple[Resources, Requires]

# How many infeasible tasks a status lists (its count says how many there are in all), and how
# many queue entries it may look at to find them (some are stale, or of other jobs).
INFEASIBLE_LISTED_MAX = 100
INFEASIBLE_VISITS_MAX = 20_000


@dataclass(frozen=True, slots=True)
class Infeasible:
    """Pending tasks this node could never run: how many of each job, and a few of them."""

    counts: dict[str, int]  # job -> its pending tasks that fit no node like this one
    listed: list[str]  # at most INFEASIBLE_LISTED_MAX of them


_Entry = tuple[int, int, int, str]  # (-priority, rank, stamp or -stamp, task id)


@dataclass(slots=True)
class PendingQueue:
    groups: dict[ShapeKey, list[_Entry]] = field(default_factory=dict)
    # Tasks not yet ready for this node (a peer is preferred): (ready at, entry, shape).
    waiting: list[tuple[float, _Entry, ShapeKey]] = field(default_factory=list)

    def push(
        self,
        task_id: str,
        spec: TaskSpec,
        stamp: int,
        rank: int = 0,
        ready_at: float = 0.0,
        first: bool = False,
    ) -> None:
        """`first`: ahead of every task of its priority and rank (a takeover)."""
        shape = (spec.need, spec.requires)
        # Our own tasks oldest first; stolen ones newest first, from the far end of the
        # preferred node's queue, so that thief and owner do not reach for the same task.
        order = -(2**63) if first else stamp if rank == 0 else -stamp
        entry = (-spec.priority, rank, order, task_id)
        if ready_at > 0:
            heapq.heappush(self.waiting, (ready_at, entry, shape))
        else:
            group = self.groups.get(shape)
            if group is None:  # (not setdefault: it would make a list for every task)
                group = self.groups[shape] = []
            heapq.heappush(group, entry)

    def next_ready(self) -> float | None:
        """When the next waiting task becomes ready for this node (None: none waits)."""
        return self.waiting[0][0] if self.waiting else None

    def select(
        self,
        is_pending: Callable[[str], bool],
        free: Resources,
        labels: Labels,
        limit: int,
        now: float = math.inf,
    ) -> list[str]:
        """Pop up to `limit` pending tasks that fit in `free` and are ready by `now`, best
        first."""
        while self.waiting and self.waiting[0][0] <= now:
            _, entry, shape = heapq.heappop(self.waiting)
            heapq.heappush(self.groups.setdefault(shape, []), entry)
        chosen: list[str] = []
        taken: set[str] = set()
        while len(chosen) < limit:
            best_key: ShapeKey | None = None
            for key in list(self.groups):
                need, requires = key
                if not need.fits_in(free) or not labels_match(requires, labels):
                    continue
                heap = self.groups[key]
                while heap and (heap[0][3] in taken or not is_pending(heap[0][3])):
                    heapq.heappop(heap)
                if not heap:
                    del self.groups[key]
                    continue
                if best_key is None or heap[0] < self.groups[best_key][0]:
                    best_key = key
            if best_key is None:
                break
            task_id = heapq.heappop(self.groups[best_key])[3]
            chosen.append(task_id)
            taken.add(task_id)
            free = free - best_key[0]
        return chosen

    def infeasible(
        self,
        capacity: Resources,
        labels: Labels,
        is_pending: Callable[[str], bool],
        listed_max: int = INFEASIBLE_LISTED_MAX,
    ) -> list[str]:
        """The first `listed_max` pending tasks (in queue order, then sorted by id) that this
        node could never run, even when idle (too big, or labels differ). Bounded: at most
        INFEASIBLE_VISITS_MAX queue entries are looked at, however many tasks wait."""
        heaps = [
            heap
            for (need, requires), heap in self.groups.items()
            if not (need.fits_in(capacity) and labels_match(requires, labels))
        ]
        found: set[str] = set()
        for visits, entry in enumerate(heapq.merge(*map(_in_order, heaps))):
            if len(found) == listed_max or visits == INFEASIBLE_VISITS_MAX:
                break
            if entry[3] not in found and is_pending(entry[3]):
                found.add(entry[3])
        return sorted(found)


def _in_order(heap: list[_Entry]) -> Iterator[_Entry]:
    """A heap's entries, smallest first, without popping them: a frontier of the children of
    what was yielded, so the first k cost O(k log k) whatever the heap's size."""
    frontier = [(heap[0], 0)] if heap else []
    while frontier:
        entry, i = heapq.heappop(frontier)
        yield entry
        for child in (2 * i + 1, 2 * i + 2):
            if child < len(heap):
                heapq.heappush(frontier, (heap[child], child))


def infeasible_counts(
    pending_shapes: Mapping[ShapeKey, Mapping[str, int]], capacity: Resources, labels: Labels
) -> dict[str, int]:
    """job -> its pending tasks of shapes this node could never run (from the ledger's counts
    of pending tasks per shape, so no task is walked)."""
    counts: dict[str, int] = {}
    for (need, requires), jobs in pending_shapes.items():
        if need.fits_in(capacity) and labels_match(requires, labels):
            continue
        for job, count in jobs.items():
            counts[job] = counts.get(job, 0) + count
    return counts


def why_infeasible(spec: TaskSpec, capacity: Resources, labels: Labels) -> str:
    """Why a task can never run on a node of this capacity and these labels, in words."""
    reasons = []
    need = spec.need
    if need.cpus > capacity.cpus + 1e-9:
        reasons.append(f"needs {need.cpus:g} cpus, the node has {capacity.cpus:g}")
    if need.memory_bytes > capacity.memory_bytes:
        reasons.append(
            f"needs {need.memory_bytes / 2**30:.1f} GiB of memory, "
            f"the node has {capacity.memory_bytes / 2**30:.1f}"
        )
    if need.gpus > capacity.gpus:
        reasons.append(f"needs {need.gpus} gpus, the node has {capacity.gpus}")
    for key, wanted in spec.requires:
        if not labels_match(((key, wanted),), labels):
            have = labels.get(key)
            shown = "no such label" if have is None else f"it has {key}={have}"
            reasons.append(f"requires {key}={_label_text(wanted)}, {shown}")
    return "; ".join(reasons) or "fits (it can run here)"


def _label_text(wanted: LabelValue) -> str:
    if isinstance(wanted, tuple):
        return "|".join(str(w) for w in wanted)
    return str(wanted)
