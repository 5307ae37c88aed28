"""Tests of swarm.daemon.store: round trips, dedup, verification, quarantine, crash and disk-full."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.daemon import store as store_module
from swarm.daemon.store import CHUNK_BYTES, EMPTY_DIGEST, BlobStore
from swarm.errors import CorruptBlobError, MissingBlobError, StorageFullError

REPO = Path(__file__).resolve().parents[1]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_files(root: Path) -> list[Path]:
    """Every file under a final name (root/xx/<digest>)."""
    # "tmp" and "quarantine" are longer than two characters, so "??" skips them.
    return sorted(p for p in root.glob("??/*") if p.is_file())


def temp_files(root: Path) -> list[Path]:
    return sorted((root / "tmp").iterdir())


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


# -- layout ----------------------------------------------------------------------------------


def test_init_creates_private_dirs(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    BlobStore(root)
    for d in (root, root / "tmp", root / "quarantine"):
        assert d.is_dir()
        assert d.stat().st_mode & 0o077 == 0, oct(d.stat().st_mode)


def test_path_layout(store: BlobStore) -> None:
    digest = sha(b"hello")
    assert store.path(digest) == store.root / digest[:2] / digest


# -- round trips -------------------------------------------------------------------------------


def test_put_bytes_round_trip(store: BlobStore) -> None:
    digest, new = store.put_bytes(b"hello world\n")
    assert digest == sha(b"hello world\n")
    assert new is True
    assert store.has(digest)
    assert store.read_bytes(digest) == b"hello world\n"
    assert store.size(digest) == 12
    assert store.verify(digest)
    assert store.path(digest).is_file()
    assert temp_files(store.root) == []


def test_empty_blob_is_always_held(store: BlobStore, tmp_path: Path) -> None:
    assert sha(b"") == EMPTY_DIGEST
    assert store.has(EMPTY_DIGEST)
    assert store.put_bytes(b"") == (EMPTY_DIGEST, False)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert store.put_file(empty) == (EMPTY_DIGEST, False)
    assert store.put_file(empty, move=True) == (EMPTY_DIGEST, False)
    assert not empty.exists()
    assert store.read_bytes(EMPTY_DIGEST) == b""
    assert store.size(EMPTY_DIGEST) == 0
    assert store.verify(EMPTY_DIGEST)
    out = tmp_path / "out" / "empty.txt"
    store.copy_to(EMPTY_DIGEST, out)
    assert out.read_bytes() == b""
    # Nothing was written for it.
    assert blob_files(store.root) == []
    assert temp_files(store.root) == []


@pytest.mark.parametrize("move", [False, True])
@pytest.mark.parametrize("size", [1, 1000, 3 * CHUNK_BYTES + 12345])
def test_put_file_round_trip(store: BlobStore, tmp_path: Path, size: int, move: bool) -> None:
    data = os.urandom(size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    digest, new = store.put_file(src, move=move)
    assert (digest, new) == (sha(data), True)
    assert src.exists() is not move
    assert store.read_bytes(digest) == data
    dest = tmp_path / "copy.bin"
    store.copy_to(digest, dest)
    assert dest.read_bytes() == data
    assert temp_files(store.root) == []


def test_put_file_hashes_in_chunks(
    store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file must be streamed, never read whole: no read asks for more than CHUNK_BYTES.
    data = os.urandom(2 * CHUNK_BYTES + 7)
    src = tmp_path / "big"
    src.write_bytes(data)
    sizes: list[int] = []
    real_chunks = store_module._chunks

    def spy(f: object) -> Iterator[bytes]:
        for chunk in real_chunks(f):  # type: ignore[arg-type]
            sizes.append(len(chunk))
            yield chunk

    monkeypatch.setattr(store_module, "_chunks", spy)
    assert store.put_file(src)[0] == sha(data)
    assert sizes == [CHUNK_BYTES, CHUNK_BYTES, 7]


def test_move_from_new_temp_path_is_a_rename(store: BlobStore) -> None:
    tmp = store.new_temp_path()
    assert tmp.parent == store.root / "tmp"
    assert not tmp.exists()
    assert store.new_temp_path() != tmp
    tmp.write_bytes(b"result manifest")
    inode = tmp.stat().st_ino
    digest, new = store.put_file(tmp, move=True)
    assert new
    assert not tmp.exists()
    # Same inode: the file was renamed into place, not copied.
    assert store.path(digest).stat().st_ino == inode
    assert temp_files(store.root) == []


def test_move_of_symlink_copies_target_and_removes_link(store: BlobStore, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"pointed at")
    link = tmp_path / "link"
    link.symlink_to(target)
    digest, _ = store.put_file(link, move=True)
    assert not link.is_symlink()
    assert target.read_bytes() == b"pointed at"
    assert not store.path(digest).is_symlink()
    assert store.read_bytes(digest) == b"pointed at"


def test_move_of_a_hard_linked_file_copies_it(store: BlobStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"  # a file of the user's, hard-linked into a task's dir
    outside.write_bytes(b"version 1")
    output = store.new_temp_path()
    os.link(outside, output)
    digest, new = store.put_file(output, move=True)
    assert new and not output.exists()
    assert store.path(digest).stat().st_ino != outside.stat().st_ino
    outside.write_bytes(b"version 2")  # a later edit of the user's file...
    assert store.verify(digest)  # ...leaves the stored result as it was
    assert store.read_bytes(digest) == b"version 1"


# -- dedup -------------------------------------------------------------------------------------


def test_dedup(store: BlobStore, tmp_path: Path) -> None:
    data = b"same content"
    d1, new1 = store.put_bytes(data)
    d2, new2 = store.put_bytes(data)
    src = tmp_path / "f"
    src.write_bytes(data)
    d3, new3 = store.put_file(src)
    d4, new4 = store.put_file(src, move=True)
    assert d1 == d2 == d3 == d4 == sha(data)
    assert (new1, new2, new3, new4) == (True, False, False, False)
    assert not src.exists()
    assert blob_files(store.root) == [store.path(d1)]
    assert temp_files(store.root) == []


def test_dedup_does_not_rewrite(store: BlobStore) -> None:
    digest, _ = store.put_bytes(b"x" * 100)
    inode = store.path(digest).stat().st_ino
    store.put_bytes(b"x" * 100)
    assert store.path(digest).stat().st_ino == inode


def test_truncated_blob_is_replaced_by_a_fresh_put(store: BlobStore) -> None:
    data = b"y" * 1000
    digest, _ = store.put_bytes(data)
    store.path(digest).write_bytes(data[:10])
    assert store.put_bytes(data) == (digest, True)
    assert store.read_bytes(digest) == data


def test_racing_writers_agree(store: BlobStore) -> None:
    data = os.urandom(200_000)
    results: list[tuple[str, bool]] = []
    barrier = threading.Barrier(8)

    def put() -> None:
        barrier.wait()
        results.append(store.put_bytes(data))

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {d for d, _ in results} == {sha(data)}
    assert any(new for _, new in results)
    assert store.read_bytes(sha(data)) == data
    assert blob_files(store.root) == [store.path(sha(data))]
    assert temp_files(store.root) == []


# -- verification ------------------------------------------------------------------------------


def flip_byte(path: Path, at: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def quarantined(store: BlobStore) -> list[Path]:
    return sorted((store.root / "quarantine").iterdir())


def test_corrupt_read_bytes_quarantines(store: BlobStore) -> None:
    digest, _ = store.put_bytes(b"precious result")
    path = store.path(digest)
    flip_byte(path, 3)
    with pytest.raises(CorruptBlobError) as info:
        store.read_bytes(digest)
    assert digest in str(info.value)
    assert str(path) in str(info.value)
    assert not store.has(digest)
    assert not path.exists()
    [q] = quarantined(store)
    assert q.name.startswith(digest)
    with pytest.raises(MissingBlobError):
        store.read_bytes(digest)
    # A fresh put heals it.
    assert store.put_bytes(b"precious result") == (digest, True)
    assert store.read_bytes(digest) == b"precious result"


def test_corrupt_copy_to_quarantines_and_leaves_dest_alone(
    store: BlobStore, tmp_path: Path
) -> None:
    data = os.urandom(CHUNK_BYTES + 100)
    digest, _ = store.put_bytes(data)
    flip_byte(store.path(digest), CHUNK_BYTES + 50)
    dest = tmp_path / "out" / "result.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    with pytest.raises(CorruptBlobError, match=digest):
        store.copy_to(digest, dest)
    assert dest.read_bytes() == b"old"
    assert sorted(dest.parent.iterdir()) == [dest]
    assert not store.has(digest)
    assert len(quarantined(store)) == 1


def test_verify_quarantines(store: BlobStore) -> None:
    digest, _ = store.put_bytes(b"abc")
    assert store.verify(digest)
    flip_byte(store.path(digest))
    assert store.verify(digest) is False
    assert not store.has(digest)
    assert len(quarantined(store)) == 1


def test_quarantine_spares_a_file_replaced_meanwhile(store: BlobStore) -> None:
    # A reader that read a corrupt file must not quarantine a good copy a writer just installed.
    # The reader still holds the file it read open, so its inode cannot be reused meanwhile.
    digest, _ = store.put_bytes(b"abc")
    path = store.path(digest)
    with open(path, "rb") as reading:
        path.unlink()
        store.put_bytes(b"abc")
        err = store.quarantine(digest, os.fstat(reading.fileno()))
    assert "left in place" in str(err)
    assert store.read_bytes(digest) == b"abc"
    assert quarantined(store) == []


# -- missing, bad names, limits ----------------------------------------------------------------


def test_missing(store: BlobStore, tmp_path: Path) -> None:
    digest = sha(b"never stored")
    assert not store.has(digest)
    calls: list[Callable[[], object]] = [
        lambda: store.read_bytes(digest),
        lambda: store.copy_to(digest, tmp_path / "d" / "x"),
        lambda: store.size(digest),
        lambda: store.verify(digest),
    ]
    for call in calls:
        with pytest.raises(MissingBlobError, match=digest):
            call()
    assert not (tmp_path / "d" / "x").exists()


BAD_DIGESTS = [
    "../x",
    "../" + "a" * 61,
    "/etc/passwd",
    sha(b"x").upper(),
    sha(b"x")[:63],
    sha(b"x") + "0",
    sha(b"x")[:63] + "g",
    sha(b"x")[:63] + "\n",
    "",
    "tmp",
]


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_bad_digest_rejected(store: BlobStore, tmp_path: Path, bad: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.path(bad),
        lambda: store.has(bad),
        lambda: store.read_bytes(bad),
        lambda: store.copy_to(bad, tmp_path / "x"),
        lambda: store.size(bad),
        lambda: store.verify(bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="digest"):
            call()
    assert not (tmp_path / "x").exists()


def test_read_bytes_max_bytes(store: BlobStore) -> None:
    digest, _ = store.put_bytes(b"z" * 1000)
    assert store.read_bytes(digest, max_bytes=1000) == b"z" * 1000
    with pytest.raises(ValueError, match="max_bytes"):
        store.read_bytes(digest, max_bytes=999)
    assert store.has(digest)  # too big is not corrupt


# -- copy_to ---------------------------------------------------------------------------------


def test_copy_to_creates_parents_and_replaces_atomically(store: BlobStore, tmp_path: Path) -> None:
    digest, _ = store.put_bytes(b"new content")
    dest = tmp_path / "deep" / "er" / "out.txt"
    store.copy_to(digest, dest)
    assert dest.read_bytes() == b"new content"
    dest.write_bytes(b"old content that is longer")
    store.copy_to(digest, dest)
    assert dest.read_bytes() == b"new content"
    assert sorted(dest.parent.iterdir()) == [dest]
    assert temp_files(store.root) == []


def test_copy_to_dest_permissions_follow_umask(store: BlobStore, tmp_path: Path) -> None:
    digest, _ = store.put_bytes(b"perm")
    old = os.umask(0o022)
    try:
        store.copy_to(digest, tmp_path / "p")
    finally:
        os.umask(old)
    assert (tmp_path / "p").stat().st_mode & 0o777 == 0o644


# -- temp files and crashes ------------------------------------------------------------------


def test_sweep_temp(store: BlobStore) -> None:
    for i in range(3):
        (store.root / "tmp" / f"put-{i}.tmp").write_bytes(b"partial")
    store.new_temp_path().write_bytes(b"caller's leftover")
    (store.root / "tmp" / "somedir").mkdir()
    assert store.sweep_temp() == 4
    assert temp_files(store.root) == [store.root / "tmp" / "somedir"]
    assert store.sweep_temp() == 0


def test_sweep_temp_older_than_keeps_fresh_files(store: BlobStore) -> None:
    old = store.root / "tmp" / "old.tmp"
    old.write_bytes(b"")
    os.utime(old, (1, 1))
    fresh = store.root / "tmp" / "fresh.tmp"
    fresh.write_bytes(b"")
    assert store.sweep_temp(older_than=3600) == 1
    assert temp_files(store.root) == [fresh]


CRASH_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from swarm.daemon.store import BlobStore

    store = BlobStore(Path(sys.argv[1]))

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    # Die at the worst moment: data fsynced in a temp file, not yet renamed into place.
    os.replace = die
    os.rename = die
    store.put_bytes(b"half-done result" * 1000)
    """
)


