"""Membership on real sockets: the asyncio side of gossip.py.

Theory of operation: one UDP socket carries probes, acks, rumours and pushed ledger records; one
TCP listener on the same port takes membership state exchanges (push-pull, one sealed frame each
way), ledger anti-entropy (a digest, its answer in frames, then the answerer's digest answered
back on the same stream) and blob fetches. Every
datagram and frame is sealed (wire.Sealer) and opened (wire.Opener) here, so nothing that fails to
authenticate or decode reaches the core: it is counted in `dropped` and forgotten. Every stream
opens with the listener's random challenge, answered by a small sealed Hello (wire.Hello): until
then a listener reads no more than wire.HELLO_BYTES_MAX from it, for at most HELLO_TIMEOUT_S,
and holds a bounded number of such streams, so nobody without the swarm key (or with only
captured traffic) can take its memory, its descriptors or its ledger. The core is
driven by a receive loop and one re-armed timer; after each input its outbox is flushed.

A stream whose first frame after its Hello is a control frame is a remote client's (`swarm
status --peer`, say), handed to daemon/clients.py once that frame has come: from then on it is
counted apart from the peers' streams, so clients never crowd out replication.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncio_dgram

from swarm import framing
from swarm.core import envelope, gossip, wire
from swarm.daemon.clients import RemoteClients, SealedChannel
from swarm.errors import ControlError

log = logging.getLogger("swarm.daemon.net")

PUSH_PULL_TIMEOUT_S = 5.0  # one whole exchange over TCP
PUSH_PULLS_MAX = 8  # exchanges in flight at once; more are skipped (they are periodic anyway)
SYNC_TIMEOUT_S = 30.0  # one whole anti-entropy exchange
SYNC_FRAMES_MAX = 10_000  # frames in one answer: a bound, whatever a peer sends
FETCH_TIMEOUT_S = 300.0  # one whole blob
CONNECT_TIMEOUT_S = 5.0  # a peer that does not take a connection by then is not waited for
FETCH_FRAMES_MAX = 1 << 16  # chunks of one blob: 64 GiB at 1 MiB a chunk
SEND_QUEUE_MAX = 1024  # datagrams waiting for the socket; beyond, they are dropped (and counted)
# Streams from peers. One that has not shown the swarm key (its Hello) within HELLO_TIMEOUT_S is
# closed, and so is the oldest such one when STREAMS_UNPROVEN_MAX are open; beyond STREAMS_MAX
# proven ones, a new stream is closed at once (both counted in `streams_refused`). So nobody
# without the key holds more than a few descriptors and bytes, and the control socket, the
# ledger and the tasks keep theirs.
NODE_INDEX_EVERY_S = 1.0  # an address no member has is looked for again at most this often
HELLO_TIMEOUT_S = 2.0
STREAMS_UNPROVEN_MAX = 32
STREAMS_MAX = 64


class GossipNet:
    def __init__(
        self,
        membership: gossip.Membership,
        bind: gossip.Addr,
        sealer: wire.Sealer,
        opener: wire.Opener,
        on_events: Callable[[list[gossip.Event]], None],
        on_records: Callable[[wire.RecordsPush], None],
        serve_sync: Callable[[wire.SyncRequest], AsyncIterator[wire.SyncBatch]],
        take_sync: Callable[[wire.Watermarks], Callable[[wire.SyncBatch], Awaitable[None]]],
        digest: Callable[[], wire.Watermarks],
        serve_blob: Callable[[wire.FetchRequest], AsyncIterator[wire.BlobChunk]],
        clients: RemoteClients | None = None,
    ) -> None:
        """`serve_sync(request)`: the frames that answer a peer's digest; `take_sync(digest)`:
        a taker for the frames of an answer to that digest of ours (one per answer);
        `digest()`: ours, now; `clients`: who serves remote clients' connections (None:
        they are refused)."""
        self.membership = membership
        self.bind = bind
        self.sealer = sealer
        self.opener = opener
        self.on_events = on_events
        self.on_records = on_records
        self.serve_sync = serve_sync
        self.take_sync = take_sync
        self.digest = digest
        self.serve_blob = serve_blob
        self.clients = clients or RemoteClients(None)
        self.dropped = 0  # packets that failed to open or decode
        self.sent = 0
        self.received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._wake = asyncio.Event()
        self._outgoing: asyncio.Queue[tuple[bytes, gossip.Addr]] = asyncio.Queue(SEND_QUEUE_MAX)
        self.send_dropped = 0
        self._push_pulls = 0
        self._unproven: OrderedDict[asyncio.StreamWriter, None] = OrderedDict()  # oldest first
        self._streams = 0  # streams that showed the key, being served
        self._nodes_by_addr: dict[gossip.Addr, str] = {}  # addr -> member id, as last indexed
        self._nodes_indexed_at = -NODE_INDEX_EVERY_S
        self._nodes_indexed_count = 0  # members there were when the index was made
        self.streams_refused = 0
        self._tg: asyncio.TaskGroup | None = None
        self._udp: asyncio_dgram.aio.DatagramServer | None = None
        self._tcp: asyncio.Server | None = None

    async def start(self, tg: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        """Bind both sockets and start the loops; returns the loops, for the owner to cancel."""
        self._tg = tg
        self._udp = await asyncio_dgram.bind(self.bind)
        self._tcp = await asyncio.start_server(
            self._on_stream, self.bind[0], self.bind[1], reuse_address=True
        )
        return [
            tg.create_task(self._receive_loop()),
            tg.create_task(self._timer_loop()),
            tg.create_task(self._send_loop()),
        ]

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()

    def poke(self) -> None:
        """Something changed outside (a join, a leave): flush and re-arm the timer."""
        self._flush()
        self._wake.set()

    # -- loops -----------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        assert self._udp is not None
        while True:
            try:
                data, _ = await self._udp.recv()
            except asyncio_dgram.TransportClosed:
                return
            except OSError as exc:
                # An earlier send failed (a firewall rule, an unreachable port): the socket
                # reports it on the next receive. It is the prober's business, not the loop's.
                log.debug("the gossip socket reported: %s", exc)
                continue
            self.received += 1
            self.bytes_received += len(data)
            opened = self._open(data, wire.DATAGRAM_BYTES_MAX)
            message = None if opened is None else opened[1]
            if isinstance(message, wire.RecordsPush):
                self.on_records(message)
            elif isinstance(message, gossip.Packet):
                self.membership.receive(time.monotonic(), message)
                self._flush()
                self._wake.set()

    async def _timer_loop(self) -> None:
        while True:
            delay = self.membership.next_deadline() - time.monotonic()
            if delay > 0:
                # asyncio.timeout, not wait_for: on Python 3.11, wait_for can swallow a cancel
                # that comes as its wait ends, and this loop would then never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            self._wake.clear()
            self.membership.tick(time.monotonic())
            self._flush()

    async def _send_loop(self) -> None:
        assert self._udp is not None
        while True:
            data, addr = await self._outgoing.get()
            # Unreachable now: probing will find out.
            with contextlib.suppress(OSError, asyncio_dgram.TransportClosed):
                await self._udp.send(data, addr)

    # -- sending ---------------------------------------------------------------------------

    def _flush(self) -> None:
        for addr, packet in self.membership.take_outbox():
            if isinstance(packet.message, gossip.PushPull):
                self._start_push_pull(addr, packet)
                continue
            body, _ = wire.encode_datagram(packet)
            self._send_datagram(body, addr)
        events = self.membership.take_events()
        if events:
            self.on_events(events)

    def send_records(self, addrs: list[gossip.Addr], push: wire.RecordsPush) -> None:
        """Send fresh records as one datagram to each address (sync.fitting made it fit one)."""
        body = wire.encode(wire.ledger_message_to_plain(push))
        assert len(body) <= wire.PACKET_BODY_BYTES_MAX, "a push larger than a datagram"
        for addr in addrs:
            self._send_datagram(body, addr)

    def _send_datagram(self, body: bytes, addr: gossip.Addr) -> None:
        """Seal and queue one datagram; a full queue drops it (counted): UDP may lose it anyway."""
        data = self.sealer.seal(body, self._node_at(addr))
        try:
            self._outgoing.put_nowait((data, addr))
        except asyncio.QueueFull:
            self.send_dropped += 1
            return
        self.sent += 1
        self.bytes_sent += len(data)

    async def pull(self, addr: gossip.Addr, request: wire.SyncRequest) -> None:
        """Anti-entropy: send our digest and take in what the peer holds past it; then answer,
        on the same stream, the peer's own digest with what we hold past it (the reverse phase:
        a node that others cannot connect to still gets its records out by asking). A peer
        without the reverse phase closes the stream after its answer instead."""
        async with asyncio.timeout(SYNC_TIMEOUT_S):
            stream = await self._connect(addr)
            try:
                await self._write_frame(stream, wire.ledger_message_to_plain(request))
                if not await self._take_answer(stream, request.digest):
                    return
                try:
                    theirs = await self._read_frame(stream)
                except asyncio.IncompleteReadError:
                    return  # no reverse phase
                if isinstance(theirs, wire.SyncRequest):
                    await self._answer(stream, theirs)
            finally:
                stream.writer.close()

    async def _take_answer(self, stream: _Stream, digest: wire.Watermarks) -> bool:
        """Take the frames that answer `digest` (ours); True if the answer came to its end."""
        take = self.take_sync(digest)
        for _ in range(SYNC_FRAMES_MAX):
            batch = await self._read_frame(stream)
            if not isinstance(batch, wire.SyncBatch):
                return False
            await take(batch)
            if batch.done:
                return True
        return False

    async def _answer(self, stream: _Stream, request: wire.SyncRequest) -> None:
        async for batch in self.serve_sync(request):
            await self._write_frame(stream, wire.ledger_message_to_plain(batch))

    async def fetch(
        self, addr: gossip.Addr, digest: str, into: Path, task: str | None = None
    ) -> bool:
        """Copy a blob from a peer into the file `into`; False if the peer does not hold it
        (or found its copy corrupt). The caller verifies the content against its digest.
        `task`: the task whose result the blob is part of, if known (wire.FetchRequest)."""
        async with asyncio.timeout(FETCH_TIMEOUT_S):
            stream = await self._connect(addr)
            try:
                await self._write_frame(
                    stream, wire.blob_message_to_plain(wire.FetchRequest(digest, task))
                )
                with open(into, "wb") as out:
                    for _ in range(FETCH_FRAMES_MAX):
                        chunk = await self._read_frame(stream)
                        if not isinstance(chunk, wire.BlobChunk) or chunk.missing:
                            return False
                        out.write(chunk.data)
                        if chunk.last:
                            return True
                return False
            finally:
                stream.writer.close()

    def _start_push_pull(self, addr: gossip.Addr, packet: gossip.Packet) -> None:
        if self._push_pulls >= PUSH_PULLS_MAX or self._tg is None:
            return
        self._push_pulls += 1
        self._tg.create_task(self._push_pull(addr, packet))

    async def _push_pull(self, addr: gossip.Addr, packet: gossip.Packet) -> None:
        try:
            async with asyncio.timeout(PUSH_PULL_TIMEOUT_S):
                stream = await self._connect(addr)
                try:
                    await self._write_frame(stream, wire.packet_to_plain(packet))
                    reply = await self._read_frame(stream)
                finally:
                    stream.writer.close()
            if isinstance(reply, gossip.Packet) and isinstance(reply.message, gossip.PushPull):
                self.membership.receive(time.monotonic(), reply)
                self._flush()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("push-pull with %s:%d failed: %s", addr[0], addr[1], exc)
        finally:
            self._push_pulls -= 1

    async def _on_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._streams >= STREAMS_MAX:
            self._refuse_stream(writer)
            return
        if len(self._unproven) >= STREAMS_UNPROVEN_MAX:
            # The oldest stream still without its Hello goes, not the new one: a peer's Hello
            # follows its connect at once, so a flood must outpace every peer to keep one out.
            self._refuse_stream(self._unproven.popitem(last=False)[0])
        self._unproven[writer] = None
        stream = _Stream(reader, writer, None)
        challenge = os.urandom(wire.CHALLENGE_BYTES)
        try:
            writer.write(challenge)
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                hello = await self._read_frame(stream, wire.HELLO_BYTES_MAX)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            hello = None
            log.debug("a stream closed before its hello: %s", exc)
        finally:
            self._unproven.pop(writer, None)
        if not isinstance(hello, wire.Hello) or hello.challenge != challenge:
            if isinstance(hello, wire.Hello):
                self.dropped += 1  # a Hello from another stream, played again
            writer.close()
            return
        self._streams += 1
        try:
            await self._serve_stream(stream)
        finally:
            self._streams -= 1

    def _refuse_stream(self, writer: asyncio.StreamWriter) -> None:
        self.streams_refused += 1
        writer.close()

    async def _serve_stream(self, stream: _Stream) -> None:
        try:
            async with asyncio.timeout(SYNC_TIMEOUT_S) as deadline:
                first = await self._read_frame(stream)
                if isinstance(first, wire.FetchRequest):
                    # A blob may take as long to send as the fetcher waits for it.
                    deadline.reschedule(asyncio.get_running_loop().time() + FETCH_TIMEOUT_S)
                if isinstance(first, wire.SyncRequest):
                    await self._answer(stream, first)
                    # The reverse phase: our digest, answered on this stream.
                    ours = wire.SyncRequest(self.digest())
                    await self._write_frame(stream, wire.ledger_message_to_plain(ours))
                    await self._take_answer(stream, ours.digest)
                elif isinstance(first, wire.FetchRequest):
                    async for chunk in self.serve_blob(first):
                        await self._write_frame(stream, wire.blob_message_to_plain(chunk))
                elif isinstance(first, gossip.Packet) and isinstance(
                    first.message, gossip.PushPull
                ):
                    await self._answer_push_pull(first, stream)
                elif isinstance(first, wire.ControlFrame):
                    deadline.reschedule(None)  # a client's connection lasts as long as it likes
                    await self._serve_control(stream, first)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            log.debug("a stream from a peer failed: %s", exc)
        finally:
            stream.writer.close()

    async def _serve_control(self, stream: _Stream, first: wire.ControlFrame) -> None:
        channel = SealedChannel(
            first,
            lambda size_max: self._read_frame(stream, size_max),
            lambda plain: self._write_frame(stream, plain),
            stream.writer,
            self.clients.turns,
        )
        # Counted apart from the peers' streams from now on: clients that stay connected (a
        # live status, a Python script's watch) never leave replication without a stream.
        self._streams -= 1
        try:
            await self.clients.serve(channel)
        except ControlError:
            self.streams_refused += 1
        finally:
            self._streams += 1

    async def _answer_push_pull(self, packet: gossip.Packet, stream: _Stream) -> None:
        assert isinstance(packet.message, gossip.PushPull)
        self.membership.receive(time.monotonic(), packet)
        # The core addressed its reply to the sender; it goes back on this stream.
        reply = self.membership.take_push_pull_reply()
        if reply is not None:
            await self._write_frame(stream, wire.packet_to_plain(reply))
        self._flush()
        self._wake.set()

    async def _write_frame(self, stream: _Stream, plain: list[object]) -> None:
        data = self.sealer.seal(wire.encode(plain), stream.peer)
        stream.writer.write(framing.frame(data))
        self.sent += 1
        self.bytes_sent += len(data) + framing.LENGTH.size
        await stream.writer.drain()

    async def _read_frame(
        self, stream: _Stream, size_max: int = wire.FRAME_BYTES_MAX
    ) -> wire.StreamMessage | None:
        """The next frame of the stream, from its peer; the first one tells who the peer is."""
        try:
            data = await framing.read_frame_body(stream.reader, size_max)
        except framing.FrameTooLarge:
            self.dropped += 1
            return None
        except framing.FrameCut as exc:
            raise asyncio.IncompleteReadError(b"", None) from exc
        if data is None:  # the peer closed the stream
            raise asyncio.IncompleteReadError(b"", framing.LENGTH.size)
        self.received += 1
        self.bytes_received += len(data) + framing.LENGTH.size
        opened = self._open(data, size_max, stream)
        if opened is None:
            return None
        if stream.peer is None:
            stream.peer = opened[0]
        elif opened[0] != stream.peer:
            self.dropped += 1  # a frame of another node's, spliced in
            return None
        return opened[1]

    async def _connect(self, addr: gossip.Addr) -> _Stream:
        """A stream to a peer, opened with our Hello to its challenge; TimeoutError soon if the
        peer does not take the connection (a filter that drops our SYNs must not hold up
        replication for the whole transfer timeout)."""
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(addr[0], addr[1])
            try:
                challenge = await reader.readexactly(wire.CHALLENGE_BYTES)
            except BaseException:
                writer.close()
                raise
        stream = _Stream(reader, writer, self._node_at(addr))
        await self._write_frame(stream, wire.hello_to_plain(wire.Hello(challenge)))
        return stream

    def _node_at(self, addr: gossip.Addr) -> bytes | None:
        """The id of the live member at `addr`, to seal for it alone; None for an address not
        known as a member's (a seed being joined), whose traffic goes unaddressed."""
        node = self._nodes_by_addr.get(addr)
        member = None if node is None else self.membership.members.get(node)
        if member is not None and member.addr == addr and member.state not in gossip.GONE:
            return bytes.fromhex(member.node)
        # Unknown, moved, or gone: look again, at most so often for an address nobody has,
        # unless members came since (a node just started or restarted meets its peers then,
        # and its first requests to them must be sealed for them, or they are refused).
        now = time.monotonic()
        members = len(self.membership.members)
        if (
            node is not None
            or members != self._nodes_indexed_count
            or now - self._nodes_indexed_at >= NODE_INDEX_EVERY_S
        ):
            self._nodes_indexed_at = now
            self._nodes_indexed_count = members
            self._nodes_by_addr = {
                m.addr: m.node
                for m in sorted(self.membership.members.values(), key=_liveness)
                if m.node != self.membership.node
            }
            node = self._nodes_by_addr.get(addr)
            member = None if node is None else self.membership.members.get(node)
            if member is not None and member.state not in gossip.GONE:
                return bytes.fromhex(member.node)
        return None

    def _open(
        self, data: bytes, size_max: int, stream: _Stream | None = None
    ) -> tuple[bytes, wire.StreamMessage] | None:
        """The sender and message of an envelope, or None (counted).

        A node's envelopes are opened by the node's opener: unaddressed, only membership
        traffic is taken (what a node sends before it knows who listens). A remote client's
        (envelope.CLIENT) are opened only on a stream that began with one, by that stream's own
        opener, and only a Hello and control frames: so clients never take the nodes' replay
        windows, and one of their envelopes played on another stream, or as a datagram, is
        refused before anything of it is kept."""
        try:
            opener = self.opener
            if stream is not None:
                if stream.opener is None and stream.peer is None and envelope.from_client(data):
                    stream.opener = wire.Opener(opener.ring, opener.me, senders_max=1, clients=True)
                opener = stream.opener or opener
            opened = opener.open(data, size_max)
            message = wire.decode_any(opened.body)
            if opener.clients:
                if not isinstance(message, wire.Hello | wire.ControlFrame):
                    raise wire.BadPacket("a client's envelope that is not a control frame")
            elif isinstance(message, wire.ControlFrame):
                raise wire.BadPacket("a control frame not sealed by a client")
            elif not opened.addressed and not isinstance(message, gossip.Packet | wire.Hello):
                raise wire.BadPacket("a ledger or blob message not sealed for this node")
            return opened.sender, message
        except wire.BadPacket as exc:
            self.dropped += 1
            log.debug("dropped a packet: %s", exc)
            return None


@dataclass(slots=True)
class _Stream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: bytes | None  # its node's id, once known: what we send is sealed for it alone
    opener: wire.Opener | None = None  # a remote client's stream's own (see _open)


def _liveness(member: gossip.Member) -> tuple[bool, float]:
    """Gone members sort first, then the longest unchanged: the live member that came to a
    reused address last wins it."""
    return (member.state not in gossip.GONE, member.changed_at)
