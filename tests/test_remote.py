"""Remote clients on real sockets: the control protocol sealed over a node's peer port
(swarm/remote.py on the client's side, daemon/net.py on the node's), served by the real control
server in front of a node that records its calls. Real daemons are in
tests/integration/test_remote_clients.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from swarm import control, remote, statedir
from swarm.core import wire
from swarm.daemon import net
from swarm.daemon.control_server import ControlServer
from swarm.daemon.net import GossipNet
from swarm.errors import ControlError

from .test_control import JOB, TASK, FakeNode
from .test_net_sync import KEY, Side, know, serving


class Served:
    """A node's transport whose remote clients reach a control server (or none)."""

    def __init__(self, serve_clients: bool = True) -> None:
        self.node = FakeNode()
        self.clients: set[control.Channel] = set()
        self.side = Side("b", {("b" * 32, 1, 1): b"b1"}, GossipNet)
        if serve_clients:
            self.side.net.serve_control = ControlServer(self.node, self.clients).serve
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


def test_a_remote_client_is_served_as_the_local_socket_is(state: statedir.StateDir) -> None:
    served = Served()

    async def go() -> None:
        async with serving(served.side):
            client = await remote.connect(served.peer, state)
            try:
                assert (await client.ping())["node_id"] == served.node.node_id
                submitted = await client.submit(JOB, [[TASK]])
                assert submitted["added"] == 1
                blob = await client.put_blob(b"x" * (5 << 20))  # frames over the peers' bound
                assert blob["size"] == 5 << 20
                assert (await client.why(f"{JOB}/1"))["reasons"]
            finally:
                await client.close()

    asyncio.run(go())
    assert ("add_tasks", JOB, [TASK["task_id"]]) in served.node.calls
    assert ("why", f"{JOB}/1") in served.node.calls
    assert not served.clients  # the connection ended with the client


def test_a_client_with_another_key_is_told_so_and_served_nothing(tmp_path: Path) -> None:
    served = Served()
    stranger = key_dir(tmp_path, bytes(32))

    async def go() -> None:
        async with serving(served.side):
            client = await remote.connect(served.peer, stranger)
            try:
                with pytest.raises(ControlError, match="closed the connection before answering"):
                    await client.ping()
            finally:
                await client.close()

    asyncio.run(go())
    assert served.node.calls == []
    assert served.side.net.dropped >= 1


def test_a_client_with_no_swarm_key_is_told_where_to_put_one(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="swarm init --key-file"):
        asyncio.run(remote.connect("127.0.0.1:1", statedir.StateDir(tmp_path / "empty")))


def test_a_frame_that_is_not_a_control_frame_ends_the_connection(
    state: statedir.StateDir,
) -> None:
    served = Served()

    async def go() -> dict[str, object] | None:
        async with serving(served.side):
            client = await remote.connect(served.peer, state)
            channel = client._channel
            assert isinstance(channel, remote.SealedClientChannel)
            try:
                await client.ping()
                await channel.send(wire.ledger_message_to_plain(wire.SyncRequest({})))
                said = await channel.read()
                return said
            finally:
                await client.close()

    said = asyncio.run(go())
    assert said is not None and said["ok"] is False and "control frame" in str(said["error"])


def test_remote_clients_never_leave_peers_without_a_stream(
    state: statedir.StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients that stay connected are counted apart from the peers' streams, and bounded."""
    monkeypatch.setattr(net, "STREAMS_MAX", 2)
    monkeypatch.setattr(net, "CONTROL_STREAMS_MAX", 4)
    served = Served()
    asker = Side("a", {}, GossipNet)
    know(asker, served.side)

    async def go() -> str:
        async with serving(asker, served.side):
            clients = []
            try:
                for _ in range(4):
                    clients.append(await remote.connect(served.peer, state))
                    await clients[-1].ping()  # served, and kept open
                await asker.net.pull(served.side.net.bind, wire.SyncRequest(asker.digest()))
                one_more = await remote.connect(served.peer, state)
                try:
                    with pytest.raises(ControlError) as refused:
                        await one_more.ping()
                    return str(refused.value)
                finally:
                    await one_more.close()
            finally:
                for client in clients:
                    await client.close()

    refused = asyncio.run(go())
    assert ("b" * 32, 1, 1) in asker.records  # the peer was served with 4 clients connected
    assert "already serves 4 remote clients" in refused


def test_a_node_that_serves_no_clients_says_so(state: statedir.StateDir) -> None:
    served = Served(serve_clients=False)

    async def go() -> None:
        async with serving(served.side):
            client = await remote.connect(served.peer, state)
            try:
                with pytest.raises(ControlError, match="serves no remote clients"):
                    await client.ping()
            finally:
                await client.close()

    asyncio.run(go())


def test_a_replayed_control_frame_is_dropped(state: statedir.StateDir) -> None:
    """A control frame sealed for one stream, sent again on it: the replay window drops it,
    and nothing is done twice."""
    served = Served()

    async def go() -> None:
        async with serving(served.side):
            client = await remote.connect(served.peer, state)
            channel = client._channel
            assert isinstance(channel, remote.SealedClientChannel)
            sent: list[bytes] = []
            write = channel._writer.write

            def keep(data: bytes) -> None:
                sent.append(data)
                write(data)

            channel._writer.write = keep  # type: ignore[method-assign]
            try:
                await client.cancel(JOB)
                write(sent[-1])  # the cancel's frame, played again
                with pytest.raises(ControlError):
                    await client.ping()  # the stream ended at the replayed frame
            finally:
                await client.close()

    asyncio.run(go())
    assert served.node.calls.count(("cancel", JOB)) == 1
    assert served.side.net.dropped >= 1
