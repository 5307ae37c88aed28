"""Leases: whether another node's claims are still alive, as this node judges it.

Theory of operation: a node renews all of its claims at once with one HEARTBEAT record, a counter
it raises every `heartbeat_interval`. An observer notes, on its *own* monotonic clock, when each
node's counter last advanced; the node's claims expire when that is `ttl` ago, or at once when
membership declares the node dead. No remote clock is read, so clock skew between machines cannot
expire a lease early or keep it alive. A node first heard of through a claim (its heartbeats not
yet arrived) starts its lease at that moment.

A node that comes back (membership sees it alive again) has its timer restarted: its claims are
valid again unless a higher-epoch claim took its tasks over meanwhile, which the ledger decides.

Pure: the caller passes `now` (seconds, monotonic) and what membership says.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Beat:
    generation: int  # a node whose ledger was wiped counts again from 0 under a new generation
    counter: int
    advanced_at: float


class Leases:
    def __init__(self, me: str, ttl_s: float) -> None:
        self.me = me
        self.ttl_s = ttl_s
        self._beats: dict[str, _Beat] = {}
        self._dead: set[str] = set()

    def heartbeat(self, node: str, generation: int, counter: int, now: float) -> None:
        beat = self._beats.get(node)
        if beat is None:
            self._beats[node] = _Beat(generation, counter, now)
        elif (generation, counter) > (beat.generation, beat.counter):
            beat.generation, beat.counter, beat.advanced_at = generation, counter, now

    def seen(self, node: str, now: float) -> None:
        """A node heard of (a claim of it, say): its lease runs from now if not already."""
        self._beats.setdefault(node, _Beat(-1, -1, now))

    def died(self, node: str) -> None:
        self._dead.add(node)

    def revived(self, node: str, now: float) -> None:
        self._dead.discard(node)
        beat = self._beats.get(node)
        if beat is not None:
            beat.advanced_at = max(beat.advanced_at, now)

    def expired(self, node: str, now: float) -> bool:
        """Whether `node`'s claims have expired; our own never do (we know what we run)."""
        if node == self.me:
            return False
        if node in self._dead:
            return True
        beat = self._beats.get(node)
        return beat is not None and now - beat.advanced_at >= self.ttl_s

    def expiry(self, node: str) -> float | None:
        """When `node`'s lease ends if its heartbeat does not advance (None: unknown or dead)."""
        beat = self._beats.get(node)
        if beat is None or node in self._dead or node == self.me:
            return None
        return beat.advanced_at + self.ttl_s
