"""What travels between nodes: the sealed envelope, and the message codec inside it.

Theory of operation
-------------------
Every datagram and stream frame between nodes is an envelope:

    header = VERSION (1) | key id (4) | sender id (16) | counter (8)
    packet = header | ChaCha20-Poly1305(key_for(sender), nonce=counter, aad=header)(body)

The key is derived per sender with HKDF from the swarm key (so two senders never share a key and
their counters never collide as nonces), the counter grows with every envelope a sender seals (so
a nonce is never reused), and the receiver keeps a sliding replay window per sender: an envelope
whose counter it has already accepted, or which is older than the window, is dropped. Everything
that fails — short, truncated, bit-flipped, unknown key, replayed, oversized — raises
`BadPacket` and never reaches the protocol cores; the caller counts and drops it.

The key ring holds up to KEYS_MAX keys: envelopes are sealed with the one in use and opened with
whichever the key id names, which is how a key is rotated without losing a packet (install the new
key everywhere, then use it everywhere, then remove the old one).

Counters must not repeat across restarts: the node passes in a counter that starts above anything
it sealed before (see `Sealer`). Pure: no I/O, no clock; the cryptography is computation.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from swarm.errors import SwarmError

VERSION = 1
SENDER_BYTES = 16
KEY_BYTES = 32
TAG_BYTES = 16
_HEADER = struct.Struct(">B4s16sQ")
HEADER_BYTES = _HEADER.size
DATAGRAM_BYTES_MAX = 1400  # stays under a typical path MTU, as memberlist's UDP buffer does
FRAME_BYTES_MAX = 8 << 20  # one stream frame (bulk sync, blob chunks)
REPLAY_WINDOW = 1024  # how far behind the newest counter an envelope may still arrive
KEYS_MAX = 4
SENDERS_MAX = 100_000  # replay windows kept; the least recently heard sender is forgotten first


class BadPacket(SwarmError):
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
    """HKDF-derived AEADs per (key, sender), cached: deriving costs more than sealing."""

    def __init__(self, bound: int = SENDERS_MAX) -> None:
        self._cache: dict[tuple[bytes, bytes], ChaCha20Poly1305] = {}
        self._bound = bound

    def get(self, key: bytes, sender: bytes) -> ChaCha20Poly1305:
        slot = (key, sender)
        aead = self._cache.get(slot)
        if aead is None:
            if len(self._cache) >= self._bound:
                self._cache.pop(next(iter(self._cache)))
            derived = HKDF(
                algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"swarm/1 " + sender
            ).derive(key)
            aead = self._cache[slot] = ChaCha20Poly1305(derived)
        return aead


def _nonce(counter: int) -> bytes:
    return b"\0\0\0\0" + counter.to_bytes(8, "big")


class Sealer:
    """Seals envelopes from one sender. `counter` must start above any counter used before."""

    def __init__(self, sender: bytes, ring: KeyRing, counter: int) -> None:
        assert len(sender) == SENDER_BYTES
        self.sender = sender
        self.ring = ring
        self.counter = counter
        self._keys = _SenderKeys()

    def seal(self, body: bytes) -> bytes:
        self.counter += 1
        key = self.ring.keys[self.ring.in_use]
        header = _HEADER.pack(VERSION, self.ring.in_use, self.sender, self.counter)
        return header + self._keys.get(key, self.sender).encrypt(_nonce(self.counter), body, header)


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
            self.seen = ((self.seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.top = counter
        else:
            self.seen |= 1 << (self.top - counter)


class Opener:
    """Opens envelopes from any sender, with a replay window per sender."""

    def __init__(self, ring: KeyRing, senders_max: int = SENDERS_MAX) -> None:
        self.ring = ring
        self._windows: dict[bytes, _Window] = {}
        self._keys = _SenderKeys()
        self._senders_max = senders_max

    def open(self, packet: bytes, size_max: int = DATAGRAM_BYTES_MAX) -> tuple[bytes, bytes]:
        """(sender id, body) of a valid, fresh envelope; BadPacket otherwise."""
        if len(packet) > size_max:
            raise BadPacket(f"{len(packet)} bytes is over the {size_max} byte limit")
        if len(packet) < HEADER_BYTES + TAG_BYTES:
            raise BadPacket(f"{len(packet)} bytes is too short for an envelope")
        version, kid, sender, counter = _HEADER.unpack_from(packet)
        if version != VERSION:
            raise BadPacket(f"unknown envelope version {version}")
        key = self.ring.keys.get(kid)
        if key is None:
            raise BadPacket(f"sealed with a key not in the ring ({kid.hex()})")
        window = self._windows.get(sender)
        if window is not None and not window.check(counter):
            raise BadPacket(f"replayed or too old (counter {counter})")
        header = packet[:HEADER_BYTES]
        try:
            body = self._keys.get(key, sender).decrypt(
                _nonce(counter), packet[HEADER_BYTES:], header
            )
        except InvalidTag as exc:
            raise BadPacket("authentication failed") from exc
        # Only an authentic envelope may move the window, or forgeries could push it forward.
        if window is None:
            if len(self._windows) >= self._senders_max:
                self._windows.pop(next(iter(self._windows)))
            window = self._windows[sender] = _Window()
        window.accept(counter)
        return sender, body


def encode(message: list[Any]) -> bytes:
    """A message body: a msgpack list whose first item is the message type."""
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def unpack(data: bytes, error: type[SwarmError], what: str) -> Any:
    """msgpack-decode bytes from outside (peer, disk, socket); anything wrong raises `error`."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (
        ValueError,  # msgpack's own errors derive from it
        TypeError,  # an unhashable map key
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise error(f"undecodable {what}: {exc}") from exc


def decode(body: bytes) -> list[Any]:
    message = unpack(body, BadPacket, "body")
    if not isinstance(message, list) or not message or not isinstance(message[0], int):
        raise BadPacket("a message is a list that starts with its type")
    return message
