"""Tests of swarm.statedir: reading what a user hands the state dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarm import statedir
from swarm.daemon.store import BlobStore
from swarm.errors import ConfigError


def test_a_swarm_key_file_is_read_bounded_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "swarm.key"
    good.write_text("ab" * statedir.SWARM_KEY_BYTES + "\n")
    assert statedir.read_swarm_key(good) == bytes.fromhex("ab" * statedir.SWARM_KEY_BYTES)
    short = tmp_path / "short.key"
    short.write_text("abcd")
    with pytest.raises(ConfigError, match="a swarm key is 32 bytes, found 2"):
        statedir.read_swarm_key(short)
    # /dev/zero never ends: it is refused after a few KiB, not read into memory until it fills.
    with pytest.raises(ConfigError, match=r"/dev/zero: not a swarm key .*more than 4096 bytes"):
        statedir.read_swarm_key(Path("/dev/zero"))
    with pytest.raises(ConfigError, match="not a swarm key"):
        statedir.read_swarm_key(tmp_path / "missing.key")


def test_a_ledger_whose_identity_key_is_gone_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    state = statedir.StateDir(tmp_path / "home")
    assert statedir.init(state)
    node = statedir.node_id(state)
    state.identity_path.unlink()
    before = sorted(p.name for p in state.root.iterdir())
    with pytest.raises(ConfigError, match=r"identity\.key is missing, and the ledger .* put the"):
        statedir.init(state)
    # No new key was made (the start then refused it as not the ledger's node's key).
    assert sorted(p.name for p in state.root.iterdir()) == before
    # A link to a key that is gone is no key either (a new one was written over the link).
    state.identity_path.symlink_to(tmp_path / "gone.key")
    with pytest.raises(ConfigError, match=r"identity\.key is missing"):
        statedir.init(state)
    assert state.identity_path.is_symlink()
    state.identity_path.unlink()
    # A dir whose ledger went too is a new node's, with a new key.
    for path in state.root.glob("ledger.db*"):
        path.unlink()
    assert statedir.init(state)
    assert statedir.node_id(state) != node


def test_a_lock_that_cannot_be_opened_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("a file where the state dir should be\n")
    with pytest.raises(ConfigError, match=r"cannot open the state dir's lock .*: Not a directory"):
        statedir.DaemonLock(statedir.StateDir(tmp_path / "home"))


def test_a_blob_store_that_is_a_file_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "blobs").write_text("not a dir\n")
    with pytest.raises(ConfigError, match=r"blob store's .*blobs is not a directory: move it"):
        BlobStore(tmp_path / "blobs")
