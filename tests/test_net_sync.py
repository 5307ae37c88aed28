"""Ledger anti-entropy on real sockets (net.py): an exchange of digests over one TCP stream on
127.0.0.1, in both directions, and with a peer that does not know the reverse phase. The ledgers
here are plain dicts of records: what is under test is the stream, not the intake rules."""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from swarm.core import gossip, wire
from swarm.daemon import net
from swarm.daemon.net import GossipNet

from .integration.conftest import free_port

KEY = bytes(range(32))
Record = tuple[str, int, int]  # (origin, generation, seq)


class Side:
    """One node: the records it holds, and the net that serves and takes them."""

    def __init__(self, name: str, records: dict[Record, bytes], net_class: type[GossipNet]):
        self.node = name * 32
        self.records = {(self.node, *key[1:]): raw for key, raw in records.items()}
        addr = ("127.0.0.1", free_port())
        membership = gossip.Membership(
            self.node, addr, {}, gossip.Config.test(), random.Random(1), 0.0
        )
        self.net = net_class(
            membership,
            addr,
            wire.Sealer(bytes.fromhex(self.node), wire.KeyRing.of(KEY), counter=1, boot=bytes(8)),
            wire.Opener(wire.KeyRing.of(KEY), bytes.fromhex(self.node)),
            lambda events: None,
            lambda push: None,
            self.serve,
            self.taker,
            self.digest,
            self.no_blobs,
        )

    def digest(self) -> wire.Watermarks:
        marks: wire.Watermarks = {}
        for origin, generation, seq in self.records:
            marks[(origin, generation)] = max(seq, marks.get((origin, generation), 0))
        return marks

    async def serve(self, request: wire.SyncRequest) -> AsyncIterator[wire.SyncBatch]:
        copies = tuple(
            (*key, raw)
            for key, raw in sorted(self.records.items())
            if key[2] > request.digest.get((key[0], key[1]), 0)
        )
        if copies:
            yield wire.SyncBatch(copies, False, {})
        yield wire.SyncBatch((), True, self.digest())

    def taker(self, digest: wire.Watermarks) -> Callable[[wire.SyncBatch], Awaitable[None]]:
        async def take(batch: wire.SyncBatch) -> None:
            for origin, generation, seq, raw in batch.records:
                self.records[(origin, generation, seq)] = raw

        return take

    async def no_blobs(self, request: wire.FetchRequest) -> AsyncIterator[wire.BlobChunk]:
        yield wire.BlobChunk(b"", True, missing=True)


class WithoutReverse(GossipNet):
    """A peer from before the reverse phase: it answers a digest, then closes the stream."""

    async def _serve_stream(self, stream: net._Stream) -> None:
        request = await self._read_frame(stream)
        assert isinstance(request, wire.SyncRequest)
        async for batch in self.serve_sync(request):
            await self._write_frame(stream, wire.ledger_message_to_plain(batch))
        stream.writer.close()


def know(side: Side, other: Side) -> None:
    """`side` has heard of `other` as a member: what it sends is sealed for `other` alone."""
    side.net.membership.members[other.node] = gossip.Member(
        other.node, other.net.bind, 1, gossip.MemberState.ALIVE, {}, 0.0
    )


SERVED_WAIT_S = 5.0  # longest wait for the answerer to finish serving the stream


def served_event(side: Side) -> asyncio.Event:
    """An event set when `side` has finished serving a stream (its reverse phase taken)."""
    served = asyncio.Event()
    serve_stream = side.net._serve_stream

    async def serve_and_say(stream: net._Stream) -> None:
        try:
            await serve_stream(stream)
        finally:
            served.set()

    side.net._serve_stream = serve_and_say  # type: ignore[method-assign]
    return served


async def exchange(asker: Side, answerer: Side) -> None:
    know(asker, answerer)
    served = served_event(answerer)
    async with asyncio.TaskGroup() as tg:
        loops = [*await asker.net.start(tg), *await answerer.net.start(tg)]
        try:
            await asker.net.pull(answerer.net.bind, wire.SyncRequest(asker.digest()))
            async with asyncio.timeout(SERVED_WAIT_S):  # the reverse phase's last frame taken
                await served.wait()
        finally:
            for net in (asker.net, answerer.net):
                net.close()
            for loop in loops:
                loop.cancel()


def test_one_exchange_brings_each_side_what_the_other_held() -> None:
    asker = Side("a", {("a", 1, 1): b"a1", ("a", 1, 2): b"a2"}, GossipNet)
    answerer = Side("b", {("b", 1, 1): b"b1"}, GossipNet)
    asyncio.run(exchange(asker, answerer))
    assert asker.records == answerer.records
    assert len(asker.records) == 3


def test_a_peer_without_the_reverse_phase_still_answers() -> None:
    asker = Side("a", {("a", 1, 1): b"a1"}, GossipNet)
    answerer = Side("b", {("b", 1, 1): b"b1"}, WithoutReverse)
    asyncio.run(exchange(asker, answerer))
    assert set(asker.records) == {(asker.node, 1, 1), (answerer.node, 1, 1)}
    assert set(answerer.records) == {(answerer.node, 1, 1)}  # it asked for nothing back


@contextlib.asynccontextmanager
async def serving(*sides: Side) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tg:
        loops = [loop for side in sides for loop in await side.net.start(tg)]
        try:
            yield
        finally:
            for side in sides:
                side.net.close()
            for loop in loops:
                loop.cancel()


