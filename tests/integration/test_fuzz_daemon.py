"""What the decoder fuzzing found, tried on a real daemon: a record nested a thousand deep, in one
sealed datagram of a peer, is counted and passed over; the daemon goes on answering."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable

import pytest

from swarm import statedir
from swarm.core import wire

from .conftest import Cli, Daemon, free_port, wait_for

pytestmark = pytest.mark.integration

DEEP_RECORD = b"\x91" * 1024 + b"\xc0"  # 1,024 nested lists: as deep as msgpack decodes


def _net(cli: Cli) -> dict[str, int]:
    stats: dict[str, int] = json.loads(cli.ok("members", "--json").stdout)["net"]
    return stats


def test_a_record_nested_a_thousand_deep_is_passed_over(
    cli: Cli, daemon: Callable[..., Daemon]
) -> None:
    # Before the fix, the RecursionError raised while quoting this record in an error message
    # ended the node's task group: the control socket went away with the gossip.
    port = free_port()
    node = daemon("--bind", f"127.0.0.1:{port}")
    state = statedir.StateDir(cli.home)
    key = statedir.read_swarm_key(state.swarm_key_path)
    sealer = wire.Sealer(b"z" * 16, wire.KeyRing.of(key), 1, os.urandom(wire.BOOT_BYTES))
    push = wire.RecordsPush((("ab" * 16, 1, 1, DEEP_RECORD),))
    packet = sealer.seal(
        wire.encode(wire.ledger_message_to_plain(push)), to=bytes.fromhex(statedir.node_id(state))
    )
    assert len(packet) <= wire.DATAGRAM_BYTES_MAX
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(packet, ("127.0.0.1", port))
    wait_for("the record counted as undecodable", lambda: _net(cli)["bad_records"] == 1)
    assert node.proc is not None and node.proc.poll() is None
    assert _net(cli)["refused_records"] == 1
    assert "malformed record [[[[" in node.log.read_text()
