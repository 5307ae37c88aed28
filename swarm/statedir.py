"""A node's state directory: where it is, what is in it, and creating it (`swarm init`).

Layout (all owner-only):
    identity.key   Ed25519 private key (PEM); the node id is the sha256 of its public key
    swarm.key      the 32-byte swarm key, hex; whoever holds it may run commands on every node
    ledger.db      the SQLite ledger (+ -wal, -shm)
    blobs/         content-addressed results
    run/           one dir per running attempt (stdout, stderr, pid, scratch work dir)
    control.sock   the CLI's Unix socket to the daemon (mode 0600)
    daemon.lock    locked by the daemon while it runs (holds its pid): one daemon per state dir
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from swarm.errors import ConfigError, UserInputError

if TYPE_CHECKING:
    from swarm.core.identity import Identity

# The keys' and the ledger's modules (cryptography, SQLite) are imported where a key is made or
# read, or a ledger created: every command resolves its state dir, and most never do either, so
# importing them here would slow every command's start.

SWARM_KEY_BYTES = 32
SOCKET_PATH_BYTES_MAX = 100  # AF_UNIX paths are limited to 108 bytes on Linux


@dataclass(frozen=True, slots=True)
class StateDir:
    root: Path

    @property
    def db_path(self) -> Path:
        return self.root / "ledger.db"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def runs(self) -> Path:
        return self.root / "run"

    @property
    def identity_path(self) -> Path:
        return self.root / "identity.key"

    @property
    def swarm_key_path(self) -> Path:
        return self.root / "swarm.key"

    @property
    def peers_path(self) -> Path:
        """The members this node last saw alive, HOST:PORT a line: it rejoins through them."""
        return self.root / "peers"

    @property
    def keys_dir(self) -> Path:
        """Installed swarm keys that are not (or not yet) in use: `<key id>.key` each."""
        return self.root / "keys"

    @property
    def socket_path(self) -> Path:
        path = self.root / "control.sock"
        if len(os.fsencode(path)) <= SOCKET_PATH_BYTES_MAX:
            return path
        # A deep data dir: the socket goes to a short name in a per-user dir of the temp dir,
        # which `prepare_socket_dir` makes (or checks to be) ours alone.
        tag = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"swarm-{os.getuid()}" / f"{tag}.sock"

    def prepare_socket_dir(self) -> None:
        """Make sure the socket's directory exists and nobody else can put anything in it."""
        folder = self.socket_path.parent
        if folder == self.root:
            return
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ConfigError(
                f"{folder} must be a directory of yours that only you can use (mode 0700)"
            )

    def exists(self) -> bool:
        return self.db_path.exists() and self.identity_path.exists()


def resolve(flag: str | None) -> StateDir:
    """--data-dir, else $SWARM_HOME, else the XDG data dir."""
    if flag:
        return StateDir(Path(flag).expanduser().resolve())
    env = os.environ.get("SWARM_HOME")
    if env:
        return StateDir(Path(env).expanduser().resolve())
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return StateDir(Path(xdg) / "swarm")


PEER_ENV = "SWARM_PEER"  # HOST:PORT of another machine's node, for clients with no daemon here


def resolve_peer(flag: str | None) -> str | None:
    """--peer, else $SWARM_PEER: the node of another machine that a client asks (swarm/remote.py);
    None: this machine's daemon."""
    return flag or os.environ.get(PEER_ENV) or None


