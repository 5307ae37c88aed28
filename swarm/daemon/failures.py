"""The last line of a failed attempt's stderr, for the status view's latest failures: read from
the blob store where the status is made (the daemon, or `status --once` with no daemon). A
result not held there shows its reason alone; nothing is fetched from peers for a status."""

from __future__ import annotations

import contextlib

from swarm.core.manifest import parse_manifest
from swarm.core.snapshot import FailureRow
from swarm.daemon.store import EMPTY_DIGEST, BlobStore
from swarm.errors import SwarmError

TAIL_BYTES = 4096  # of a stderr read for its last line
LINE_CHARS_MAX = 200  # of that line, shown
MANIFEST_READ_BYTES_MAX = 64 << 10  # a result's manifest read for it (they are small)


def fill_stderr_tails(rows: list[FailureRow], store: BlobStore) -> None:
    """Set each row's `stderr_tail` from its result's stderr blob, if held here. Blocking."""
    for row in rows:
        digest = row["digest"]
        if digest is None:
            continue
        with contextlib.suppress(SwarmError, OSError, ValueError):
            if store.size(digest) > MANIFEST_READ_BYTES_MAX:
                continue  # a result of many files: not worth a big read for one line
            manifest = parse_manifest(store.read_bytes(digest, max_bytes=MANIFEST_READ_BYTES_MAX))
            if manifest.stderr == EMPTY_DIGEST or not store.has(manifest.stderr):
                continue
            with open(store.path(manifest.stderr), "rb") as stderr:
                size = stderr.seek(0, 2)
                stderr.seek(max(0, size - TAIL_BYTES))
                tail = stderr.read(TAIL_BYTES).decode("utf-8", "replace")
            lines = [line for line in tail.splitlines() if line.strip()]
            row["stderr_tail"] = _printable(lines[-1])[:LINE_CHARS_MAX] if lines else ""


def _printable(line: str) -> str:
    """A task's line with its control characters (escape sequences above all) left out: it is
    shown in an operator's terminal and page, and must not drive them."""
    return "".join(c for c in line if c.isprintable() or c == "\t")
