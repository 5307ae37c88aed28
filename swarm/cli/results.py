"""Getting results out: `swarm results` (fetched by the daemon from the nodes that hold them, then
written under a directory) and `swarm export` (the ledger as CSV); both read the node's ledger
file and blob store, so they work with no daemon running."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from swarm import statedir
from swarm.cli import export
from swarm.cli.common import err, plural
from swarm.control import Client
from swarm.core import snapshot
from swarm.daemon import db
from swarm.daemon.store import BlobStore
from swarm.errors import ControlError, NotRunningError, UserInputError


def fetch_results(state: statedir.StateDir, job: str) -> None:
    """With a daemon running, have it fetch the job's result files that other nodes hold."""

    async def fetch() -> None:
        try:
            client = await Client.connect(state)
        except NotRunningError:
            return  # no daemon: what this node holds is what can be written
        try:
            reply = await client.fetch_results(job)
            if reply["fetched"]:
                err.print(f"fetched {reply['fetched']:,} result files from other nodes")
        except ControlError:
            return  # an unknown job, say: writing the results says so
        finally:
            await client.close()

    asyncio.run(fetch())


def load_ledger(state: statedir.StateDir) -> db.Loaded:
    """The node's ledger as its file holds it, saying on stderr what of the file is left out."""
    loaded = db.load_ledger(state.db_path)
    left_out = snapshot.LeftOut.of(loaded.unreadable, loaded.refused)
    if left_out.unreadable:
        err.print(
            f"swarm: {plural(left_out.unreadable, 'record')} in the ledger could not be read "
            f"({left_out.unreadable_reason}); the tasks they describe are left out",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if left_out.refused:
        err.print(
            f"swarm: {plural(left_out.refused, 'task record')} in the ledger refused "
            f"({left_out.refused_reason}); those tasks are left out",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return loaded


def cmd_results(args: argparse.Namespace) -> int:
    state = statedir.resolve(args.data_dir)
    fetch_results(state, args.job)
    ledger = load_ledger(state).ledger
    written = export.write_results(ledger, BlobStore(state.blobs), args.job, Path(args.out))
    err.print(f"{written.tasks_written:,} tasks, {written.files_written:,} files in {args.out}")
    for problem in written.missing:
        err.print(f"  [yellow]missing:[/] {problem}")
    return 1 if written.missing else 0


def cmd_export(args: argparse.Namespace) -> int:
    state = statedir.resolve(args.data_dir)
    ledger = load_ledger(state).ledger
    if args.job and args.job not in ledger.jobs:
        raise UserInputError(
            f"no job {args.job!r}; jobs: {', '.join(sorted(ledger.jobs)) or 'none'}"
        )
    if args.what and args.attempts and args.what != "attempts":
        raise UserInputError(f"--attempts and --what {args.what} ask for different rows")
    what = args.what or ("attempts" if args.attempts else "tasks")
    if args.output:
        target = Path(args.output)
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            rows = export.write(ledger, handle, what=what, fmt=args.format, job=args.job)
        tmp.replace(target)
        err.print(f"{rows:,} rows written to {target}")
    else:
        export.write(ledger, sys.stdout, what=what, fmt=args.format, job=args.job)
    return 0
