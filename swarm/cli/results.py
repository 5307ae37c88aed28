"""Getting results out: `swarm results` (fetched by the daemon from the nodes that hold them, then
written under a directory) and `swarm export` (the ledger as CSV); both read the node's ledger
file and blob store, so they work with no daemon running. With `--peer`, on a machine with no
node, they read the ledger and the blobs from that node instead (cli/remote_reads.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from swarm import statedir
from swarm.cli import export, remote_reads, results_dir
from swarm.cli.common import err, peer_of, plural
from swarm.connection import Client
from swarm.core import snapshot
from swarm.core.ledger import Ledger
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
    say_left_out(loaded)
    return loaded


def say_left_out(loaded: db.Loaded) -> None:
    """Say on stderr which rows of a ledger were left out, and why."""
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


def cmd_results(args: argparse.Namespace) -> int:
    state = statedir.resolve(args.data_dir)
    peer = peer_of(args)

    def fetch_and_write() -> results_dir.ResultsWritten:
        if peer is None:
            fetch_results(state, args.job)
            ledger = load_ledger(state).ledger
        else:
            ledger = asyncio.run(ledger_from_peer(peer, state, args.job))
        return results_dir.write_results(ledger, BlobStore(state.blobs), args.job, Path(args.out))

    written = fetch_and_write()
    if written.corrupt:
        # The copies found corrupt here were set aside as they were read: the nodes that hold
        # good ones are asked again (a blob missing here is what a fetch looks for).
        err.print(
            f"{plural(written.corrupt, 'result file')} held here found corrupt: set aside, and "
            "asked again of the nodes that hold them"
        )
        written = fetch_and_write()
    err.print(f"{written.tasks_written:,} tasks, {written.files_written:,} files in {args.out}")
    for problem in written.missing:
        err.print(f"  [yellow]missing:[/] {problem}")
    return 1 if written.missing else 0


async def ledger_from_peer(peer: str, state: statedir.StateDir, job: str | None = None) -> Ledger:
    """The peer's ledger, read in pages. With `job`: the job's result blobs are copied into this
    machine's store too, once the peer has fetched them from the nodes that hold them."""
    from swarm import remote

    client = await remote.connect(peer, state)
    try:
        if job is not None:
            with contextlib.suppress(ControlError):  # an unknown job: writing results says so
                reply = await client.fetch_results(job)
                if reply["fetched"]:
                    err.print(
                        f"the node at {peer} fetched {reply['fetched']:,} result files from others"
                    )
        loaded = await remote_reads.load_ledger(client)
        say_left_out(loaded)
        if job is not None and job in loaded.ledger.jobs:
            await remote_reads.copy_results(client, loaded.ledger, job, BlobStore(state.blobs))
        return loaded.ledger
    finally:
        await client.close()


def cmd_export(args: argparse.Namespace) -> int:
    state = statedir.resolve(args.data_dir)
    peer = peer_of(args)
    if args.what and args.attempts and args.what != "attempts":
        raise UserInputError(f"--attempts and --what {args.what} ask for different rows")
    what = args.what or ("attempts" if args.attempts else "tasks")
    if peer is None and what != "nodes":  # this machine's file: rows written as they are read
        return _export_streamed(args, state.db_path, what)
    ledger = (
        load_ledger(state).ledger if peer is None else asyncio.run(ledger_from_peer(peer, state))
    )
    if args.job and args.job not in ledger.jobs:
        raise UserInputError(
            f"no job {args.job!r}; jobs: {', '.join(sorted(ledger.jobs)) or 'none'}"
        )
    if args.output:
        target = Path(args.output)
        with export_file(target) as handle:
            rows = export.write(ledger, handle, what=what, fmt=args.format, job=args.job)
        err.print(f"{rows:,} rows written to {target}")
    else:
        export.write(ledger, sys.stdout, what=what, fmt=args.format, job=args.job)
    return 0


def _export_streamed(args: argparse.Namespace, db_path: Path, what: str) -> int:
    """`swarm export` of the local ledger file, streamed (export_stream.py)."""
    from swarm.cli import export_stream

    # Before a file is made, or a line written: a ledger that cannot be read is said alone.
    db.read_meta(db_path)
    export_stream.check_job(db_path, args.job)
    if not args.output:
        _, left_out = export_stream.write(
            db_path, sys.stdout, what=what, fmt=args.format, job=args.job
        )
        say_left_out(left_out)
        return 0
    target = Path(args.output)
    with export_file(target) as handle:
        rows, left_out = export_stream.write(
            db_path, handle, what=what, fmt=args.format, job=args.job
        )
    say_left_out(left_out)
    err.print(f"{rows:,} rows written to {target}")
    return 0


@contextlib.contextmanager
def export_file(target: Path) -> Iterator[TextIO]:
    """The file `swarm export -o` writes at `target`. The kernel opens the path, as a shell's
    redirection does, so a symlink is followed only where its protections allow (a link that
    another user left in /tmp is refused), and what it opens decides the rest:
    - a fifo, a device or anything else not a regular file is written in place (/dev/stdout
      into a pipe, a fifo's reader);
    - a regular file gets the export whole or not at all: written beside it under a random
      name, then renamed over it, with its permission bits (not set-id ones);
    - nothing there yet (or a link to nothing) is made at `target` in the same way.
    UserInputError naming `target` if it cannot be written (a full disk, say)."""
    place, tmp = Path(target), None
    try:
        mode: int | None = None
        try:
            fd = os.open(target, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            pass  # made at `target`
        else:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                with open(fd, "w", newline="", encoding="utf-8") as handle:
                    yield handle
                return
            os.close(fd)
            place = Path(os.path.realpath(target))
            now = os.stat(place)
            if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
                raise UserInputError(f"cannot write {target}: it changed as it was opened")
            mode = stat.S_IMODE(opened.st_mode) & 0o777
        # O_EXCL under a random name: never a file someone left there, nor another export's.
        tmp = place.with_name(f".{place.name[:32]}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            with open(fd, "w", newline="", encoding="utf-8") as handle:
                yield handle
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, place)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        if exc.filename not in (None, str(target), str(place), str(tmp)):
            raise  # not the export's file: a read of the ledger, say
        raise UserInputError(f"cannot write {target}: {exc.strerror}") from exc
