"""The members a node keeps in its state dir to rejoin through after a restart."""

from __future__ import annotations

from pathlib import Path

from swarm.daemon import peers
from swarm.statedir import StateDir


def test_the_members_kept_are_read_back_and_junk_is_left_out(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert peers.remembered(state) == []  # none yet
    peers.remember(state, [("10.0.0.6", 7946), ("10.0.0.5", 7946)])
    assert peers.remembered(state) == [("10.0.0.5", 7946), ("10.0.0.6", 7946)]
    state.peers_path.write_text("10.0.0.7:7946\nno port\n:7946\nhost:99999\nhost:x\n\n")
    assert peers.remembered(state) == [("10.0.0.7", 7946)]
    state.peers_path.write_bytes(b"\xff\xfe")
    assert peers.remembered(state) == []
    many = [(f"10.0.{i // 250}.{i % 250}", 7946) for i in range(500)]
    peers.remember(state, many)
    assert len(peers.remembered(state)) == peers.PEERS_REMEMBERED_MAX
