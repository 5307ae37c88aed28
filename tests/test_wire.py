"""The sealed envelope and message codec: what passes, and everything that must not."""

from __future__ import annotations

import contextlib
import os
from dataclasses import astuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.core import envelope, gossip, wire
from swarm.core.wire import (
    DATAGRAM_BYTES_MAX,
    HEADER_BYTES,
    KEYS_MAX,
    REPLAY_WINDOW,
    BadPacket,
    KeyRing,
    Opener,
    Sealer,
    decode,
    decode_packet,
    encode,
    encode_datagram,
    key_id,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
ALICE = b"a" * 16
BOB = b"b" * 16
ME = b"m" * 16  # the node that opens
BOOT = bytes(8)


def pair(counter: int = 0) -> tuple[Sealer, Opener]:
    return Sealer(ALICE, KeyRing.of(KEY), counter, BOOT), Opener(KeyRing.of(KEY), ME)


def test_round_trip() -> None:
    sealer, opener = pair()
    packet = sealer.seal(encode([1, "hello", b"\x00\xff", {"k": 2}]))
    sender, body, _ = astuple(opener.open(packet))
    assert sender == ALICE
    assert decode(body) == [1, "hello", b"\x00\xff", {"k": 2}]


def test_the_body_is_not_readable_on_the_wire() -> None:
    sealer, _ = pair()
    secret = b"run rm -rf / on every node"
    assert secret not in sealer.seal(secret)


def test_a_client_s_envelopes_open_only_with_a_stream_s_own_opener() -> None:
    """A node's opener refuses a remote client's envelope before keeping a window or a key for
    its sender (clients come and go by the thousand); a stream's client opener takes clients'
    envelopes and nothing else."""
    client = Sealer(ALICE, KeyRing.of(KEY), 0, BOOT, client=True)
    nodes = Opener(KeyRing.of(KEY), ME)
    for to in (None, ME):
        with pytest.raises(BadPacket, match="client's envelope off its stream"):
            nodes.open(client.seal(b"ping", to))
    assert nodes._windows == {} and nodes._keys._cache == {}
    stream = Opener(KeyRing.of(KEY), ME, senders_max=1, clients=True)
    assert stream.open(client.seal(b"ping")).body == b"ping"
    with pytest.raises(BadPacket, match="not a client's"):
        stream.open(Sealer(BOB, KeyRing.of(KEY), 0, BOOT).seal(b"gossip", ME))
    assert envelope.from_client(client.seal(b"x")) and not envelope.from_client(b"\x02")


def test_a_wrong_key_is_dropped() -> None:
    packet = Sealer(ALICE, KeyRing.of(OTHER_KEY), 0, BOOT).seal(b"x")
    with pytest.raises(BadPacket, match="not in the ring"):
        Opener(KeyRing.of(KEY), ME).open(packet)


def test_a_forged_key_id_is_dropped() -> None:
    # Same key id as ours, but sealed under another key: authentication fails.
    ring = KeyRing.of(OTHER_KEY)
    ring.keys = {key_id(KEY): OTHER_KEY}
    ring.in_use = key_id(KEY)
    packet = Sealer(ALICE, ring, 0, BOOT).seal(b"x")
    with pytest.raises(BadPacket, match="authentication failed"):
        Opener(KeyRing.of(KEY), ME).open(packet)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.data())
def test_any_flipped_bit_is_dropped(body: bytes, data: st.DataObject) -> None:
    sealer, opener = pair()
    packet = bytearray(sealer.seal(body))
    bit = data.draw(st.integers(0, len(packet) * 8 - 1))
    packet[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(BadPacket):
        opener.open(bytes(packet))


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=100), st.data())
def test_any_truncation_is_dropped(body: bytes, data: st.DataObject) -> None:
    sealer, opener = pair()
    packet = sealer.seal(body)
    cut = data.draw(st.integers(0, len(packet) - 1))
    with pytest.raises(BadPacket):
        opener.open(packet[:cut])


@given(st.binary(max_size=300))
def test_junk_is_dropped(junk: bytes) -> None:
    _, opener = pair()
    with pytest.raises(BadPacket):
        opener.open(junk)


def test_oversized_packets_are_dropped_before_any_work() -> None:
    sealer, opener = pair()
    packet = sealer.seal(b"x" * DATAGRAM_BYTES_MAX)
    with pytest.raises(BadPacket, match="over the"):
        opener.open(packet)
    assert opener.open(packet, size_max=len(packet)).body == b"x" * DATAGRAM_BYTES_MAX


def test_a_replayed_packet_is_dropped() -> None:
    sealer, opener = pair()
    packet = sealer.seal(b"once")
    opener.open(packet)
    with pytest.raises(BadPacket, match="replayed"):
        opener.open(packet)


