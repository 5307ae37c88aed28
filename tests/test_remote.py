"""Remote clients on real sockets: the control protocol sealed over a node's peer port
(swarm/remote.py on the client's side, daemon/net.py on the node's), served by the real control
server in front of a node that records its calls. Real daemons are in
tests/integration/test_remote_clients.py."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncio_dgram
import msgpack
import pytest

from swarm import connection, remote, statedir
from swarm.cli import remote_reads
from swarm.connection import Client
from swarm.core import wire
from swarm.core.ledger import Version
from swarm.daemon import clients, net
from swarm.daemon.clients import RemoteClients
from swarm.daemon.control_server import ControlServer
from swarm.daemon.net import GossipNet
from swarm.daemon.store import BlobStore
from swarm.errors import ControlError, SwarmError

from .test_control import JOB, TASK, FakeNode
from .test_net_sync import KEY, Side, know, serving

T = TypeVar("T")


class Served:
    """A node's transport whose remote clients reach a control server (or none)."""

    def __init__(self, serve_clients: bool = True, node: FakeNode | None = None) -> None:
        self.node = node or FakeNode()
        self.clients: set[connection.Channel] = set()
        self.side = Side("b", {("b" * 32, 1, 1): b"b1"}, GossipNet)
        if serve_clients:
            self.side.net.clients = RemoteClients(ControlServer(self.node, self.clients).serve)
        self.peer = f"127.0.0.1:{self.side.net.bind[1]}"


def key_dir(tmp_path: Path, key: bytes = KEY) -> statedir.StateDir:
    """A client machine's state dir holding the swarm key `key`."""
    key_file = tmp_path / f"key-{key.hex()[:8]}"
    key_file.write_text(key.hex())
    state = statedir.StateDir(tmp_path / f"client-{key.hex()[:8]}")
    statedir.init(state, key_file)
    return state


@pytest.fixture
def state(tmp_path: Path) -> statedir.StateDir:
    return key_dir(tmp_path)


def with_client(
    served: Served, state: statedir.StateDir, body: Callable[[Client], Awaitable[T]]
) -> T:
    async def go() -> T:
        async with serving(served.side):
            client = await remote.connect(served.peer, state)
            try:
                return await body(client)
            finally:
                await client.close()

    return asyncio.run(go())


def test_a_remote_client_is_served_as_the_local_socket_is(state: statedir.StateDir) -> None:
    served = Served()

    async def body(client: Client) -> None:
        assert (await client.ping())["node_id"] == served.node.node_id
        assert (await client.submit(JOB, [[TASK]]))["added"] == 1
        assert (await client.put_blob(b"x" * (9 << 20)))["size"] == 9 << 20  # in 4 MiB frames
        assert (await client.why(f"{JOB}/1"))["reasons"]

    with_client(served, state, body)
    assert ("add_tasks", JOB, [TASK["task_id"]]) in served.node.calls
    assert ("why", f"{JOB}/1") in served.node.calls
    assert not served.clients  # the connection ended with the client
    assert served.side.net.clients.connected == 0


def test_a_client_with_another_key_is_told_so_at_once_and_served_nothing(tmp_path: Path) -> None:
    served = Served()
    stranger = key_dir(tmp_path, bytes(32))

    async def go() -> None:
        async with serving(served.side):
            with pytest.raises(ControlError, match="closed the connection before answering"):
                await remote.connect(served.peer, stranger)

    asyncio.run(go())
    assert served.node.calls == []
    assert served.side.net.dropped >= 1


def test_a_client_with_no_swarm_key_is_told_where_to_put_one(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"swarm init --data-dir .*empty --key-file"):
        asyncio.run(remote.connect("127.0.0.1:1", statedir.StateDir(tmp_path / "empty")))


def test_a_frame_that_is_not_a_control_frame_ends_the_connection(
    state: statedir.StateDir,
) -> None:
    async def body(client: Client) -> dict[str, Any] | None:
        channel = client._channel
        assert isinstance(channel, remote.SealedClientChannel)
        await channel.send(wire.ledger_message_to_plain(wire.SyncRequest({})))
        return await channel.read()

    said = with_client(Served(), state, body)
    assert said is not None and said["ok"] is False and "control frame" in str(said["error"])


