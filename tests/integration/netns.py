"""Network "hosts" for tests and benches: namespaces joined by veth pairs on a bridge, with
faults made by iptables inside them. Traffic stays inside the namespaces made here, on the
addresses given to them (10.99.0.0/24). Needs root, iproute2 and iptables.

Not a test module: test_netns.py and bench/swarm_share.py use it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

SUBNET = "10.99.0"
PORT = 7946


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 iptables)"
    probe = f"swp{os.getpid() % 100000}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"cannot create a network namespace: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Hosts:
    """A hub namespace with a bridge, and one namespace per node, each wired to the bridge."""

    def __init__(self, count: int) -> None:
        tag = f"{os.getpid() % 10000}"
        self.hub = f"swh{tag}"
        self.names = [f"sw{tag}n{i}" for i in range(count)]
        sh("ip", "netns", "add", self.hub)
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.names):
            inner, outer = f"v{tag}n{i}", f"v{tag}h{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
            sh("ip", "link", "set", inner, "netns", ns)
            sh("ip", "link", "set", outer, "netns", self.hub)
            sh("ip", "-n", self.hub, "link", "set", outer, "master", "br0")
            sh("ip", "-n", self.hub, "link", "set", outer, "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", inner)
            sh("ip", "-n", ns, "link", "set", inner, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    @staticmethod
    def ip(i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def cut_off(self, i: int) -> None:
        """Drop everything between node i and the others, both ways, in node i's namespace."""
        for j in range(len(self.names)):
            if j != i:
                for chain, flag in (("INPUT", "-s"), ("OUTPUT", "-d")):
                    sh("ip", "netns", "exec", self.names[i], "iptables", "-I", chain, flag,
                       self.ip(j), "-j", "DROP")  # fmt: skip

    def split(self, side: list[int]) -> None:
        """Drop everything between the nodes of `side` and all the others, both ways."""
        for i in side:
            for j in range(len(self.names)):
                if j not in side:
                    for chain, flag in (("INPUT", "-s"), ("OUTPUT", "-d")):
                        sh("ip", "netns", "exec", self.names[i], "iptables", "-I", chain, flag,
                           self.ip(j), "-j", "DROP")  # fmt: skip

    def lossy(self, i: int, probability: float) -> None:
        """Drop that share of every packet node i receives (iptables' statistic match)."""
        sh("ip", "netns", "exec", self.names[i], "iptables", "-I", "INPUT", "-m", "statistic",
           "--mode", "random", "--probability", str(probability), "-j", "DROP")  # fmt: skip

    def block_tcp(self, i: int, j: int) -> None:
        """Node i can no longer open TCP connections to node j (its SYNs are dropped); UDP,
        and connections node j opens, still flow."""
        sh("ip", "netns", "exec", self.names[i], "iptables", "-I", "OUTPUT", "-p", "tcp",
           "--syn", "-d", self.ip(j), "-j", "DROP")  # fmt: skip

    def heal(self, i: int) -> None:
        sh("ip", "netns", "exec", self.names[i], "iptables", "-F")

    def remove(self) -> None:
        for ns in [*self.names, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