def init(state: StateDir, key_file: Path | None = None) -> bool:
    """Create the state dir if needed. Returns True if it was created now."""
    if state.exists():
        if key_file is not None:
            _adopt_key(state, key_file)
        return False
    if state.db_path.exists() and not state.identity_path.exists():
        # A new key would not be the one the ledger's records were signed with: say so before
        # anything is written, rather than make a key the start then refuses.
        raise ConfigError(
            f"the identity key {state.identity_path} is missing, and the ledger "
            f"{state.db_path} belongs to the node whose key it was: put the key back (it cannot "
            "be made again), or move the ledger aside (with its -wal and -shm files) to start "
            "this dir as a new node"
        )
    try:
        state.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(state.root, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create the state dir {state.root}: {exc.strerror}") from exc
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from swarm.daemon import db

    if not state.identity_path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(state.identity_path, pem)
    if key_file is not None:
        _adopt_key(state, key_file)
    elif not state.swarm_key_path.exists():
        _write_private(state.swarm_key_path, secrets.token_hex(SWARM_KEY_BYTES).encode() + b"\n")
    # The generation tells this incarnation of the state dir from an earlier, wiped one.
    db.create(state.db_path, {"node_id": node_id(state), "generation": time.time_ns() // 1000})
    return True


def load_identity(state: StateDir) -> Identity:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from swarm.core.identity import Identity

    try:
        key = serialization.load_pem_private_key(state.identity_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the identity key {state.identity_path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{state.identity_path} is not an Ed25519 key")
    return Identity(key)


def node_id(state: StateDir) -> str:
    """The sha256 of this node's Ed25519 public key, as 32 hex characters."""
    return load_identity(state).node_id


KEY_FILE_BYTES_MAX = 4096  # 64 hex characters and some white space; read no more (/dev/zero)


def read_swarm_key(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(KEY_FILE_BYTES_MAX + 1)
        if len(data) > KEY_FILE_BYTES_MAX:
            raise ValueError(f"more than {KEY_FILE_BYTES_MAX} bytes")
        key = bytes.fromhex(data.decode().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a swarm key (64 hex characters): {exc}") from exc
    if len(key) != SWARM_KEY_BYTES:
        raise ConfigError(f"{path}: a swarm key is {SWARM_KEY_BYTES} bytes, found {len(key)}")
    return key


def _adopt_key(state: StateDir, key_file: Path) -> None:
    key = read_swarm_key(key_file)
    _write_private(state.swarm_key_path, key.hex().encode() + b"\n")


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically, readable by its owner only from the first byte on."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- the key ring on disk: swarm.key is the key in use, keys/ holds the others installed --------


def key_ring_files(state: StateDir) -> tuple[bytes, list[bytes]]:
    """(the key in use, every other installed key)."""
    in_use = read_swarm_key(state.swarm_key_path)
    others = []
    if state.keys_dir.is_dir():
        for path in sorted(state.keys_dir.glob("*.key")):
            key = read_swarm_key(path)
            if key != in_use:
                others.append(key)
    return in_use, others


def install_key(state: StateDir, key: bytes, key_id: str) -> None:
    state.keys_dir.mkdir(mode=0o700, exist_ok=True)
    _write_private(state.keys_dir / f"{key_id}.key", key.hex().encode() + b"\n")


def use_key(state: StateDir, key_id: str) -> bytes:
    """Make an installed key the one in use; the one it replaces stays installed."""
    path = state.keys_dir / f"{key_id}.key"
    if not path.exists():
        raise ConfigError(f"no installed key {key_id}: install it first (swarm key install FILE)")
    from swarm.core.wire import key_id as id_of

    new = read_swarm_key(path)
    old = read_swarm_key(state.swarm_key_path)
    install_key(state, old, id_of(old).hex())
    _write_private(state.swarm_key_path, new.hex().encode() + b"\n")
    path.unlink()
    return new


def remove_key(state: StateDir, key_id: str) -> None:
    from swarm.core.wire import key_id as id_of

    if id_of(read_swarm_key(state.swarm_key_path)).hex() == key_id:
        raise ConfigError(f"key {key_id} is in use: use another one first (swarm key use ID)")
    path = state.keys_dir / f"{key_id}.key"
    if not path.exists():
        raise ConfigError(f"no installed key {key_id}")
    path.unlink()


class DaemonLock:
    """An exclusive lock on the state dir: one daemon per data dir."""

    def __init__(self, state: StateDir) -> None:
        self.path = state.root / "daemon.lock"
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # a read-only disk, say: nothing could be recorded there
            raise ConfigError(
                f"cannot open the state dir's lock {self.path}: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            other = os.read(self.fd, 32).decode(errors="replace").strip()
            os.close(self.fd)
            raise UserInputError(
                f"a swarm daemon already runs for {state.root} (pid {other or '?'})"
            ) from exc
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        os.close(self.fd)


def lock_held(state: StateDir) -> bool:
    """True while a daemon holds this state dir (it has not finished stopping)."""
    try:
        fd = os.open(state.root / "daemon.lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may have just taken
    return False
