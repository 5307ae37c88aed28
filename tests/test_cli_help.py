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