def test_reordered_packets_within_the_window_pass_once_each() -> None:
    sealer, opener = pair()
    packets = [sealer.seal(str(i).encode()) for i in range(10)]
    for i in [3, 0, 9, 1, 2, 8, 4, 7, 5, 6]:
        assert opener.open(packets[i]).body == str(i).encode()
    for packet in packets:
        with pytest.raises(BadPacket):
            opener.open(packet)


def test_packets_older_than_the_window_are_dropped() -> None:
    sealer, opener = pair()
    old = sealer.seal(b"old")
    for _ in range(REPLAY_WINDOW):
        opener.open(sealer.seal(b"new"))
    with pytest.raises(BadPacket, match="too old"):
        opener.open(old)


def test_a_forgery_cannot_move_the_window() -> None:
    sealer, opener = pair()
    genuine = sealer.seal(b"genuine")
    forged = bytearray(sealer.seal(b"forged, far ahead"))
    forged[HEADER_BYTES - 8 : HEADER_BYTES] = (2**63).to_bytes(8, "big")
    with pytest.raises(BadPacket):
        opener.open(bytes(forged))
    assert opener.open(genuine).body == b"genuine"


def test_senders_have_their_own_windows_and_keys() -> None:
    ring = KeyRing.of(KEY)
    alice, bob = Sealer(ALICE, ring, 0, BOOT), Sealer(BOB, ring, 0, BOOT)
    a, b = alice.seal(b"same counter"), bob.seal(b"same counter")
    assert a[HEADER_BYTES:] != b[HEADER_BYTES:]  # per-sender keys: no shared nonce stream
    opener = Opener(KeyRing.of(KEY), ME)
    assert opener.open(a).sender == ALICE
    assert opener.open(b).sender == BOB


def test_forged_sender_ids_cost_no_memory() -> None:
    # The key id is on the wire for anyone to copy; the sender id is whatever the forger says.
    opener = Opener(KeyRing.of(KEY), ME)
    for i in range(500):
        header = envelope._HEADER.pack(wire.VERSION, 0, key_id(KEY), os.urandom(16), BOOT, i + 1)
        with pytest.raises(BadPacket):
            opener.open(header + os.urandom(64))
    assert len(opener._keys) == 0 and len(opener._windows) == 0
    sealer, _ = pair()
    opener.open(sealer.seal(b"genuine"))
    assert len(opener._keys) == 1 and len(opener._windows) == 1


def test_a_restarted_sender_with_a_higher_counter_is_heard() -> None:
    first, opener = pair(counter=0)
    opener.open(first.seal(b"before"))
    again = Sealer(ALICE, KeyRing.of(KEY), counter=10**9, boot=BOOT)
    assert opener.open(again.seal(b"after restart")).body == b"after restart"


def test_a_second_run_of_a_sender_does_not_silence_the_first() -> None:
    """Two processes with one identity (a copied state dir): the later one's counters start
    higher, yet the first's are still heard, each run against its own window."""
    first, opener = pair(counter=100)
    copy = Sealer(ALICE, KeyRing.of(KEY), counter=10**12, boot=b"\2" * 8)
    assert opener.open(first.seal(b"first")).body == b"first"
    assert opener.open(copy.seal(b"copy")).body == b"copy"
    old = first.seal(b"first again")
    assert opener.open(old).body == b"first again"
    with pytest.raises(BadPacket, match="replayed"):
        opener.open(old)


def test_a_run_not_heard_before_below_the_sender_s_counters_is_an_earlier_life() -> None:
    _, opener = pair()
    opener.open(Sealer(ALICE, KeyRing.of(KEY), 10**12, b"\2" * 8).seal(b"now"))
    earlier = Sealer(ALICE, KeyRing.of(KEY), 100, b"\1" * 8)  # captured before the restart
    with pytest.raises(BadPacket, match="earlier run"):
        opener.open(earlier.seal(b"then"))


def test_only_the_last_runs_of_a_sender_keep_their_windows() -> None:
    opener = Opener(KeyRing.of(KEY), ME)
    runs = [
        Sealer(ALICE, KeyRing.of(KEY), 10**9 * (i + 1), bytes([i]) * 8)
        for i in range(envelope.BOOTS_KEPT + 1)
    ]
    for run in runs:
        opener.open(run.seal(b"hello"))
    assert len(opener._windows[ALICE].boots) == envelope.BOOTS_KEPT
    with pytest.raises(BadPacket, match="earlier run"):
        opener.open(runs[0].seal(b"forgotten"))  # its window went: below the top, refused
    assert opener.open(runs[1].seal(b"kept")).body == b"kept"


