"""The node core's view of its swarm's members, as membership (gossip.py) last gave it: who is
live, what each offers, who left for good, and which nodes should hold a result."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from swarm.core import gossip
from swarm.core.scheduler import Peer, isolation, peer_from_meta


class Members:
    def __init__(self, me: str, networked: bool) -> None:
        self.me = me
        self.networked = networked  # False: a node of no swarm (no gossip address)
        self.known: Mapping[str, gossip.Member] = {}  # every member membership knows, by node
        self.synced = False  # caught up with a peer since this life started
        # Whether writing in this node's name is safe (NodeCore.may_write): until then it claims
        # nothing, for a claim's attempt starts while its claim is written.
        self.writable = True
        self.heard_at = -1e9  # when a peer's records last reached us (monotonic)
        self._said_isolated = False
        self._peers: dict[tuple[str, int], Peer | None] = {}  # by (node, incarnation): see peers

    def isolation(
        self, now: float, others_in_ledger: bool, ttl_s: float
    ) -> tuple[str | None, bool]:
        """Why this node must not claim now (scheduler.isolation; None: it may), and whether
        that is news to say (said once, until it may claim again)."""
        if not self.networked:
            return None, False
        why = (
            isolation(self.others_left(), others_in_ledger, self.synced, now - self.heard_at, ttl_s)
            if self.writable
            else "checking with a peer that no other process writes in this node's name"
        )
        news = why is not None and not self._said_isolated
        self._said_isolated = why is not None
        return why, news

    @property
    def isolated(self) -> bool:
        """Whether the last look found this node out of touch (it claims nothing new)."""
        return self._said_isolated

    def peers(self) -> list[Peer] | None:
        """The live members as the scheduler ranks them (None: a node alone). Each member's
        meta is read once per incarnation (it changes only with a new one): the scheduler is
        told at every change of membership, a thousand members at a time in a large swarm."""
        if not self.networked:
            return None
        known, self._peers = self._peers, {}
        found = []
        for m in self._live():
            key = (m.node, m.incarnation)
            peer = known[key] if key in known else peer_from_meta(m.node, m.meta)
            self._peers[key] = peer
            if peer is not None:
                found.append(peer)
        return found

    def others_left(self) -> list[bool]:
        """For each other member, whether it left for good (scheduler.isolation)."""
        return [
            m.state is gossip.MemberState.LEFT for m in self.known.values() if m.node != self.me
        ]

    def live_peers(self) -> int:
        return sum(1 for m in self._live() if m.node != self.me)

    def result_holders(self) -> list[str] | None:
        """The nodes among which a result's holders are chosen (holding.py): the live members
        that are not draining, and this node (drained or not). None: a node alone."""
        if not self.networked:
            return None
        return [m.node for m in self._live() if m.node == self.me or not m.meta.get("draining")]

    def all_gone(self, nodes: Iterable[str]) -> bool:
        """Whether every one of `nodes` is known, and dead or gone (a node not heard of in this
        life may yet come: it is not counted as gone)."""
        return all(n in self.known and self.known[n].state in gossip.GONE for n in nodes)

    def _live(self) -> list[gossip.Member]:
        return [m for m in self.known.values() if m.state not in gossip.GONE]
