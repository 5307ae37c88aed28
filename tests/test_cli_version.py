"""`swarm --version` says the version of swarm installed, and of Python."""

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
