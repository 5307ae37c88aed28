"""The core's view of the members (swarm/core/members.py): what the scheduler ranks by."""

from __future__ import annotations

from typing import Any

from swarm.core import gossip
from swarm.core.members import Members


def _meta(cpus: float) -> dict[str, Any]:
    return {"capacity": {"cpus": cpus, "memory_bytes": 1 << 30, "gpus": 0}, "labels": {}}


def _member(node: str, incarnation: int, cpus: float, state: str = "alive") -> gossip.Member:
    return gossip.Member(
        node, (node, 7946), incarnation, gossip.MemberState(state), _meta(cpus), 0.0
    )


def test_the_peers_follow_each_members_meta_and_state() -> None:
    """Each member's meta is read once per incarnation (it changes only with a new one); a new
    incarnation's meta, a member gone and one back are all seen at the next look."""
    members = Members("a", networked=True)
    members.known = {"a": _member("a", 1, 2.0), "b": _member("b", 1, 4.0)}
    assert {(p.node, p.capacity.cpus) for p in members.peers() or []} == {("a", 2.0), ("b", 4.0)}
    members.known = {"a": _member("a", 1, 2.0), "b": _member("b", 2, 8.0)}  # b's new meta
    assert {(p.node, p.capacity.cpus) for p in members.peers() or []} == {("a", 2.0), ("b", 8.0)}
    members.known = {"a": _member("a", 1, 2.0), "b": _member("b", 2, 8.0, "dead")}
    assert [p.node for p in members.peers() or []] == ["a"]
    # Back with the incarnation it died with, but another meta (a member forgotten and met
    # anew): read again, since it left the live set meanwhile.
    members.known = {"a": _member("a", 1, 2.0), "b": _member("b", 2, 1.0)}
    assert {(p.node, p.capacity.cpus) for p in members.peers() or []} == {("a", 2.0), ("b", 1.0)}


def test_a_member_whose_meta_says_nothing_usable_is_no_peer() -> None:
    members = Members("a", networked=True)
    broken = gossip.Member("b", ("b", 7946), 1, gossip.MemberState.ALIVE, {"capacity": 3}, 0.0)
    members.known = {"a": _member("a", 1, 2.0), "b": broken}
    assert [p.node for p in members.peers() or []] == ["a"]
    assert [p.node for p in members.peers() or []] == ["a"]  # remembered as none, still
    assert Members("a", networked=False).peers() is None
