"""Result dirs written while a run goes on (`ResultsWriter`), and the final pass that writes
only what the writer did not."""

from __future__ import annotations

import os
from pathlib import Path

from swarm.cli.results_dir import ResultsWriter, write_results
from swarm.core.ledger import Outcome
from swarm.daemon.store import BlobStore

from .test_export import T0, Swarm, put_result, spec


def test_the_writer_writes_dirs_and_the_final_pass_skips_them(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sw = Swarm()
    out = tmp_path / "out"
    ids = {name: sw.submit("j", name, spec(f"echo {name}")) for name in ("a", "b", "c")}
    digests = {name: put_result(store, f"{name}\n".encode(), b"", {"r.txt": b"1"}) for name in ids}
    for name, tid in ids.items():
        sw.result("n1", tid, 1, Outcome.OK, digest=digests[name], started_ms=T0)

    writer = ResultsWriter(store, out, threads=2)
    writer.add(ids["a"], "a", digests["a"])
    writer.add(ids["b"], "b", digests["b"])
    written = writer.close()
    assert written == {ids["a"]: (digests["a"], 3), ids["b"]: (digests["b"], 3)}
    assert (out / "a" / "stdout").read_bytes() == b"a\n"
    assert (out / "b" / "r.txt").read_bytes() == b"1"
    assert not (out / "c").exists()

    # What the writer wrote is not written again (a mark left in it stays); the rest is.
    (out / "a" / "stdout").write_bytes(b"mark")
    # b's result changed after the writer wrote it (say, it ran again): written anew.
    newer = put_result(store, b"b again\n", b"")
    sw.result("n1", ids["b"], 2, Outcome.OK, digest=newer, started_ms=T0 + 5000)
    final = write_results(sw.ledger, store, "j", out, already=written)
    assert (final.tasks_written, final.files_written, final.missing) == (3, 3 + 2 + 3, [])
    assert (out / "a" / "stdout").read_bytes() == b"mark"
    assert (out / "b" / "stdout").read_bytes() == b"b again\n"
    assert (out / "c" / "stdout").read_bytes() == b"c\n"


def test_the_writer_leaves_what_it_cannot_write_to_the_final_pass(tmp_path: Path) -> None:
    """A blob not held yet, or a name that is no dir name, is not the writer's to report: it
    writes nothing of it, and the final pass does or says why."""
    store = BlobStore(tmp_path / "blobs")
    out = tmp_path / "out"
    writer = ResultsWriter(store, out, threads=1)
    writer.add("t1", "later", "ab" * 32)  # no such blob here (yet)
    writer.add("t2", "..", put_result(store, b"", b""))
    assert writer.close() == {}
    assert not (out / "later").exists()


def test_after_an_error_on_the_output_dir_the_writer_stops(tmp_path: Path) -> None:
    """An OS error (here a file where a task's dir goes) stops the writer: the tasks after it,
    which it could have written, are left to the final pass, which meets the error and says."""
    store = BlobStore(tmp_path / "blobs")
    out = tmp_path / "out"
    out.mkdir()
    (out / "n0").write_text("a file where the dir should be")
    digest = put_result(store, b"x\n", b"")
    writer = ResultsWriter(store, out, threads=1)  # one thread: the tasks go in order
    for i in range(5):
        writer.add(f"t{i}", f"n{i}", digest)
    assert writer.close() == {}
    assert sorted(os.listdir(out)) == ["n0"]
