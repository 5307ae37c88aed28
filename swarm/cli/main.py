"""The `swarm` command line.

Exit codes: 0 success; 1 some task failed or could not run; 2 bad input (task file, flags);
3 no daemon runs where one is needed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from swarm import control, statedir
from swarm.cli import export, status, taskfile
from swarm.control import Client
from swarm.core import snapshot, units, wire
from swarm.core.ledger import State
from swarm.core.policy import why_infeasible
from swarm.core.spec import NO_RESOURCES, Resources, name_problem
from swarm.daemon import db, resources
from swarm.daemon.config import (
    DEFAULT_PORT,
    LAN,
    PROFILES,
    TEST,
    NodeConfig,
    parse_addr,
    parse_label,
)
from swarm.daemon.store import BlobStore
from swarm.errors import ControlError, NotRunningError, SwarmError, UserInputError

POLL_MIN_S = 0.05  # `run` and `submit --wait` ask for progress at most this often ...
POLL_WAIT_MS = 500  # ... and otherwise as soon as a task's state changes (a long poll)
STATUS_REFRESH_S = 1.0
STOP_WAIT_S = 30.0
STATUS_ANSWER_S = 5.0  # a daemon slower than this to report (paused?) is read from disk instead
CALL_ANSWER_S = 30.0  # a command gives up on a daemon that does not answer in this long
FAILED_LISTED_MAX = 10

Reply = TypeVar("Reply")  # of a control request (swarm/control.py)

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A daemon reports what it does; a one-off `swarm run` only what goes wrong, unless asked.
    quiet = args.command == "run" and not args.verbose
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`swarm export | head`): say nothing, as `cat` would, and keep
        # Python from complaining when it flushes stdout on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except BaseExceptionGroup as group:
        # asyncio.TaskGroup wraps what its tasks raised; show the first of ours plainly.
        ours = [e for e in group.exceptions if isinstance(e, SwarmError | OSError)]
        if not ours:
            raise
        return report(ours[0])
    except (SwarmError, OSError) as exc:
        return report(exc)


def report(exc: BaseException) -> int:
    """Say what went wrong, without a traceback, and return the exit code for it."""
    # soft_wrap: a sentence stays one line, however narrow the terminal (which wraps it itself).
    if isinstance(exc, UserInputError):
        err.print("swarm: ", style="red", end="")
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        return 2
    err.print(f"swarm: {exc}", markup=False, highlight=False, soft_wrap=True)
    return 3 if isinstance(exc, NotRunningError) else 1


# -- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarm",
        description="Share batch work across machines with no master.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        help="this node's state dir (default: $SWARM_HOME, else $XDG_DATA_HOME/swarm)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    node_opts = argparse.ArgumentParser(add_help=False)
    node_opts.add_argument("--cpus", type=float, help="CPUs to offer (default: all this may use)")
    node_opts.add_argument("--memory", help="memory to offer, like 8G (default: all)")
    node_opts.add_argument("--gpus", type=int, help="GPUs to offer (default: all found)")
    node_opts.add_argument(
        "--overcommit",
        action="store_true",
        help="admit tasks by the memory they are measured to use, not what they declare; "
        "when memory runs low, evict the newest (it runs again later)",
    )
    node_opts.add_argument(
        "--memfree",
        metavar="SIZE",
        help="with --overcommit: start nothing while less than SIZE is free, and evict below "
        "half of it (default: 5%% of --memory, at least 64M)",
    )
    node_opts.add_argument(
        "--label", action="append", default=[], metavar="K=V", help="a node label (repeatable)"
    )
    node_opts.add_argument(
        "--bind",
        metavar="HOST:PORT",
        help=f"gossip with other nodes on this address (UDP and TCP; port {DEFAULT_PORT} if left out)",
    )
    node_opts.add_argument(
        "--join",
        action="append",
        default=[],
        metavar="PEER",
        help="join the swarm through this member's HOST:PORT (repeatable; needs --bind)",
    )
    node_opts.add_argument(
        "--profile",
        choices=tuple(PROFILES),
        default="lan",
        help="gossip timers: lan (memberlist's defaults) or test (ten times faster; tests may "
        "also skew the node's wall clock with --clock-skew-ms MS)",
    )
    node_opts.add_argument(
        "--clock-skew-ms",
        type=int,
        default=0,
        help=argparse.SUPPRESS,  # for tests only, with --profile test: see NodeConfig
    )
    node_opts.add_argument(
        "--lease-ttl",
        type=_positive_seconds,
        metavar="SECONDS",
        help="another node's tasks are taken over when its heartbeat has stopped this long "
        f"(default {LAN.lease_ttl_s:g}; {TEST.lease_ttl_s:g} with --profile test); at once when "
        "it is declared dead",
    )
    node_opts.add_argument(
        "--sync",
        choices=db.SYNC_MODES,
        default="full",
        help="ledger durability: full survives power loss, normal only process death",
    )
    task_opts = argparse.ArgumentParser(add_help=False)
    task_opts.add_argument("file", help="a JSON Lines task file, or - for stdin")
    task_opts.add_argument("--job", help="job name (default: the file's name without extension)")
    task_opts.add_argument(
        "--lines", action="store_true", help="the file is plain shell commands, one per line"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, help_text: str, *parents: argparse.ArgumentParser
    ) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text, parents=[common, *parents]
        )

    p = add(
        "run", "run every task of FILE to completion, then write the results", task_opts, node_opts
    )
    p.add_argument("--out", help="results dir (default: swarm-out/JOB)")
    p.set_defaults(func=cmd_run)

    p = add("init", "create this node's state dir (identity key, swarm key)")
    p.add_argument("--key-file", type=Path, help="adopt this swarm key instead of making one")
    p.set_defaults(func=cmd_init)

    p = add("start", "run this node's daemon in the foreground", node_opts)
    p.set_defaults(func=cmd_start)

    p = add("submit", "validate every line of FILE, then add its tasks", task_opts)
    p.add_argument("--wait", action="store_true", help="wait for the job to finish")
    p.set_defaults(func=cmd_submit)

    p = add("status", "show nodes, jobs and running tasks (live until Ctrl-C)")
    p.add_argument("--once", action="store_true", help="print once and exit")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON and exit")
    p.add_argument("--job", action="append", help="only this job (repeatable)")
    p.set_defaults(func=cmd_status)

    p = add("results", "write each task's stdout, stderr and output files to --out DIR")
    p.add_argument("job", help="the job whose results to write")
    p.add_argument("--out", required=True, help="directory to write into")
    p.set_defaults(func=cmd_results)

    p = add("export", "the ledger as CSV")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p.add_argument("--job", help="only this job")
    p.add_argument("--attempts", action="store_true", help="a row per attempt, not per task")
    p.set_defaults(func=cmd_export)

    p = add("cancel", "cancel a job, or one task by its id (a 6+ character prefix will do)")
    p.add_argument("target", metavar="JOB|TASK")
    p.set_defaults(func=cmd_cancel)

    p = add("retry", "re-queue the failed tasks of a job")
    p.add_argument("job", help="the job whose failed tasks to run again")
    p.set_defaults(func=cmd_retry)

    p = add("stop", "stop the local daemon (running attempts are interrupted and re-queued)")
    p.set_defaults(func=cmd_stop)

    p = add("leave", "leave the swarm now and stop (other members see it as left, not dead)")
    p.set_defaults(func=cmd_stop)

    p = add(
        "drain",
        "finish the running tasks, claim nothing new, then leave and stop (a preemption notice)",
    )
    p.add_argument("node", nargs="?", help="a member's id or its prefix (default: this node)")
    p.add_argument(
        "--grace",
        type=_positive_seconds,
        metavar="SECONDS",
        help="interrupt what still runs after this long (its tasks then run elsewhere)",
    )
    p.add_argument("--wait", action="store_true", help="return when this node has stopped")
    p.set_defaults(func=cmd_drain)

    p = add(
        "join",
        "join the swarm at PEER: with no daemon running, start one joined to it (in the "
        "foreground, with the node options); else tell the running daemon to join",
        node_opts,
    )
    p.add_argument("peer", nargs="+", metavar="PEER", help="a member's HOST:PORT")
    p.set_defaults(func=cmd_join)

    p = add("key", "rotate the swarm key: new FILE, install FILE, use ID, remove ID, list")
    p.add_argument("action", choices=("new", "install", "use", "remove", "list"))
    p.add_argument("arg", nargs="?", metavar="FILE|ID", help="a key file, or a key id")
    p.set_defaults(func=cmd_key)

    p = add("members", "list the swarm's members as this node sees them")
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p.set_defaults(func=cmd_members)
    return parser


def node_config(args: argparse.Namespace) -> NodeConfig:
    labels = dict(parse_label(text) for text in args.label)
    memory = units.parse_size(args.memory, field="--memory") if args.memory else None
    memfree = units.parse_size(args.memfree, field="--memfree") if args.memfree else None
    if memfree is not None and not args.overcommit:
        raise UserInputError("--memfree works with --overcommit; add it, or leave --memfree out")
    joins = tuple(parse_addr(peer) for peer in args.join)
    bind = parse_addr(args.bind) if args.bind else None
    if joins and bind is None:
        bind = ("0.0.0.0", DEFAULT_PORT)
    if bind is not None and bind[0] in ("0.0.0.0", "::"):
        raise UserInputError(
            "--bind needs the address other nodes reach this one at, such as 10.0.0.5:7946"
        )
    if args.clock_skew_ms and args.profile != "test":
        raise UserInputError("--clock-skew-ms is for tests: it needs --profile test")
    profile = PROFILES[args.profile]
    return NodeConfig(
        cpus=args.cpus,
        memory_bytes=memory,
        gpus=args.gpus,
        labels=labels,
        sync=args.sync,
        bind=bind,
        join=joins,
        gossip=profile.gossip,
        heartbeat_interval_s=profile.heartbeat_interval_s,
        claim_stagger_s=profile.claim_stagger_s,
        claim_settle_s=profile.claim_settle_s,
        lease_ttl_s=args.lease_ttl if args.lease_ttl is not None else profile.lease_ttl_s,
        overcommit=args.overcommit,
        memfree_bytes=memfree,
        clock_skew_ms=args.clock_skew_ms,
    )


def read_task_file(args: argparse.Namespace) -> tuple[str, list[taskfile.NewTask]]:
    """Validate the whole file before anything is sent: a bad line adds nothing."""
    if args.file == "-":
        data, source, base_dir, default_job = (
            sys.stdin.buffer.read(),
            "<stdin>",
            Path.cwd(),
            "stdin",
        )
    else:
        path = Path(args.file)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserInputError(f"cannot read {path}: {exc.strerror}") from exc
        source, base_dir, default_job = str(path), path.resolve().parent, path.stem
    job = args.job or default_job
    problem = name_problem(job)
    if problem is not None:
        raise UserInputError(f"job name {job!r} {problem}")
    if args.lines:
        return job, taskfile.parse_lines(data, source, job)
    return job, taskfile.parse_jsonl(data, source, job, base_dir)


async def send_tasks(
    client: Client, job: str, tasks: list[taskfile.NewTask]
) -> control.SubmitReply:
    chunk = control.SUBMIT_CHUNK_TASKS
    return await client.submit(
        job, ([_wire_task(t) for t in tasks[i : i + chunk]] for i in range(0, len(tasks), chunk))
    )


def _wire_task(task: taskfile.NewTask) -> control.SubmittedTask:
    return {
        "task_id": task.task_id,
        "name": task.name,
        "explicit_name": task.explicit_name,
        "spec": task.spec.to_wire(),
        "line": task.line,
    }


# -- run ----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    state = statedir.resolve(args.data_dir)
    job, tasks = read_task_file(args)
    config = node_config(args)
    statedir.init(state)
    out_dir = Path(args.out) if args.out else Path("swarm-out") / job
    started = time.monotonic()
    snap, finished_before = asyncio.run(_run(state, config, job, tasks))
    elapsed = time.monotonic() - started
    return finish_run(state, job, snap, out_dir, elapsed, finished_before)


# The last snapshot (None if none was taken), and how many tasks had finished at first.
Watched = tuple[snapshot.Snapshot | None, int]


async def _run(
    state: statedir.StateDir, config: NodeConfig, job: str, tasks: list[taskfile.NewTask]
) -> Watched:
    if await control.is_running(state):
        err.print(f"using the running node of {state.root}")
        return await _submit_and_watch(state, job, tasks, embedded=False)
    from swarm.daemon.node import Node  # only an embedded node needs the daemon: import it late

    node = Node(state, config)
    failure: BaseException | None = None
    watched: Watched = (None, 0)
    async with asyncio.TaskGroup() as tg:
        node_task = tg.create_task(node.run())
        ready = tg.create_task(node.wait_ready())
        await asyncio.wait([node_task, ready], return_when=asyncio.FIRST_COMPLETED)
        if node_task.done():  # it failed to start; the TaskGroup re-raises its error
            ready.cancel()
            return watched
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.stop)
        # Errors of the watcher are kept and raised after the TaskGroup, never inside it: the
        # group would cancel the node mid-stop (attempts unrecorded) and wrap the error.
        try:
            watched = await _submit_and_watch(state, job, tasks, embedded=True)
        except (SwarmError, OSError) as exc:
            failure = exc
        finally:
            stopped_by_user = node.stopping
            node.stop()
            await asyncio.wait([node_task])  # its graceful stop: attempts recorded, claims closed
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    if stopped_by_user:
        raise SwarmError("interrupted: the running attempts were stopped and re-queued")
    if failure is not None:
        raise failure
    return watched


async def _submit_and_watch(
    state: statedir.StateDir, job: str, tasks: list[taskfile.NewTask], embedded: bool
) -> Watched:
    client = await Client.connect(state)
    try:
        reply = await send_tasks(client, job, tasks)
        err.print(
            f"job [bold]{job}[/]: {plural(len(tasks), 'task')} "
            f"({reply['added']:,} new, {reply['existing']:,} already in the ledger)"
        )
        return await watch_job(client, job, embedded)
    finally:
        await client.close()


async def watch_job(client: Client, job: str, embedded: bool) -> tuple[snapshot.Snapshot, int]:
    """Show a progress bar until the job is finished (or, on an embedded node, until nothing
    left can run here)."""
    finished_at_start: int | None = None
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    with progress:
        bar = progress.add_task(job, total=None, detail="")
        wait_ms, changes = 0, None  # the first answer comes at once
        while True:
            asked = time.monotonic()
            reply = await client.status(jobs=[job], wait_ms=wait_ms, changes=changes)
            snap = reply["snapshot"]
            wait_ms, changes = POLL_WAIT_MS, reply["changes"]
            row = snap["jobs"][0] if snap["jobs"] else None
            if row is not None:
                finished = row["done"] + row["failed"] + row["cancelled"]
                if finished_at_start is None:
                    finished_at_start = finished
                detail = f"{row['running']} running, {row['failed']} failed"
                progress.update(bar, completed=finished, total=row["total"], detail=detail)
                if row["pending"] + row["running"] == 0:
                    return snap, finished_at_start
                stuck = snap["infeasible_count"]
                if embedded and row["running"] == 0 and stuck >= row["pending"]:
                    return snap, finished_at_start
            await asyncio.sleep(max(0.0, POLL_MIN_S - (time.monotonic() - asked)))


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "s")


def summary_line(row: snapshot.JobRow, elapsed: float, ran: int | None) -> str:
    """One line on how a job ended; `ran`: how many of its tasks finished during this command."""
    failed = f"[red]{row['failed']:,} failed[/]" if row["failed"] else "0 failed"
    line = (
        f"{row['job']}: {plural(row['total'], 'task')}: [green]{row['done']:,} done[/], {failed}, "
        f"{row['cancelled']:,} cancelled, {row['pending'] + row['running']:,} not run, "
        f"in {units.format_duration(elapsed)}"
    )
    if ran and elapsed > 0:
        line += f" ({ran / elapsed:,.1f} tasks/s)"
    return line


def finish_run(
    state: statedir.StateDir,
    job: str,
    snap: snapshot.Snapshot | None,
    out_dir: Path,
    elapsed: float,
    finished_before: int,
) -> int:
    fetch_results(state, job)  # from a running daemon's swarm; an embedded node has stopped
    ledger = db.load_ledger(state.db_path).ledger
    written = export.write_results(ledger, BlobStore(state.blobs), job, out_dir)
    row = snapshot.job_row(ledger, job, wall_ms())
    finished_now = row["done"] + row["failed"] + row["cancelled"]
    err.print(summary_line(row, elapsed, ran=finished_now - finished_before))
    err.print(f"results: {out_dir}/<task name>/ (stdout, stderr and output files)")
    for problem in written.missing[:FAILED_LISTED_MAX]:
        err.print(f"  [yellow]missing result:[/] {problem}")
    failed = [v for v in ledger.job_tasks(job) if v.state is State.FAILED]
    for view in failed[:FAILED_LISTED_MAX]:
        last = view.ordered_attempts()[-1].result if view.attempts else None
        why = last.reason if last is not None else "?"
        err.print(f"  [red]failed[/] {view.name}: {why} (see {out_dir / view.name / 'stderr'})")
    if len(failed) > FAILED_LISTED_MAX:
        err.print(f"  ... and {len(failed) - FAILED_LISTED_MAX} more failed tasks")
    infeasible = snap["infeasible"] if snap is not None else []
    stuck = [ledger.tasks[t] for t in infeasible if t in ledger.tasks]
    if snap is not None and stuck:
        node = snap["nodes"][0] if snap["nodes"] else None
        capacity = Resources(**node["capacity"]) if node is not None else None
        labels = node["labels"] if node is not None else {}
        count = snap["infeasible_count"]
        err.print(f"  [yellow]{plural(count, 'task')} cannot run on this node[/]:")
        for view in stuck[:FAILED_LISTED_MAX]:
            assert view.spec is not None
            why = why_infeasible(view.spec, capacity, labels) if capacity else "?"
            err.print(f"    {view.name}: {why}")
        err.print("  they stay pending, for a node that has what they need")
    return 0 if row["total"] and row["done"] == row["total"] else 1


# -- the other commands -------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    state = statedir.resolve(args.data_dir)
    created = statedir.init(state, args.key_file)
    word = "created" if created else "already exists:"
    out.print(f"state dir {word} {state.root}")
    out.print(f"node id:   {statedir.node_id(state)}")
    out.print(f"swarm key: {state.swarm_key_path} (secret: whoever holds it can run commands here)")
    out.print("run a task file here with `swarm run FILE`, or start this node's daemon:")
    out.print(f"  swarm start --bind THIS_HOST:{DEFAULT_PORT}")
    out.print("and on each other machine, with this swarm.key copied over:")
    out.print(
        f"  swarm init --key-file swarm.key && swarm join THIS_HOST:{DEFAULT_PORT} --bind ITS_HOST:{DEFAULT_PORT}"
    )
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    state = statedir.resolve(args.data_dir)
    config = node_config(args)
    statedir.init(state)

    async def serve() -> None:
        from swarm.daemon.node import Node  # the CLI's other commands start faster without it

        node = Node(state, config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.stop)
        await node.run()

    asyncio.run(serve())
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    state = statedir.resolve(args.data_dir)
    job, tasks = read_task_file(args)

    async def submit() -> int:
        client = await Client.connect(state)
        try:
            reply = await send_tasks(client, job, tasks)
            out.print(job)
            err.print(
                f"{plural(reply['added'], 'task')} added, "
                f"{reply['existing']:,} already in the ledger"
            )
            if not args.wait:
                return 0
            started = time.monotonic()
            snap, finished_before = await watch_job(client, job, embedded=False)
            row = snap["jobs"][0]
            ran = row["done"] + row["failed"] + row["cancelled"] - finished_before
            err.print(summary_line(row, time.monotonic() - started, ran))
            return 0 if row["done"] == row["total"] else 1
        finally:
            await client.close()

    return asyncio.run(submit())


def cmd_status(args: argparse.Namespace) -> int:
    state = statedir.resolve(args.data_dir)
    jobs = args.job

    async def fetch() -> snapshot.Snapshot:
        try:
            client = await Client.connect(state)
        except NotRunningError:
            return offline_snapshot(state, jobs)
        try:
            reply = await asyncio.wait_for(client.status(jobs=jobs), STATUS_ANSWER_S)
            return reply["snapshot"]
        except TimeoutError:
            err.print(
                f"swarm: the daemon did not answer within {STATUS_ANSWER_S:g}s (paused or "
                "overloaded?); showing its ledger as last written"
            )
            return offline_snapshot(state, jobs)
        finally:
            await client.close()

    first = asyncio.run(fetch())
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
        with Live(view(first), console=out, auto_refresh=False) as screen:
            while True:
                await asyncio.sleep(STATUS_REFRESH_S)
                screen.update(view(await fetch()), refresh=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(live())
    return 0


def offline_snapshot(state: statedir.StateDir, jobs: list[str] | None) -> snapshot.Snapshot:
    """The snapshot of a node whose daemon is not running, read from its ledger file."""
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
    return snapshot.build(loaded.ledger, wall_ms(), [node], jobs, left_out=left_out)


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
    if args.output:
        target = Path(args.output)
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            rows = export.write_csv(ledger, handle, job=args.job, attempts=args.attempts)
        tmp.replace(target)
        err.print(f"{rows:,} rows written to {target}")
    else:
        export.write_csv(ledger, sys.stdout, job=args.job, attempts=args.attempts)
    return 0


def _call(args: argparse.Namespace, ask: Callable[[Client], Awaitable[Reply]]) -> Reply:
    """One request to the local daemon (`ask` makes it, with the client), and its typed reply."""
    state = statedir.resolve(args.data_dir)

    async def call() -> Reply:
        client = await Client.connect(state)
        try:
            return await asyncio.wait_for(ask(client), CALL_ANSWER_S)
        except TimeoutError:
            raise ControlError(
                f"the daemon for {state.root} did not answer within {CALL_ANSWER_S:g}s "
                "(is it paused, or overloaded?)"
            ) from None
        finally:
            await client.close()

    return asyncio.run(call())


def cmd_cancel(args: argparse.Namespace) -> int:
    reply = _call(args, lambda client: client.cancel(args.target))
    out.print(f"cancelled {reply['cancelled']} {reply['target']}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    reply = _call(args, lambda client: client.retry(args.job))
    out.print(f"{reply['requeued']:,} failed tasks of {reply['job']} re-queued")
    return 0


def cmd_join(args: argparse.Namespace) -> int:
    """Join through the running daemon; with none running, start one in the foreground, joined."""
    state = statedir.resolve(args.data_dir)
    if asyncio.run(control.is_running(state)):
        reply = _call(args, lambda client: client.join(list(args.peer)))
        if args.bind is not None or args.profile != "lan":
            err.print("swarm: the daemon was already running: --bind and --profile are its own")
        problems = reply["problems"]
        for problem in problems:
            err.print(f"swarm: {problem}", markup=False, highlight=False, soft_wrap=True)
        if problems:
            return 1
        out.print(f"joined the swarm through {', '.join(args.peer)}")
        return 0
    args.join = list(args.join) + list(args.peer)
    return cmd_start(args)


def cmd_key(args: argparse.Namespace) -> int:
    """Key rotation, one step at a time on every node: install the new key everywhere, then use
    it everywhere, then remove the old one; each step takes effect at once on a running node."""
    state = statedir.resolve(args.data_dir)
    if args.action == "new":
        if not args.arg:
            raise UserInputError("swarm key new FILE: where to write the new key")
        target = Path(args.arg)
        if target.exists():
            raise UserInputError(f"{target} exists; not overwriting a key")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(statedir.SWARM_KEY_BYTES) + "\n")
        out.print(f"new swarm key {wire.key_id(statedir.read_swarm_key(target)).hex()} in {target}")
        return 0
    statedir.init(state)
    if args.action == "install":
        key = statedir.read_swarm_key(Path(args.arg or ""))
        statedir.install_key(state, key, wire.key_id(key).hex())
    elif args.action == "use":
        statedir.use_key(state, args.arg or "")
    elif args.action == "remove":
        statedir.remove_key(state, args.arg or "")
    if args.action != "list" and asyncio.run(control.is_running(state)):
        _call(args, lambda client: client.reload_keys())
    in_use, others = statedir.key_ring_files(state)
    out.print(f"in use:    {wire.key_id(in_use).hex()}")
    for key in others:
        out.print(f"installed: {wire.key_id(key).hex()}")
    return 0


def cmd_members(args: argparse.Namespace) -> int:
    reply = _call(args, lambda client: client.members())
    if args.json:
        out.print_json(json.dumps({"members": reply["members"], "net": reply["net"]}))
        return 0
    table = Table(box=None, header_style="bold dim", pad_edge=False)
    for column in ("id", "address", "state", "incarnation", "cpus", "memory", "labels"):
        table.add_column(column)
    for m in reply["members"]:
        capacity = m.get("capacity", {})
        labels = ", ".join(f"{k}={v}" for k, v in sorted(m.get("labels", {}).items()))
        table.add_row(
            str(m["id"])[:8],
            str(m.get("address", "")),
            str(m["state"]),
            str(m.get("incarnation", "")),
            f"{capacity.get('cpus', '')}",
            units.format_bytes(int(capacity.get("memory_bytes", 0))),
            labels,
        )
    out.print(table)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    state = statedir.resolve(args.data_dir)
    if not asyncio.run(control.is_running(state)):
        out.print(f"no swarm daemon is running for {state.root}")
        return 0
    _call(args, lambda client: client.shutdown())
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:  # it interrupts and records its attempts, then exits
        if not statedir.lock_held(state):
            out.print("the daemon has stopped")
            return 0
        time.sleep(0.05)
    out.print(f"the daemon is still stopping after {STOP_WAIT_S:g}s")
    return 1


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < 86_400:
        raise argparse.ArgumentTypeError(f"must be between 0 and 86400 seconds: {text!r}")
    return value


def cmd_drain(args: argparse.Namespace) -> int:
    state = statedir.resolve(args.data_dir)
    reply = _call(args, lambda client: client.drain(args.node or "", args.grace))
    node = reply["node"]
    if reply["running"] is None:
        out.print(f"asked node {node[:8]} to drain; it leaves the swarm when its tasks end")
        return 0
    out.print(
        f"draining this node ({node[:8]}): {plural(reply['running'], 'attempt')} to "
        "finish, nothing new is claimed, then it leaves the swarm and stops"
    )
    if not args.wait:
        return 0
    while statedir.lock_held(state):  # the daemon exits once drained
        time.sleep(0.2)
    out.print("drained: the daemon has stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