def test_remote_clients_never_leave_peers_without_a_stream(
    state: statedir.StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients that stay connected are counted apart from the peers' streams, and bounded; one
    over the bound is told so when it connects."""
    monkeypatch.setattr(net, "STREAMS_MAX", 2)
    monkeypatch.setattr(clients, "CONTROL_STREAMS_MAX", 4)
    served = Served()
    asker = Side("a", {}, GossipNet)
    know(asker, served.side)

    async def go() -> str:
        async with serving(asker, served.side):
            held = []
            try:
                for _ in range(4):
                    held.append(await remote.connect(served.peer, state))  # and kept open
                await asker.net.pull(served.side.net.bind, wire.SyncRequest(asker.digest()))
                with pytest.raises(ControlError) as refused:
                    await remote.connect(served.peer, state)
                return str(refused.value)
            finally:
                for client in held:
                    await client.close()

    refused = asyncio.run(go())
    assert ("b" * 32, 1, 1) in asker.records  # the peer was served with 4 clients connected
    assert "already serves 4 remote clients" in refused


def test_a_node_that_serves_no_clients_says_so(state: statedir.StateDir) -> None:
    served = Served(serve_clients=False)

    async def go() -> None:
        async with serving(served.side):
            with pytest.raises(ControlError, match="serves no remote clients"):
                await remote.connect(served.peer, state)

    asyncio.run(go())


def test_a_replayed_control_frame_is_dropped(state: statedir.StateDir) -> None:
    """A control frame sealed for one stream, sent again on it: the replay window drops it,
    and nothing is done twice."""
    served = Served()

    async def body(client: Client) -> None:
        channel = client._channel
        assert isinstance(channel, remote.SealedClientChannel)
        sent: list[bytes] = []
        write = channel._writer.write

        def keep(data: bytes) -> None:
            sent.append(data)
            write(data)

        channel._writer.write = keep  # type: ignore[method-assign]
        await client.cancel(JOB)
        write(sent[-1])  # the cancel's frame, played again
        with pytest.raises(ControlError):
            await client.ping()  # the stream ended at the replayed frame

    with_client(served, state, body)
    assert served.node.calls.count(("cancel", JOB)) == 1
    assert served.side.net.dropped >= 1


def test_a_client_that_asks_nothing_for_long_is_let_go(
    state: statedir.StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clients, "IDLE_S", 0.2)
    served = Served()

    async def body(client: Client) -> str:
        async with asyncio.timeout(5):
            while served.side.net.clients.connected:  # let go, with its slot
                await asyncio.sleep(0.05)
        with pytest.raises(ControlError) as said:
            await client.ping()
        return str(said.value)

    assert "no request for 0.2 s" in with_client(served, state, body)
    assert not served.clients


def test_operations_of_the_node_s_own_machine_are_not_served_remotely(
    state: statedir.StateDir,
) -> None:
    served = Served()

    async def body(client: Client) -> None:
        for ask in (client.shutdown(), client.reload_keys(), client.join(["10.0.0.5:7946"])):
            with pytest.raises(ControlError, match="not served to remote clients"):
                await ask
        await client.ping()  # and the connection goes on

    with_client(served, state, body)
    assert [c for c in served.node.calls if c[0] in ("stop", "reload_keys", "join_peers")] == []


def test_numbers_past_what_sqlite_and_files_take_are_refused_by_field(
    state: statedir.StateDir,
) -> None:
    async def body(client: Client) -> list[str]:
        said = []
        for request in (
            {"op": "records", "after": ["a" * 32, 1, 1 << 63]},
            {"op": "read_blob", "digest": "ab" * 32, "offset": 1 << 63},
        ):
            with pytest.raises(ControlError) as refused:
                await client.call(**request)
            said.append(str(refused.value))
        await client.ping()
        return said

    said = with_client(Served(), state, body)
    assert "'after' must be a version" in said[0]
    assert "'offset' must be a whole number from 0 below 2**63" in said[1]


class Blobs(FakeNode):
    """A node that holds the given blobs."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        super().__init__()
        self.blobs = blobs

    async def read_blob(self, digest: str, offset: int, size_max: int) -> tuple[bytes, int]:
        data = self.blobs[digest]
        return data[offset : offset + 3], len(data)  # small pieces: several round trips


def test_a_blob_is_copied_whole_and_checked(state: statedir.StateDir, tmp_path: Path) -> None:
    good = b"the outcome of a call"
    digest = hashlib.sha256(good).hexdigest()
    liar = "ab" * 32  # the node gives other content under this digest
    served = Served(node=Blobs({digest: good, liar: b"not what was named"}))
    store = BlobStore(tmp_path / "blobs")

    async def body(client: Client) -> str:
        await remote_reads.copy_blob(client, digest, store)
        with pytest.raises(SwarmError) as refused:
            await remote_reads.copy_blob(client, liar, store)
        return str(refused.value)

    assert "came with other content" in with_client(served, state, body)
    assert store.read_bytes(digest) == good
    assert not store.has(liar)
    assert [p.name for p in store.root.rglob("*") if p.is_file()] == [digest]  # nothing else


def test_a_submission_s_frames_stay_within_what_a_remote_node_takes() -> None:
    big = {**TASK, "spec": {**TASK["spec"], "env": {"PAYLOAD": "x" * 300_000}}}
    parts = list(connection._fitting([big] * 40))  # about 12 MB in all
    assert sum(len(p) for p in parts) == 40
    assert all(
        len(msgpack.packb(p, use_bin_type=True)) <= connection.SUBMIT_FRAME_BYTES for p in parts
    )


def test_a_client_s_envelopes_played_off_their_stream_leave_nothing_behind(
    state: statedir.StateDir,
) -> None:
    """Captured from one client connection and played as datagrams to another node, or on
    another stream: the node refuses them before it keeps a replay window or a key for their
    sender, so clients never crowd the nodes' senders out of its table."""
    served = Served()
    other = Side("c", {}, GossipNet)

    async def go() -> tuple[int, bytes]:
        async with serving(served.side, other):
            sent: list[bytes] = []
            real_open = asyncio.open_connection

            async def tapped(host: str, port: int) -> Any:
                reader, writer = await real_open(host, port)
                write = writer.write
                writer.write = lambda data: (sent.append(bytes(data)), write(data))[1]  # type: ignore[method-assign]
                return reader, writer

            remote.asyncio.open_connection = tapped  # type: ignore[attr-defined]
            try:
                client = await remote.connect(served.peer, state)  # a Hello, then a ping
                await client.close()
            finally:
                remote.asyncio.open_connection = real_open  # type: ignore[attr-defined]
            udp = await asyncio_dgram.connect(other.net.bind)
            for frame in sent:
                await udp.send(frame[4:])  # the envelope, without its length
            udp.close()
            reader, writer = await asyncio.open_connection(*other.net.bind)
            await reader.readexactly(wire.CHALLENGE_BYTES)  # a new challenge, answered by nobody
            for frame in sent:
                writer.write(frame)
            answer = await asyncio.wait_for(reader.read(1 << 16), 2.0)
            writer.close()
            async with asyncio.timeout(2):
                while other.net.dropped < len(sent):  # each datagram refused
                    await asyncio.sleep(0.01)
            return len(other.net.opener._windows), answer

    windows, answer = asyncio.run(go())
    assert windows == 0  # nothing kept of the client's sender on the node it never spoke to
    assert answer == b""  # the replayed stream: closed, not one frame answered


async def until(check: Callable[[], bool], within_s: float = 5.0) -> None:
    """Wait for `check` to hold, for at most `within_s`."""
    async with asyncio.timeout(within_s):
        while not check():
            await asyncio.sleep(0.01)


class Gated(FakeNode):
    """A node whose ledger pages wait for a gate: a request that reads files, held open."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = 0  # requests inside read_records

    async def read_records(
        self, after: Version | None, rows_max: int, bytes_max: int
    ) -> tuple[list[list[Any]], bool]:
        self.entered += 1
        await self.gate.wait()
        return [], True


def test_requests_that_read_files_take_turns_and_long_polls_take_none(
    state: statedir.StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clients, "REQUESTS_AT_ONCE", 1)
    node = Gated()
    served = Served(node=node)

    async def go() -> tuple[int, int]:
        async with serving(served.side):
            a, b, c = [await remote.connect(served.peer, state) for _ in range(3)]
            try:
                turns = served.side.net.clients.turns
                first = asyncio.create_task(a.records(None))  # holds the one turn, at the gate
                await until(lambda: node.entered == 1)
                second = asyncio.create_task(b.records(None))  # waits for the turn
                await until(lambda: turns.waiting == 1)
                await asyncio.wait_for(c.watch([], 50), 2)  # a long poll: served meanwhile
                inside_while_held = node.entered
                node.gate.set()
                await asyncio.wait_for(asyncio.gather(first, second), 5)
                return inside_while_held, node.entered
            finally:
                for client in (a, b, c):
                    await client.close()

    assert asyncio.run(go()) == (1, 2)  # the second read waited for the first's turn
