"""The collector paused during bulk work, and what lived through it frozen."""

from __future__ import annotations

import gc
import weakref

from swarm.daemon import heap


def test_bulk_pauses_the_collector_nests_and_freezes_what_is_alive() -> None:
    assert gc.isenabled()
    try:
        with heap.bulk():
            assert not gc.isenabled()
            with heap.bulk():
                kept = [object() for _ in range(100)]
            assert not gc.isenabled()  # the outer block still runs
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()


def test_bulk_leaves_a_collector_that_was_off_off() -> None:
    gc.disable()
    try:
        with heap.bulk():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()


def test_bulk_of_a_few_items_leaves_the_collector_alone() -> None:
    frozen = gc.get_freeze_count()
    with heap.bulk(heap.BULK_ITEMS_MIN - 1):
        assert gc.isenabled()
    assert gc.get_freeze_count() == frozen


class _Cyclic:
    """An object that refers to itself: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_work_that_makes_no_cycles_is_frozen_with_no_collection() -> None:
    """Said cycle-free, a block is frozen as it is: a cycle made in it (which it promised not
    to make) is not collected, but kept."""
    try:
        with heap.bulk(cycle_free=True):
            cycle = weakref.ref(_Cyclic())
        gc.collect()  # the frozen are not looked at
        assert cycle() is not None
    finally:
        gc.unfreeze()
        gc.collect()


def test_garbage_from_before_a_cycle_free_block_is_collected_not_frozen() -> None:
    cycle = weakref.ref(_Cyclic())
    try:
        with heap.bulk(cycle_free=True):
            assert cycle() is None
    finally:
        gc.unfreeze()


def test_a_block_that_may_make_cycles_inside_a_cycle_free_one_has_them_collected() -> None:
    try:
        with heap.bulk(cycle_free=True), heap.bulk():
            cycle = weakref.ref(_Cyclic())
        assert cycle() is None
    finally:
        gc.unfreeze()
