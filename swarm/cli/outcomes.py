"""What a Python call's outcome means to its caller: its value, or the exception it raises
(its own type, or `RemoteCallError`, or `CallLostError` for a swarm reason); and `results(job)`,
a job's values read back later from the ledger and the blobs held on this machine.

The outcome itself is pycall's (what the worker wrote); where it is found (the RESULT record,
or a blob) is said by the node in an `EndedTask` (the control protocol's `watch` reply), which
`results` builds from the ledger the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from typing import Any

from swarm import pycall, statedir
from swarm.control import EndedTask, ended_task
from swarm.core.ledger import TERMINAL_STATES, Ledger, Outcome, State, TaskView
from swarm.core.manifest import MANIFEST_BYTES_MAX, parse_manifest
from swarm.daemon.store import BlobStore
from swarm.errors import SwarmError, UserError


class CallLostError(SwarmError):
    """A call that ended for a swarm reason, not by raising: `why` is cancelled, timeout,
    interrupted (its nodes died more often than the cap) or evicted (under memory pressure)."""

    def __init__(self, why: str, text: str) -> None:
        super().__init__(text)
        self.why = why


class RemoteCallError(SwarmError):
    """A call raised an exception that cannot be unpickled here (its module is missing, say):
    its type's name, its text and the remote traceback."""

    def __init__(self, type_name: str, text: str, traceback: str, node: str) -> None:
        super().__init__(f"{type_name}: {text} (on node {node[:8]})")
        self.type_name, self.text, self.traceback, self.node = type_name, text, traceback, node


def outcome_of(store: BlobStore, ended: EndedTask) -> Any:
    """A call's value, or the exception it must raise, from how its task ended."""
    task = ended["task_id"]
    outcome, reason, node = ended["outcome"], ended["reason"], ended["node"]
    if ended["state"] == State.CANCELLED:
        raise CallLostError("cancelled", f"call {task[:12]} was cancelled")
    if ended["state"] == State.FAILED and outcome != Outcome.FAILED:
        why = "evicted" if ended["evicted"] else outcome
        raise CallLostError(why, f"call {task[:12]} {_LOST_TEXT.get(why, why)}: {reason}")
    if ended["inline"]:
        return _value(ended["inline"], node)
    if ended["value"] is None:
        raise SwarmError(f"call {task[:12]} {ended['state']} but left no value: {reason}")
    # Read whole, as the worker held it: bounded by its size (a read's bound is allocated).
    size = store.path(ended["value"]).stat().st_size
    data = store.read_bytes(ended["value"], max_bytes=size)
    return _value(data, node)


_LOST_TEXT = {
    "timeout": "timed out",
    "interrupted": "was interrupted more often than the cap (its nodes died or lost leases)",
    "evicted": "was evicted under memory pressure more often than the cap",
}


def _value(data: bytes, node: str) -> Any:
    try:
        returned, what = pycall.read_outcome(data)
    except pycall.OutcomeError as exc:
        raise SwarmError(str(exc)) from exc
    if returned:
        return what
    raised: pycall.Raised = what
    error = raised.exception()
    if error is None:
        raise RemoteCallError(raised.type_name, raised.text, raised.traceback, node)
    error.add_note(f"\n--- the call raised this on node {node[:8]} ---\n{raised.traceback}")
    with contextlib.suppress(AttributeError, TypeError):  # an exception with __slots__
        setattr(error, "swarm_node", node)  # noqa: B010
        setattr(error, "swarm_traceback", raised.traceback)  # noqa: B010
    raise error


# -- results later -------------------------------------------------------------------------------


def results(
    job: str,
    *,
    errors: str = "raise",
    home: str | os.PathLike[str] | None = None,
    peer: str | None = None,
) -> list[Any]:
    """The values of a job's calls in the order they were submitted (one per distinct call; a
    chunk of `map` gives its calls' values), read from this machine's node (which fetches those
    held elsewhere), or from `peer` (HOST:PORT, else $SWARM_PEER: another machine's node, with
    `home`'s swarm key), after the script that made them has exited. A call that raised raises
    here (`errors="return"`: its exception is put in the list)."""
    if errors not in ("raise", "return"):
        raise ValueError('errors must be "raise" or "return"')
    state = statedir.resolve(os.fspath(home) if home else None)
    peer = statedir.resolve_peer(peer)
    if not state.exists() and peer is None:
        raise UserError(f"no swarm state in {state.root}")
    ledger = _ledger_for_results(state, job, peer)
    views = [v for v in ledger.job_tasks(job) if v.spec is not None and v.spec.call is not None]
    if not views:
        raise UserError(f"no Python calls in job {job!r} in {state.root}")
    waiting = [v for v in views if v.state not in TERMINAL_STATES]
    if waiting:
        raise SwarmError(
            f"{len(waiting):,} of the {len(views):,} calls of job {job!r} have not finished "
            "(see swarm status)"
        )
    store = BlobStore(state.blobs)
    out: list[Any] = []
    for view in sorted(views, key=_submission_order):
        try:
            value = _stored_value(store, view)
        except Exception as exc:
            if errors == "raise":
                raise
            out.append(exc)  # a chunk (map's chunksize) that raised is one exception
            continue
        if isinstance(value, pycall.ChunkValues):
            out.extend(value)
        else:
            out.append(value)
    return out


def _ledger_for_results(state: statedir.StateDir, job: str, peer: str | None) -> Ledger:
    """The ledger, once the job's result blobs are held on this machine: fetched by its node from
    the nodes that hold them, or copied here from the peer."""
    from swarm.cli.results import fetch_results, ledger_from_peer, load_ledger

    def read() -> Ledger | None:
        if peer is None:
            fetch_results(state, job)
            return None
        return asyncio.run(ledger_from_peer(peer, state, job))

    # On a thread of its own: it runs an event loop, and the caller may be inside one (Jupyter).
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="swarm-results") as thread:
        ledger = thread.submit(read).result()
    return ledger if ledger is not None else load_ledger(state).ledger


def _submission_order(view: TaskView) -> tuple[int, int, str]:
    """Submissions in stamp order; within one, the calls' order (their names' index)."""
    parts = view.name.rsplit("-", 2)
    index = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0
    return view.submitted[0], index, view.name


def _stored_value(store: BlobStore, view: TaskView) -> Any:
    """A call's value (or the exception it raises) from the ledger and the blobs held here."""
    ended = ended_task(view)
    attempt = view.outcome_attempt()
    digest = None if attempt is None else attempt.result.digest
    if digest is not None:
        with contextlib.suppress(SwarmError, OSError):  # not held here: said as no value
            data = store.read_bytes(digest, max_bytes=MANIFEST_BYTES_MAX)
            value = parse_manifest(data).files.get(pycall.VALUE_FILE)
            ended["value"] = value if value is not None and store.has(value) else None
    return outcome_of(store, ended)
