"""A push of fresh records too big for one datagram is split until each part fits."""

from __future__ import annotations

from typing import Any

from swarm.core import wire
from swarm.daemon.node import Node


class Net:
    """Takes a push only if it has at most `fits` records, as a size limit would."""

    def __init__(self, fits: int) -> None:
        self.fits = fits
        self.sent: list[int] = []

    def send_records(self, addrs: list[Any], push: wire.RecordsPush) -> bool:
        if len(push.records) > self.fits:
            return False
        self.sent.append(len(push.records))
        return True


class Holder:
    def __init__(self, net: Net) -> None:
        self.net = net
        self._send_fitting = lambda fanout, copies: Node._send_fitting(self, fanout, copies)  # type: ignore[arg-type]


def test_a_push_that_does_not_fit_is_halved_until_it_does() -> None:
    net = Net(fits=3)
    holder = Holder(net)
    copies = tuple(("n", 1, seq, b"x") for seq in range(8))
    Node._send_fitting(holder, [("10.0.0.1", 7946)], copies)  # type: ignore[arg-type]
    assert sum(net.sent) == 8 and max(net.sent) <= 3
    assert net.sent == [2, 2, 2, 2]


def test_a_single_record_too_big_for_any_datagram_is_left_to_anti_entropy() -> None:
    net = Net(fits=0)
    Node._send_fitting(Holder(net), [("10.0.0.1", 7946)], (("n", 1, 1, b"x"),))  # type: ignore[arg-type]
    assert net.sent == []
