"""What someone without the swarm key can take from one real daemon: memory, descriptors, log, control.

Each attack gets a fresh daemon on 127.0.0.1 (its own state dir, `--profile test`), and is bounded
in count and time:
  * tcp-buffer: 20 TCP connections, each sending a 4-byte length of 8 MiB - 1 and that many random
    bytes (junk, nothing sealed), held open about 5 s after the send, then closed;
  * tcp-idle: 1,000 TCP connections (fewer if this process's fd limit is lower), held idle 10 s;
  * forged-senders: 100,000 datagrams at 20,000/s, each an envelope header with the node's REAL
    key id (public: it travels in every datagram), a random sender id and a counter, then 64
    random bytes;
  * fd-exhaust: the daemon runs under `prlimit --nofile=256:256`; 400 connections are attempted,
    held 15 s and closed; then, 5 s later, is the node answering again?
During each attack the daemon's RSS (VmRSS) and open fds are sampled every 0.2 s, and
`swarm members --json` is run again and again, each with 5 s to answer. A benchmark, not a test:
it prints figures and exits 0.
Run: python3 bench/hostile.py [--only NAME] [--python REPO] [--rate PER_S] [--keep]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import errno
import functools
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SAMPLE_INTERVAL_S = 0.2
CONTROL_TIMEOUT_S = 5.0  # `swarm members` must answer within this to count as answered
CONTROL_PAUSE_S = 0.5  # between two `swarm members` during an attack (each starts an interpreter)
START_TIMEOUT_S = 30.0
SETTLE_S = 2.0  # after the daemon answers, before the "before" figure
AFTER_S = 3.0  # after an attack ends, before the "after" figure
CONNECT_WINDOW_S = 5.0  # how long a batch of connections may take to be established

BUFFER_CONNECTIONS = 20
BUFFER_FRAME_BYTES = (8 << 20) - 1  # just under the daemon's 8 MiB frame limit
BUFFER_HOLD_S = 5.0
IDLE_CONNECTIONS = 1_000
IDLE_HOLD_S = 10.0
FORGED_DATAGRAMS = 100_000
FORGED_RATE_PER_S = 20_000
FORGED_BATCH = 20  # datagrams sent back to back: a burst must fit the receive buffer
FORGED_BODY_BYTES = 64
EXHAUST_NOFILE = 256  # the daemon's fd limit, soft and hard
EXHAUST_ATTEMPTS = 400
EXHAUST_HOLD_S = 15.0
EXHAUST_RECOVERY_S = 5.0
TOP_LOG_MESSAGES = 5

_ENVELOPE_HEADER = struct.Struct(">B4s16sQ")  # swarm.core.wire: version | key id | sender | counter
_TIMESTAMP = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
_FD_EXHAUSTED = re.compile(rb"Too many open files|EMFILE")
_LISTENER = re.compile(rb"laddr=('[^']*', \d+|[^>]*)")  # which socket asyncio's accept error names


# -- the daemon under attack -------------------------------------------------------------------


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (as tests/integration/conftest.py)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise SystemExit("no free port")


@dataclass
class Node:
    """One daemon of the swarm checkout at `repo`, with its own state dir under `root`."""

    repo: Path
    root: Path
    nofile: int | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        return {**os.environ, "SWARM_HOME": str(self.home), "PYTHONPATH": str(self.repo)}

    def swarm(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "swarm", *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> Node:
        self.root.mkdir(parents=True)
        done = self.swarm("init")
        if done.returncode != 0:
            raise SystemExit(f"swarm init failed:\n{done.stderr}")
        self.port = free_port()
        cmd = [sys.executable, "-m", "swarm", "start"]
        cmd += ["--bind", f"{HOST}:{self.port}", "--profile", "test"]
        if self.nofile is not None:
            # prlimit execs the command: the daemon keeps prlimit's pid.
            cmd = ["prlimit", f"--nofile={self.nofile}:{self.nofile}", *cmd]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.root, env=self.env(), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon exited at start:\n{self.log.read_text()}")
            if self.members()[0]:
                return self
            time.sleep(0.3)
        raise SystemExit(f"the daemon did not answer in {START_TIMEOUT_S:.0f} s")

    def members(self) -> tuple[bool, float, str]:
        """(answered within CONTROL_TIMEOUT_S, seconds taken, stdout) of `swarm members --json`."""
        started = time.monotonic()
        try:
            done = self.swarm("members", "--json", timeout=CONTROL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return False, time.monotonic() - started, ""
        return done.returncode == 0, time.monotonic() - started, done.stdout

    def net_stats(self) -> str:
        """What the daemon counted: packets and frames it took in, and how many it dropped."""
        ok, _, stdout = self.members()
        if not ok:
            return "net stats: no answer"
        net = json.loads(stdout).get("net", {})
        return (
            f"daemon counted {net.get('received', '?')} received, {net.get('dropped', '?')} dropped"
        )

    def fd_limit(self) -> str:
        for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return line.split()[3]
        return "?"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of /proc/PID/status in MB: VmRSS now, or VmHWM, the peak since start."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- what runs beside an attack ----------------------------------------------------------------


class Sampler(threading.Thread):
    """The daemon's RSS and open fds every SAMPLE_INTERVAL_S, keeping the peaks."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.rss_peak = 0.0
        self.fds_peak = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            with contextlib.suppress(OSError):
                self.rss_peak = max(self.rss_peak, rss_mb(self.pid))
                self.fds_peak = max(self.fds_peak, fd_count(self.pid))
            self.halt.wait(SAMPLE_INTERVAL_S)


