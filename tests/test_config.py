"""Tests of swarm.daemon.config: the profiles are defined once and the CLI's node options take
their timers from them; node addresses as users write them."""

from __future__ import annotations

import pytest

from swarm.cli.main import build_parser
from swarm.cli.nodes import node_config
from swarm.core import gossip
from swarm.daemon.config import DEFAULT_PORT, LAN, PROFILES, TEST, NodeConfig, Profile, parse_addr
from swarm.errors import UserInputError

HEARTBEATS_MISSED_MIN = 4  # a lease outlives at least this many heartbeat intervals


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_a_profile_keeps_its_timers_in_proportion(name: str) -> None:
    profile = PROFILES[name]
    assert profile.lease_ttl_s >= HEARTBEATS_MISSED_MIN * profile.heartbeat_interval_s
    # The third-ranked node waits two staggers: still well inside one lease.
    assert 2 * profile.claim_stagger_s < profile.lease_ttl_s
    assert profile.claim_settle_s < profile.claim_stagger_s


def test_the_profiles_are_the_ones_the_cli_offers() -> None:
    assert set(PROFILES) == {"lan", "test"}
    assert LAN.gossip == gossip.Config.lan()
    assert TEST.gossip == gossip.Config.test()
    assert TEST.lease_ttl_s < LAN.lease_ttl_s


def test_a_default_node_config_has_the_lan_timers() -> None:
    assert _timers(NodeConfig()) == LAN


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_the_profile_flag_gives_the_node_that_profile(name: str) -> None:
    args = build_parser().parse_args(["start", "--profile", name])
    assert _timers(node_config(args)) == PROFILES[name]


def test_lease_ttl_overrides_only_the_lease() -> None:
    args = build_parser().parse_args(["start", "--profile", "test", "--lease-ttl", "7.5"])
    config = node_config(args)
    assert config.lease_ttl_s == 7.5
    assert config.heartbeat_interval_s == TEST.heartbeat_interval_s
    assert config.gossip == TEST.gossip


def test_the_lan_profile_is_the_default() -> None:
    args = build_parser().parse_args(["run", "tasks.jsonl"])
    assert _timers(node_config(args)) == LAN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5:7000", ("10.0.0.5", 7000)),
        ("node-a", ("node-a", DEFAULT_PORT)),
        ("node-a:1", ("node-a", 1)),
        ("node-a:65535", ("node-a", 65535)),
        ("::1:7000", ("::1", 7000)),  # the last colon splits off the port
    ],
)
def test_parse_addr_good(text: str, expected: tuple[str, int]) -> None:
    assert parse_addr(text) == expected


@pytest.mark.parametrize("text", ["", ":7000", "host:", "host:0", "host:65536", "host:x"])
def test_parse_addr_bad(text: str) -> None:
    with pytest.raises(UserInputError, match="is not HOST:PORT"):
        parse_addr(text)


def _timers(config: NodeConfig) -> Profile:
    return Profile(
        gossip=config.gossip,
        heartbeat_interval_s=config.heartbeat_interval_s,
        lease_ttl_s=config.lease_ttl_s,
        claim_stagger_s=config.claim_stagger_s,
        claim_settle_s=config.claim_settle_s,
    )
