"""Tests of where `swarm export -o PATH` puts its file (cli/results.py `export_file`): as a
shell's redirection would, whole or not at all, never replacing what is not a regular file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from swarm.cli.results import export_file
from swarm.errors import UserInputError


def test_a_regular_file_is_replaced_whole_and_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "ledger.csv"
    target.write_text("old\n")
    target.chmod(0o640 | stat.S_ISUID)  # a set-id bit is not carried over to new contents
    (tmp_path / "ledger.csv.tmp").write_text("a user's own file\n")  # not ours to touch
    with export_file(target) as handle:
        handle.write("new\n")
        assert target.read_text() == "old\n"  # nothing shows under its name until it is whole
    assert target.read_text() == "new\n"
    assert target.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "ledger.csv.tmp").read_text() == "a user's own file\n"
    assert sorted(os.listdir(tmp_path)) == ["ledger.csv", "ledger.csv.tmp"]


def test_a_failed_export_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "ledger.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), export_file(target) as handle:
        handle.write("half")
        raise RuntimeError("the ledger could not be read")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["ledger.csv"]


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path: Path) -> None:
    (tmp_path / "real.csv").write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to("real.csv")
    with export_file(link) as handle:
        handle.write("new\n")
    assert link.is_symlink()
    assert (tmp_path / "real.csv").read_text() == "new\n"


def test_a_link_to_nothing_is_replaced_by_the_file_not_followed(tmp_path: Path) -> None:
    link = tmp_path / "ledger.csv"
    link.symlink_to(tmp_path / "elsewhere" / "made.csv")
    with export_file(link) as handle:
        handle.write("rows\n")
    assert not link.is_symlink() and link.read_text() == "rows\n"
    assert not (tmp_path / "elsewhere").exists()


def test_dev_stdout_into_a_pipe_is_written_in_place() -> None:
    # realpath of /dev/stdout into a pipe names no file ("pipe:[N]"): the kernel's open does.
    code = (
        "from pathlib import Path\n"
        "from swarm.cli.results import export_file\n"
        "with export_file(Path('/dev/stdout')) as handle:\n"
        "    handle.write('rows\\n')\n"
    )
    done = subprocess.run(
        f'{sys.executable} -c "{code}" | cat', shell=True, capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "rows\n", "")


def test_a_fifo_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "rows"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    with export_file(fifo) as handle:
        handle.write("row\n")
    reader.join(timeout=10)
    assert got == ["row\n"]
    assert fifo.is_fifo()
    assert os.listdir(tmp_path) == ["rows"]


def full_device(tmp_path: Path) -> Path:
    """A device that refuses every write: a node of /dev/full's numbers in `tmp_path` as root
    (whose test must not risk the machine's own), else /dev/full itself (which no other user
    could replace)."""
    if os.geteuid() != 0:
        return Path("/dev/full")
    device = tmp_path / "full"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    return device


def test_a_device_is_written_in_place_and_its_errors_are_said(tmp_path: Path) -> None:
    # /dev/full was replaced by a regular file once (as root): now it is written, and refuses.
    device = full_device(tmp_path)
    refused = pytest.raises(UserInputError, match=f"cannot write {device}: No space left on device")
    with refused, export_file(device) as handle:
        handle.write("x" * 100_000)
    assert device.is_char_device()
    assert os.listdir(device.parent).count(device.name) == 1


def test_a_missing_dir_is_said(tmp_path: Path) -> None:
    target = tmp_path / "no" / "ledger.csv"
    refused = pytest.raises(
        UserInputError, match=f"cannot write {target}: No such file or directory"
    )
    with refused, export_file(target):
        pass
