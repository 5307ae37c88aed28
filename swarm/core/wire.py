"""What travels between nodes: the messages inside the sealed envelope, and their codec.

Theory of operation
-------------------
Every datagram and stream frame between nodes is sealed in an envelope (envelope.py: the header,
the per-sender keys, the replay window; its names are re-exported here). Inside it, a message is
a msgpack list whose first item is its type: membership packets (gossip.py) in datagrams, ledger
replication (Scuttlebutt pushes, digests and their answers), result blobs, the stream hello and
remote clients' control frames in frames. Each family has a `*_to_plain`; `decode_packet` and `decode_any` read them back, checking
every field's type and bound, so anything malformed raises `BadPacket` and never reaches the
protocol cores (the caller counts and drops it). Type numbers are append-only: they are part of
the protocol.

Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import msgpack

from swarm.core import gossip
from swarm.core.decoding import unpack
from swarm.core.envelope import (
    ADDRESSED,
    BOOT_BYTES,
    DATAGRAM_BYTES_MAX,
    FRAME_BYTES_MAX,
    HEADER_BYTES,
    KEY_BYTES,
    KEYS_MAX,
    REPLAY_WINDOW,
    SENDER_BYTES,
    SENDERS_MAX,
    TAG_BYTES,
    VERSION,
    BadPacket,
    KeyRing,
    Opened,
    Opener,
    Sealer,
    key_id,
)

# The envelope's names are re-exported: a transport reads the envelope and its messages here.
__all__ = [
    "ADDRESSED",
    "BLOB_CHUNK_BYTES",
    "BOOT_BYTES",
    "CHALLENGE_BYTES",
    "DATAGRAM_BYTES_MAX",
    "FRAME_BYTES_MAX",
    "HEADER_BYTES",
    "HELLO_BYTES_MAX",
    "HOST_CHARS_MAX",
    "KEYS_MAX",
    "KEY_BYTES",
    "META_DEPTH_MAX",
    "META_KEYS_MAX",
    "META_TEXT_CHARS_MAX",
    "NODE_ID_CHARS_MAX",
    "PACKET_BODY_BYTES_MAX",
    "PROOF_BYTES_MAX",
    "PUSH_PULL_STATES_MAX",
    "RECORD_BODY_BYTES_MAX",
    "REPLAY_WINDOW",
    "SENDERS_MAX",
    "SENDER_BYTES",
    "SYNC_KEYS_MAX",
    "TAG_BYTES",
    "VERSION",
    "BadPacket",
    "BlobChunk",
    "ControlFrame",
    "FetchRequest",
    "Hello",
    "KeyRing",
    "LedgerMessage",
    "MessageType",
    "Opened",
    "Opener",
    "RecordCopy",
    "RecordsPush",
    "RumourType",
    "Sealer",
    "StreamMessage",
    "SyncBatch",
    "SyncRequest",
    "Watermarks",
    "blob_message_to_plain",
    "control_frame_to_plain",
    "decode",
    "decode_any",
    "decode_packet",
    "encode",
    "encode_datagram",
    "hello_to_plain",
    "key_id",
    "ledger_message_from_plain",
    "ledger_message_to_plain",
    "packet_from_plain",
    "packet_to_plain",
    "unpack",
]


def encode(message: list[Any]) -> bytes:
    """A message body: a msgpack list whose first item is the message type."""
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def decode(body: bytes) -> list[Any]:
    message = unpack(body, BadPacket, "body")
    if not isinstance(message, list) or not message or not isinstance(message[0], int):
        raise BadPacket("a message is a list that starts with its type")
    return message


# -- membership packets (gossip.py) ----------------------------------------------------------


class MessageType(enum.IntEnum):
    """Membership message types. Append-only: the numbers are part of the protocol."""

    PING = 1
    INDIRECT_PING = 2
    ACK = 3
    NACK = 4
    GOSSIP = 5
    PUSH_PULL = 6


class RumourType(enum.IntEnum):
    """Append-only, as MessageType."""

    ALIVE = 1
    SUSPECT = 2
    DEAD = 3


NODE_ID_CHARS_MAX = 64
PROOF_BYTES_MAX = 128  # an Ed25519 public key and signature are 96; checked in identity.py
HOST_CHARS_MAX = 255
META_KEYS_MAX = 64
META_TEXT_CHARS_MAX = 256
# Maps in maps in a node's meta (it has two levels: capacity, labels). Checking and signing it
# recurse, and msgpack decodes a thousand levels: past Python's recursion limit.
META_DEPTH_MAX = 4
PUSH_PULL_STATES_MAX = 100_000
PACKET_BODY_BYTES_MAX = DATAGRAM_BYTES_MAX - HEADER_BYTES - TAG_BYTES


def packet_to_plain(packet: gossip.Packet) -> list[Any]:
    message = packet.message
    match message:
        case gossip.Ping():
            head = [
                MessageType.PING,
                message.seq,
                message.target,
                message.sender,
                list(message.sender_addr),
            ]
        case gossip.IndirectPing():
            head = [
                MessageType.INDIRECT_PING,
                message.seq,
                message.target,
                list(message.target_addr),
                message.sender,
                list(message.sender_addr),
            ]
        case gossip.Ack():
            head = [MessageType.ACK, message.seq, message.sender]
        case gossip.Nack():
            head = [MessageType.NACK, message.seq, message.sender]
        case gossip.Gossip():
            head = [MessageType.GOSSIP]
        case gossip.PushPull():
            states = [_rumour_to_plain(r) for r in message.states]
            head = [MessageType.PUSH_PULL, states, list(message.sender_addr), message.reply]
    return [head, [_rumour_to_plain(r) for r in packet.rumours]]


def _rumour_to_plain(rumour: gossip.Rumour) -> list[Any]:
    match rumour:
        case gossip.Alive():
            return [
                RumourType.ALIVE,
                rumour.node,
                rumour.incarnation,
                list(rumour.addr),
                rumour.meta,
                rumour.proof,
            ]
        case gossip.Suspect():
            return [RumourType.SUSPECT, rumour.node, rumour.incarnation, rumour.accuser]
        case gossip.Dead():
            return [RumourType.DEAD, rumour.node, rumour.incarnation, rumour.accuser]


def packet_from_plain(raw: Any) -> gossip.Packet:
    """Inverse of packet_to_plain, checking every field; BadPacket for anything else."""
    try:
        head, rumours = raw
        kind = MessageType(_type(head[0]))
        f = head[1:]
        message: gossip.Message
        match kind:
            case MessageType.PING:
                _arity(f, 4)
                message = gossip.Ping(_seq(f[0]), _node(f[1]), _node(f[2]), _addr(f[3]))
            case MessageType.INDIRECT_PING:
                _arity(f, 5)
                message = gossip.IndirectPing(
                    _seq(f[0]), _node(f[1]), _addr(f[2]), _node(f[3]), _addr(f[4])
                )
            case MessageType.ACK:
                _arity(f, 2)
                message = gossip.Ack(_seq(f[0]), _node(f[1]))
            case MessageType.NACK:
                _arity(f, 2)
                message = gossip.Nack(_seq(f[0]), _node(f[1]))
            case MessageType.GOSSIP:
                _arity(f, 0)
                message = gossip.Gossip()
            case MessageType.PUSH_PULL:
                _arity(f, 3)
                if not isinstance(f[0], list) or len(f[0]) > PUSH_PULL_STATES_MAX:
                    raise ValueError("push-pull states must be a bounded list")
                states = tuple(_rumour_from_plain(r) for r in f[0])
                message = gossip.PushPull(states, _addr(f[1]), _bool(f[2]))
        if not isinstance(rumours, list):
            raise ValueError("rumours must be a list")
        return gossip.Packet(message, tuple(_rumour_from_plain(r) for r in rumours))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise BadPacket(f"malformed packet: {exc}") from exc


def _rumour_from_plain(raw: Any) -> gossip.Rumour:
    kind = RumourType(_type(raw[0]))
    f = raw[1:]
    match kind:
        case RumourType.ALIVE:
            _arity(f, 5)
            return gossip.Alive(_node(f[0]), _seq(f[1]), _addr(f[2]), _meta(f[3]), _proof(f[4]))
        case RumourType.SUSPECT:
            _arity(f, 3)
            return gossip.Suspect(_node(f[0]), _seq(f[1]), _node(f[2]))
        case RumourType.DEAD:
            _arity(f, 3)
            return gossip.Dead(_node(f[0]), _seq(f[1]), _node(f[2]))


def _type(value: Any) -> int:
    # Checked before the enum looks it up: its error quotes the value, and the repr of a deeply
    # nested one raises RecursionError.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected a message type")
    return value


def _hex64(value: Any) -> str:
    """A digest (or task id): 64 hex characters, lowercased."""
    # A full match: int(value, 16) also took "0x" and spaces around the digits.
    if not isinstance(value, str) or _DIGEST.fullmatch(value) is None:
        raise ValueError("a digest is 64 hex characters")
    return value.lower()


def _arity(fields: Any, count: int) -> None:
    if not isinstance(fields, list) or len(fields) != count:
        raise ValueError(f"expected {count} fields")


def _seq(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError("expected a counter")
    return value


def _node(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= NODE_ID_CHARS_MAX:
        raise ValueError("expected a node id")
    return value


def _proof(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) > PROOF_BYTES_MAX:
        raise ValueError("expected a short signature")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _addr(value: Any) -> gossip.Addr:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError("expected [host, port]")
    host, port = value
    if not isinstance(host, str) or not 0 < len(host) <= HOST_CHARS_MAX:
        raise ValueError("expected a host")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError("expected a port")
    return (host, port)


def _meta(value: Any, depth: int = 1) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > META_KEYS_MAX:
        raise ValueError("meta must be a small map")
    if depth > META_DEPTH_MAX:
        raise ValueError(f"meta holds maps more than {META_DEPTH_MAX} deep")
    for key, item in value.items():
        if not isinstance(key, str) or len(key) > META_TEXT_CHARS_MAX:
            raise ValueError("meta keys must be short strings")
        if isinstance(item, str) and len(item) > META_TEXT_CHARS_MAX:
            raise ValueError("meta values must be short")
        if not isinstance(item, str | int | float | bool | dict):
            raise ValueError("meta values must be scalars or maps of them")
        if isinstance(item, dict):
            _meta(item, depth + 1)
    return value


def encode_datagram(packet: gossip.Packet, limit: int = PACKET_BODY_BYTES_MAX) -> tuple[bytes, int]:
    """The packet's body, with as many of its rumours as fit in `limit` bytes (the rest are
    left out: they are sent again later anyway). Returns the body and how many rumours it has."""
    plain = packet_to_plain(packet)
    kept = len(packet.rumours)
    body = encode(plain)
    while len(body) > limit and kept > 0:
        kept -= 1
        plain[1] = plain[1][:kept]
        body = encode(plain)
    return body, kept


def decode_packet(body: bytes) -> gossip.Packet:
    return packet_from_plain(unpack(body, BadPacket, "packet"))


# -- ledger replication (Scuttlebutt) --------------------------------------------------------

RECORD_BODY_BYTES_MAX = 1 << 20  # one record; a task's text is far less (spec.SPEC_BYTES_MAX)
SYNC_KEYS_MAX = 100_000  # (origin, generation) pairs in one digest

# One stored record as it travels: (origin, generation, seq, msgpack body as stored).
RecordCopy = tuple[str, int, int, bytes]
Watermarks = dict[tuple[str, int], int]


@dataclass(frozen=True, slots=True)
class RecordsPush:
    """Fresh records, sent at once on UDP (each node's records in seq order)."""

    records: tuple[RecordCopy, ...]


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """A digest: the highest seq held of each (origin, generation); send me what comes after."""

    digest: Watermarks


@dataclass(frozen=True, slots=True)
class SyncBatch:
    """Part of the answer; the last one (`done`) says up to which seq each key is now complete."""

    records: tuple[RecordCopy, ...]
    done: bool
    upto: Watermarks


LedgerMessage = RecordsPush | SyncRequest | SyncBatch


def ledger_message_to_plain(message: LedgerMessage) -> list[Any]:
    match message:
        case RecordsPush():
            return ["R", [list(r) for r in message.records]]
        case SyncRequest():
            return ["S", [[o, g, s] for (o, g), s in message.digest.items()]]
        case SyncBatch():
            upto = [[o, g, s] for (o, g), s in message.upto.items()]
            return ["B", [list(r) for r in message.records], message.done, upto]


def ledger_message_from_plain(raw: Any) -> LedgerMessage:
    try:
        tag = raw[0]
        if tag == "R":
            _arity(raw[1:], 1)
            return RecordsPush(_records(raw[1]))
        if tag == "S":
            _arity(raw[1:], 1)
            return SyncRequest(_watermarks(raw[1]))
        if tag == "B":
            _arity(raw[1:], 3)
            return SyncBatch(_records(raw[1]), _bool(raw[2]), _watermarks(raw[3]))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise BadPacket(f"malformed ledger message: {exc}") from exc
    raise BadPacket("unknown ledger message")


def _records(raw: Any) -> tuple[RecordCopy, ...]:
    if not isinstance(raw, list):
        raise ValueError("records must be a list")
    out = []
    for item in raw:
        _arity(item, 4)
        origin, generation, seq, body = item
        # A body over RECORD_BODY_BYTES_MAX is the taker's to refuse, alone: refusing the
        # whole message would hold back every other record in it, each time it is sent.
        if not isinstance(body, bytes):
            raise ValueError("a record body is bytes")
        out.append((_node(origin), _seq(generation), _seq(seq), body))
    return tuple(out)


def _watermarks(raw: Any) -> Watermarks:
    if not isinstance(raw, list) or len(raw) > SYNC_KEYS_MAX:
        raise ValueError("a digest is a bounded list")
    out: Watermarks = {}
    for item in raw:
        _arity(item, 3)
        out[(_node(item[0]), _seq(item[1]))] = _seq(item[2])
    return out


def decode_any(body: bytes) -> StreamMessage:
    """A membership packet, a ledger or blob message, a Hello or a control frame, told apart by
    their first item."""
    raw = unpack(body, BadPacket, "body")
    if isinstance(raw, list) and raw and raw[0] == "H":
        if len(raw) != 2 or not isinstance(raw[1], bytes) or len(raw[1]) != CHALLENGE_BYTES:
            raise BadPacket("malformed hello")
        return Hello(raw[1])
    if isinstance(raw, list) and raw and raw[0] == "K":
        if len(raw) != 2 or not isinstance(raw[1], bytes):
            raise BadPacket("malformed control frame")
        return ControlFrame(raw[1])
    if isinstance(raw, list) and raw and raw[0] in ("F", "C"):
        try:
            return _blob_message_from_plain(raw)
        except (ValueError, TypeError, IndexError) as exc:
            raise BadPacket(f"malformed blob message: {exc}") from exc
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        return ledger_message_from_plain(raw)
    return packet_from_plain(raw)


# -- result blobs ------------------------------------------------------------------------------

BLOB_CHUNK_BYTES = 1 << 20  # one frame of a blob
_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class FetchRequest:
    digest: str
    # The task whose credited result the blob is (or is part of), if the fetcher knows it: a
    # holder that finds its copy corrupt as it serves it can then drop the result (holding.py).
    task: str | None = None


@dataclass(frozen=True, slots=True)
class BlobChunk:
    data: bytes
    last: bool
    missing: bool = False  # the peer does not hold the blob


def blob_message_to_plain(message: FetchRequest | BlobChunk) -> list[Any]:
    if isinstance(message, FetchRequest):
        return ["F", message.digest, *([message.task] if message.task else [])]
    return ["C", message.data, message.last, message.missing]


def _blob_message_from_plain(raw: list[Any]) -> FetchRequest | BlobChunk:
    if raw[0] == "F":
        if len(raw) != 3:
            _arity(raw[1:], 1)
        task = _hex64(raw[2]) if len(raw) == 3 else None
        return FetchRequest(_hex64(raw[1]), task)
    _arity(raw[1:], 3)
    if not isinstance(raw[1], bytes) or len(raw[1]) > BLOB_CHUNK_BYTES:
        raise ValueError("a chunk is bounded bytes")
    return BlobChunk(raw[1], _bool(raw[2]), _bool(raw[3]))


# -- streams -----------------------------------------------------------------------------------

# A stream between nodes opens with a challenge and a Hello. The listener sends CHALLENGE_BYTES
# of fresh randomness, in the clear; the connector's first frame is a small sealed Hello that
# carries them back. Until it has read a Hello, the listener buffers no more than
# HELLO_BYTES_MAX; and a Hello captured from an earlier stream (even one from before the
# listener restarted, when its replay windows were forgotten) answers another challenge, so no
# one without the swarm key gets a stream served.
CHALLENGE_BYTES = 16
HELLO_BYTES_MAX = 128


@dataclass(frozen=True, slots=True)
class Hello:
    """Opens a stream: proves the key, for this stream alone, before anything large is read."""

    challenge: bytes


def hello_to_plain(hello: Hello) -> list[Any]:
    return ["H", hello.challenge]


@dataclass(frozen=True, slots=True)
class ControlFrame:
    """One frame of the control protocol (swarm/control.py, a msgpack map, as it is on the local
    socket) from or to a remote client, on a stream its Hello opened."""

    body: bytes


def control_frame_to_plain(frame: ControlFrame) -> list[Any]:
    return ["K", frame.body]


StreamMessage = gossip.Packet | LedgerMessage | FetchRequest | BlobChunk | Hello | ControlFrame
