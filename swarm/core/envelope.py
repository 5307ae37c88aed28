"""The sealed envelope every datagram and stream frame between nodes travels in.

Theory of operation
-------------------
Every datagram and stream frame between nodes is an envelope:

    header = VERSION (1) | flags (1) | key id (4) | sender id (16) | boot id (8) | counter (8)
    packet = header | ChaCha20-Poly1305(key_for(sender, boot), nonce=counter, aad)(body)
    aad    = header | recipient id, when flags say ADDRESSED; else header

The key is derived with HKDF from the swarm key for each sender and each boot of it (a random id
the sender draws at start), so no two senders, and no two runs of one sender, share a key: the
counter grows with every envelope sealed in a run, so a nonce is never used twice under one key,
whatever the clocks do. The recipient's id is authenticated too, so an envelope captured on its
way to one node is refused by every other, and a node refuses its own envelopes sent back to it.
Only membership traffic to an address whose node is not yet known (a join) goes unaddressed; the
caller decides what it accepts unaddressed. A remote client (swarm/remote.py: a user's command,
not a node) seals with the CLIENT flag, under a sender id it draws for each connection: a node's
own opener refuses such envelopes before it keeps anything of them, and opens them only with an
opener of the one stream they came on (`Opener(..., clients=True)`), which is gone with it. So
clients, however many come and go, never take the replay windows that the nodes' senders keep,
and a client's envelope played anywhere but on its stream costs a node one refusal. The receiver keeps a sliding replay window per
run (boot) of each sender: an envelope whose counter it has already accepted, or which is older
than its run's window, is dropped; a run not yet heard is taken only if its counter is above every
counter taken from the sender, so an earlier life of it, its windows forgotten, is not heard
again. The runs heard last keep their windows (`BOOTS_KEPT`): were a second process to run with a
node's identity (a copy of its state dir), the first is still heard, and the two are found out at
the membership and ledger levels, instead of the newer silencing the older. Everything that fails (short, truncated, bit-flipped, unknown key, misaddressed,
replayed, oversized) raises `BadPacket` and never reaches the protocol cores; the caller counts
and drops it.

The key ring holds up to KEYS_MAX keys: envelopes are sealed with the one in use and opened with
whichever the key id names, which is how a key is rotated without losing a packet (install the new
key everywhere, then use it everywhere, then remove the old one).

Counters should grow across restarts too, so that peers' replay windows take a restarted node's
envelopes: the node starts its counter at its clock (see `Sealer`). A node whose clock stepped
back over a restart is unheard by peers that remember it until its counter passes where it was;
its nonces are never reused all the same. Pure: no I/O, no clock, no randomness of its own (the
boot id comes in); the cryptography is computation.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from swarm.errors import RemoteError

VERSION = 2
SENDER_BYTES = 16
BOOT_BYTES = 8
ADDRESSED = 0x01  # flags: the recipient's id is bound into the seal
CLIENT = 0x02  # flags: from a remote client, opened only by its stream's own opener
KEY_BYTES = 32
TAG_BYTES = 16
_HEADER = struct.Struct(">BB4s16s8sQ")
HEADER_BYTES = _HEADER.size
DATAGRAM_BYTES_MAX = 1400  # stays under a typical path MTU, as memberlist's UDP buffer does
FRAME_BYTES_MAX = 8 << 20  # one stream frame (bulk sync, blob chunks)
REPLAY_WINDOW = 1024  # how far behind the newest counter an envelope may still arrive
KEYS_MAX = 4
# Senders whose replay windows and derived keys are kept (only senders that authenticated); the
# first heard is forgotten first. About 2.5 KiB each: 4,096 is 10 MiB, and a bigger swarm only
# derives keys again.
SENDERS_MAX = 4096
# Runs of one sender whose windows are kept: its current one, and the last few (a restart, or a
# second process with its identity); the one heard least lately is forgotten first, so a run
# that keeps talking keeps its window however often another restarts.
BOOTS_KEPT = 4


class BadPacket(RemoteError):
    """An envelope or message from the network that is not acceptable. Count it and drop it."""


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"swarm key id" + key).digest()[:4]


@dataclass
class KeyRing:
    """The swarm keys this node accepts, and the one it seals with."""

    keys: dict[bytes, bytes] = field(default_factory=dict)  # key id -> key
    in_use: bytes = b""  # key id

    @staticmethod
    def of(key: bytes) -> KeyRing:
        ring = KeyRing()
        ring.install(key)
        ring.use(key_id(key))
        return ring

    def install(self, key: bytes) -> bytes:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a swarm key is {KEY_BYTES} bytes, not {len(key)}")
        kid = key_id(key)
        if kid not in self.keys and len(self.keys) >= KEYS_MAX:
            raise ValueError(f"the key ring holds at most {KEYS_MAX} keys; remove one first")
        self.keys[kid] = key
        return kid

    def use(self, kid: bytes) -> None:
        if kid not in self.keys:
            raise ValueError(f"key {kid.hex()} is not installed")
        self.in_use = kid

    def remove(self, kid: bytes) -> None:
        if kid == self.in_use:
            raise ValueError("the key in use cannot be removed; use another one first")
        self.keys.pop(kid, None)


class _SenderKeys:
    """HKDF-derived AEADs per (key, sender), cached: deriving costs more than sealing. Only a
    sender whose envelope authenticated is kept (`keep`), so forged sender ids cost a
    derivation each and no memory; at most `bound` are kept, the oldest forgotten first."""

    def __init__(self, bound: int = SENDERS_MAX) -> None:
        self._cache: dict[tuple[bytes, bytes], ChaCha20Poly1305] = {}
        self._bound = bound

    def get(self, key: bytes, sender: bytes, boot: bytes) -> ChaCha20Poly1305:
        aead = self._cache.get((key, sender + boot))
        if aead is None:
            derived = HKDF(
                algorithm=hashes.SHA256(),
                length=KEY_BYTES,
                salt=None,
                info=b"swarm/2 " + sender + boot,
            ).derive(key)
            aead = ChaCha20Poly1305(derived)
        return aead

    def keep(self, key: bytes, sender: bytes, boot: bytes, aead: ChaCha20Poly1305) -> None:
        slot = (key, sender + boot)
        if slot not in self._cache:
            if len(self._cache) >= self._bound:
                self._cache.pop(next(iter(self._cache)))
            self._cache[slot] = aead

    def __len__(self) -> int:
        return len(self._cache)


def _nonce(counter: int) -> bytes:
    return b"\0\0\0\0" + counter.to_bytes(8, "big")


class Sealer:
    """Seals envelopes from one run (`boot`, random) of one sender. `counter` should start above
    any counter used before (peers' replay windows drop what is below); nonces never repeat
    under one key whatever it starts at, since the key is this run's own."""

    def __init__(
        self, sender: bytes, ring: KeyRing, counter: int, boot: bytes, client: bool = False
    ) -> None:
        assert len(sender) == SENDER_BYTES and len(boot) == BOOT_BYTES
        self.sender = sender
        self.boot = boot
        self.ring = ring
        self.counter = counter
        self._client = CLIENT if client else 0  # a remote client's sealer (see the module doc)
        self._keys = _SenderKeys()

    def seal(self, body: bytes, to: bytes | None = None) -> bytes:
        """An envelope for the node whose id is `to` alone, or for whoever listens (None)."""
        self.counter += 1
        key = self.ring.keys[self.ring.in_use]
        flags = (0 if to is None else ADDRESSED) | self._client
        header = _HEADER.pack(
            VERSION, flags, self.ring.in_use, self.sender, self.boot, self.counter
        )
        aead = self._keys.get(key, self.sender, self.boot)
        self._keys.keep(key, self.sender, self.boot, aead)
        aad = header if to is None else header + to
        return header + aead.encrypt(_nonce(self.counter), body, aad)


@dataclass(slots=True)
class _Window:
    """IPsec-style anti-replay window: the highest counter seen, and a bitmap behind it."""

    top: int = 0
    seen: int = 0  # bit i set: counter top - i was accepted

    def check(self, counter: int) -> bool:
        if counter > self.top:
            return True
        behind = self.top - counter
        return behind < REPLAY_WINDOW and not (self.seen >> behind) & 1

    def accept(self, counter: int) -> None:
        if counter > self.top:
            shift = counter - self.top
            if shift >= REPLAY_WINDOW:
                # A jump past the whole window (a peer back after hours: its counter follows
                # its clock): nothing behind stays in view. Shifting by the jump would build
                # an integer of that many bits.
                self.seen = 1
            else:
                self.seen = ((self.seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.top = counter
        else:
            self.seen |= 1 << (self.top - counter)


@dataclass(slots=True)
class _Sender:
    """The runs of one sender heard lately, each with its window, the one heard least lately
    first; and the highest counter taken from any of them (a run not heard yet must start
    above it)."""

    top: int = 0
    boots: dict[bytes, _Window] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Opened:
    sender: bytes
    body: bytes
    addressed: bool  # sealed for this node alone (else: for whoever listened, as a join is)


class Opener:
    """Opens envelopes for node `me` from any other sender, with a replay window per sender.
    `clients`: this opener is one stream's, and opens a remote client's envelopes (CLIENT) and
    nothing else; otherwise it opens nodes' envelopes and refuses clients'."""

    def __init__(
        self, ring: KeyRing, me: bytes, senders_max: int = SENDERS_MAX, clients: bool = False
    ) -> None:
        assert len(me) == SENDER_BYTES
        self.ring = ring
        self.me = me
        self.clients = clients
        self._windows: dict[bytes, _Sender] = {}
        self._keys = _SenderKeys()
        self._senders_max = senders_max

    def open(self, packet: bytes, size_max: int = DATAGRAM_BYTES_MAX) -> Opened:
        """The sender and body of a valid, fresh envelope for us; BadPacket otherwise."""
        if len(packet) > size_max:
            raise BadPacket(f"{len(packet)} bytes is over the {size_max} byte limit")
        if len(packet) < HEADER_BYTES + TAG_BYTES:
            raise BadPacket(f"{len(packet)} bytes is too short for an envelope")
        version, flags, kid, sender, boot, counter = _HEADER.unpack_from(packet)
        if version != VERSION:
            raise BadPacket(f"unknown envelope version {version}")
        if flags & ~(ADDRESSED | CLIENT):
            raise BadPacket(f"unknown envelope flags {flags:#x}")
        if bool(flags & CLIENT) != self.clients:
            # Before anything of it is kept: clients' envelopes never reach the nodes' windows.
            raise BadPacket(
                "a client's envelope off its stream" if flags & CLIENT else "not a client's"
            )
        if sender == self.me:
            raise BadPacket("our own envelope, sent back to us")
        key = self.ring.keys.get(kid)
        if key is None:
            raise BadPacket(f"sealed with a key not in the ring ({kid.hex()})")
        known = self._windows.get(sender)
        window = None if known is None else known.boots.get(boot)
        if window is not None:
            if not window.check(counter):
                raise BadPacket(f"replayed or too old (counter {counter})")
        elif known is not None and counter <= known.top:
            raise BadPacket(f"from an earlier run of its sender (counter {counter})")
        header = packet[:HEADER_BYTES]
        aad = header + self.me if flags & ADDRESSED else header
        aead = self._keys.get(key, sender, boot)
        try:
            body = aead.decrypt(_nonce(counter), packet[HEADER_BYTES:], aad)
        except InvalidTag as exc:
            raise BadPacket("authentication failed (or sealed for another node)") from exc
        # Only an authentic envelope may move the window or be remembered, or forgeries could
        # push the window forward, or fill memory with made-up senders.
        self._keys.keep(key, sender, boot, aead)
        if known is None:
            if len(self._windows) >= self._senders_max:
                self._windows.pop(next(iter(self._windows)))
            known = self._windows[sender] = _Sender()
        if window is None:
            if len(known.boots) >= BOOTS_KEPT:
                known.boots.pop(next(iter(known.boots)))
            window = _Window()
        else:
            del known.boots[boot]
        known.boots[boot] = window  # (last: heard most lately)
        window.accept(counter)
        known.top = max(known.top, counter)
        return Opened(sender, body, bool(flags & ADDRESSED))


def from_client(packet: bytes) -> bool:
    """Whether an envelope says it is a remote client's (authenticated only when opened)."""
    return len(packet) >= HEADER_BYTES and bool(packet[1] & CLIENT)