class ControlProbe(threading.Thread):
    """`swarm members --json` over and over: how many answered in time, and the slowest."""

    def __init__(self, node: Node) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.asked = 0
        self.answered = 0
        self.slowest_s = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            ok, took, _ = self.node.members()
            self.asked += 1
            self.answered += ok
            self.slowest_s = max(self.slowest_s, took)
            self.halt.wait(CONTROL_PAUSE_S)

    def summary(self) -> str:
        verdict = "yes" if self.asked and self.answered == self.asked else "NO"
        return f"{verdict} {self.answered}/{self.asked} ({self.slowest_s:.1f})"


@contextlib.contextmanager
def watching(node: Node, ask: bool = True) -> Iterator[tuple[Sampler, ControlProbe]]:
    """Sample the daemon meanwhile, and (if `ask`) keep asking it `swarm members`."""
    sampler, probe = Sampler(node.pid), ControlProbe(node)
    sampler.start()
    if ask:
        probe.start()
    try:
        yield sampler, probe
    finally:
        probe.halt.set()
        sampler.halt.set()
        if ask:
            probe.join()
        sampler.join()


# -- the attacks -------------------------------------------------------------------------------


def open_many(port: int, count: int) -> tuple[list[socket.socket], int]:
    """Up to `count` TCP connections to the daemon, all started at once; (established, errors).
    A connection not established within CONNECT_WINDOW_S is given up."""
    established: list[socket.socket] = []
    errors = 0
    with selectors.DefaultSelector() as waiting:
        for _ in range(count):
            try:
                conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError:
                errors += 1
                break  # our own fd limit
            conn.setblocking(False)
            code = conn.connect_ex((HOST, port))
            if code == 0:
                established.append(conn)
            elif code == errno.EINPROGRESS:
                waiting.register(conn, selectors.EVENT_WRITE)
            else:
                conn.close()
                errors += 1
        deadline = time.monotonic() + CONNECT_WINDOW_S
        while waiting.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in waiting.select(left):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                waiting.unregister(conn)
                if conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    established.append(conn)
                else:
                    conn.close()
                    errors += 1
        for key in list(waiting.get_map().values()):
            assert isinstance(key.fileobj, socket.socket)
            key.fileobj.close()
            errors += 1
    return established, errors


def close_all(conns: list[socket.socket]) -> None:
    for conn in conns:
        conn.close()


