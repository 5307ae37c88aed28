"""The node's place in the swarm: its membership started, fed, told about, and left.

Theory of operation
-------------------
`Gossiper` is the daemon's membership room, owned by `Node` (node.py). At start it seals this
node's envelopes under a key of its own run, makes the SWIM membership (core/gossip.py) and the
gossip net (net.py) that carries it and the ledger's replication, binds the sockets, and joins
through the seeds given, or through the members it saw before a restart (peers.py). The net
hands it membership's events: it logs them, gives them to the core (which re-ranks the tasks,
moves the leases and the holders of results), and keeps the live members' addresses in the state
dir off the event loop. What other members learn of this node with its Alive (capacity, labels,
draining) is its `meta`, announced again when the core asks. At stop it leaves gracefully.

The node keeps `membership` and `net` as attributes, set here, since the other rooms (the
replicator, the control operations, the metrics) find them there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from swarm.core import gossip, identity, snapshot, wire
from swarm.core.ledger import Ledger
from swarm.core.node import NodeCore
from swarm.core.spec import Resources
from swarm.daemon import net, peers
from swarm.daemon.clients import RemoteClients
from swarm.daemon.config import NodeConfig
from swarm.daemon.replicator import Replicator
from swarm.daemon.transfer import ResultTransfer
from swarm.errors import ConfigError
from swarm.statedir import StateDir

LEAVE_SYNC_S = 5.0  # the last exchange with a peer before a node leaves

log = logging.getLogger("swarm.daemon.node")  # the node's own log: these lines are the node's


class Host(Protocol):
    """What the gossiper needs of its node."""

    node_id: str
    state: StateDir
    config: NodeConfig
    identity: identity.Identity
    capacity: Resources
    labels: dict[str, str | int | float]
    ledger: Ledger
    core: NodeCore
    ring: wire.KeyRing
    replicator: Replicator
    transfer: ResultTransfer
    membership: gossip.Membership | None
    net: net.GossipNet | None

    @property
    def stopping(self) -> bool: ...
    def tell(self, method: Callable[..., object], *args: Any) -> None: ...
    def side_task(self, work: Coroutine[Any, Any, None]) -> None: ...
    def clash(self, why: str) -> None: ...
    def may_write(self) -> None: ...

    @property
    def writable(self) -> bool: ...
    def reload_keys(self) -> str: ...


# A node joining a swarm that no peer has answered a sync in this long (or in a lease, if
# shorter) writes in its name unchecked (Gossiper._write_anyway); a client's call waits 30 s.
UNCHECKED_WRITE_AFTER_S = 10.0
SYNC_QUIET_S = 1.0  # ...unless a sync answer's frames came in this recently: it waits for its end


class Gossiper:
    def __init__(self, node: Host) -> None:
        self.node = node
        self._remembered: frozenset[tuple[str, int]] = frozenset()  # members kept in the state dir
        # This run of the daemon, in its Alive meta: when it started, and its boot id. Of two
        # processes found speaking as one node (IdentityClash), the later life stops.
        self.life = ""

    async def start(
        self, tg: asyncio.TaskGroup, bind: tuple[str, int], clients: RemoteClients
    ) -> list[asyncio.Task[None]]:
        """Membership and replication on `bind`, where remote clients are served too: the
        gossip net up, its sockets bound, a join under way. Returns the loops."""
        node = self.node
        ring = node.ring
        node.reload_keys()
        sender = bytes.fromhex(node.node_id)
        # Nonces never repeat, whatever the clock does: each run seals under a key of its own
        # (the random boot id). The counter starts at the clock so that peers' replay windows,
        # which remember our last run's counters, take this run's envelopes.
        boot = os.urandom(wire.BOOT_BYTES)
        sealer = wire.Sealer(sender, ring, counter=time.time_ns() // 1000, boot=boot)
        self.life = f"{time.time_ns() // 10**6:014d}.{boot.hex()}"
        membership = node.membership = gossip.Membership(
            node.node_id,
            bind,
            self.meta(),
            node.config.gossip,
            random.Random(),
            time.monotonic(),
            # Each life starts above any incarnation an earlier one reached (gossip._outbid_by).
            incarnation=time.time_ns() // 10**6,
            sign=node.identity.sign_alive,
            check=identity.check_alive,
        )
        gossip_net = node.net = net.GossipNet(
            membership,
            bind,
            sealer,
            wire.Opener(ring, sender),
            self._on_members,
            node.replicator.on_push,
            node.replicator.answer,
            node.replicator.taker,
            lambda: dict(node.ledger.high_seq),
            node.transfer.serve_blob,
            clients,
        )
        node.tell(node.core.members_changed, [], membership.members)
        node.replicator.serve(tg, gossip_net)
        await node.replicator.open_reader(node.state.db_path)
        loops = await self._listen(tg, gossip_net, bind)
        loops.append(tg.create_task(node.replicator.sync_loop()))
        seeds = self.seeds(bind)
        if seeds and not node.config.join:
            log.info("rejoining through %d member(s) seen before the restart", len(seeds))
        if seeds:  # (a node with none may write already: Node._serve)
            wait_s = min(node.config.lease_ttl_s, UNCHECKED_WRITE_AFTER_S)
            loops.append(tg.create_task(self._write_anyway(wait_s)))
            retry_s = node.config.gossip.reconnect_interval_s
            joining = peers.join_until_answered(
                membership, gossip_net, seeds, retry_s, lambda: node.stopping
            )
            loops.append(tg.create_task(joining))
        log.info("gossip on %s:%d", *bind)
        return loops

    async def _listen(
        self, tg: asyncio.TaskGroup, gossip_net: net.GossipNet, bind: tuple[str, int]
    ) -> list[asyncio.Task[None]]:
        """Bind the gossip sockets; if they cannot be, the node stops at once, saying why."""
        try:
            return await peers.listen(gossip_net, tg, bind)
        except ConfigError:
            await self.node.replicator.close_reader()  # its thread would keep the process alive
            raise

    def meta(self) -> dict[str, Any]:
        """What other members learn of this node with its Alive rumour."""
        node = self.node
        meta: dict[str, Any] = {
            "capacity": snapshot.resources_dict(node.capacity),
            "labels": dict(node.labels),
            "life": self.life,
        }
        if node.core.draining:
            meta["draining"] = True
        return meta

    def announce(self) -> None:
        """Tell the other members what changed of this node's meta (the core's Announce)."""
        node = self.node
        if node.membership is not None:
            node.membership.update_meta(time.monotonic(), self.meta())
            if node.net is not None:
                node.net.poke()

    def _on_members(self, events: list[gossip.Event]) -> None:
        node = self.node
        for clash in [e for e in events if isinstance(e, gossip.IdentityClash)]:
            self._clash(clash)
        events = [e for e in events if not isinstance(e, gossip.IdentityClash)]
        for event in events:
            log.info("member %s: %s", event.member[:8], type(event).__name__.removeprefix("Member"))
        if node.membership is not None:
            node.tell(node.core.members_changed, events, node.membership.members)
            node.replicator.members_changed()
            self._remember_members(node.membership)

    def seeds(self, bind: tuple[str, int]) -> list[tuple[str, int]]:
        """The members to join through: --join's, else (a restart with no --join) those it saw
        last time; none for the first node of a swarm."""
        node = self.node
        if node.config.join:
            return list(node.config.join)
        return [s for s in peers.remembered(node.state) if s != bind]

    async def _write_anyway(self, after_s: float) -> None:
        """A node whose peers give no sync answer for a lease (all down, or cut off) writes in
        its name all the same (its claims cut off by the last stop closed, its heartbeats),
        unchecked: a process writing in the same name is found when the peers answer. Not
        while a sync answer is still coming in: its end is the check."""
        await asyncio.sleep(after_s)
        replicator = self.node.replicator
        while not self.node.writable and replicator.taken_since(SYNC_QUIET_S):
            await asyncio.sleep(SYNC_QUIET_S)
        if not self.node.writable:
            log.warning(
                "no peer answered a sync in %gs: writing in this node's name without having "
                "checked that no other process does",
                after_s,
            )
            self.node.may_write()

    def _clash(self, clash: gossip.IdentityClash) -> None:
        """Another live process speaks as this node: the later of the two lives stops."""
        node = self.node
        where = f"{clash.addr[0]}:{clash.addr[1]}"
        if clash.life > self.life:
            log.error(
                "another daemon runs as this node (%s) at %s, started after this one (a copy of "
                "this node's state dir?): it is to stop, and this one goes on",
                node.node_id[:8],
                where,
            )
            return
        node.clash(
            f"another daemon runs as this node ({node.node_id[:8]}) at {where}, started before "
            "this one: this state dir is a copy of a running node's. Stopped. To make this "
            "machine a node of its own, give it a state dir of its own (swarm init)"
        )

    def _remember_members(self, membership: gossip.Membership) -> None:
        """Keep the live members' addresses in the state dir when they change (peers.remember)."""
        node = self.node
        alive = frozenset(m.addr for m in membership.live_members() if m.node != node.node_id)
        if alive and alive != self._remembered:
            self._remembered = alive
            node.side_task(asyncio.to_thread(peers.remember, node.state, list(alive)))

    async def leave(self) -> None:
        node = self.node
        if node.membership is not None and node.net is not None:
            await self._hand_over_records(node.membership)
            await peers.leave(node.membership, node.net, node.config.gossip.gossip_interval_s)
            await node.replicator.close_reader()

    async def _hand_over_records(self, membership: gossip.Membership) -> None:
        """Before going, one anti-entropy exchange with a live member (for at most LEAVE_SYNC_S):
        what this node wrote last, the attempts its stop or drain interrupted, is then held by
        another node even if this one never comes back. Pushes may have been lost; this is
        answered."""
        others = [m for m in membership.live_members() if m.node != self.node.node_id]
        if not others:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LEAVE_SYNC_S):
                await self.node.replicator.pull(random.choice(others))

    # -- the transfer's lookups ---------------------------------------------------------------

    def member(self, node_id: str) -> gossip.Member | None:
        """A member as membership sees it (for the transfer); None before the net is up."""
        membership = self.node.membership
        return None if membership is None else membership.members.get(node_id)

    async def fetch(self, addr: gossip.Addr, digest: str, into: Path, task: str | None) -> bool:
        """The transfer's way to a peer's blob: the gossip net's TCP fetch."""
        gossip_net = self.node.net
        assert gossip_net is not None  # a member is known only once the net is up
        return await gossip_net.fetch(addr, digest, into, task)
