"""SWIM membership: the math, table-driven; the behaviour, on the simulator over fixed seeds."""

from __future__ import annotations

import random

import pytest

from swarm.core.gossip import (
    Ack,
    Alive,
    Config,
    Dead,
    Gossip,
    IdentityClash,
    MemberJoined,
    Membership,
    MemberState,
    Packet,
    Ping,
    PushPull,
    Suspect,
    remaining_suspicion_s,
    retransmit_limit,
    suspicion_timeout_s,
)
from swarm.sim.world import Network, Sim, everyone

SEEDS = range(8)  # CI's fixed seeds; `python -m swarm.sim --seeds N` runs more
A = ("10.0.0.1", 7946)
B = ("10.0.0.2", 7946)


# -- the math -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mult", "members", "interval", "expected"),
    [
        (4, 1, 1.0, 4.0),  # log10 floor of 1
        (4, 5, 1.0, 4.0),
        (4, 10, 1.0, 4.0),
        (4, 100, 1.0, 8.0),
        (4, 1000, 1.0, 12.0),
        (3, 1000, 0.2, 1.8),
    ],
)
def test_suspicion_timeout(mult: int, members: int, interval: float, expected: float) -> None:
    assert suspicion_timeout_s(mult, members, interval) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("mult", "members", "expected"),
    [(4, 0, 0), (4, 1, 4), (4, 9, 4), (4, 10, 8), (4, 99, 8), (4, 100, 12), (3, 1000, 12)],
)
def test_retransmit_limit(mult: int, members: int, expected: int) -> None:
    assert retransmit_limit(mult, members) == expected


@pytest.mark.parametrize(
    ("confirmations", "expected", "elapsed", "remaining"),
    [
        (0, 3, 0.0, 30.0),  # nobody confirms: the maximum
        (3, 3, 0.0, 2.0),  # all confirm: the minimum
        (1, 3, 0.0, 30.0 - 0.5 * 28.0),  # log(2)/log(4) = 0.5 of the way down
        (0, 3, 10.0, 20.0),  # time already passed counts
        (5, 3, 0.0, 2.0),  # never below the minimum
        (0, 0, 1.0, 1.0),  # none expected: the minimum
    ],
)
def test_remaining_suspicion(
    confirmations: int, expected: int, elapsed: float, remaining: float
) -> None:
    assert remaining_suspicion_s(confirmations, expected, elapsed, 2.0, 30.0) == pytest.approx(
        remaining
    )


# -- one core, by hand ------------------------------------------------------------------------


def core(node: str = "a", addr: tuple[str, int] = A) -> Membership:
    return Membership(node, addr, {}, Config.test(), random.Random(0), now=0.0)


def test_a_ping_is_acked_and_an_unknown_member_is_added() -> None:
    a = core()
    a.receive(1.0, Packet(Ping(7, "a", "b", B), (Alive("b", 1, B, {}),)))
    assert a.members["b"].state is MemberState.ALIVE
    assert MemberJoined("b") in a.events
    (addr, packet) = a.outbox[-1]
    assert addr == B and packet.message == Ack(7, "a")


def test_a_ping_meant_for_another_node_is_ignored() -> None:
    a = core()
    a.receive(1.0, Packet(Ping(7, "old-owner", "b", B)))
    assert a.outbox == []


def test_a_suspicion_of_oneself_is_refuted_with_a_higher_incarnation() -> None:
    a = core()
    a.outbox.clear()
    a.receive(1.0, Packet(Gossip(), (Suspect("a", 1, "b"),)))
    assert a.me.incarnation == 2
    assert a.awareness == 1  # being suspected says something about our own health
    a.receive(1.1, Packet(Ping(1, "a", "b", B)))
    assert Alive("a", 2, A, {}) in a.outbox[-1][1].rumours


