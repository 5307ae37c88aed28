"""Node identities: what a node signs checks against its id, and nothing else does."""

from __future__ import annotations

import random
import re
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.core import gossip, identity, wire
from swarm.core.identity import Identity
from swarm.core.ledger import Outcome, ResultRecord
from swarm.core.spec import Resources
from swarm.daemon import db

A = ("10.0.0.1", 7946)
B = ("10.0.0.2", 7946)


def result(task: str = "t1") -> ResultRecord:
    return ResultRecord(
        task_id=task,
        epoch=1,
        attempt=1,
        outcome=Outcome.OK,
        exit_code=0,
        started_ms=1000,
        ended_ms=2000,
        wall_s=1.0,
        cpu_s=0.5,
        max_rss_kb=1024,
        digest="ab" * 32,
        node_capacity=Resources(cpus=2, memory_bytes=1 << 30),
    )


def test_the_node_id_is_the_hash_of_the_public_key() -> None:
    me = Identity.generate()
    assert me.node_id == identity.node_id_of(me.public)
    assert re.fullmatch(r"[0-9a-f]{32}", me.node_id)
    assert Identity.generate().node_id != me.node_id


def test_a_signed_alive_checks_and_survives_the_wire() -> None:
    me = Identity.generate()
    alive = me.sign_alive(gossip.Alive(me.node_id, 3, A, {"cpus": 2, "labels": {"b": "1"}}))
    assert len(alive.proof) == identity.PROOF_BYTES
    assert identity.check_alive(alive)
    body, _ = wire.encode_datagram(gossip.Packet(gossip.Gossip(), (alive,)), limit=10**6)
    (back,) = wire.decode_packet(body).rumours
    assert isinstance(back, gossip.Alive) and identity.check_alive(back)


def test_map_order_does_not_change_what_is_signed() -> None:
    me = Identity.generate()
    alive = me.sign_alive(gossip.Alive(me.node_id, 1, A, {"a": 1, "b": {"x": 1, "y": 2}}))
    reordered = replace(alive, meta={"b": {"y": 2, "x": 1}, "a": 1})
    assert identity.check_alive(reordered)


@pytest.mark.parametrize(
    "change",
    [
        {"incarnation": 4},
        {"addr": B},
        {"meta": {"cpus": 64}},
        {"proof": b""},
        {"proof": b"\0" * identity.PROOF_BYTES},
    ],
)
def test_any_change_to_a_signed_alive_fails_the_check(change: dict[str, object]) -> None:
    me = Identity.generate()
    alive = me.sign_alive(gossip.Alive(me.node_id, 3, A, {"cpus": 2}))
    assert not identity.check_alive(replace(alive, **change))  # type: ignore[arg-type]


def test_a_node_cannot_sign_for_another() -> None:
    me, other = Identity.generate(), Identity.generate()
    # A genuine signature by `me`, claimed for `other`'s id: the key does not hash to that id.
    forged = me.sign_alive(gossip.Alive(other.node_id, 9, A, {}))
    assert not identity.check_alive(forged)
    assert not identity.check_result(other.node_id, me.sign_result(result()))


def test_a_signed_result_checks_and_survives_storage() -> None:
    me = Identity.generate()
    body = me.sign_result(result())
    assert identity.check_result(me.node_id, body)
    stored = db.decode(db.encode(body))
    assert stored == body and isinstance(stored, ResultRecord)
    assert identity.check_result(me.node_id, stored)
    assert not identity.check_result(me.node_id, replace(body, outcome=Outcome.FAILED))
    assert not identity.check_result(me.node_id, replace(body, digest="cd" * 32))


def test_a_signature_for_one_kind_of_statement_is_not_one_for_another() -> None:
    me = Identity.generate()
    alive = me.sign_alive(gossip.Alive(me.node_id, 1, A, {}))
    assert not identity.check_result(me.node_id, replace(result(), proof=alive.proof))


def core(me: Identity) -> gossip.Membership:
    return gossip.Membership(
        me.node_id,
        A,
        {},
        gossip.Config.test(),
        random.Random(0),
        now=0.0,
        sign=me.sign_alive,
        check=identity.check_alive,
    )


def test_membership_signs_its_own_alives_and_ignores_forged_ones() -> None:
    me, other = Identity.generate(), Identity.generate()
    a = core(me)
    assert identity.check_alive(a.state()[0])  # what it spreads about itself is signed
    unsigned = gossip.Alive(other.node_id, 1, B, {})
    a.receive(1.0, gossip.Packet(gossip.Gossip(), (unsigned,)))
    assert other.node_id not in a.members and a.forged == 1
    genuine = other.sign_alive(gossip.Alive(other.node_id, 1, B, {}))
    a.receive(1.1, gossip.Packet(gossip.Gossip(), (genuine,)))
    assert a.members[other.node_id].state is gossip.MemberState.ALIVE
    # A forger cannot move a known member to another address with a higher incarnation.
    hijack = replace(genuine, incarnation=2, addr=("10.6.6.6", 1))
    a.receive(1.2, gossip.Packet(gossip.Gossip(), (hijack,)))
    assert a.members[other.node_id].addr == B and a.forged == 2
    # And what it passes on in a push-pull still carries the member's own signature.
    passed_on = [r for r in a.state() if r.node == other.node_id]
    assert passed_on == [genuine] and identity.check_alive(genuine)


