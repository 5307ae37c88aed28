"""A content-addressed blob store for task results, named by sha256.

Theory of operation. A blob is an immutable byte string (a task's stdout, stderr, an output file,
a result manifest) stored once, under the hex sha256 of its content:

    root/ab/abcd...(64 hex)   one file per blob, fanned out by the first two hex digits
    root/tmp/                 files being written; never read as blobs
    root/quarantine/          blobs found not to hash to their names, kept for inspection

Invariants:

1. A file under a final name is complete and was fsynced before it got that name. Every write
   goes to a temp file on the same filesystem (root/tmp), is fsynced, and is renamed into place;
   then the fan-out directory is fsynced (and root too, the first time this process uses a
   fan-out directory), so the name itself survives a power cut. A crash at any point leaves at
   most a temp file behind, never a partial or wrong blob; `sweep_temp` clears those.
2. Identical content is stored once. If a blob of the same name (and size) is already held,
   nothing is installed and `newly_stored` is False. Two writers racing for one digest both
   rename content with the same hash onto the same name, so whoever wins, the blob is right.
3. Reads verify. `read_bytes`, `copy_to` and `verify` hash what they read; a blob that no longer
   hashes to its name is moved to root/quarantine/ (so `has` turns False and the node can fetch
   a good copy from a peer) and `CorruptBlobError` is raised (or `verify` returns False).
4. The empty blob is always held: it is never written to disk, `has(EMPTY_DIGEST)` is True, and
   reading it gives b"". Storing empty content returns (EMPTY_DIGEST, False).
5. Digests are checked (64 lowercase hex) before they go anywhere near a path, so a name from a
   peer can never point outside root.
6. Disk full (ENOSPC or EDQUOT) on any write removes the temp file and raises
   `StorageFullError`; no half-written file remains under any name.

The code is synchronous and blocking; the asyncio node calls it through `asyncio.to_thread`.
It is safe to use from several threads and processes at once, except `sweep_temp`, which
removes every temp file old enough and so must not race writers (run it at startup, or give it
an age that no in-flight write reaches).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from swarm.errors import ConfigError, CorruptBlobError, MissingBlobError, StorageFullError

EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()
# Streaming reads and copies go in pieces of this size, so memory use does not grow with blobs.
CHUNK_BYTES = 1 << 20

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DIR_MODE = 0o700


def _check_digest(digest: str) -> None:
    # Digests come from peers and manifests; reject anything that is not exactly a sha256 name
    # before it is joined to a path ("../x", "/etc/passwd", "AB...", "ab\n...").
    if not isinstance(digest, str) or _DIGEST_RE.fullmatch(digest) is None:
        raise ValueError(f"not a sha256 digest (64 lowercase hex digits): {digest!r}")


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(CHUNK_BYTES):
        yield chunk


def fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory holding the new name is fsynced.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quiet(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class BlobStore:
    """Blobs under `root`, named by the sha256 of their content. See the module docstring."""

    def __init__(self, root: Path) -> None:
        # Absolute, so that a later chdir in the process cannot move the store.
        self.root = Path(root).absolute()
        self._tmp = self.root / "tmp"
        self._quarantine = self.root / "quarantine"
        for d in (self.root, self._tmp, self._quarantine):
            try:
                d.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            except FileExistsError:  # exist_ok takes only a dir
                raise ConfigError(
                    f"the blob store's {d} is not a directory: move it aside"
                ) from None
            except OSError as exc:
                raise ConfigError(f"cannot make the blob store's {d}: {exc.strerror}") from exc
        # Fan-out directories whose entry in root this process has made durable (see _fanout).
        self._durable_fanouts: set[str] = set()

    # -- names -----------------------------------------------------------------------------

    def path(self, digest: str) -> Path:
        """Where the blob `digest` lives (whether or not it is held). ValueError if malformed."""
        _check_digest(digest)
        return self.root / digest[:2] / digest

    def has(self, digest: str) -> bool:
        """Whether the blob is held. The empty blob always is. Does not verify content."""
        path = self.path(digest)
        return digest == EMPTY_DIGEST or path.is_file()

    def new_temp_path(self) -> Path:
        """A fresh path under root/tmp (not created), for callers that write a file and then
        `put_file(path, move=True)` it: same filesystem, so the move is a rename."""
        return self._tmp / f"ext-{uuid.uuid4().hex}.tmp"

    # -- writing ---------------------------------------------------------------------------

    def put_bytes(self, data: bytes) -> tuple[str, bool]:
        """Store `data`; return (digest, newly_stored)."""
        if not data:
            return EMPTY_DIGEST, False
        digest = hashlib.sha256(data).hexdigest()
        # Checked before writing anything, so a duplicate costs no disk I/O.
        if self._held_with_size(digest, len(data)):
            return digest, False
        with self._disk_full_guard():
            tmp, _, _ = self._spill(iter((data,)))
        return self._commit(tmp, digest, len(data))

    def put_file(self, src: Path, *, move: bool = False) -> tuple[str, bool]:
        """Store the content of `src`; return (digest, newly_stored).

        The file is hashed in CHUNK_BYTES pieces, never loaded whole. With move=True, `src` is
        renamed into the store when it is a regular file on the same filesystem (no copy), and
        is deleted in every successful case. The caller must not modify `src` meanwhile.
        """
        src = Path(src)
        if move:
            moved = self._put_by_rename(src)
            if moved is not None:
                return moved
        with open(src, "rb") as f, self._disk_full_guard():
            tmp, digest, size = self._spill(_chunks(f))
        result = self._commit(tmp, digest, size)
        if move:
            _unlink_quiet(src)
        return result

    def _put_by_rename(self, src: Path) -> tuple[str, bool] | None:
        """Hash `src` and rename it into place; None if it must be copied instead."""
        st = os.lstat(src)
        # A symlink would be moved as a link, and another filesystem cannot take a rename. A
        # file with other hard links would share its inode with them: a later write through
        # one (say, a file outside the task's dir) would change the blob under its name.
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_nlink > 1
            or st.st_dev != os.stat(self._tmp).st_dev
        ):
            return None
        h = hashlib.sha256()
        size = 0
        with open(src, "rb") as f:
            for chunk in _chunks(f):
                h.update(chunk)
                size += len(chunk)
            # The writer may not have fsynced; the blob must be on disk before it gets its name.
            with self._disk_full_guard():
                os.fsync(f.fileno())
        digest = h.hexdigest()
        if size == 0 or self._held_with_size(digest, size):
            src.unlink()
            return (EMPTY_DIGEST if size == 0 else digest), False
        with self._disk_full_guard():
            fan = self._fanout(digest)
            try:
                os.rename(src, fan / digest)
            except OSError as e:
                # Same st_dev but still another mount (a bind mount): fall back to copying.
                if e.errno == errno.EXDEV:
                    return None
                raise
            fsync_dir(fan)
        return digest, True

    def _spill(self, chunks: Iterator[bytes]) -> tuple[Path, str, int]:
        """Write `chunks` to a new fsynced temp file; return (temp path, digest, size).
        On any failure the temp file is removed before the exception propagates."""
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="put-", suffix=".tmp")
        tmp = Path(name)
        try:
            h = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            _unlink_quiet(tmp)
            raise
        return tmp, h.hexdigest(), size

    def _commit(self, tmp: Path, digest: str, size: int) -> tuple[str, bool]:
        """Give the fsynced temp file `tmp` its final name, unless that blob is already held."""
        if size == 0 or self._held_with_size(digest, size):
            _unlink_quiet(tmp)
            return (EMPTY_DIGEST if size == 0 else digest), False
        try:
            with self._disk_full_guard():
                fan = self._fanout(digest)
                # os.replace: if another writer got there first, we overwrite identical content.
                os.replace(tmp, fan / digest)
                fsync_dir(fan)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        return digest, True

    def _held_with_size(self, digest: str, size: int) -> bool:
        # A held blob of the wrong size is corrupt (say, truncated): treat it as absent so the
        # fresh copy replaces it. Checking size costs one stat, not a read.
        try:
            return os.stat(self.path(digest)).st_size == size
        except FileNotFoundError:
            return False

    def _fanout(self, digest: str) -> Path:
        """The blob's fan-out directory, created if needed, its entry in root durable."""
        name = digest[:2]
        fan = self.root / name
        if name in self._durable_fanouts:
            return fan
        with contextlib.suppress(FileExistsError):
            os.mkdir(fan, _DIR_MODE)
        # Also when it already existed: a concurrent creator may not have fsynced root yet, and
        # our blob would vanish with the directory. Once per directory per process is cheap.
        fsync_dir(self.root)
        self._durable_fanouts.add(name)
        return fan

    @contextlib.contextmanager
    def _disk_full_guard(self, dest: Path | None = None) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            if e.errno in _FULL_ERRNOS:
                where = f"blob store {self.root}"
                if dest is not None:
                    where = f"{dest} (copying from {where})"
                raise StorageFullError(f"disk full writing to {where}: {e.strerror}") from e
            raise

    # -- reading ---------------------------------------------------------------------------

    def read_bytes(self, digest: str, *, max_bytes: int = 64 << 20) -> bytes:
        """The verified content of a blob. ValueError if it is larger than `max_bytes`."""
        _check_digest(digest)
        if digest == EMPTY_DIGEST:
            return b""
        with self._open_blob(digest) as f:
            st = os.fstat(f.fileno())
            # Refuse before reading, so a huge blob never lands in memory.
            if st.st_size > max_bytes:
                raise ValueError(
                    f"blob {digest} is {st.st_size} bytes, more than max_bytes={max_bytes}"
                )
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ValueError(f"blob {digest} is more than max_bytes={max_bytes} bytes")
        if hashlib.sha256(data).hexdigest() != digest:
            raise self.quarantine(digest, st)
        return data

    def copy_to(
        self, digest: str, dest: Path, *, durable: bool = False, make_parents: bool = True
    ) -> None:
        """Write the verified content of a blob to `dest`, atomically: afterwards `dest` is
        either complete or as it was before; a symlink at `dest` is replaced, never followed.
        Creates dest's parent directories unless told they exist. With `durable`, also fsync
        it; an export that can be made again from the store does not need that."""
        _check_digest(digest)
        dest = Path(dest)
        if digest == EMPTY_DIGEST and not durable:
            # Nothing to verify and nothing to tear: an empty file is whole the moment it exists.
            with self._disk_full_guard(dest):
                if make_parents:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                try:
                    os.close(os.open(dest, flags, 0o666))
                except OSError as exc:
                    if exc.errno != errno.ELOOP:
                        raise
                    os.unlink(dest)  # a symlink was there: replace it, as os.replace would
                    os.close(os.open(dest, flags, 0o666))
            return
        with contextlib.ExitStack() as stack:
            src: IO[bytes] | None = None
            if digest != EMPTY_DIGEST:
                src = stack.enter_context(self._open_blob(digest))
            with self._disk_full_guard(dest):
                if make_parents:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                # Beside dest, so the final rename stays on one filesystem; O_EXCL with a random
                # name so concurrent copies never share a temp file; mode 0o666 so the umask,
                # not this store, decides dest's permissions.
                tmp = dest.parent / f".{dest.name[:32]}.{uuid.uuid4().hex[:16]}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                try:
                    h = hashlib.sha256()
                    with os.fdopen(fd, "wb") as out:
                        for chunk in _chunks(src) if src is not None else ():
                            h.update(chunk)
                            out.write(chunk)
                        out.flush()
                        if durable:
                            os.fsync(out.fileno())
                    if h.hexdigest() != digest:
                        assert src is not None  # the empty blob is not read from disk
                        raise self.quarantine(digest, os.fstat(src.fileno()))
                    os.replace(tmp, dest)
                except BaseException:
                    _unlink_quiet(tmp)
                    raise
                if durable:
                    fsync_dir(dest.parent)

    def size(self, digest: str) -> int:
        """The size in bytes of a held blob (not verified)."""
        path = self.path(digest)
        if digest == EMPTY_DIGEST:
            return 0
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            raise self._missing(digest) from None

    def verify(self, digest: str) -> bool:
        """Whether a held blob still hashes to its name. A corrupt one is quarantined (and
        False returned); a missing one raises MissingBlobError."""
        _check_digest(digest)
        if digest == EMPTY_DIGEST:
            return True
        h = hashlib.sha256()
        with self._open_blob(digest) as f:
            for chunk in _chunks(f):
                h.update(chunk)
            st = os.fstat(f.fileno())
        if h.hexdigest() == digest:
            return True
        self.quarantine(digest, st)
        return False

    def _open_blob(self, digest: str) -> IO[bytes]:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise self._missing(digest) from None

    def _missing(self, digest: str) -> MissingBlobError:
        return MissingBlobError(f"blob {digest} is not held in {self.root}")

    def quarantine(self, digest: str, read: os.stat_result) -> CorruptBlobError:
        """Move the corrupt blob we read (`read` is its fstat) aside; return the error (a reader
        that hashed it in its own way, as a peer's fetch is served, calls this too)."""
        path = self.path(digest)
        target = self._quarantine / f"{digest}.{time.time_ns()}.{uuid.uuid4().hex[:8]}"
        # Only move the file we actually read: a writer may have just replaced it with a good
        # copy, which must stay. (A narrow race remains between this stat and the rename.)
        try:
            now = os.stat(path)
            if (now.st_dev, now.st_ino) != (read.st_dev, read.st_ino):
                note = "the name now holds another file, left in place"
            else:
                os.rename(path, target)
                fsync_dir(path.parent)
                note = f"moved to {target}"
        except FileNotFoundError:
            note = "already moved away by another reader"
        except OSError as e:
            # Still report the corruption, which is the news; the failed move is a detail.
            note = f"could not be quarantined: {e}"
        return CorruptBlobError(f"blob {digest} at {path} does not hash to its name; {note}")

    # -- housekeeping ----------------------------------------------------------------------

    def sweep_temp(self, *, older_than: float = 0.0) -> int:
        """Remove temp files left in root/tmp by a killed process; return how many.

        With the default older_than=0 every temp file goes, so call it when no write is in
        flight (at startup). Given older_than seconds, newer files are kept, which makes it
        safe to run alongside writers that finish within that time.
        """
        cutoff = time.time() - older_than
        removed = 0
        with os.scandir(self._tmp) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    continue  # we never create directories here; leave foreign ones alone
                try:
                    if older_than > 0 and entry.stat(follow_symlinks=False).st_mtime > cutoff:
                        continue
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue  # its writer renamed or removed it meanwhile
                removed += 1
        return removed
