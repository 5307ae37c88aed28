"""Ledger anti-entropy on real sockets (net.py): an exchange of digests over one TCP stream on
127.0.0.1, in both directions, and with a peer that does not know the reverse phase. The ledgers
here are plain dicts of records: what is under test is the stream, not the intake rules."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable

from swarm import gossip, wire
from swarm.net import GossipNet

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
            wire.Sealer(bytes.fromhex(self.node)[:16], wire.KeyRing.of(KEY), counter=1),
            wire.Opener(wire.KeyRing.of(KEY)),
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

    async def _on_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await self._read_frame(reader)
        assert isinstance(request, wire.SyncRequest)
        async for batch in self.serve_sync(request):
            await self._write_frame(writer, wire.ledger_message_to_plain(batch))
        writer.close()


async def exchange(asker: Side, answerer: Side) -> None:
    async with asyncio.TaskGroup() as tg:
        loops = [*await asker.net.start(tg), *await answerer.net.start(tg)]
        try:
            await asker.net.pull(answerer.net.bind, wire.SyncRequest(asker.digest()))
            await asyncio.sleep(0.1)  # the answerer takes the reverse phase's last frame
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
