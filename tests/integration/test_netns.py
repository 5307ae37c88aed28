"""Three nodes on three network "hosts" (namespaces joined by veth pairs on a bridge): cut one
off with iptables, see both sides declare the other dead, heal, and see the swarm merge again.

Needs root, iproute2 and iptables (CI has them); elsewhere it skips and says why. Traffic stays
inside the namespaces this test makes, on addresses it gives them (10.99.0.0/24).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import wait_for as wait_until

pytestmark = pytest.mark.integration

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

    def heal(self, i: int) -> None:
        sh("ip", "netns", "exec", self.names[i], "iptables", "-F")

    def remove(self) -> None:
        for ns in [*self.names, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    reason = why_not()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the multi-host test, but: {reason}")
        print(f"SKIPPED netns test: {reason}")
        pytest.skip(reason)
    h = Hosts(3)
    try:
        yield h
    finally:
        h.remove()


def test_a_partition_is_seen_on_both_sides_and_heals(hosts: Hosts, tmp_path: Path) -> None:
    homes = [tmp_path / f"home{i}" for i in range(3)]
    env = {**os.environ}
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []

    def cli(i: int, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "swarm", *args, "--data-dir", str(homes[i])],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def states(i: int) -> dict[str, str]:
        reply: dict[str, Any] = json.loads(cli(i, "members", "--json"))
        return {m["address"]: m["state"] for m in reply["members"]}

    def wait_for(what: str, check: Callable[[], bool]) -> None:
        wait_until(what, check, 45.0, 0.3, lambda: [states(i) for i in range(3)])

    try:
        cli(0, "init")
        for i in (1, 2):
            cli(i, "init", "--key-file", str(homes[0] / "swarm.key"))
        for i in range(3):
            args = ["--bind", f"{hosts.ip(i)}:{PORT}", "--profile", "test", "--cpus", "1"]
            if i:
                args += ["--join", f"{hosts.ip(0)}:{PORT}"]
            log = open(tmp_path / f"node{i}.log", "wb")  # noqa: SIM115 - closed in the finally
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        hosts.names[i],
                        sys.executable,
                        "-m",
                        "swarm",
                        "start",
                        "--data-dir",
                        str(homes[i]),
                        *args,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        addrs = [f"{hosts.ip(i)}:{PORT}" for i in range(3)]
        everyone_alive = dict.fromkeys(addrs, "alive")
        time.sleep(1)
        wait_for("the swarm to form", lambda: all(states(i) == everyone_alive for i in range(3)))

        hosts.cut_off(2)
        wait_for(
            "both sides to declare the other dead",
            lambda: (
                states(0)[addrs[2]] == "dead"
                and states(1)[addrs[2]] == "dead"
                and states(2)[addrs[0]] == "dead"
                and states(2)[addrs[1]] == "dead"
            ),
        )
        tasks = tmp_path / "during.jsonl"
        tasks.write_text(json.dumps({"cmd": "echo written during the partition"}) + "\n")
        cli(0, "submit", str(tasks), "--wait")

        hosts.heal(2)
        wait_for(
            "the swarm to merge again", lambda: all(states(i) == everyone_alive for i in range(3))
        )
        wait_for(
            "the cut-off node to catch up on the ledger",
            lambda: any(
                j["job"] == "during" and j["done"] == 1
                for j in json.loads(cli(2, "status", "--json"))["jobs"]
            ),
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