def test_a_second_live_process_with_our_identity_is_told_once_it_keeps_outbidding_us() -> None:
    a = Membership("a", A, {"life": "2"}, Config.test(), random.Random(0), now=0.0)
    # Our last life's rumours going round after a restart: refuted, never a clash.
    for now in range(10):
        a.receive(now, Packet(Gossip(), (Alive("a", 7, B, {"life": "1"}),)))
    a.receive(10, Packet(Gossip(), (Alive("a", 9, B, {}),)))  # a life that does not say
    assert a.me.incarnation == 10 and a.outbids == 1
    # A live process answers each of our refutations with a higher incarnation of its own.
    clashes = []
    for now in range(11, 25):
        a.receive(now, Packet(Gossip(), (Alive("a", a.me.incarnation + 1, B, {"life": "3"}),)))
        clashes += [e for e in a.events if isinstance(e, IdentityClash)]
        a.events.clear()
    assert clashes == [IdentityClash("a", B, "3")]  # told once


def test_a_refutation_of_another_life_is_pushed_to_a_member_at_once() -> None:
    """So that members who heard the other process last do not keep our id at its address."""
    a = Membership("a", A, {"life": "2"}, Config.test(), random.Random(0), now=0.0)
    c = ("10.0.0.3", 7946)
    a.receive(0, Packet(Gossip(), (Alive("c", 1, c, {}),)))
    a.outbox.clear()
    a.receive(1, Packet(Gossip(), (Alive("a", 5, B, {"life": "1"}),)))
    ((to, packet),) = [(to, p) for to, p in a.outbox if isinstance(p.message, PushPull)]
    assert to == c and Alive("a", 6, A, {"life": "2"}) in packet.message.states


def test_old_rumours_change_nothing() -> None:
    a = core()
    a.receive(0.0, Packet(Gossip(), (Alive("b", 5, B, {}),)))
    a.receive(0.1, Packet(Gossip(), (Suspect("b", 4, "c"), Dead("b", 3, "c"))))
    assert a.members["b"].state is MemberState.ALIVE
    assert a.members["b"].incarnation == 5


def test_a_dead_member_comes_back_only_with_a_higher_incarnation() -> None:
    a = core()
    a.receive(0.0, Packet(Gossip(), (Alive("b", 1, B, {}), Dead("b", 1, "c"))))
    assert a.members["b"].state is MemberState.DEAD
    a.receive(0.1, Packet(Gossip(), (Alive("b", 1, B, {}),)))
    assert a.members["b"].state is MemberState.DEAD
    a.receive(0.2, Packet(Gossip(), (Alive("b", 2, B, {}),)))
    assert a.members["b"].state is MemberState.ALIVE


def test_a_newer_rumour_about_a_member_replaces_the_older_one_in_the_queue() -> None:
    a = core()
    a.receive(0.0, Packet(Gossip(), (Alive("b", 1, B, {}),)))
    a.receive(0.1, Packet(Gossip(), (Suspect("b", 1, "c"),)))
    a.outbox.clear()
    a.receive(0.2, Packet(Ping(3, "a", "c", ("10.0.0.3", 7946))))
    about_b = [r for r in a.outbox[-1][1].rumours if r.node == "b"]
    assert about_b == [Suspect("b", 1, "c")]


def test_rumours_stop_after_the_retransmit_limit() -> None:
    a = core()
    limit = retransmit_limit(a.config.retransmit_mult, len(a.members))
    for i in range(limit + 2):
        a.receive(float(i), Packet(Ping(i, "a", "b", B)))
    carried = [bool(packet.rumours) for _, packet in a.outbox]
    assert carried[:limit] == [True] * limit
    assert not any(carried[limit:])


# -- many cores, on the simulator ---------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_nodes_join_and_a_crashed_one_is_declared_dead_everywhere(seed: int) -> None:
    sim = Sim(6, seed)
    sim.join_all()
    assert sim.run_until_agree(everyone(6), limit_s=10) is not None
    sim.crash(5)
    took = sim.run_until_agree(everyone(6, n0005=MemberState.DEAD), limit_s=20)
    assert took is not None, f"seed {seed}: views {[sim.view(i) for i in sim.live_indexes()]}"