def test_sigkill_before_rename_leaves_only_a_temp_file(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(root)], env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    store = BlobStore(root)
    digest = sha(b"half-done result" * 1000)
    assert not store.has(digest)
    assert blob_files(root) == []
    assert len(temp_files(root)) == 1
    assert store.sweep_temp() == 1
    assert temp_files(root) == []


# -- disk full -------------------------------------------------------------------------------


def test_disk_full_simulated(
    store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Delayed allocation means ENOSPC often surfaces only at fsync; simulate exactly that.
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    src = tmp_path / "src"
    src.write_bytes(b"data" * 1000)
    monkeypatch.setattr(os, "fsync", full)
    calls: list[Callable[[], object]] = [
        lambda: store.put_bytes(b"data"),
        lambda: store.put_file(src),
        lambda: store.put_file(src, move=True),
    ]
    for call in calls:
        with pytest.raises(StorageFullError, match=re.escape(str(store.root))) as info:
            call()
        assert isinstance(info.value.__cause__, OSError)
    assert src.read_bytes() == b"data" * 1000  # a failed move keeps the source
    monkeypatch.undo()
    digest, _ = store.put_bytes(b"ok")
    monkeypatch.setattr(os, "fsync", full)
    dest = tmp_path / "out" / "dest"
    with pytest.raises(StorageFullError, match=re.escape(str(dest))):
        store.copy_to(digest, dest, durable=True)
    assert sorted(dest.parent.iterdir()) == []
    monkeypatch.undo()
    assert blob_files(store.root) == [store.path(digest)]
    assert temp_files(store.root) == []


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
        )
        if os.geteuid() == 0
        else None
    )
    if proc is None or proc.returncode != 0:
        reason = "not root" if proc is None else proc.stderr.strip() or f"rc {proc.returncode}"
        print(f"cannot mount a 64k tmpfs ({reason}); skipping the real disk-full test")
        pytest.skip(f"cannot mount a 64k tmpfs: {reason}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_on_tiny_tmpfs(tiny_tmpfs: Path, tmp_path: Path) -> None:
    store = BlobStore(tiny_tmpfs / "blobs")
    big = os.urandom(256 * 1024)
    with pytest.raises(StorageFullError, match=re.escape(str(store.root))):
        store.put_bytes(big)
    src = tmp_path / "big.bin"  # on the roomy filesystem, so this is a copy
    src.write_bytes(big)
    with pytest.raises(StorageFullError, match=re.escape(str(store.root))):
        store.put_file(src)
    assert src.exists()
    assert temp_files(store.root) == []
    assert blob_files(store.root) == []
    assert not store.has(sha(big))
    # Small blobs still fit afterwards: nothing was left behind eating the space.
    digest, new = store.put_bytes(b"small")
    assert new and store.read_bytes(digest) == b"small"
    # copy_to onto the full filesystem fails cleanly too.
    roomy = BlobStore(tmp_path / "roomy")
    big_digest, _ = roomy.put_bytes(big)
    dest = tiny_tmpfs / "out" / "big.bin"
    with pytest.raises(StorageFullError, match=re.escape(str(dest))):
        roomy.copy_to(big_digest, dest)
    assert sorted(dest.parent.iterdir()) == []


# -- properties ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> BlobStore:
    return BlobStore(tmp_path_factory.mktemp("prop") / "blobs")


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=4096))
def test_property_round_trip(shared_store: BlobStore, data: bytes) -> None:
    digest, _ = shared_store.put_bytes(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert shared_store.has(digest)
    assert shared_store.read_bytes(digest) == data


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=80))
def test_property_only_sha256_names_accepted(shared_store: BlobStore, name: str) -> None:
    valid = len(name) == 64 and all(c in "0123456789abcdef" for c in name)
    if valid:
        assert shared_store.path(name).parent.parent == shared_store.root
    else:
        with pytest.raises(ValueError):
            shared_store.path(name)


def test_unique_temp_paths(store: BlobStore) -> None:
    paths = {store.new_temp_path() for _ in range(1000)}
    assert len(paths) == 1000
    assert all(p.parent == store.root / "tmp" for p in paths)
