"""The `swarm` command line: the parser, and the dispatch to a command.

Exit codes: 0 success; 1 some task failed or could not run; 2 bad input (task file, flags);
3 no daemon runs where one is needed; 130 interrupted.

The commands live by area: `jobs` (run, submit, cancel, retry), `live` (status), `results`
(results, export) and `nodes` (init, start, join, stop, leave, drain, key, members); what they
share is in `common`. Only a command that starts a node imports the daemon.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from swarm.cli.common import err
from swarm.daemon.config import DEFAULT_PORT, LAN, PROFILES, SYNC_MODES, TEST
from swarm.errors import NotRunningError, SwarmError, UserInputError


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
        # asyncio.TaskGroup wraps what its tasks raised (an embedded node's group inside the
        # command's): show the first of ours plainly.
        ours, _ = group.split((SwarmError, OSError))
        if ours is None:
            raise
        return report(_first_leaf(ours))
    except (SwarmError, OSError) as exc:
        return report(exc)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def report(exc: BaseException) -> int:
    """Say what went wrong, without a traceback, and return the exit code for it."""
    # soft_wrap: a sentence stays one line, however narrow the terminal (which wraps it itself).
    if isinstance(exc, UserInputError):
        err.print("swarm: ", style="red", end="")
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        return 2
    err.print(f"swarm: {exc}", markup=False, highlight=False, soft_wrap=True)
    return 3 if isinstance(exc, NotRunningError) else 1


# Each subcommand's --help ends with examples (a line each, for copy and paste).
EXAMPLES = {
    "run": "  swarm run examples/hello.jsonl\n  swarm run cmds.txt --lines --cpus 4 --out results/",
    "init": "  swarm init\n  swarm init --key-file swarm.key    # join an existing swarm's key",
    "start": (
        "  swarm start --cpus 8 --memory 30G --label zone=eu\n"
        "  swarm start --bind 10.0.0.6:7946 --join 10.0.0.5:7946\n"
        "  swarm start --no-work    # a submit host: holds the ledger, runs nothing\n"
        "  swarm start --http 127.0.0.1:8080    # the dashboard at http://127.0.0.1:8080/"
    ),
    "submit": "  swarm submit tasks.jsonl\n  swarm submit cmds.txt --lines --job sweep --wait",
    "status": "  swarm status\n  swarm status --once --json | jq .jobs\n"
    "  swarm status --peer 10.0.0.5:7946    # another machine's node, with the swarm key here",
    "results": "  swarm results sweep --out results/",
    "export": (
        "  swarm export -o ledger.csv\n  swarm export --what attempts --job sweep\n"
        "  swarm export --what nodes --format jsonl"
    ),
    "cancel": "  swarm cancel sweep\n  swarm cancel 3fa2c1",
    "retry": "  swarm retry sweep",
    "logs": "  swarm logs sweep/seed-3\n  swarm logs sweep/seed-3 --attempt 1\n  swarm logs 3fa2c1 -f",
    "why": "  swarm why sweep/seed-3\n  swarm why 3fa2c1",
    "stop": "  swarm stop",
    "leave": "  swarm leave",
    "drain": "  swarm drain --wait\n  swarm drain 3fa2c1d0 --grace 60 --wait",
    "join": "  swarm join 10.0.0.5:7946 --bind 10.0.0.6:7946",
    "members": "  swarm members\n  swarm members --json",
    "key": (
        "  swarm key new next.key && swarm key install next.key    # on every node\n"
        "  swarm key use ID && swarm key remove OLD_ID"
    ),
    "preemption-watch": "  swarm preemption-watch --cloud gce\n  swarm preemption-watch --cloud aws --grace 90",
}


class VersionAction(argparse.Action):
    """`swarm --version`: the installed distribution's version, read only when asked (the
    metadata lookup would slow every command's start)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        import importlib.metadata
        import platform

        try:
            version = importlib.metadata.version(DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            version = "(not installed: run from a source tree)"
        print(f"swarm {version} (Python {platform.python_version()})")
        parser.exit()


DISTRIBUTION = "swarm-compute"  # the name pyproject.toml gives the package


class Command:
    """A subcommand's function, imported when it runs: `swarm --help` (and each command) loads
    only its own module, not every command's."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __call__(self, args: argparse.Namespace) -> int:
        module = importlib.import_module(f"swarm.cli.{self.module}")
        code: int = getattr(module, self.name)(args)
        return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarm",
        description="Share batch work across machines with no master.",
    )
    parser.add_argument(
        "--version", action=VersionAction, help="print swarm's version and exit", nargs=0
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        help="this node's state dir (default: $SWARM_HOME, else $XDG_DATA_HOME/swarm)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    client_opts = argparse.ArgumentParser(add_help=False)
    client_opts.add_argument(
        "--peer",
        dest="remote_peer",  # not `peer`: `swarm join PEER` has a positional of that name
        metavar="HOST:PORT",
        help="the node of another machine to ask, over the sealed channel (default: "
        "$SWARM_PEER, else this machine's daemon); needs the swarm key in the data dir",
    )
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
        choices=SYNC_MODES,
        default="full",
        help="ledger durability: full survives power loss, normal only process death",
    )
    daemon_opts = argparse.ArgumentParser(add_help=False)  # a daemon's own, not `swarm run`'s
    daemon_opts.add_argument(
        "--no-work",
        action="store_true",
        help="hold the ledger and results and take submissions, but run no task (a submit host)",
    )
    daemon_opts.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve the read-only HTTP API, metrics and dashboard there (no authentication)",
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
        examples = EXAMPLES.get(name)
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common, *parents],
            epilog=None if examples is None else "examples:\n" + examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add(
        "run", "run every task of FILE to completion, then write the results", task_opts, node_opts
    )
    p.add_argument("--out", help="results dir (default: swarm-out/JOB)")
    p.set_defaults(func=Command("jobs", "cmd_run"))

    p = add("init", "create this node's state dir (identity key, swarm key)")
    p.add_argument("--key-file", type=Path, help="adopt this swarm key instead of making one")
    p.set_defaults(func=Command("nodes", "cmd_init"))

    p = add("start", "run this node's daemon in the foreground", node_opts, daemon_opts)
    p.set_defaults(func=Command("nodes", "cmd_start"))

    p = add("submit", "validate every line of FILE, then add its tasks", task_opts, client_opts)
    p.add_argument("--wait", action="store_true", help="wait for the job to finish")
    p.set_defaults(func=Command("jobs", "cmd_submit"))

    p = add("status", "show nodes, jobs and running tasks (live until Ctrl-C)", client_opts)
    p.add_argument("--once", action="store_true", help="print once and exit")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON and exit")
    p.add_argument("--job", action="append", help="only this job (repeatable)")
    p.set_defaults(func=Command("live", "cmd_status"))

    p = add(
        "results", "write each task's stdout, stderr and output files to --out DIR", client_opts
    )
    p.add_argument("job", help="the job whose results to write")
    p.add_argument("--out", required=True, help="directory to write into")
    p.set_defaults(func=Command("results", "cmd_results"))

    p = add(
        "export", "the ledger as CSV or JSON Lines: a row per task, attempt or node", client_opts
    )
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p.add_argument("--job", help="only this job")
    p.add_argument(
        "--what",
        choices=("tasks", "attempts", "nodes"),
        help="a row per task (the default), per attempt, or per node that ran an attempt",
    )
    p.add_argument("--attempts", action="store_true", help="the same as --what attempts")
    p.add_argument(
        "--format", choices=("csv", "jsonl"), default="csv", help="CSV (default) or JSON Lines"
    )
    p.set_defaults(func=Command("results", "cmd_export"))

    p = add(
        "cancel",
        "cancel a job, or one task by its id (a 6+ character prefix will do)",
        client_opts,
    )
    p.add_argument("target", metavar="JOB|TASK")
    p.set_defaults(func=Command("jobs", "cmd_cancel"))

    p = add(
        "preemption-watch",
        "drain this node when its cloud gives notice that the VM is to be preempted",
    )
    p.add_argument("--cloud", choices=("gce", "aws"), required=True, help="where the VM runs")
    p.add_argument("--metadata-url", help="the notice's address (default: the cloud's own)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between looks (default: 5)")
    p.add_argument(
        "--grace",
        type=float,
        help="seconds the drain lets tasks finish (default: 15 on gce, 100 on aws)",
    )
    p.set_defaults(func=Command("preempt", "cmd_preemption_watch"))

    p = add(
        "logs", "print the stdout and stderr of a task's latest attempt, from any node", client_opts
    )
    p.add_argument("target", metavar="JOB/NAME|TASK", help="a task: JOB/NAME, or an id prefix")
    p.add_argument(
        "--attempt", type=_attempt_number, help="this attempt (1, 2, ...), not the latest"
    )
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="each attempt's output as it grows, until the task has ended for good",
    )
    p.set_defaults(func=Command("jobs", "cmd_logs"))

    p = add("why", "say why a task is not running (or where it runs, or how it ended)", client_opts)
    p.add_argument("target", metavar="JOB/NAME|TASK", help="a task: JOB/NAME, or an id prefix")
    p.set_defaults(func=Command("jobs", "cmd_why"))

    p = add("retry", "re-queue the failed tasks of a job", client_opts)
    p.add_argument("job", help="the job whose failed tasks to run again")
    p.set_defaults(func=Command("jobs", "cmd_retry"))

    p = add("stop", "stop the local daemon (running attempts are interrupted and re-queued)")
    p.set_defaults(func=Command("nodes", "cmd_stop"))

    p = add("leave", "leave the swarm now and stop (other members see it as left, not dead)")
    p.set_defaults(func=Command("nodes", "cmd_stop"))

    p = add(
        "drain",
        "finish the running tasks, claim nothing new, then leave and stop (a preemption notice)",
        client_opts,
    )
    p.add_argument("node", nargs="?", help="a member's id or its prefix (default: this node)")
    p.add_argument(
        "--grace",
        type=_positive_seconds,
        metavar="SECONDS",
        help="interrupt what still runs after this long (its tasks then run elsewhere)",
    )
    p.add_argument("--wait", action="store_true", help="return when the node has left (stopped)")
    p.set_defaults(func=Command("nodes", "cmd_drain"))

    p = add(
        "join",
        "join the swarm at PEER: with no daemon running, start one joined to it (in the "
        "foreground, with the node options); else tell the running daemon to join",
        node_opts,
        daemon_opts,
    )
    p.add_argument("peer", nargs="+", metavar="PEER", help="a member's HOST:PORT")
    p.set_defaults(func=Command("nodes", "cmd_join"))

    p = add("key", "rotate the swarm key: new FILE, install FILE, use ID, remove ID, list")
    p.add_argument("action", choices=("new", "install", "use", "remove", "list"))
    p.add_argument("arg", nargs="?", metavar="FILE|ID", help="a key file, or a key id")
    p.set_defaults(func=Command("nodes", "cmd_key"))

    p = add("members", "list the swarm's members as this node sees them", client_opts)
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p.set_defaults(func=Command("nodes", "cmd_members"))
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < 86_400:
        raise argparse.ArgumentTypeError(f"must be between 0 and 86400 seconds: {text!r}")
    return value


ATTEMPT_NUMBER_MAX = 2**31 - 1  # far past any retries allowed, and within what the wire carries


def _attempt_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= ATTEMPT_NUMBER_MAX:
        raise argparse.ArgumentTypeError(
            f"not an attempt number from 1 to {ATTEMPT_NUMBER_MAX:,}: {text!r}"
        )
    return value


if __name__ == "__main__":
    sys.exit(main())
