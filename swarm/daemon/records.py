"""This node's record log: each record it writes gets the next version of this life (origin,
generation, seq), a RESULT is signed by the node's key (a result is its runner's word, checked
by every peer), and a batch is committed by the ledger writer (group commit, db.py) before
anything else may see it. The caller applies and gossips what was committed."""

from __future__ import annotations

from swarm.core.identity import Identity
from swarm.core.ledger import Body, ResultRecord, Version
from swarm.daemon import db


class RecordLog:
    def __init__(self) -> None:
        self.node_id = ""
        self.generation = 0
        self.seq = 0  # of the last record written in this generation
        self._identity: Identity | None = None
        self.writer: db.LedgerWriter | None = None

    def open(self, node_id: str, generation: int, seq: int, identity: Identity) -> None:
        """The node's id and life, the last seq written in it, and the key to sign with."""
        self.node_id, self.generation, self.seq = node_id, generation, seq
        self._identity = identity

    def versioned(self, bodies: list[Body], replaces: Version | None = None) -> list[db.Row]:
        assert self._identity is not None
        rows = []
        for body in bodies:
            if isinstance(body, ResultRecord):
                body = self._identity.sign_result(body)
            self.seq += 1
            rows.append(db.Row(Version(self.node_id, self.generation, self.seq), body, replaces))
        return rows

    async def commit(self, bodies: list[Body], replaces: Version | None = None) -> list[db.Row]:
        """Version and commit records; StorageFullError (or another SwarmError): none are."""
        assert self.writer is not None
        rows = self.versioned(bodies, replaces)
        await self.writer.write(rows)
        return rows
