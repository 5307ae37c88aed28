"""The gossip timers and fanouts (memberlist's LAN profile, and one ten times faster for tests):
apart from gossip.py so that the configuration every command reads (daemon/config.py) loads no
more than this dataclass."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Config:
    """Timers and fanouts; the defaults are memberlist's LAN profile."""

    probe_interval_s: float = 1.0  # one member probed per interval
    probe_timeout_s: float = 0.5  # wait for a direct ack before asking others
    indirect_checks: int = 3  # members asked to probe for us
    suspicion_mult: int = 4  # suspicion timeout = mult * log10(N) * probe interval ...
    suspicion_max_timeout_mult: int = 6  # ... up to this many times that, few confirmations
    retransmit_mult: int = 4  # a rumour is sent mult * ceil(log10(N+1)) times
    gossip_interval_s: float = 0.2
    gossip_nodes: int = 3  # members a gossip packet goes to
    gossip_to_the_dead_s: float = 30.0  # dead members still get gossip this long
    push_pull_interval_s: float = 30.0  # full state exchange with a random member
    reconnect_interval_s: float = 10.0  # full state exchange attempted with a dead member
    awareness_max: int = 8  # the local health multiplier goes up to this
    piggyback_max: int = 8  # rumours carried by one packet

    @staticmethod
    def lan() -> Config:
        return Config()

    @staticmethod
    def test() -> Config:
        """Ten times faster than LAN, for tests and local clusters."""
        return Config(
            probe_interval_s=0.1,
            probe_timeout_s=0.05,
            gossip_interval_s=0.02,
            gossip_to_the_dead_s=3.0,
            push_pull_interval_s=3.0,
            reconnect_interval_s=1.0,
        )
