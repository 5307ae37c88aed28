"""`swarm --version`, and what each subcommand's --help shows."""

from __future__ import annotations

import platform
import subprocess
import sys


def test_version_names_swarm_and_python() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "swarm", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("swarm ") and f"Python {platform.python_version()}" in done.stdout


def test_every_subcommand_shows_an_example_in_its_help() -> None:
    from swarm.cli.main import EXAMPLES, build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[union-attr]
    assert commands is not None
    assert set(commands) == set(EXAMPLES), set(commands) ^ set(EXAMPLES)
    for name, sub in commands.items():
        assert f"examples:\n  swarm {name}" in sub.format_help(), name


def test_an_attempt_number_out_of_range_is_refused_by_the_parser() -> None:
    # Past 2**64 it reached the wire's packer, whose OverflowError came out as a traceback.
    for number in ("0", "-5", "99999999999999999999", "two"):
        done = subprocess.run(
            [sys.executable, "-m", "swarm", "logs", "job/t", "--attempt", number],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert f"argument --attempt: not an attempt number from 1 to 2,147,483,647: {number!r}" in (
            done.stderr
        ), done.stderr
