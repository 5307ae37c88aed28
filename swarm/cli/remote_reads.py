"""What a client with no daemon of its own reads from another machine's node (`--peer`): the
ledger, page by page (`records`), and blobs, piece by piece (`read_blob`), into this machine's
state dir. `swarm export` and `swarm results` then run on them exactly as they run on a node's
own ledger file and blob store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Any

from swarm.connection import Client
from swarm.core.ledger import Ledger
from swarm.core.manifest import MANIFEST_BYTES_MAX, parse_manifest
from swarm.daemon import db
from swarm.daemon.store import EMPTY_DIGEST, BlobStore
from swarm.errors import SwarmError


async def load_ledger(client: Client) -> db.Loaded:
    """The node's ledger as its file holds it, read in pages; rows that cannot be read or
    trusted are left out and described, as db.load_ledger does for a file."""
    loaded = db.load_rows([], [])
    after: list[Any] | None = None
    while True:
        page = await client.records(after)
        db.add_rows(loaded, db.rows_of(page["records"], loaded.unreadable))
        if page["done"] or not page["records"]:
            return loaded
        after = page["records"][-1][:3]


async def copy_blob(client: Client, digest: str, store: BlobStore) -> None:
    """Copy a blob the node holds into `store`, unless it is there already. SwarmError if what
    comes is not the blob (another size on the way, or another hash): nothing of it is kept."""
    if digest == EMPTY_DIGEST or store.has(digest):
        return
    tmp = store.new_temp_path()
    hashed = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            offset, size = 0, None
            while size is None or offset < size:
                piece = await client.read_blob(digest, offset)
                size = piece["size"] if size is None else size
                data = piece["data"]
                if piece["size"] != size or offset + len(data) > size:
                    raise SwarmError(f"blob {digest[:12]} changed size while it was read")
                if not data and offset < size:
                    raise SwarmError(f"blob {digest[:12]} ended early at byte {offset:,}")
                out.write(data)
                hashed.update(data)
                offset += len(data)
        if hashed.hexdigest() != digest:
            raise SwarmError(f"blob {digest[:12]} came with other content")
        store.put_file(tmp, move=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


async def copy_results(client: Client, ledger: Ledger, job: str, store: BlobStore) -> None:
    """Copy into `store` what writing `job`'s results reads (results_dir.write_results): the result
    manifest of each task's outcome, and the files it names. A blob the node cannot give is
    left out: writing the results names it as missing."""
    for view in ledger.job_tasks(job):
        attempt = view.outcome_attempt()
        digest = None if attempt is None else attempt.result.digest
        if digest is None:
            continue  # none ran to its end, or its outcome is in its RESULT record
        try:
            await copy_blob(client, digest, store)
            manifest = parse_manifest(store.read_bytes(digest, max_bytes=MANIFEST_BYTES_MAX))
        except (SwarmError, ValueError):
            continue
        for file_digest in {manifest.stdout, manifest.stderr, *manifest.files.values()}:
            with contextlib.suppress(SwarmError):
                await copy_blob(client, file_digest, store)
