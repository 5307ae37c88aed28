"""`swarm status`: the snapshot from the running daemon, or read from a stopped node's ledger file,
shown once, as JSON, or live until Ctrl-C (the drawing itself is `swarm.cli.status`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

from rich.console import RenderableType
from rich.live import Live

from swarm import statedir
from swarm.cli import status
from swarm.cli.common import connect, err, out, peer_of, wall_ms
from swarm.errors import ControlError, NotRunningError, UserInputError

if TYPE_CHECKING:
    from swarm.connection import Client
    from swarm.core import snapshot

STATUS_REFRESH_S = 1.0  # the live view asks for a new snapshot this often
STATUS_ANSWER_S = 5.0  # a daemon slower than this to report (paused?) is read from disk instead


def cmd_status(args: argparse.Namespace) -> int:
    state = statedir.resolve(args.data_dir)
    jobs = args.job
    peer = peer_of(args)

    async def fetch(held: list[Client]) -> snapshot.Snapshot:
        """A snapshot, asked on the connection in `held` (made if there is none, dropped when it
        fails); from the ledger file if no daemon runs here or it does not answer."""
        if not held:
            try:
                held.append(await connect(args))
            except NotRunningError:
                if peer is not None:
                    raise  # another machine's node: there is no ledger file here to read
                return offline_snapshot(state, jobs)
        try:
            reply = await asyncio.wait_for(held[0].status(jobs=jobs), STATUS_ANSWER_S)
            return reply["snapshot"]
        except TimeoutError:
            await _drop(held)
            if peer is not None:
                raise ControlError(
                    f"{peer} did not answer within {STATUS_ANSWER_S:g}s (paused or overloaded?)"
                ) from None
            err.print(
                f"swarm: the daemon did not answer within {STATUS_ANSWER_S:g}s (paused or "
                "overloaded?); showing its ledger as last written"
            )
            return offline_snapshot(state, jobs)
        except BaseException:
            await _drop(held)
            raise

    async def once() -> snapshot.Snapshot:
        held: list[Client] = []
        try:
            return await fetch(held)
        finally:
            await _drop(held)

    first = asyncio.run(once())
    missing = sorted(set(jobs or []) - {row["job"] for row in first["jobs"]})
    if missing:
        raise UserInputError(f"no job {', '.join(map(repr, missing))} on this node")
    if args.json:
        out.print_json(json.dumps(first))
        return 0

    def view(snap: snapshot.Snapshot) -> RenderableType:
        rows = max(3, out.height - 20)  # room for the header, nodes and jobs on one screen
        return status.render(snap, width=out.width, running_rows_max=rows)

    if args.once or not out.is_terminal:
        out.print(view(first))  # not a terminal: one frame, as a file or pipe wants
        return 0

    async def live() -> None:
        held: list[Client] = []  # one connection for the whole view, made again if it fails
        try:
            with Live(view(first), console=out, auto_refresh=False) as screen:
                while True:
                    await asyncio.sleep(STATUS_REFRESH_S)
                    screen.update(view(await fetch(held)), refresh=True)
        finally:
            await _drop(held)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(live())
    return 0


async def _drop(held: list[Client]) -> None:
    """Close the connection `held` holds, if any."""
    while held:
        with contextlib.suppress(OSError, ControlError):
            await held.pop().close()


def offline_snapshot(state: statedir.StateDir, jobs: list[str] | None) -> snapshot.Snapshot:
    """The snapshot of a node whose daemon is not running, read from its ledger file."""
    # Here, not at the top: a status asked of a running daemon needs none of them.
    from swarm.core import snapshot
    from swarm.core.spec import NO_RESOURCES
    from swarm.daemon import db, resources
    from swarm.daemon.failures import fill_stderr_tails
    from swarm.daemon.store import BlobStore

    loaded = db.load_ledger(state.db_path)
    meta = db.read_meta(state.db_path)
    node: snapshot.NodeRow = {
        "id": str(meta.get("node_id", "")),
        "state": "stopped",
        "pid": None,
        "data_dir": str(state.root),
        "labels": {},
        "capacity": snapshot.resources_dict(resources.probe()),
        "used": snapshot.resources_dict(NO_RESOURCES),
        "running": 0,
    }
    left_out = snapshot.LeftOut.of(loaded.unreadable, loaded.refused)
    built = snapshot.build(loaded.ledger, wall_ms(), [node], jobs, left_out=left_out)
    fill_stderr_tails(built.get("failures", []), BlobStore(state.blobs))
    return built
