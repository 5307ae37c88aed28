"""A push of fresh records too big for one datagram is split until each part fits (sync.py)."""

from __future__ import annotations

import random

from swarm.core import wire
from swarm.core.sync import PUSH_RECORDS_MAX, LedgerSync, fits, fitting

PEERS = [("10.0.0.1", 7946), ("10.0.0.2", 7946)]


def copies(n: int, body_bytes: int) -> tuple[wire.RecordCopy, ...]:
    return tuple(("ab" * 32, 1, seq, b"x" * body_bytes) for seq in range(1, n + 1))


def test_a_push_that_does_not_fit_is_halved_until_it_does() -> None:
    # Eight records of 300 bytes: 2,400 bytes, more than a datagram holds; halves of 1,200
    # bytes still do not fit, quarters of 600 do.
    pushes = fitting(copies(8, 300))
    assert [len(p.records) for p in pushes] == [2, 2, 2, 2]
    assert all(fits(p) for p in pushes)
    assert [r for p in pushes for r in p.records] == list(copies(8, 300))  # in order, each once


def test_a_push_that_fits_goes_whole() -> None:
    assert [len(p.records) for p in fitting(copies(8, 10))] == [8]


def test_fits_is_the_sealed_datagram_bound() -> None:
    """`fits` says yes exactly when the sealed datagram stays within DATAGRAM_BYTES_MAX."""
    sealer = wire.Sealer(bytes(16), wire.KeyRing.of(bytes(range(32))), counter=1, boot=bytes(8))
    for size in range(1200, 1400, 7):
        push = wire.RecordsPush(copies(1, size))
        sealed = sealer.seal(wire.encode(wire.ledger_message_to_plain(push)))
        assert fits(push) == (len(sealed) <= wire.DATAGRAM_BYTES_MAX)


def test_a_single_record_too_big_for_any_datagram_is_left_to_anti_entropy() -> None:
    assert fitting(copies(1, 2000)) == []


def test_spread_batches_by_push_records_max_to_a_fanout_of_wide() -> None:
    sync = LedgerSync(random.Random(1))
    fanout, pushes = sync.spread(copies(20, 10), PEERS * 10, wide=3)
    assert len(fanout) == 3
    assert [len(p.records) for p in pushes] == [PUSH_RECORDS_MAX, PUSH_RECORDS_MAX, 4]
    assert sync.spread(copies(2, 10), [], wide=3) == ([], [])
