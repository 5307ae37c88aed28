"""The rules of ledger replication (Scuttlebutt anti-entropy), shared by the daemon and the
simulator.

Every record is versioned (origin, generation, seq) and each origin numbers its records 1, 2, 3,
... per generation. A node's digest is its watermarks: for each (origin, generation), the highest
seq up to which it holds every record that still exists. Two messages carry records:

- a *push*: an origin's fresh records, sent at once over UDP to a few members. It may arrive
  late, twice, or not at all, so only the next record a node lacks is taken, in seq order;
- a *sync answer*: what a peer holds past the digest we sent it, in seq order per origin, ending
  with the watermarks up to which it was complete (gaps below are records that no longer exist,
  such as superseded heartbeats). It continues from that digest, so it is taken only for the
  origins where we still hold at least what the digest said (a node whose ledger was wiped
  meanwhile does not). The answer ends with the answerer's own digest, and the asker answers
  it on the same stream (the reverse phase), taken by the same rule.

The invariant both keep: a watermark never passes a record this node lacks and could still get.
A record refused (a forged result, or records that could not be stored) stops its origin's
records in that message, and the watermark stays below it, so the record is still taken when a
genuine copy comes, or when it can be stored. (A record that does not decode, say of a newer
version, is passed over and counted: every peer holds the same bytes, so waiting would stall.)

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

Key = tuple[str, int]  # (origin, generation)
Watermarks = dict[Key, int]


class Intake:
    """Which records of one message from a peer to take, and how far the watermarks may rise."""

    def __init__(
        self, high_seq: Mapping[Key, int], me: Key, asked: Mapping[Key, int] | None
    ) -> None:
        """`asked`: the digest a sync answer answers; None for a push. `me` is this node's
        current (id, generation): its own records it never takes from a peer (those of its
        earlier generations, before its ledger was wiped, it takes back). One Intake serves
        every frame of one sync answer, so a refusal holds across frames."""
        self._high = high_seq
        self._me = me
        self._in_order = asked is None
        # Origins where we hold less than the digest said: the answer does not continue from
        # what we hold, so nothing of theirs is taken from it.
        self._gap = {key for key, seq in (asked or {}).items() if high_seq.get(key, 0) < seq}
        self._taken: dict[Key, int] = {}
        self._refused: dict[Key, int] = {}
        self.gaps: set[Key] = set()  # origins a push showed we lag behind: worth a pull now

    def wants(self, origin: str, generation: int, seq: int) -> bool:
        """Whether to take this record (then call `took` or `refuse` with the outcome)."""
        key = (origin, generation)
        if key == self._me or key in self._refused:
            return False
        have = self._taken.get(key, self._high.get(key, 0))
        if self._in_order:
            if seq > have + 1:
                self.gaps.add(key)
            return seq == have + 1
        return key not in self._gap and seq > have

    def took(self, key: Key, seq: int) -> None:
        self._taken[key] = seq

    def refuse(self, key: Key, seq: int) -> None:
        self._refused.setdefault(key, seq)

    @property
    def refused(self) -> int:
        return len(self._refused)

    def watermarks(self, upto: Mapping[Key, int]) -> Iterator[tuple[Key, int]]:
        """The watermarks a sync answer's `upto` lets us raise (never past a refused record)."""
        for key, seq in upto.items():
            if key == self._me or key in self._gap:
                continue
            if key in self._refused:
                seq = min(seq, self._refused[key] - 1)
            if seq > self._high.get(key, 0):
                yield key, seq


def ours_ahead(me: Key, written: int, theirs: Mapping[Key, int]) -> int | None:
    """The seq to which a peer's watermarks say it holds records of our own life `me`, when that
    is past the last record we wrote (`written`); None if it is not. Only another process
    writing in our name (a copy of our state dir), or a ledger of ours restored from an older
    copy, makes records of ours we never wrote."""
    seq = theirs.get(me, 0)
    return seq if seq > written else None


def behind(ours: Mapping[Key, int], theirs: Mapping[Key, int]) -> Iterable[tuple[Key, int]]:
    """For a peer's digest: each (origin, generation) we hold past it, with the seq it has."""
    for key, high in ours.items():
        after = theirs.get(key, 0)
        if high > after:
            yield key, after