def test_a_refutation_is_signed_too() -> None:
    me = Identity.generate()
    a = core(me)
    a.receive(1.0, gossip.Packet(gossip.Gossip(), (gossip.Suspect(me.node_id, 1, "x"),)))
    assert a.me.incarnation == 2
    (mine,) = [r for r in a.state() if r.node == me.node_id]
    assert isinstance(mine, gossip.Alive) and mine.incarnation == 2
    assert identity.check_alive(mine)


@settings(max_examples=100, deadline=None)
@given(
    cpus=st.floats(0.01, 512, allow_nan=False),
    wall=st.floats(0, 1e7, allow_nan=False),
    rss=st.integers(0, 2**40),
    exit_code=st.one_of(st.none(), st.integers(-255, 255)),
)
def test_every_stored_result_still_checks(
    cpus: float, wall: float, rss: int, exit_code: int | None
) -> None:
    me = Identity.generate()
    body = me.sign_result(
        replace(
            result(),
            node_capacity=Resources(cpus=cpus, memory_bytes=1 << 30),
            wall_s=wall,
            max_rss_kb=rss,
            exit_code=exit_code,
        )
    )
    stored = db.decode(db.encode(body))
    assert isinstance(stored, ResultRecord) and identity.check_result(me.node_id, stored)


def test_a_forged_alive_or_a_huge_accusation_about_us_cannot_drive_our_incarnation() -> None:
    me = Identity.generate()
    a = core(me)
    a.receive(1.0, gossip.Packet(gossip.Gossip(), (gossip.Alive(me.node_id, 2**63 - 1, B, {}),)))
    assert a.me.incarnation == 1 and a.forged == 1
    a.receive(1.1, gossip.Packet(gossip.Gossip(), (gossip.Suspect(me.node_id, 2**63 - 1, "x"),)))
    assert a.me.incarnation == 1 and a.forged == 2
    # An Alive of our own earlier life (signed by us, higher incarnation) is outranked.
    old = me.sign_alive(gossip.Alive(me.node_id, 7, B, {}))
    a.receive(1.2, gossip.Packet(gossip.Gossip(), (old,)))
    assert a.me.incarnation == 8


def test_a_result_signed_before_evictions_existed_still_checks() -> None:
    """Results written before the `evicted` field had 14 fields, and were signed so; one that
    is not an eviction still encodes (and so is still signed and checked) exactly that way."""
    me = Identity.generate()
    old_fields = [
        4,
        "t1",
        1,
        1,
        "ok",
        0,
        1000,
        2000,
        1.0,
        0.5,
        1024,
        "ab" * 32,
        [2, 1 << 30, 0],
        "",
    ]
    message = identity._canonical([identity._RESULT_TAG, me.node_id, [*old_fields, b""]])
    proof = me.prove(message)  # as the old code signed it
    stored = db.decode(db.encode(replace(result(), proof=proof)))
    assert isinstance(stored, ResultRecord) and not stored.evicted
    assert identity.check_result(me.node_id, stored)
    evicted = me.sign_result(replace(result(), outcome=Outcome.INTERRUPTED, evicted=True))
    assert identity.check_result(me.node_id, db.decode(db.encode(evicted)))
    assert not identity.check_result(me.node_id, replace(evicted, evicted=False))


def test_a_calls_outcome_in_its_result_is_signed_with_it() -> None:
    me = Identity.generate()
    for evicted in (False, True):
        body = me.sign_result(
            replace(result(), digest=None, value=b"\x80\x05outcome", evicted=evicted)
        )
        stored = db.decode(db.encode(body))
        assert stored == body
        assert identity.check_result(me.node_id, stored)
        assert not identity.check_result(me.node_id, replace(body, value=b"\x80\x05forged"))


def plain_sorted(value: object) -> object:
    """What is signed, as first written: one isinstance() chain for every value."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return [[key, plain_sorted(value[key])] for key in sorted(value)]
    if isinstance(value, list | tuple):
        return [plain_sorted(item) for item in value]
    return value


plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.sampled_from(list(Outcome)),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=24,
)


@given(plain_values)
def test_the_signed_bytes_are_those_of_the_plain_rule(value: object) -> None:
    assert identity._canonical(value) == msgpack.packb(plain_sorted(value), use_bin_type=True)
