"""What `swarm start` and `swarm run` say of the resources they are told to offer."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarm.cli.main import build_parser
from swarm.cli.nodes import node_config, warn_beyond_machine
from swarm.core.units import parse_size
from swarm.errors import UserInputError


def test_a_bare_memory_number_is_said_to_be_mib_and_offers_beyond_the_machine_warn(
    capsys: pytest.CaptureFixture[str],
) -> None:
    warn_beyond_machine(10_000.0, "30", parse_size("30", field="--memory"))
    said = capsys.readouterr().err
    assert "--memory 30 is 30 MiB" in said and "write 30G" in said
    assert "--cpus 10000 is more than the" in said
    warn_beyond_machine(None, "1P", parse_size("1P", field="--memory"))
    assert "--memory 1P is more than the" in capsys.readouterr().err
    warn_beyond_machine(0.5, "64M", parse_size("64M", field="--memory"))
    assert capsys.readouterr().err == ""  # within the machine, with a unit: nothing to say


def test_gpus_beyond_the_machine_warn_and_impossible_cpus_say_nothing_before_their_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from swarm.daemon import resources

    monkeypatch.setattr(resources, "probe_gpus", lambda: 0)
    warn_beyond_machine(None, None, None, 99_999)
    assert "--gpus 99999 is more than the 0 GPUs found" in capsys.readouterr().err
    warn_beyond_machine(float("inf"), None, None, 0)
    assert capsys.readouterr().err == ""  # inf is refused as the node starts: no warning first


def test_a_memfree_that_leaves_no_memory_is_refused(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["start", "--data-dir", str(tmp_path), "--overcommit", "--memory", "1G", "--memfree", "2G"]
    )
    with pytest.raises(UserInputError, match="--memfree 2G is not less than --memory 1G"):
        node_config(args)
