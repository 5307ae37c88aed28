"""The cyclic garbage collector and a node's million long-lived objects.

Theory of operation: a node holding a million tasks holds several million objects that live as
long as it does (task views, specs, queue entries). CPython's collector scans every tracked
object at each full collection, and while a ledger loads or a large submission is applied those
collections come again and again, each longer than the last: a third of a load's time went to
them. So bulk work runs with the collector paused, and then everything alive is moved to the
permanent generation (`gc.freeze`), which no collection scans again. Frozen objects are still
freed when their last reference goes; only a reference cycle among them would outlive its use,
so a collection runs just before each freeze (short: all but the objects made since the last
freeze are frozen already), and the ledger's objects form none. Work known to make no cycles
(a ledger loaded at a start: three million objects, a collection of them that takes a second
and frees nothing) says so: the collection then runs before it instead, over what is young
then (little), and what it made is frozen as it is. Process-wide, as the collector is: pauses
nest, and the collection after is left out only when no block of the pause may make cycles.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


class _Pauses:
    """bulk() blocks under way (several submissions may be applied at once), and whether the
    collector ran before the first of them."""

    count = 0
    was_enabled = True
    cycle_free = True  # every block of the pause said it makes no reference cycles


# Below this many items (tasks, records) the work runs with the collector as it is: a
# collection and a freeze would cost more than they save, and each freeze also keeps whatever
# reference cycles are alive at that moment (a connection's, say) for good once they die.
BULK_ITEMS_MIN = 2_000


@contextlib.contextmanager
def bulk(items: int = BULK_ITEMS_MIN, cycle_free: bool = False) -> Iterator[None]:
    """Pause the collector while `items` long-lived things are made; then freeze what is
    alive. Nothing is done for fewer than BULK_ITEMS_MIN. `cycle_free`: the work makes no
    reference cycles (one it made would be kept for good), so the garbage that a freeze must
    not keep is only what was there before it: collected first, while it is small."""
    if items < BULK_ITEMS_MIN:
        yield
        return
    if _Pauses.count == 0:
        _Pauses.was_enabled = gc.isenabled()
        _Pauses.cycle_free = True
        gc.disable()
        if cycle_free:
            gc.collect()
    _Pauses.cycle_free = _Pauses.cycle_free and cycle_free
    _Pauses.count += 1
    try:
        yield
    finally:
        _Pauses.count -= 1
        if _Pauses.count == 0:
            # What is not frozen yet is only what was made since the last freeze, so this
            # collection is short; it frees the cycles among that, which freezing would keep.
            if not _Pauses.cycle_free:
                gc.collect()
            gc.freeze()
            if _Pauses.was_enabled:
                gc.enable()
