"""The anti-entropy loop's pace (replicator.sync_loop): soon after a peer is met until a pull
has caught the node up once (it claims nothing before), then at the gossip's sync interval."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest

from swarm.core import gossip, wire
from swarm.core.gossip_config import Config
from swarm.daemon.replicator import SYNC_FIRST_EVERY_S, Replicator

INTERVAL_S = 10.0  # the sync interval given: far longer than the test runs


class _Host(SimpleNamespace):
    """What sync_loop reads of its node: the timers, the members, and whether it caught up."""


def _replicator(peers: int) -> tuple[Replicator, _Host, list[str]]:
    me = "a" * 64
    members = [SimpleNamespace(node=me)] + [SimpleNamespace(node=f"{i:064x}") for i in range(peers)]
    membership = SimpleNamespace(live_members=lambda: members)
    host = _Host(
        node_id=me,
        membership=membership,
        config=SimpleNamespace(gossip=Config(gossip_interval_s=INTERVAL_S / 5)),
        core=SimpleNamespace(caught_up_once=False),
    )
    replicator = Replicator(host, random.Random(1))
    pulled: list[str] = []

    async def pull(peer: gossip.Member, done: Any = None) -> None:
        pulled.append(peer.node)

    replicator.pull = pull  # type: ignore[method-assign]
    return replicator, host, pulled


def test_a_node_not_yet_caught_up_pulls_soon_and_then_at_the_interval() -> None:
    async def main() -> tuple[int, int]:
        replicator, host, pulled = _replicator(peers=2)
        loop = asyncio.create_task(replicator.sync_loop())
        try:
            await asyncio.sleep(SYNC_FIRST_EVERY_S * 6)
            early = len(pulled)
            host.core.caught_up_once = True  # the pull's answer caught it up
            await asyncio.sleep(SYNC_FIRST_EVERY_S * 2)  # the loop's last short wait ends
            settled = len(pulled)
            await asyncio.sleep(SYNC_FIRST_EVERY_S * 6)
            return early, len(pulled) - settled
        finally:
            loop.cancel()

    early, later = asyncio.run(main())
    assert early >= 2  # not one interval (10 s) before the first
    assert later == 0  # caught up: the next one comes at the interval


def test_a_node_with_no_peer_pulls_from_nobody() -> None:
    async def main() -> list[str]:
        replicator, _, pulled = _replicator(peers=0)
        loop = asyncio.create_task(replicator.sync_loop())
        await asyncio.sleep(SYNC_FIRST_EVERY_S * 4)
        loop.cancel()
        return pulled

    assert asyncio.run(main()) == []


# -- when no pull catches the node up, and when it is alone ------------------------------------


def test_a_node_whose_pulls_never_catch_it_up_does_not_pull_twenty_times_a_second() -> None:
    """Members are live over UDP but every pull fails at once (TCP refused by a firewall that
    lets only 7946/udp through, a peer whose streams are full): `caught_up_once` never turns,
    and the pulls come ever less often, the wait doubling up to the sync interval."""

    async def main() -> int:
        replicator, _, pulled = _replicator(peers=2)  # the stub pull never catches us up
        loop = asyncio.create_task(replicator.sync_loop())
        await asyncio.sleep(1.0)
        loop.cancel()
        return len(pulled)

    assert asyncio.run(main()) <= 5


def test_a_lone_node_does_not_wake_twenty_times_a_second() -> None:
    """A node of a swarm of one (or whose peers all left) never catches up with anyone: its
    sync loop waits for a member to be met (or the sync interval), not a timer."""

    async def main() -> int:
        replicator, host, _ = _replicator(peers=0)
        looks = [0]
        members = host.membership.live_members

        def counted() -> Any:
            looks[0] += 1
            return members()

        host.membership.live_members = counted
        loop = asyncio.create_task(replicator.sync_loop())
        await asyncio.sleep(1.0)
        loop.cancel()
        return looks[0]

    assert asyncio.run(main()) <= 2


def test_a_lone_node_pulls_from_the_first_peer_it_meets_at_once() -> None:
    async def main() -> float:
        replicator, host, pulled = _replicator(peers=0)
        loop = asyncio.create_task(replicator.sync_loop())
        await asyncio.sleep(0.2)
        members = host.membership.live_members()
        members.append(SimpleNamespace(node="b" * 64))  # met: membership says so
        met = asyncio.get_running_loop().time()
        replicator.members_changed()
        while not pulled and asyncio.get_running_loop().time() - met < 5.0:
            await asyncio.sleep(0.005)
        loop.cancel()
        return asyncio.get_running_loop().time() - met

    assert asyncio.run(main()) < 1.0  # the sync interval here is 10 s


def test_an_exchange_after_the_leave_closed_the_reader_ends_as_one_cut_off() -> None:
    """The sync loop runs until the node's loops are cancelled, after its leave closed the
    ledger's reader: an exchange begun meanwhile, which answers the peer last, ends with the
    ValueError that the pull and the stream's server take as a cut-off exchange (an assert
    there stopped a draining node with exit 1)."""

    async def main() -> None:
        replicator, _, _ = _replicator(peers=1)
        async for _ in replicator.answer(wire.SyncRequest({})):
            pass

    with pytest.raises(ValueError, match="leaving"):
        asyncio.run(main())
