"""The commands that run and look after this node: `init`, `start`, `join`, `stop` and `leave`,
`drain`, `key` (rotation) and `members`; and the node options (`--cpus`, `--bind`, `--profile`,
...) made into the configuration a node starts with."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import signal
import time
from pathlib import Path

from rich.table import Table

from swarm import connection, statedir
from swarm.cli.common import _call, err, out, peer_of, plural
from swarm.core import units, wire
from swarm.daemon.config import DEFAULT_PORT, PROFILES, NodeConfig, parse_addr, parse_label
from swarm.errors import NotRunningError, SwarmError, UserInputError

STOP_WAIT_S = 30.0  # `stop` waits this long for the daemon to record its attempts and exit


def node_config(args: argparse.Namespace) -> NodeConfig:
    labels = dict(parse_label(text) for text in args.label)
    memory = units.parse_size(args.memory, field="--memory") if args.memory else None
    warn_beyond_machine(args.cpus, args.memory, memory, args.gpus)
    memfree = units.parse_size(args.memfree, field="--memfree") if args.memfree else None
    if memfree is not None and not args.overcommit:
        raise UserInputError("--memfree works with --overcommit; add it, or leave --memfree out")
    if memfree is not None and memory is not None and memfree >= memory:
        raise UserInputError(
            f"--memfree {args.memfree} is not less than --memory {args.memory}: no task could "
            "ever start"
        )
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
        takes_work=not getattr(args, "no_work", False),  # `swarm run` has no --no-work
        http=parse_addr(args.http, default_port=HTTP_PORT) if getattr(args, "http", None) else None,
    )


HTTP_PORT = 8080  # `--http HOST` alone


def warn_beyond_machine(
    cpus: float | None, memory_text: str | None, memory: int | None, gpus: int | None = None
) -> None:
    """Say so when --cpus, --memory or --gpus offers more than this machine has (tasks claimed
    on the strength of it would be starved, killed or given devices that are not there), or
    when a --memory without a unit reads as MiB. (A value no node may have at all, -1 or inf,
    is refused as the node starts, with no warning first.)"""
    from swarm.daemon import resources  # the probes: only a node's start needs them

    if memory_text is not None and memory_text.strip().replace(".", "", 1).isdigit():
        err.print(
            f"[yellow]note:[/] --memory {memory_text} is {memory_text} MiB (a bare number is "
            f"MiB); write {memory_text}G for GiB",
            soft_wrap=True,
        )
    machine_cpus = resources.probe_cpus()
    if cpus is not None and machine_cpus < cpus < math.inf:
        err.print(
            f"[yellow]warning:[/] --cpus {cpus:g} is more than the {machine_cpus:g} CPUs this "
            "machine gives this process: tasks will share them",
            soft_wrap=True,
        )
    machine_memory = resources.probe_memory_bytes()
    if memory is not None and memory > machine_memory:
        err.print(
            f"[yellow]warning:[/] --memory {memory_text} is more than the "
            f"{units.format_bytes(machine_memory)} this machine gives this process: tasks "
            "admitted on it may be killed for lack of memory",
            soft_wrap=True,
        )
    machine_gpus = resources.probe_gpus() if gpus is not None else 0
    if gpus is not None and gpus > machine_gpus:
        err.print(
            f"[yellow]warning:[/] --gpus {gpus} is more than the {machine_gpus} GPUs found on "
            "this machine: tasks given the others will find no device",
            soft_wrap=True,
        )


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
    out.print("or, on a machine that only submits and watches (with the key, and no daemon):")
    out.print(f"  export SWARM_PEER=A_NODE:{DEFAULT_PORT}; swarm status")
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


def cmd_join(args: argparse.Namespace) -> int:
    """Join through the running daemon; with none running, start one in the foreground, joined."""
    state = statedir.resolve(args.data_dir)
    if asyncio.run(connection.is_running(state)):
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
    if args.action != "list" and asyncio.run(connection.is_running(state)):
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
    if not asyncio.run(connection.is_running(state)):
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


DRAIN_POLL_S = 0.5  # how often `drain NODE --wait` asks whether the node has left


def _member_state(args: argparse.Namespace, node: str) -> str:
    members = _call(args, lambda client: client.members())["members"]
    return next((str(m["state"]) for m in members if m["id"] == node), "left")


def cmd_drain(args: argparse.Namespace) -> int:
    state = statedir.resolve(args.data_dir)
    peer = peer_of(args)
    if peer is not None and not args.node:
        raise UserInputError(
            f"with --peer, name the node to drain (an id prefix: see `swarm members --peer {peer}`)"
        )
    reply = _call(args, lambda client: client.drain(args.node or "", args.grace))
    node = reply["node"]
    if reply["running"] is None:
        out.print(f"asked node {node[:8]} to drain; it leaves the swarm when its tasks end")
        if not args.wait:
            return 0
        while _member_state(args, node) not in ("left", "dead"):  # as this node hears of it
            time.sleep(DRAIN_POLL_S)
        out.print(f"drained: node {node[:8]} has left the swarm")
        return 0
    which = f"node {node[:8]} (at {peer})" if peer else f"this node ({node[:8]})"
    out.print(
        f"draining {which}: {plural(reply['running'], 'attempt')} to "
        "finish, nothing new is claimed, then it leaves the swarm and stops"
    )
    if not args.wait:
        return 0
    # The daemon exits once drained: its lock is free, or (another machine's) it stops answering.
    while _answers(args) if peer else statedir.lock_held(state):
        time.sleep(0.2)
    out.print("drained: the daemon has stopped")
    return 0


def _answers(args: argparse.Namespace) -> bool:
    """Whether the node still takes connections (any other trouble, a busy node say, is not
    its stop)."""
    try:
        _call(args, lambda client: client.ping())
    except NotRunningError:
        return False
    except (SwarmError, OSError):
        pass
    return True
