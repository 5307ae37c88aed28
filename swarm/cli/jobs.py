"""The commands that act on a job: `run` (on the local daemon, or on an embedded node started for
the run), `submit`, `cancel` and `retry`; reading and sending a task file, and the progress bar
that watches a job until it is finished."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from swarm import connection, control, statedir
from swarm.cli import remote_reads, results_dir, taskfile
from swarm.cli.common import (
    _call,
    answered,
    connect,
    err,
    out,
    peer_of,
    plural,
    wall_ms,
    where_asked,
)
from swarm.cli.nodes import node_config
from swarm.cli.results import fetch_results
from swarm.connection import Client
from swarm.core import snapshot, units
from swarm.core.ledger import Ledger, State, StateChanged
from swarm.core.policy import why_infeasible
from swarm.core.spec import Resources, name_problem
from swarm.daemon import db
from swarm.daemon.config import NodeConfig
from swarm.daemon.store import EMPTY_DIGEST, BlobStore
from swarm.errors import ControlError, SwarmError, UserInputError

# `run` and `submit --wait` ask for progress at most as often as the bar redraws (10 Hz) ...
POLL_MIN_S = 0.1
POLL_WAIT_MS = 500  # ... and otherwise as soon as a task's state changes (a long poll)
# ... or, where the node is in this process and says when the job ends (`finished`), 4 times a
# second: each answer builds a snapshot on the loop that runs the tasks.
POLL_EMBEDDED_MIN_S = 0.25
FAILED_LISTED_MAX = 10  # failed, missing or unrunnable tasks named one by one after a run


def read_task_file(args: argparse.Namespace) -> tuple[str, list[taskfile.NewTask]]:
    """Validate the whole file before anything is sent: a bad line adds nothing."""
    if args.file == "-":
        source, base_dir, default_job = "<stdin>", Path.cwd(), "stdin"
    else:
        path = Path(args.file)
        source, base_dir, default_job = str(path), path.resolve().parent, path.stem
    job = args.job or default_job
    problem = name_problem(job)
    if problem is not None:
        raise UserInputError(f"job name {job!r} {problem}")
    try:
        with contextlib.ExitStack() as stack:
            stream = sys.stdin.buffer if args.file == "-" else stack.enter_context(open(path, "rb"))
            parsed = taskfile.read(stream, source, job, base_dir, lines=args.lines)
    except OSError as exc:
        raise UserInputError(f"cannot read {source}: {exc.strerror}") from exc
    if parsed.repeats:
        # Content-named tasks make a re-submitted file add nothing; a user who meant the same
        # command twice (GNU parallel and xargs run every line) is told, and how to get it.
        differ = (
            "make the lines differ (`CMD # 2`)" if args.lines else 'give each a different "name"'
        )
        said = (
            "1 line repeats an earlier line and adds no task of its own"
            if parsed.repeats == 1
            else f"{parsed.repeats:,} lines repeat earlier lines and add no task of their own"
        )
        err.print(
            f"{source}: {said} (a task is named by its content): to run a command more than "
            f"once, {differ}",
            markup=False,
        )
    return job, parsed.tasks


async def send_tasks(
    client: Client, job: str, tasks: list[taskfile.NewTask], where: str
) -> control.SubmitReply:
    # A daemon that does not answer is found out before anything is sent: a submit given up
    # on (or killed) after its tasks went would have them added once the daemon came back.
    await answered(client.ping(), where, "; nothing was submitted")
    chunk = connection.SUBMIT_CHUNK_TASKS
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


def warn_unfit(reply: control.SubmitReply) -> None:
    """Say at once which of the submitted tasks no live node can run now, and why."""
    for reason, count in (reply.get("unfit") or {}).items():
        err.print(
            f"[yellow]warning:[/] {plural(count, 'task')} fit no live node now: ",
            end="",
            soft_wrap=True,
        )
        err.print(f"{reason} (swarm why JOB/NAME tells more)", markup=False, soft_wrap=True)


def cmd_run(args: argparse.Namespace) -> int:
    state = statedir.resolve(args.data_dir)
    job, tasks = read_task_file(args)
    config = node_config(args)
    statedir.init(state)
    out_dir = Path(args.out) if args.out else Path("swarm-out") / job
    started = time.monotonic()
    ran = asyncio.run(_run(state, config, job, tasks))
    elapsed = time.monotonic() - started
    return finish_run(state, job, ran, out_dir, elapsed)


@dataclass
class Ran:
    """What `_run` saw: the last snapshot (None if none was taken) and how many tasks had
    finished at first; on an embedded node, also its ledger as the node left it (the results
    are written from it rather than from the file read anew)."""

    snap: snapshot.Snapshot | None = None
    finished_before: int = 0
    ledger: Ledger | None = None


async def _run(
    state: statedir.StateDir,
    config: NodeConfig,
    job: str,
    tasks: list[taskfile.NewTask],
) -> Ran:
    if await connection.is_running(state):
        err.print(f"using the running node of {state.root}")
        return Ran(*await _submit_and_watch(state, job, tasks, embedded=False))
    from swarm.daemon.node import Node  # only an embedded node needs the daemon: import it late

    node = Node(state, config)
    failure: BaseException | None = None
    ran = Ran()
    async with asyncio.TaskGroup() as tg:
        node_task = tg.create_task(node.run())
        ready = tg.create_task(node.wait_ready())
        await asyncio.wait([node_task, ready], return_when=asyncio.FIRST_COMPLETED)
        if node_task.done():  # it failed to start; the TaskGroup re-raises its error
            ready.cancel()
            return ran
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.stop)
        finished = asyncio.Event()
        node.change_hooks.append(_when_finished(node.ledger, job, finished))
        # Errors of the watcher are kept and raised after the TaskGroup, never inside it: the
        # group would cancel the node mid-stop (attempts unrecorded) and wrap the error.
        try:
            ran.snap, ran.finished_before = await _submit_and_watch(
                state, job, tasks, embedded=True, finished=finished
            )
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
    ran.ledger = node.ledger
    return ran


def _when_finished(
    ledger: Ledger, job: str, finished: asyncio.Event
) -> Callable[[list[StateChanged]], None]:
    """A hook for the node's state changes that sets `finished` once none of `job` is left to
    run: the watcher then asks for its last snapshot at once, instead of after its pause."""

    def hear(changes: list[StateChanged]) -> None:
        if ledger.job_finished(job):
            finished.set()

    return hear


async def _submit_and_watch(
    state: statedir.StateDir,
    job: str,
    tasks: list[taskfile.NewTask],
    embedded: bool,
    finished: asyncio.Event | None = None,
) -> tuple[snapshot.Snapshot | None, int]:
    client = await Client.connect(state)
    try:
        reply = await send_tasks(client, job, tasks, f"the daemon for {state.root}")
        err.print(
            f"job [bold]{job}[/]: {plural(len(tasks), 'task')} "
            f"({reply['added']:,} new, {reply['existing']:,} already in the ledger)"
        )
        warn_unfit(reply)
        return await watch_job(client, job, embedded, finished)
    finally:
        await client.close()


async def watch_job(
    client: Client, job: str, embedded: bool, finished: asyncio.Event | None = None
) -> tuple[snapshot.Snapshot, int]:
    """Show a progress bar until the job is finished (or, on an embedded node, until nothing
    left can run here). `finished`, set by an embedded node as the job's last task ends, cuts
    the pause between two asks short."""
    finished_at_start: int | None = None
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
        auto_refresh=False,  # drawn as each answer comes: no thread of its own taking the GIL
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
                ended = row["done"] + row["failed"] + row["cancelled"]
                if finished_at_start is None:
                    finished_at_start = ended
                detail = f"{row['running']} running, {row['failed']} failed"
                progress.update(
                    bar, completed=ended, total=row["total"], detail=detail, refresh=True
                )
                if row["pending"] + row["running"] == 0:
                    return snap, finished_at_start
                stuck = snap["infeasible_count"]
                if embedded and row["running"] == 0 and stuck >= row["pending"]:
                    return snap, finished_at_start
            least = POLL_MIN_S if finished is None else POLL_EMBEDDED_MIN_S
            pause = max(0.0, least - (time.monotonic() - asked))
            if finished is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), pause)


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


def finish_run(state: statedir.StateDir, job: str, ran: Ran, out_dir: Path, elapsed: float) -> int:
    ledger = ran.ledger
    if ledger is None:  # a running daemon's: from its file, with what its swarm holds
        fetch_results(state, job)
        ledger = db.load_ledger(state.db_path).ledger
    store = BlobStore(state.blobs)
    written = results_dir.write_results(ledger, store, job, out_dir)
    row = snapshot.job_row(ledger, job, wall_ms())
    finished_now = row["done"] + row["failed"] + row["cancelled"]
    err.print(summary_line(row, elapsed, ran=finished_now - ran.finished_before))
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
    snap = ran.snap
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


def cmd_submit(args: argparse.Namespace) -> int:
    job, tasks = read_task_file(args)

    async def submit() -> int:
        client = await connect(args)
        try:
            reply = await send_tasks(client, job, tasks, where_asked(args))
            out.print(job)
            err.print(
                f"{plural(reply['added'], 'task')} added, "
                f"{reply['existing']:,} already in the ledger"
            )
            warn_unfit(reply)
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


def cmd_cancel(args: argparse.Namespace) -> int:
    reply = _call(args, lambda client: client.cancel(args.target))
    out.print(f"cancelled {reply['cancelled']} {reply['target']}")
    return 0


FOLLOW_POLL_S = 0.25  # how often `logs --follow` looks at a running attempt's files
FOLLOW_CHUNK_BYTES = 1 << 16


def cmd_logs(args: argparse.Namespace) -> int:
    """The stdout and stderr of a task's latest attempt (to this command's stdout and stderr);
    --follow: each attempt that runs, its output as it grows (when it runs on this node), then
    the rest of it once it ends, until the task runs no more."""
    store = BlobStore(statedir.resolve(args.data_dir).blobs)
    reply = _logs(args, store, args.attempt)
    if args.follow and reply["running_on"]:
        _follow(args, reply, store)
        return 0
    return 0 if _print_attempt(reply, store, {"stdout": 0, "stderr": 0}) else 1


def _print_attempt(reply: control.LogsReply, store: BlobStore, shown: dict[str, int]) -> bool:
    """An ended attempt's header (on stderr) and output, less the bytes of it `shown` already;
    False if a stream of it could not be had (the command then fails, as for a corrupt one)."""
    where = f"attempt {reply['attempt']} on node {reply['node'][:8]}: {reply['outcome']}"
    if not reply["attempt"]:
        where = "no attempt has ended yet"
    running = f"; it runs now on node {reply['running_on'][:8]}" if reply["running_on"] else ""
    err.print(f"{reply['job']}/{reply['name']}: {where}{running}", markup=False, highlight=False)
    whole = True
    for name, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        digest = reply["stdout"] if name == "stdout" else reply["stderr"]
        if digest is None:
            if reply["attempt"]:
                err.print(f"(its {name} could not be had from any node)")
                whole = False
            continue
        _print_blob(store, digest, stream, shown[name])
    return whole


def _print_blob(store: BlobStore, digest: str, stream: TextIO, skip: int = 0) -> None:
    """A held blob's bytes past `skip` to `stream`, once it is verified (a corrupt one is said,
    not shown)."""
    if digest == EMPTY_DIGEST:
        return
    if not store.verify(digest):
        raise SwarmError(f"the blob {digest[:12]} held here is corrupt; it was set aside")
    stream.flush()
    with open(store.path(digest), "rb") as blob:
        blob.seek(skip)
        while chunk := blob.read(FOLLOW_CHUNK_BYTES):
            stream.buffer.write(chunk)
    stream.buffer.flush()


def _follow(args: argparse.Namespace, reply: control.LogsReply, store: BlobStore) -> None:
    """Follow each attempt of the task while it runs: its files as they grow (when it runs on
    this node), then, once it ends, the rest of its output from its result (or, if it ended
    with none, that it did); then the next attempt, until the task has ended for good (done,
    failed or cancelled: a task waiting for its retry is waited for)."""
    while reply["running_on"]:
        number, run_dir = reply["running_attempt"], reply["run_dir"]
        if run_dir is None:
            err.print(
                f"attempt {number} runs on node {reply['running_on'][:8]}: its output comes "
                "when it ends",
                markup=False,
            )
        shown = {"stdout": 0, "stderr": 0}
        while True:
            if run_dir is not None:
                for name, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
                    shown[name] += _copy_new(Path(run_dir) / name, shown[name], stream)
            time.sleep(FOLLOW_POLL_S)
            now = _logs(args, store, None, fetch=False)
            if not now["running_on"] or now["running_attempt"] != number:
                break  # the followed attempt has ended
        try:
            ended = _logs(args, store, number)
        except ControlError:  # it ended with no result (its node stopped or died): nothing more
            err.print(f"attempt {number} ended with no output recorded", markup=False)
        else:
            ended["running_on"] = ""
            _print_attempt(ended, store, shown)
        reply = now
        while not reply["running_on"] and reply["state"] in ("pending", "running"):
            time.sleep(FOLLOW_POLL_S)  # between two attempts: the next one is still to come
            reply = _logs(args, store, None, fetch=False)
        # Attempts that began and ended between two looks: from their results.
        latest = reply["running_attempt"] - 1 if reply["running_on"] else reply["attempt"]
        for missed in range(number + 1, latest + 1):
            try:
                ended = _logs(args, store, missed)
            except ControlError:
                continue  # it ended with no result
            ended["running_on"] = ""
            _print_attempt(ended, store, {"stdout": 0, "stderr": 0})


def _logs(
    args: argparse.Namespace, store: BlobStore, number: int | None, fetch: bool = True
) -> control.LogsReply:
    """The node's `logs` reply. From another machine's node (--peer), its stdout and stderr
    blobs are copied into `store` too (unless not `fetch`), and a running attempt's dir, which
    is on that machine, is not followed: its output comes when it ends."""
    if peer_of(args) is None:
        return _call(args, lambda client: client.logs(args.target, number))

    async def ask(client: Client) -> control.LogsReply:
        reply = await client.logs(args.target, number)
        reply["run_dir"] = None
        for digest in (reply["stdout"], reply["stderr"]):
            if fetch and digest is not None:
                await remote_reads.copy_blob(client, digest, store)
        return reply

    return _call(args, ask)


def _copy_new(path: Path, offset: int, stream: TextIO) -> int:
    """Copy what `path` gained past `offset` to `stream`; how many bytes."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(FOLLOW_CHUNK_BYTES * 16)
    except OSError:
        return 0
    stream.flush()
    stream.buffer.write(data)
    stream.buffer.flush()
    return len(data)


def cmd_why(args: argparse.Namespace) -> int:
    reply = _call(args, lambda client: client.why(args.target))
    out.print(
        f"{reply['job']}/{reply['name']} ({reply['task_id'][:12]}): {reply['state']}",
        markup=False,
        highlight=False,
    )
    for reason in reply["reasons"]:
        out.print(f"  - {reason}", markup=False, highlight=False, soft_wrap=True)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    reply = _call(args, lambda client: client.retry(args.job))
    out.print(f"{plural(reply['requeued'], 'failed task')} of {reply['job']} re-queued")
    return 0