async def closed_by_peer(reader: asyncio.StreamReader, within_s: float) -> bool:
    """The peer closed the stream, having sent nothing but its challenge."""
    return len(await asyncio.wait_for(reader.read(), within_s)) <= wire.CHALLENGE_BYTES


def test_a_stream_without_the_key_is_closed_before_anything_large_is_read() -> None:
    side = Side("b", {}, GossipNet)

    async def go() -> None:
        async with serving(side):
            reader, writer = await asyncio.open_connection(*side.net.bind)
            writer.write(struct.pack(">I", wire.FRAME_BYTES_MAX) + b"x" * 1000)
            assert await closed_by_peer(reader, 2.0)  # not waiting for 8 MiB to buffer
            writer.close()

    asyncio.run(go())
    assert side.net.dropped == 1


def test_a_stream_that_never_shows_the_key_is_closed_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(net, "HELLO_TIMEOUT_S", 0.2)
    side = Side("b", {}, GossipNet)

    async def go() -> None:
        async with serving(side):
            reader, writer = await asyncio.open_connection(*side.net.bind)
            assert await closed_by_peer(reader, 2.0)
            writer.close()

    asyncio.run(go())


def test_a_flood_of_streams_without_the_key_does_not_keep_peers_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(net, "STREAMS_UNPROVEN_MAX", 4)
    asker = Side("a", {}, GossipNet)
    answerer = Side("b", {("b", 1, 1): b"b1"}, GossipNet)

    know(asker, answerer)

    async def go() -> None:
        async with serving(asker, answerer):
            flood = [await asyncio.open_connection(*answerer.net.bind) for _ in range(4)]
            for reader, _ in flood:  # each is waiting for its Hello once its challenge came
                await reader.readexactly(wire.CHALLENGE_BYTES)
            extra = await asyncio.open_connection(*answerer.net.bind)
            assert await closed_by_peer(flood[0][0], 2.0)  # the oldest made room
            await asker.net.pull(answerer.net.bind, wire.SyncRequest(asker.digest()))
            for _, writer in [*flood, extra]:
                writer.close()

    asyncio.run(go())
    assert (answerer.node, 1, 1) in asker.records
    assert answerer.net.streams_refused >= 2  # the oldest, then room for the peer's stream


def test_ledger_traffic_is_taken_only_when_sealed_for_this_node() -> None:
    side = Side("b", {}, GossipNet)
    sealer = wire.Sealer(b"c" * 16, wire.KeyRing.of(KEY), counter=1, boot=bytes(8))
    push = wire.encode(wire.ledger_message_to_plain(wire.RecordsPush(())))
    assert side.net._open(sealer.seal(push), wire.DATAGRAM_BYTES_MAX) is None  # for whoever
    assert side.net._open(sealer.seal(push, b"x" * 16), wire.DATAGRAM_BYTES_MAX) is None
    assert side.net.dropped == 2
    mine = sealer.seal(push, bytes.fromhex(side.node))
    assert side.net._open(mine, wire.DATAGRAM_BYTES_MAX) == (b"c" * 16, wire.RecordsPush(()))
    # Membership traffic to a node not yet known (a join) goes to whoever listens.
    ping = wire.encode(wire.packet_to_plain(gossip.Packet(gossip.Gossip(), ())))
    assert side.net._open(sealer.seal(ping), wire.DATAGRAM_BYTES_MAX) is not None


def test_a_hello_from_another_stream_opens_nothing() -> None:
    # Captured traffic played again, even to a node that restarted and forgot its replay
    # windows: the Hello answers another stream's challenge.
    side = Side("b", {("b", 1, 1): b"b1"}, GossipNet)
    sealer = wire.Sealer(b"c" * 16, wire.KeyRing.of(KEY), counter=1, boot=bytes(8))
    me = bytes.fromhex(side.node)

    def frame(message: list[object]) -> bytes:
        data = sealer.seal(wire.encode(message), me)
        return struct.pack(">I", len(data)) + data

    async def go() -> tuple[bytes, bytes]:
        async with serving(side):
            answers = []
            for answer_it in (False, True):
                reader, writer = await asyncio.open_connection(*side.net.bind)
                challenge = await reader.readexactly(wire.CHALLENGE_BYTES)
                hello = wire.Hello(challenge if answer_it else bytes(wire.CHALLENGE_BYTES))
                writer.write(frame(wire.hello_to_plain(hello)))
                writer.write(frame(wire.ledger_message_to_plain(wire.SyncRequest({}))))
                answers.append(await asyncio.wait_for(reader.read(1 << 16), 2.0))
                writer.close()
            return answers[0], answers[1]

    stale, fresh = asyncio.run(go())
    assert stale == b""  # closed: not one frame of the ledger served
    assert fresh  # the same request, with the right Hello, is answered


def test_what_is_sent_to_an_address_is_sealed_for_the_live_member_there_now() -> None:
    side = Side("b", {}, GossipNet)
    members = side.net.membership.members
    x, y = "c" * 32, "d" * 32
    here, there = ("127.0.0.1", 9001), ("127.0.0.1", 9002)
    members[x] = gossip.Member(x, here, 1, gossip.MemberState.ALIVE, {}, 0.0)
    members[y] = gossip.Member(y, there, 1, gossip.MemberState.ALIVE, {}, 0.0)
    assert side.net._node_at(here) == bytes.fromhex(x)
    # x dies, and y comes back at x's old address (a pod that reuses an IP): same member count.
    members[x].state = gossip.MemberState.DEAD
    members[y].addr = here
    assert side.net._node_at(here) == bytes.fromhex(y)
    assert side.net._node_at(there) is None
