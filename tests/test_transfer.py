"""Tests of swarm.daemon.transfer: serving blobs in chunks, and copying a result here from its
holders, verified, with real blob stores in a tmp dir.

The network is one function: `fetch` streams the holder's `serve_blob` into the file the
transfer gives it, as the gossip net's `fetch` does with the frames of a TCP stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from swarm.core import gossip, wire
from swarm.core.ledger import (
    Attempt,
    ClaimRecord,
    Ledger,
    Outcome,
    ReplicaRecord,
    ResultRecord,
    TaskRecord,
    Version,
)
from swarm.core.manifest import manifest_bytes
from swarm.core.spec import Resources, TaskSpec
from swarm.daemon.store import EMPTY_DIGEST, BlobStore
from swarm.daemon.transfer import Copied, ResultTransfer, result_attempt

SPEC = TaskSpec(cmd="true", argv=None, need=Resources(1.0, 512 << 20))
HERE, HOLDER, OTHER = "node-here", "node-holder", "node-other"
T = TypeVar("T")
ADDRS = {HOLDER: ("10.0.0.1", 7946), OTHER: ("10.0.0.2", 7946)}


class Peers:
    """The members this node knows and the stores behind their addresses."""

    def __init__(self) -> None:
        self.members: dict[str, gossip.Member] = {}
        self.stores: dict[gossip.Addr, BlobStore] = {}
        self.fetched: list[tuple[gossip.Addr, str]] = []
        self.tamper = False  # the peer sends other bytes than the blob's
        self.damaged: list[tuple[gossip.Addr, str, str]] = []  # (peer, task, result) found damaged
        self.ledgers: dict[gossip.Addr, Ledger] = {}  # what each peer's ledger says (else empty)

    def add(self, node: str, store: BlobStore, state: gossip.MemberState) -> None:
        self.members[node] = gossip.Member(node, ADDRS[node], 1, state, {}, 0.0)
        self.stores[ADDRS[node]] = store

    def member(self, node: str) -> gossip.Member | None:
        return self.members.get(node)

    async def fetch(self, addr: gossip.Addr, digest: str, into: Path, task: str | None) -> bool:
        self.fetched.append((addr, digest))
        peer = ResultTransfer(
            self.stores[addr],
            self.ledgers.get(addr, Ledger()),
            next(node for node, a in ADDRS.items() if a == addr),
            self.member,
            self.fetch,
            lambda task, result: self.damaged.append((addr, task, result)),
        )
        with open(into, "wb") as out:
            async for chunk in peer.serve_blob(wire.FetchRequest(digest, task)):
                if chunk.missing:
                    return False
                out.write(b"not it" if self.tamper else chunk.data)
        return True


class Swarm:
    """A ledger in which HOLDER ran task t1, whose result (stdout, one output file and an empty
    stderr) is in HOLDER's store; `here` is the transfer of the node that copies it."""

    def __init__(self, tmp_path: Path) -> None:
        self.holder_store = BlobStore(tmp_path / "holder")
        self.here_store = BlobStore(tmp_path / "here")
        self.stdout, _ = self.holder_store.put_bytes(b"hello\n")
        self.file, _ = self.holder_store.put_bytes(b"1,2,3\n")
        self.digest, _ = self.holder_store.put_bytes(
            manifest_bytes(self.stdout, EMPTY_DIGEST, {"out.csv": self.file})
        )
        self.ledger = Ledger()
        self.seqs: dict[str, int] = {}
        self.peers = Peers()
        self.peers.add(HOLDER, self.holder_store, gossip.MemberState.ALIVE)
        self.write(HOLDER, TaskRecord("t1", "job", "one", SPEC, stamp=10))
        self.write(HOLDER, TaskRecord("t2", "job", "two", SPEC, stamp=11))
        self.write(HOLDER, ClaimRecord("t1", 1, stamp=20))
        self.write(HOLDER, result("t1", self.digest))
        self.here = ResultTransfer(
            self.here_store, self.ledger, HERE, self.peers.member, self.peers.fetch
        )

    def write(
        self, origin: str, body: TaskRecord | ClaimRecord | ResultRecord | ReplicaRecord
    ) -> None:
        self.seqs[origin] = self.seqs.get(origin, 0) + 1
        self.ledger.apply(Version(origin, 1, self.seqs[origin]), body)

    def attempt(self) -> Attempt:
        found = result_attempt(self.ledger.tasks["t1"])
        assert found is not None
        return found