def test_a_run_that_keeps_talking_keeps_its_window_while_another_restarts_again() -> None:
    """A copy of a node's state dir that a supervisor restarts again and again: each run of it
    is new, and the original, heard all along, is never the one forgotten."""
    first, opener = pair(counter=100)
    opener.open(first.seal(b"first"))
    for i in range(3 * envelope.BOOTS_KEPT):
        copy = Sealer(ALICE, KeyRing.of(KEY), 10**9 * (i + 1), bytes([i + 1]) * 8)
        opener.open(copy.seal(b"copy"))
        assert opener.open(first.seal(b"first")).body == b"first"


def test_key_rotation_loses_no_packet_once_each_step_has_spread() -> None:
    sender_ring, receiver_ring = KeyRing.of(KEY), KeyRing.of(KEY)
    sealer, opener = Sealer(ALICE, sender_ring, 0, BOOT), Opener(receiver_ring, ME)
    # 1. install the new key everywhere; still sealing with the old one
    new_id = receiver_ring.install(OTHER_KEY)
    sender_ring.install(OTHER_KEY)
    assert opener.open(sealer.seal(b"old key")).body == b"old key"
    # 2. use the new key everywhere: packets under either key still open
    in_flight = sealer.seal(b"sealed just before the switch")
    sender_ring.use(new_id)
    receiver_ring.use(new_id)
    assert opener.open(sealer.seal(b"new key")).body == b"new key"
    assert opener.open(in_flight).body == b"sealed just before the switch"
    # 3. remove the old key: only then are old-key packets refused
    late = Sealer(BOB, KeyRing.of(KEY), 0, BOOT).seal(b"late, old key")
    receiver_ring.remove(key_id(KEY))
    with pytest.raises(BadPacket, match="not in the ring"):
        opener.open(late)


def test_key_ring_rules() -> None:
    ring = KeyRing.of(KEY)
    with pytest.raises(ValueError, match="in use"):
        ring.remove(key_id(KEY))
    with pytest.raises(ValueError, match="32 bytes"):
        ring.install(b"short")
    with pytest.raises(ValueError, match="not installed"):
        ring.use(b"nope")
    for _ in range(KEYS_MAX - 1):
        ring.install(os.urandom(32))
    with pytest.raises(ValueError, match="at most"):
        ring.install(os.urandom(32))


@pytest.mark.parametrize(
    "body", [b"", b"\xc1", encode([]), b"\x92\x01", encode(["type first"]), encode({"a": 1})]
)
def test_undecodable_messages_are_bad_packets(body: bytes) -> None:
    with pytest.raises(BadPacket):
        decode(body)


@given(st.binary(max_size=200))
def test_decode_never_raises_anything_but_bad_packet(junk: bytes) -> None:
    try:
        message = decode(junk)
    except BadPacket:
        return
    assert isinstance(message, list) and isinstance(message[0], int)


# -- membership packets ----------------------------------------------------------------------

nodes = st.text(min_size=1, max_size=16)
addrs = st.tuples(st.text(min_size=1, max_size=20), st.integers(1, 65535))
counters = st.integers(0, 2**63 - 1)
metas = st.dictionaries(
    st.text(max_size=10), st.one_of(st.integers(-(2**31), 2**31), st.text(max_size=10)), max_size=5
)
rumours = st.one_of(
    st.builds(gossip.Alive, nodes, counters, addrs, metas, st.binary(max_size=96)),
    st.builds(gossip.Suspect, nodes, counters, nodes),
    st.builds(gossip.Dead, nodes, counters, nodes),
)
messages = st.one_of(
    st.builds(gossip.Ping, counters, nodes, nodes, addrs),
    st.builds(gossip.IndirectPing, counters, nodes, addrs, nodes, addrs),
    st.builds(gossip.Ack, counters, nodes),
    st.builds(gossip.Nack, counters, nodes),
    st.just(gossip.Gossip()),
    st.builds(gossip.PushPull, st.lists(rumours, max_size=5).map(tuple), addrs, st.booleans()),
)
packets = st.builds(gossip.Packet, messages, st.lists(rumours, max_size=6).map(tuple))


@settings(max_examples=300, deadline=None)
@given(packets)
def test_membership_packets_round_trip(packet: gossip.Packet) -> None:
    body, kept = encode_datagram(packet, limit=10**9)
    assert kept == len(packet.rumours)
    assert decode_packet(body) == packet


@settings(max_examples=100, deadline=None)
@given(packets)
def test_a_datagram_sheds_rumours_to_fit(packet: gossip.Packet) -> None:
    body, kept = encode_datagram(packet, limit=120)
    decoded = decode_packet(body)
    assert decoded.message == packet.message
    assert decoded.rumours == packet.rumours[:kept]
    assert len(body) <= 120 or kept == 0


