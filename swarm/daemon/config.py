"""How a node is configured: its profiles, its addresses and its labels, defined once.

Theory of operation: a *profile* is one named set of timers, for gossip (`GossipConfig`) and for
the work a node does (heartbeat, lease, claim stagger and settle), that belong together: a lease
must outlive a few missed heartbeats, and a claim's stagger and settle must stay short beside the
lease. `lan` is memberlist's LAN timing and the daemon's default; `test` runs everything several
times faster so that local clusters, the integration tests and the work simulator see a dead
node's tasks move in about two seconds. `swarm start --profile NAME` picks one from `PROFILES`;
`NodeConfig`, what the daemon is started with, takes its timers from it (the CLI may override the
lease with `--lease-ttl`).

Data and parsing only: nothing here reads the clock, the disk or the network.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from swarm.core.gossip_config import Config as GossipConfig
from swarm.core.labels import BUILTIN_LABELS
from swarm.errors import ConfigError, UserInputError

# Light on purpose: every command reads these to build its parser, so this module imports no more
# than the gossip timers' dataclass.
DEFAULT_PORT = 7946  # UDP and TCP, as a node's address is written when the port is left out
KILL_GRACE_S = 2.0  # between SIGTERM and SIGKILL of a timed-out or cancelled attempt
SYNC_MODES = ("full", "normal")  # SQLite's synchronous modes a ledger may use (db.py)

_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_INT_RE = re.compile(r"[+-]?\d+")
# Written out rather than trusting float(), which also takes "nan", "inf" and "1_000".
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")


@dataclass(frozen=True, slots=True)
class Profile:
    """The timers of one way of running a swarm (see the module docstring)."""

    gossip: GossipConfig
    heartbeat_interval_s: float  # how often a node renews all of its leases in one record
    lease_ttl_s: float  # another node's claims expire when its heartbeat stops this long
    claim_stagger_s: float  # the next-ranked node waits this long per rank before claiming
    claim_settle_s: float  # after taking another's task, wait this long for a rival claim


PROFILES: Mapping[str, Profile] = MappingProxyType(
    {
        "lan": Profile(
            gossip=GossipConfig.lan(),
            heartbeat_interval_s=1.0,
            lease_ttl_s=10.0,
            claim_stagger_s=1.0,
            claim_settle_s=0.05,
        ),
        # Leases shorten as gossip does: a dead node's tasks move in about two seconds.
        "test": Profile(
            gossip=GossipConfig.test(),
            heartbeat_interval_s=0.25,
            lease_ttl_s=2.0,
            claim_stagger_s=0.1,
            claim_settle_s=0.05,
        ),
    }
)
LAN = PROFILES["lan"]
TEST = PROFILES["test"]


@dataclass(frozen=True, slots=True)
class NodeConfig:
    cpus: float | None = None  # None: probe (cgroup-aware)
    memory_bytes: int | None = None
    gpus: int | None = None
    labels: dict[str, str | int | float] = field(default_factory=dict)
    sync: str = "full"  # SQLite synchronous mode; see db.py
    bind: tuple[str, int] | None = None  # the gossip address; None: a single node, no network
    join: tuple[tuple[str, int], ...] = ()  # members to join at start
    gossip: GossipConfig = LAN.gossip
    heartbeat_interval_s: float = LAN.heartbeat_interval_s
    # Another node's claims expire when its heartbeat has not advanced for this long (or at once
    # when membership declares it dead); see lease.py.
    lease_ttl_s: float = LAN.lease_ttl_s
    # A task's preferred node claims it at once; the next-ranked one after this long, the
    # third after twice as long, and so on (see policy.py).
    claim_stagger_s: float = LAN.claim_stagger_s
    # A node that takes a task from another's share waits this long after its claim for a
    # competing one to show up before it starts the task.
    claim_settle_s: float = LAN.claim_settle_s
    claim_batch_max: int = 256  # claims made in one scheduler pass
    kill_grace_s: float = KILL_GRACE_S
    # Admit tasks by their measured memory, and evict the newest when memory runs low (see
    # pressure.py); `memfree_bytes` is the floor (None: 5% of the node's memory).
    overcommit: bool = False
    memfree_bytes: int | None = None
    # For tests only (`swarm start --profile test --clock-skew-ms`): added to this node's wall
    # clock, so that a cluster on one machine can have a node whose clock runs ahead or behind.
    clock_skew_ms: int = 0
    # False (`swarm start --no-work`): a member that holds the ledger and results, and takes
    # submissions, but offers no resources and claims nothing (a submit host).
    takes_work: bool = True
    # `swarm start --http HOST:PORT`: the read-only HTTP API and dashboard (http.py); None: off.
    http: tuple[str, int] | None = None


def parse_addr(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """HOST:PORT (or HOST, on the default port) as a (host, port) pair; UserInputError if not."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, str(default_port)
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 address, written [::1]:7946
    if not host or not 0 < port < 65536:
        raise UserInputError(f"{text!r} is not HOST:PORT")
    return host, port


def parse_label(text: str) -> tuple[str, str | int | float]:
    """Parse a `--label key=value` flag; a value that reads as a number becomes one."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    raw = raw.strip()
    if not sep or not key or not raw:
        raise ConfigError(f"--label {text!r}: expected key=value, e.g. --label zone=eu-1")
    if key in BUILTIN_LABELS:  # a task requiring cpus>=8 must meet a node that has 8
        raise ConfigError(
            f"--label {text!r}: {key} is a label every node has, from what it is "
            f"({', '.join(sorted(BUILTIN_LABELS))}); choose another key"
        )
    if _LABEL_KEY_RE.fullmatch(key) is None:
        raise ConfigError(
            f"--label {text!r}: key {key!r} may only hold letters, digits, '_', '-' and '.'"
        )
    value: str | int | float = raw
    if _INT_RE.fullmatch(raw):
        value = int(raw)
    elif _FLOAT_RE.fullmatch(raw):
        number = float(raw)
        # "1e999" overflows to inf, which no requirement could compare sensibly; keep the text.
        if math.isfinite(number):
            value = number
    return key, value
