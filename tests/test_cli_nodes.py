"""What `swarm start` and `swarm run` say of the resources they are told to offer."""

from __future__ import annotations

import pytest

from swarm.cli.nodes import warn_beyond_machine
from swarm.core.units import parse_size


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