@pytest.mark.parametrize("seed", SEEDS)
def test_a_restarted_node_rejoins_with_a_higher_incarnation(seed: int) -> None:
    sim = Sim(5, seed)
    sim.join_all()
    sim.run_until_agree(everyone(5), limit_s=10)
    sim.crash(3)
    sim.run_until_agree(everyone(5, n0003=MemberState.DEAD), limit_s=20)
    sim.restart(3)
    assert sim.run_until_agree(everyone(5), limit_s=20) is not None
    assert sim.member(0, 3).incarnation >= 2


@pytest.mark.parametrize("seed", SEEDS)
def test_a_graceful_leave_is_seen_as_left_not_dead(seed: int) -> None:
    sim = Sim(5, seed)
    sim.join_all()
    sim.run_until_agree(everyone(5), limit_s=10)
    sim.cores[sim.addr(2)].leave(sim.now)
    sim.run_for(0.05)
    sim.crash(2)  # it stops after its leave has gone out
    assert sim.run_until_agree(everyone(5, n0002=MemberState.LEFT), limit_s=10) is not None


@pytest.mark.parametrize("seed", SEEDS)
def test_a_healed_partition_merges_again(seed: int) -> None:
    sim = Sim(5, seed)
    sim.join_all()
    sim.run_until_agree(everyone(5), limit_s=10)
    sim.partition([0, 1], [2, 3, 4])
    sim.run_for(15)
    assert sim.view(0)["n0003"] is MemberState.DEAD
    assert sim.view(3)["n0000"] is MemberState.DEAD
    sim.heal()
    took = sim.run_until_agree(everyone(5), limit_s=30)
    assert took is not None, f"seed {seed}: {[sim.view(i) for i in range(5)]}"


@pytest.mark.parametrize("seed", SEEDS)
def test_no_live_node_is_declared_dead_under_ten_percent_loss(seed: int) -> None:
    sim = Sim(8, seed, net=Network(loss=0.10, duplicate=0.05))
    sim.join_all()
    assert sim.run_until_agree(everyone(8), limit_s=20) is not None
    for c in sim.cores.values():
        c.events.clear()
    sim.run_for(20)
    died = [type(e).__name__ for c in sim.cores.values() for e in c.events]
    assert "MemberDied" not in died
    # A suspicion may be open at any instant under loss; a death never.
    assert not any(MemberState.DEAD in sim.view(i).values() for i in range(8))


def test_a_seed_replays_bit_for_bit() -> None:
    def run() -> list[tuple[str, int, str]]:
        sim = Sim(6, seed=42, net=Network(loss=0.2, duplicate=0.1))
        sim.join_all()
        sim.run_for(3)
        sim.crash(1)
        sim.run_for(5)
        views = sorted(
            (c.node, m.incarnation, f"{m.node}:{m.state}")
            for c in sim.cores.values()
            for m in c.members.values()
        )
        return [*views, ("packets", sim.packets_sent, "")]

    assert run() == run()


def test_the_outbox_and_events_are_handed_over_and_a_push_pull_reply_taken_alone() -> None:
    """What the transport sends it takes through these, never by reaching into the lists."""
    a = Membership("a", A, {}, Config.test(), random.Random(1), 0.0)
    b = Membership("b", B, {}, Config.test(), random.Random(2), 0.0)
    b.join(0.0, [A])
    (join,) = b.take_outbox()
    assert b.outbox == [] and b.take_outbox() == []
    assert b.take_push_pull_reply() is None  # a request is not a reply
    a.receive(0.0, join[1])
    a.outbox.insert(0, (B, Packet(Ping(1, "b", "a", A))))  # something else queued before it
    reply = a.take_push_pull_reply()
    assert reply is not None and isinstance(reply.message, PushPull) and reply.message.reply
    assert all(not isinstance(p.message, PushPull) for _, p in a.outbox)  # taken out alone
    assert a.outbox[0] == (B, Packet(Ping(1, "b", "a", A)))
    events = a.take_events()
    assert events and a.events == [] and a.take_events() == []