def result(task: str, digest: str | None) -> ResultRecord:
    return ResultRecord(
        task_id=task,
        epoch=1,
        attempt=1,
        outcome=Outcome.OK,
        exit_code=0,
        started_ms=1000,
        ended_ms=2000,
        wall_s=1.0,
        cpu_s=0.5,
        max_rss_kb=1024,
        digest=digest,
        node_capacity=Resources(2.0, 4 << 30),
    )


def run(make: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await make()

    return asyncio.run(main())


async def served(store: BlobStore, digest: str) -> list[wire.BlobChunk]:
    transfer = ResultTransfer(store, Ledger(), HERE, lambda _: None, Peers().fetch)
    return [chunk async for chunk in transfer.serve_blob(wire.FetchRequest(digest))]


# -- serving ---------------------------------------------------------------------------------


def test_a_blob_is_served_in_chunks_the_last_one_short(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = bytes(range(256)) * (wire.BLOB_CHUNK_BYTES // 256) + b"tail"
    digest, _ = store.put_bytes(data)
    chunks = run(lambda: served(store, digest))
    assert [len(c.data) for c in chunks] == [wire.BLOB_CHUNK_BYTES, 4]
    assert [c.last for c in chunks] == [False, True]
    assert b"".join(c.data for c in chunks) == data
    assert not any(c.missing for c in chunks)


def test_a_blob_not_held_is_answered_missing_and_the_empty_one_is_always_held(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path)
    assert run(lambda: served(store, "ab" * 32)) == [wire.BlobChunk(b"", True, missing=True)]
    assert run(lambda: served(store, EMPTY_DIGEST)) == [wire.BlobChunk(b"", True)]


def corrupt(store: BlobStore, digest: str) -> None:
    """Bit rot: the blob's file holds other bytes of the same size."""
    path = store.path(digest)
    data = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])


def test_a_corrupt_blob_is_not_served_but_set_aside(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = b"x" * (wire.BLOB_CHUNK_BYTES + 10)
    digest, _ = store.put_bytes(data)
    corrupt(store, digest)
    chunks = run(lambda: served(store, digest))
    assert chunks[-1] == wire.BlobChunk(b"", True, missing=True)  # the fetcher drops it all
    assert not store.has(digest) and len(list((tmp_path / "quarantine").iterdir())) == 1


def reporting(
    store: BlobStore, ledger: Ledger, node: str, damaged: list[tuple[str, str]]
) -> ResultTransfer:
    """A node's transfer, with no peers, whose damage reports go to `damaged`."""
    return ResultTransfer(
        store, ledger, node, lambda _: None, Peers().fetch, lambda t, r: damaged.append((t, r))
    )


def test_a_holder_reports_damage_only_of_the_credited_result_it_holds(tmp_path: Path) -> None:
    """A request naming a task makes the server look at its own copy: damage is reported only
    if the blob asked for is the task's credited result or a part of it, this node holds that
    result, and it is not whole here. A request is never taken on trust."""
    swarm = Swarm(tmp_path)
    damaged: list[tuple[str, str]] = []
    holder = reporting(swarm.holder_store, swarm.ledger, HOLDER, damaged)

    def ask(digest: str, task: str | None = "t1") -> list[wire.BlobChunk]:
        async def serve() -> list[wire.BlobChunk]:
            return [c async for c in holder.serve_blob(wire.FetchRequest(digest, task))]

        return run(serve)

    unknown = "ee" * 32
    assert ask(unknown) == [wire.BlobChunk(b"", True, missing=True)]
    assert ask(unknown, "t2") == [wire.BlobChunk(b"", True, missing=True)]  # never ran
    assert damaged == []  # not a part of the result: nothing of ours is damaged
    corrupt(swarm.holder_store, swarm.file)
    assert ask(swarm.stdout)[-1].data == b"hello\n"  # a good part is served, as ever
    assert ask(swarm.file)[-1].missing
    assert damaged == [("t1", swarm.digest)]
    assert not swarm.holder_store.has(swarm.file)  # set aside
    assert ask(swarm.file)[-1].missing  # asked again: gone here, still damaged
    assert damaged == [("t1", swarm.digest)] * 2
    # A node that is no holder of the result (it never ran it, nor copied it) reports nothing.
    other = reporting(swarm.here_store, swarm.ledger, HERE, damaged)
    run(lambda: other.report("t1", swarm.file))
    assert damaged == [("t1", swarm.digest)] * 2


def test_a_damaged_result_is_checked_through_so_no_rotten_part_stays(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path)
    damaged: list[tuple[str, str]] = []
    holder = reporting(swarm.holder_store, swarm.ledger, HOLDER, damaged)
    corrupt(swarm.holder_store, swarm.stdout)
    corrupt(swarm.holder_store, swarm.file)
    swarm.holder_store.path(swarm.stdout).unlink()  # one found gone...
    run(lambda: holder.report("t1", swarm.stdout))
    assert damaged == [("t1", swarm.digest)]
    assert not swarm.holder_store.has(swarm.file)  # ...and the other rotten one set aside too
    assert swarm.holder_store.has(swarm.digest)  # the manifest was whole: kept


# -- copying a result ------------------------------------------------------------------------


def test_a_result_is_copied_whole_from_its_holder(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path)
    copied = run(lambda: swarm.here.copy_result(swarm.attempt()))
    # The manifest, stdout and the output file; the empty stderr is held everywhere.
    assert copied == Copied(swarm.digest, fetched=3, missing=0)
    assert copied.complete
    assert swarm.here_store.read_bytes(swarm.stdout) == b"hello\n"
    assert swarm.here_store.read_bytes(swarm.file) == b"1,2,3\n"
    assert swarm.here_store.has(swarm.digest)


def test_a_result_held_here_already_fetches_nothing(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path)
    run(lambda: swarm.here.copy_result(swarm.attempt()))
    swarm.peers.fetched.clear()
    assert run(lambda: swarm.here.copy_result(swarm.attempt())) == Copied(swarm.digest, 0, 0)
    assert swarm.peers.fetched == []


@pytest.mark.parametrize(
    "state", [gossip.MemberState.SUSPECT, gossip.MemberState.DEAD, gossip.MemberState.LEFT]
)
def test_a_holder_that_is_not_alive_is_not_asked(tmp_path: Path, state: gossip.MemberState) -> None:
    swarm = Swarm(tmp_path)
    swarm.peers.add(HOLDER, swarm.holder_store, state)
    copied = run(lambda: swarm.here.copy_result(swarm.attempt()))
    assert copied == Copied(swarm.digest, fetched=0, missing=1)
    assert not copied.complete
    assert swarm.peers.fetched == []


def test_a_holder_named_by_a_replica_record_is_asked_when_the_runner_is_gone(
    tmp_path: Path,
) -> None:
    swarm = Swarm(tmp_path)
    other_store = BlobStore(tmp_path / "other")
    for digest in (swarm.digest, swarm.stdout, swarm.file):
        other_store.put_bytes(swarm.holder_store.read_bytes(digest))
    swarm.peers.add(HOLDER, swarm.holder_store, gossip.MemberState.DEAD)
    swarm.peers.add(OTHER, other_store, gossip.MemberState.ALIVE)
    swarm.write(OTHER, ReplicaRecord(swarm.digest))
    assert run(lambda: swarm.here.copy_result(swarm.attempt())).complete
    assert {addr for addr, _ in swarm.peers.fetched} == {ADDRS[OTHER]}


def test_a_blob_that_does_not_match_its_digest_is_dropped(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path)
    swarm.peers.tamper = True
    copied = run(lambda: swarm.here.copy_result(swarm.attempt()))
    assert copied == Copied(swarm.digest, fetched=0, missing=1)
    wrong, _ = BlobStore(tmp_path / "scratch").put_bytes(b"not it")
    assert not swarm.here_store.has(wrong)
    assert not swarm.here_store.has(swarm.digest)
    assert list((swarm.here_store.root / "tmp").iterdir()) == []  # no temp file left


def test_a_holder_that_cannot_make_its_copy_whole_reports_it_damaged(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path)
    damaged: list[tuple[str, str]] = []
    swarm.here.damaged = lambda task, result: damaged.append((task, result))
    swarm.holder_store.path(swarm.file).unlink()
    run(lambda: swarm.here.copy_result(swarm.attempt()))
    assert damaged == []  # not a holder: an incomplete copy is no damage of ours
    swarm.holder_store.put_bytes(b"1,2,3\n")
    assert run(lambda: swarm.here.copy_result(swarm.attempt())).complete
    swarm.write(HERE, ReplicaRecord(swarm.digest))
    swarm.peers.ledgers[ADDRS[HOLDER]] = swarm.ledger
    swarm.here_store.path(swarm.stdout).unlink()  # gone here...
    corrupt(swarm.holder_store, swarm.stdout)  # ...and rotten at the only other holder
    copied = run(lambda: swarm.here.copy_result(swarm.attempt()))
    assert copied == Copied(swarm.digest, fetched=0, missing=1)
    assert damaged == [("t1", swarm.digest)]
    # The holder found out as it served it.
    assert swarm.peers.damaged == [(ADDRS[HOLDER], "t1", swarm.digest)]


def test_a_manifest_found_corrupt_here_is_fetched_anew_from_a_holder(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path)
    damaged: list[tuple[str, str]] = []
    swarm.here.damaged = lambda task, result: damaged.append((task, result))
    assert run(lambda: swarm.here.copy_result(swarm.attempt())).complete
    swarm.write(HERE, ReplicaRecord(swarm.digest))
    corrupt(swarm.here_store, swarm.digest)
    copied = run(lambda: swarm.here.copy_result(swarm.attempt()))
    assert copied == Copied(swarm.digest, fetched=1, missing=0)
    assert swarm.here_store.read_bytes(swarm.digest)  # whole again, and it verifies
    assert damaged == []  # mended: no damage to report


def test_a_part_no_holder_has_is_counted_missing_and_the_rest_is_copied(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path)
    swarm.holder_store.path(swarm.file).unlink()
    copied = run(lambda: swarm.here.copy_result(swarm.attempt()))
    assert copied == Copied(swarm.digest, fetched=2, missing=1)
    assert swarm.here_store.has(swarm.stdout)


def test_with_no_network_only_what_is_held_here_counts(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path)
    alone = ResultTransfer(swarm.here_store, swarm.ledger, HERE, lambda _: None, Peers().fetch)
    assert run(lambda: alone.fetch_blob(swarm.digest, [HOLDER])) is False
    assert run(lambda: alone.fetch_blob(EMPTY_DIGEST, [HOLDER])) is True


def test_fetch_results_copies_each_task_that_has_a_result(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path)  # t2 never ran: it has no result to copy

    async def collect() -> list[Copied]:
        return [copied async for copied in swarm.here.fetch_results("job")]

    assert run(collect) == [Copied(swarm.digest, fetched=3, missing=0)]


def test_a_task_with_no_credited_result_gives_its_latest_attempt_with_a_result(
    tmp_path: Path,
) -> None:
    swarm = Swarm(tmp_path)
    swarm.write(OTHER, ClaimRecord("t2", 1, stamp=30))
    swarm.write(OTHER, replace(result("t2", swarm.digest), outcome=Outcome.FAILED, exit_code=1))
    swarm.write(OTHER, ClaimRecord("t2", 2, stamp=40))
    no_result = replace(result("t2", None), epoch=2, attempt=2, outcome=Outcome.INTERRUPTED)
    swarm.write(OTHER, no_result)
    attempt = result_attempt(swarm.ledger.tasks["t2"])
    assert attempt is not None
    assert (attempt.result.epoch, attempt.result.outcome) == (1, Outcome.FAILED)
    credited = result_attempt(swarm.ledger.tasks["t1"])
    assert credited is not None and credited.result.outcome is Outcome.OK
