"""Joining a swarm and leaving it: seeds resolved, joined through again and again until a member
answers (as Serf retries its joins), and what is wrong said when none does; a graceful leave;
the gossip sockets bound, or why not in words; the swarm key ring kept as the state dir says."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
import time
from collections.abc import Callable

from swarm import statedir
from swarm.core import gossip, wire
from swarm.daemon.net import GossipNet
from swarm.errors import ConfigError, UserInputError
from swarm.statedir import StateDir

log = logging.getLogger("swarm.daemon.peers")

JOIN_ANSWER_S = 5.0  # a join that no seed has answered in this long is reported (and retried)
JOIN_POLL_S = 0.1  # how often a join looks for the seed among the members meanwhile
# A join no seed answered is sent again after this long, then after twice as long each time (up
# to the gossip's reconnect interval): a connection refused costs the seed nothing.
JOIN_RETRY_FIRST_S = 0.25
RESOLVE_WAIT_S = 5.0  # longest wait for a seed's name to resolve
LEAVE_SPREAD_S = 0.5  # at most this long for a leave to go out before the sockets close

Seed = tuple[str, int]
PEERS_REMEMBERED_MAX = 64  # members kept in the state dir to rejoin through after a restart
PEERS_FILE_BYTES_MAX = 64 * 300  # of that file, read: its lines are short


def remember(state: StateDir, seeds: list[Seed]) -> None:
    """Keep the members seen alive, so that a restarted node rejoins with no --join: written to
    a temp file and renamed, so a crash leaves the old list or the new. Blocking (small)."""
    text = "".join(f"{host}:{port}\n" for host, port in sorted(seeds)[:PEERS_REMEMBERED_MAX])
    # A temp file of its own: two writes under way at once (members changing fast) never mix.
    tmp = state.peers_path.with_name(f"peers.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(state.peers_path)
    except OSError as exc:  # a full disk, say: the next change tries again
        log.debug("could not keep the members seen: %s", exc)
        tmp.unlink(missing_ok=True)


def remembered(state: StateDir) -> list[Seed]:
    """The members this node last saw alive ([] if none, or the file is unreadable)."""
    try:
        with open(state.peers_path, encoding="utf-8") as kept:
            lines = kept.read(PEERS_FILE_BYTES_MAX).splitlines()[:PEERS_REMEMBERED_MAX]
    except (OSError, UnicodeDecodeError):
        return []
    seeds = []
    for line in lines:
        host, sep, port = line.strip().rpartition(":")
        if sep and host and port.isdigit() and 0 < int(port) < 65536:
            seeds.append((host, int(port)))
    return seeds


def join(membership: gossip.Membership | None, net: GossipNet | None, seeds: list[Seed]) -> None:
    if membership is None or net is None:
        raise UserInputError("this node has no gossip address: start it with --bind HOST:PORT")
    membership.join(time.monotonic(), seeds)
    net.poke()


async def join_until_answered(
    membership: gossip.Membership,
    net: GossipNet,
    seeds: list[Seed],
    retry_max_s: float,
    stopping: Callable[[], bool],
) -> None:
    """Join through the seeds, again and again until some member is known: a seed may be
    starting at the same moment (nodes started together), or be briefly unreachable. The
    first retries come soon, the wait doubling up to `retry_max_s` (the gossip's reconnect
    interval, 10 s on LAN timers), so that nodes started together form a swarm in about a
    second. What is wrong with a join that no seed answers is logged meanwhile (the joining
    goes on)."""
    told = asyncio.create_task(_tell_join(seeds, membership, stopping))
    retry_s = min(JOIN_RETRY_FIRST_S, retry_max_s)
    try:
        while len(membership.members) <= 1:
            join(membership, net, seeds)
            await asyncio.sleep(retry_s)
            retry_s = min(2 * retry_s, retry_max_s)
    finally:
        told.cancel()


async def _tell_join(
    seeds: list[Seed], membership: gossip.Membership, stopping: Callable[[], bool]
) -> None:
    for problem in await await_seeds(seeds, lambda: membership, stopping):
        log.warning("%s (still trying)", problem)


async def listen(net: GossipNet, tg: asyncio.TaskGroup, bind: Seed) -> list[asyncio.Task[None]]:
    """Bind the gossip sockets; ConfigError saying why if they cannot be bound (the net is
    closed then: nothing half-started may keep the process alive)."""
    try:
        return await net.start(tg)
    except OSError as exc:
        net.close()
        raise ConfigError(f"cannot listen on {bind[0]}:{bind[1]}: {bind_problem(exc)}") from exc


async def leave(membership: gossip.Membership, net: GossipNet, gossip_interval_s: float) -> None:
    """Tell the swarm we go (a graceful leave), give the rumour a moment to spread, and close."""
    membership.leave(time.monotonic())
    net.poke()
    await asyncio.sleep(min(LEAVE_SPREAD_S, 5 * gossip_interval_s))
    net.close()


async def await_seeds(
    seeds: list[Seed],
    membership: Callable[[], gossip.Membership | None],
    stopping: Callable[[], bool],
) -> list[str]:
    """Wait up to JOIN_ANSWER_S for a seed to answer, which it has once a live member is at
    its address. The problems, one sentence each; none once a seed has answered."""
    resolved, problems = await resolve(seeds)
    deadline = time.monotonic() + JOIN_ANSWER_S
    while not seed_answered(membership(), resolved):
        if not resolved or time.monotonic() >= deadline or stopping():
            silent = ", ".join(f"{host}:{port}" for host, port in resolved)
            if silent:
                problems.append(
                    f"no answer from {silent} after {JOIN_ANSWER_S:g} s: "
                    "is a node running there, with this swarm key?"
                )
            return problems
        await asyncio.sleep(JOIN_POLL_S)
    return []


def seed_answered(membership: gossip.Membership | None, resolved: dict[Seed, set[str]]) -> bool:
    if membership is None:
        return False
    return any(
        member.addr[1] == port and member.addr[0] in addresses | {host}
        for member in membership.live_members()
        if member.node != membership.node
        for (host, port), addresses in resolved.items()
    )


def reload_key_ring(ring: wire.KeyRing, state: StateDir) -> str:
    """Make the key ring what the state dir says: every key installed, swarm.key in use. The
    ring object is shared with the sealer and opener, so this takes effect at once. Returns the
    id of the key in use, in hex."""
    in_use, others = statedir.key_ring_files(state)
    wanted = {wire.key_id(k): k for k in [in_use, *others]}
    for kid in [k for k in ring.keys if k not in wanted and k != ring.in_use]:
        ring.remove(kid)
    for key in wanted.values():
        ring.install(key)
    ring.use(wire.key_id(in_use))
    for kid in [k for k in ring.keys if k not in wanted]:
        ring.remove(kid)  # the old key in use, now that another one is
    return ring.in_use.hex()


async def resolve(
    seeds: list[tuple[str, int]],
) -> tuple[dict[tuple[str, int], set[str]], list[str]]:
    """The IP addresses of each seed, and a sentence for each seed whose name does not resolve."""
    loop = asyncio.get_running_loop()
    found: dict[tuple[str, int], set[str]] = {}
    problems: list[str] = []
    for host, port in seeds:
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), RESOLVE_WAIT_S
            )
        except (OSError, TimeoutError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else None
            problems.append(
                f"{host}:{port} does not resolve ({why or 'no answer from the resolver'}): "
                "check the name"
            )
            continue
        found[(host, port)] = {str(info[4][0]) for info in infos}
    return found, problems


def bind_problem(exc: OSError) -> str:
    """Why an address could not be bound, in words."""
    if exc.errno == errno.EADDRINUSE:
        return (
            "the address is in use (another swarm node, or another program?); choose another port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this machine's"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve ({exc.strerror})"
    return exc.strerror or str(exc)