def tcp_buffer(node: Node, withhold_last: bool = False) -> list[str]:
    """20 junk frames of 8 MiB - 1. A complete frame is read, refused and freed at once, so its
    peak is brief; with `withhold_last`, each frame's last byte is never sent, and the daemon
    holds every buffer for the whole hold."""
    payload = struct.pack(">I", BUFFER_FRAME_BYTES) + os.urandom(BUFFER_FRAME_BYTES)
    if withhold_last:
        payload = payload[:-1]
    sent = [0]
    failures: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            with socket.create_connection((HOST, node.port), timeout=30) as conn:
                conn.sendall(payload)
                with lock:
                    sent[0] += 1
                time.sleep(BUFFER_HOLD_S)
        except OSError as exc:
            with lock:
                failures.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(BUFFER_CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    notes = [
        f"{sent[0]}/{BUFFER_CONNECTIONS} frames of {BUFFER_FRAME_BYTES:,} B sent"
        + (" but the last byte" if withhold_last else "")
        + f" (one random buffer), held {BUFFER_HOLD_S:.0f} s"
    ]
    if failures:
        notes.append(f"send errors: {dict(collections.Counter(failures))}")
    return notes


def tcp_idle(node: Node) -> list[str]:
    conns, errors = open_many(node.port, IDLE_CONNECTIONS)
    time.sleep(IDLE_HOLD_S)
    still_open = sum(1 for c in conns if _still_open(c))
    close_all(conns)
    return [
        f"{len(conns)}/{IDLE_CONNECTIONS} connected ({errors} failed), held {IDLE_HOLD_S:.0f} s",
        f"{still_open} still open at the end",
    ]


def _still_open(conn: socket.socket) -> bool:
    """False if the daemon closed the connection (a read would give EOF or an error)."""
    try:
        return conn.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def forged_senders(node: Node, rate_per_s: int = FORGED_RATE_PER_S) -> list[str]:
    key_id = node_key_id(node)
    sent = errors = 0
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for counter in range(1, FORGED_DATAGRAMS + 1):
            header = _ENVELOPE_HEADER.pack(1, key_id, os.urandom(16), counter)
            try:
                udp.sendto(header + os.urandom(FORGED_BODY_BYTES), (HOST, node.port))
                sent += 1
            except OSError:
                errors += 1
            if counter % FORGED_BATCH == 0:
                ahead = counter / rate_per_s - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    took = time.monotonic() - started
    return [
        f"key id {key_id.hex()}; {sent:,} sent in {took:.1f} s at <= {rate_per_s:,}/s "
        f"({errors} send errors)",
    ]


def node_key_id(node: Node) -> bytes:
    """`swarm.core.wire.key_id` of the node's swarm key, computed by the checkout under attack."""
    code = (
        "import sys\n"
        "try:\n    from swarm.core import wire\n"
        "except ImportError:  # a checkout from before the package had rooms\n"
        "    from swarm import wire\n"
        "print(wire.key_id(bytes.fromhex(open(sys.argv[1]).read().strip())).hex())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(node.home / "swarm.key")],
        cwd=node.root,
        env=node.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return bytes.fromhex(done.stdout.strip())


def fd_exhaust(node: Node) -> list[str]:
    conns, errors = open_many(node.port, EXHAUST_ATTEMPTS)
    time.sleep(EXHAUST_HOLD_S)
    close_all(conns)
    return [
        f"daemon nofile {node.fd_limit()}; {len(conns)}/{EXHAUST_ATTEMPTS} connected "
        f"({errors} not; the kernel completes a handshake before accept), held {EXHAUST_HOLD_S:.0f} s",
    ]


@dataclass
class Attack:
    name: str
    run: Callable[[Node], list[str]]
    nofile: int | None = None
    recovery_s: float = 0.0  # > 0: after the attack, wait this long, then ask the node once


ATTACKS = [
    Attack("tcp-buffer", tcp_buffer),
    Attack("tcp-buffer-held", functools.partial(tcp_buffer, withhold_last=True)),
    Attack("tcp-idle", tcp_idle),
    Attack("forged-senders", forged_senders),
    Attack("fd-exhaust", fd_exhaust, nofile=EXHAUST_NOFILE, recovery_s=EXHAUST_RECOVERY_S),
]


# -- one measured attack -----------------------------------------------------------------------


@dataclass
class Row:
    attack: str
    rss_before: float = 0.0
    rss_peak: float = 0.0
    rss_after: float = 0.0
    fds_before: int = 0
    fds_peak: int = 0
    log_lines: int = 0
    log_bytes: int = 0
    control: str = ""
    notes: list[str] = field(default_factory=list)
    top_log: list[tuple[int, str]] = field(default_factory=list)


def measure(attack: Attack, repo: Path, root: Path) -> Row:
    node = Node(repo, root / attack.name, nofile=attack.nofile).start()
    row = Row(attack.name)
    try:
        time.sleep(SETTLE_S)
        _, idle_s, _ = node.members()
        row.rss_before, row.fds_before = rss_mb(node.pid), fd_count(node.pid)
        log_from = node.log.stat().st_size
        with watching(node) as (sampler, probe):
            row.notes += attack.run(node)
            row.control = probe.summary()
        with watching(node, ask=False) as (sampler_after, _):
            if attack.recovery_s:
                time.sleep(attack.recovery_s)
                ok, took, _ = node.members()
                row.notes.append(
                    f"{attack.recovery_s:.0f} s after closing: members "
                    + (f"answered in {took:.1f} s" if ok else "did NOT answer")
                )
            time.sleep(AFTER_S)
        row.rss_after = rss_mb(node.pid)
        # The sampler may miss a brief peak; the kernel's high-water mark does not.
        sampled = max(sampler.rss_peak, sampler_after.rss_peak, row.rss_before)
        row.rss_peak = max(sampled, rss_mb(node.pid, "VmHWM"))
        row.notes.append(f"sampled RSS peak {sampled:.1f} MB")
        row.fds_peak = max(sampler.fds_peak, sampler_after.fds_peak, row.fds_before)
        row.notes.append(f"fds before {row.fds_before}; idle members {idle_s:.1f} s")
        row.notes.append(node.net_stats())
        with open(node.log, "rb") as log:
            log.seek(log_from)
            grown = log.read()
        row.log_lines, row.log_bytes = grown.count(b"\n"), len(grown)
        exhausted = len(_FD_EXHAUSTED.findall(grown))
        if exhausted:
            listeners = collections.Counter(m.decode() for m in _LISTENER.findall(grown))
            named = ", ".join(f"{n:,} on {where}" for where, n in listeners.most_common())
            row.notes.append(f"{exhausted:,} log lines say EMFILE ({named or 'no socket named'})")
        row.top_log = top_messages(grown)
        if node.proc is not None and node.proc.poll() is not None:
            row.notes.append(f"the daemon DIED (exit {node.proc.returncode})")
    finally:
        node.stop()
    return row


def top_messages(log: bytes) -> list[tuple[int, str]]:
    """The most frequent lines, timestamps stripped, so that a flood shows where it comes from."""
    lines = (_TIMESTAMP.sub(b"", line)[:200] for line in log.splitlines() if line.strip())
    counted = collections.Counter(lines).most_common(TOP_LOG_MESSAGES)
    return [(n, line.decode(errors="replace")) for line, n in counted]


# -- output ------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    head = ["attack", "RSS before MB", "RSS peak MB", "RSS after MB", "fds peak", "log lines",
            "control answered (max latency s)", "notes"]  # fmt: skip
    cells = [
        [
            r.attack,
            f"{r.rss_before:.1f}",
            f"{r.rss_peak:.1f}",
            f"{r.rss_after:.1f}",
            str(r.fds_peak),
            f"{r.log_lines:,} ({r.log_bytes / 1e6:.1f} MB)",
            r.control,
            "; ".join(r.notes),
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [head, *cells]) for i in range(len(head) - 1)]
    out = []
    for i, line in enumerate([head, *cells]):
        padded = [cell.ljust(w) for cell, w in zip(line, widths, strict=False)]
        out.append(" | ".join([*padded, line[-1]]))
        if i == 0:
            out.append("-+-".join("-" * w for w in [*widths, len(head[-1])]))
    return "\n".join(out)


def describe(repo: Path, cwd: Path) -> str:
    """Which swarm the daemons import: run from `cwd`, as they are (not from this checkout)."""
    where = subprocess.run(
        [sys.executable, "-c", "import swarm; print(swarm.__file__)"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", str(repo), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    ).stdout.strip()
    return f"swarm from {where or '?'} at {commit[:90] or '?'}"


def raise_own_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", choices=[a.name for a in ATTACKS], help="run this attack only")
    parser.add_argument("--python", type=Path, default=REPO, metavar="PATH-TO-REPO",
                        help="the swarm checkout to attack (PYTHONPATH of the daemon and CLI)")  # fmt: skip
    parser.add_argument("--rate", type=int, default=FORGED_RATE_PER_S, metavar="PER_S",
                        help="forged-senders: datagrams per second (default %(default)s)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the state dirs and daemon logs")
    args = parser.parse_args()
    repo = args.python.resolve()
    if not (repo / "swarm" / "__init__.py").exists():
        raise SystemExit(f"{repo} is not a swarm checkout (no swarm/__init__.py)")
    limit = raise_own_fd_limit()
    root = Path(tempfile.mkdtemp(prefix="swarm-hostile-"))
    print(describe(repo, root))
    print(f"attacker fd limit {limit}; nproc {os.cpu_count()}")
    rows: list[Row] = []
    started = time.monotonic()
    try:
        for attack in ATTACKS:
            if args.only in (None, attack.name):
                print(f"-- {attack.name} ...", flush=True)
                if attack.name == "forged-senders":
                    attack = dataclasses.replace(
                        attack, run=functools.partial(forged_senders, rate_per_s=args.rate)
                    )
                rows.append(measure(attack, repo, root))
    finally:
        if args.keep:
            print(f"state dirs and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(rows))
    print()
    for row in rows:
        print(f"{row.attack}: most frequent new log lines")
        for count, line in row.top_log or [(0, "(none)")]:
            print(f"  {count:>9,}  {line}")
    print(
        f"\ncommand: {' '.join([sys.executable, *sys.argv])}; took {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
