"""The collector paused during bulk work, and what lived through it frozen."""

from __future__ import annotations

import gc

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