@pytest.mark.parametrize(
    "raw",
    [
        [],
        [[99], []],
        [[1, 1, "a", "b"], []],  # a ping without the sender's address
        [[1, -1, "a", "b", ["h", 1]], []],  # negative counter
        [[1, 1, "a", "b", ["h", 70000]], []],  # no such port
        [[1, 1, "", "b", ["h", 1]], []],  # empty node id
        [[3, 1, "a"], [[9, "x"]]],  # unknown rumour type
        [[3, 1, "a"], [[1, "x", 1, ["h", 1], {"k": [1, 2]}]]],  # meta value of the wrong kind
        [[6, "not a list", ["h", 1], False], []],
        [[5], "not a list"],
    ],
)
def test_malformed_membership_packets_are_bad_packets(raw: object) -> None:
    with pytest.raises(BadPacket):
        decode_packet(encode(raw))  # type: ignore[arg-type]


@given(st.binary(max_size=300))
def test_decode_packet_never_raises_anything_but_bad_packet(junk: bytes) -> None:
    with contextlib.suppress(BadPacket):
        decode_packet(junk)


def test_ledger_messages_round_trip() -> None:
    records = (("a" * 32, 1, 7, b"body"),)
    marks = {("a" * 32, 1): 7, ("b" * 32, 2): 3}
    for message in (
        wire.RecordsPush(records),
        wire.SyncRequest(marks),
        wire.SyncBatch(records, False, {}),
        wire.SyncBatch((), True, marks),
    ):
        plain = wire.ledger_message_to_plain(message)
        assert wire.decode_any(wire.encode(plain)) == message
    with pytest.raises(BadPacket):
        wire.ledger_message_from_plain(["B", [], True, [], "extra"])


def test_a_record_too_large_to_take_does_not_spoil_the_rest_of_its_frame() -> None:
    # The taker refuses such a record alone (and counts it): refusing the whole frame would
    # hold back every record in it, each time the frame is sent again.
    big = ("a" * 32, 1, 2, b"x" * (wire.RECORD_BODY_BYTES_MAX + 1))
    batch = wire.SyncBatch((("a" * 32, 1, 1, b"small"), big), False, {})
    assert wire.decode_any(wire.encode(wire.ledger_message_to_plain(batch))) == batch


def test_an_envelope_sealed_for_one_node_is_refused_by_every_other() -> None:
    sealer = Sealer(ALICE, KeyRing.of(KEY), 0, BOOT)
    for_bob = sealer.seal(b"for bob", to=BOB)
    with pytest.raises(BadPacket, match="another node"):
        Opener(KeyRing.of(KEY), ME).open(for_bob)
    opened = Opener(KeyRing.of(KEY), BOB).open(for_bob)
    assert (opened.body, opened.addressed) == (b"for bob", True)
    assert not Opener(KeyRing.of(KEY), ME).open(sealer.seal(b"to whoever")).addressed


def test_a_node_refuses_its_own_envelopes_sent_back() -> None:
    sealer = Sealer(ME, KeyRing.of(KEY), 0, BOOT)
    for packet in (sealer.seal(b"to whoever"), sealer.seal(b"to bob", to=BOB)):
        with pytest.raises(BadPacket, match="our own"):
            Opener(KeyRing.of(KEY), ME).open(packet)


def test_two_runs_of_a_sender_never_share_a_nonce_under_one_key() -> None:
    # A clock stepped back over a restart starts the counter where it was before: the run's own
    # key keeps the (key, nonce) pairs apart all the same.
    first = Sealer(ALICE, KeyRing.of(KEY), 41, b"\1" * 8).seal(b"same body")
    second = Sealer(ALICE, KeyRing.of(KEY), 41, b"\2" * 8).seal(b"same body")
    assert first[: HEADER_BYTES - 16] == second[: HEADER_BYTES - 16]  # same version, key, sender
    assert first[HEADER_BYTES:] != second[HEADER_BYTES:]
    assert Opener(KeyRing.of(KEY), ME).open(second).body == b"same body"


def test_a_sender_back_after_a_long_time_costs_one_small_window() -> None:
    # Counters follow the sender's clock in microseconds: a day away is a jump of 10**11.
    sealer, opener = pair()
    opener.open(sealer.seal(b"before"))
    sealer.counter += 86_400 * 10**6
    assert opener.open(sealer.seal(b"a day later")).body == b"a day later"
    window = opener._windows[ALICE].boots[BOOT]
    assert window.seen.bit_length() <= REPLAY_WINDOW
    with pytest.raises(BadPacket):
        opener.open(sealer.seal(b"x")[:-1])  # still a working window
