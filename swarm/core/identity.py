"""Ed25519 node identities, and the signatures that make a node's word its own.

The swarm key proves membership, not identity: any holder of it can seal a packet that names
any sender. So what a node says about itself carries its signature: its ALIVE rumours (who it is,
where it listens, what it offers) and its RESULT records (what it ran, and with what outcome).
A proof is the signer's public key followed by the signature; it checks against a node id
because the node id is the hash of that public key, so no directory of keys is needed.

Signed bytes are a canonical msgpack encoding behind a domain tag, so a signature made for one
kind of statement can never be replayed as another.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from swarm.core import gossip
from swarm.core.ledger import ResultRecord, result_to_plain

PUBLIC_BYTES = 32
SIGNATURE_BYTES = 64
PROOF_BYTES = PUBLIC_BYTES + SIGNATURE_BYTES
NODE_ID_CHARS = 32  # hex: the first 128 bits of sha256(public key)

_ALIVE_TAG = "swarm/alive/1"
_RESULT_TAG = "swarm/result/1"


def node_id_of(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:NODE_ID_CHARS]


class Identity:
    """This node's private key, and the statements it signs."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.node_id = node_id_of(self.public)

    @staticmethod
    def generate() -> Identity:
        return Identity(Ed25519PrivateKey.generate())

    def prove(self, message: bytes) -> bytes:
        return self.public + self._key.sign(message)

    def sign_alive(self, alive: gossip.Alive) -> gossip.Alive:
        return replace(alive, proof=self.prove(alive_message(alive)))

    def sign_result(self, body: ResultRecord) -> ResultRecord:
        return replace(body, proof=self.prove(result_message(self.node_id, body)))


def check(node: str, message: bytes, proof: bytes) -> bool:
    """Whether `proof` is `node`'s signature of `message`."""
    if len(proof) != PROOF_BYTES:
        return False
    public, signature = proof[:PUBLIC_BYTES], proof[PUBLIC_BYTES:]
    if node_id_of(public) != node:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def check_alive(alive: gossip.Alive) -> bool:
    return check(alive.node, alive_message(alive), alive.proof)


def check_result(origin: str, body: ResultRecord) -> bool:
    return check(origin, result_message(origin, body), body.proof)


def alive_message(alive: gossip.Alive) -> bytes:
    return _canonical([_ALIVE_TAG, alive.node, alive.incarnation, list(alive.addr), alive.meta])


def result_message(origin: str, body: ResultRecord) -> bytes:
    return _canonical([_RESULT_TAG, origin, result_to_plain(body, b"")])


def _canonical(value: Any) -> bytes:
    return msgpack.packb(_sorted(value), use_bin_type=True)  # type: ignore[no-any-return]


def _sorted(value: Any) -> Any:
    """Maps as key-sorted pair lists, and whole floats as ints (2.0 and 2 compare equal, and a
    decoder may turn one into the other), so equal content always encodes to equal bytes."""
    kind = type(value)
    if kind is str or kind is int or kind is bytes or kind is bool or value is None:
        return value  # the leaves most values are made of, with no isinstance() chain
    if kind is list:
        return [_sorted(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return [[key, _sorted(value[key])] for key in sorted(value)]
    if isinstance(value, list | tuple):
        return [_sorted(item) for item in value]
    return value
