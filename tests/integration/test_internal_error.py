"""A node whose own code fails (a bug in one of its loops) exits at once, non-zero, instead of
living on without serving: a supervisor can then start it again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, free_port, swarm_cmd

pytestmark = pytest.mark.integration

BROKEN_LOOP = """
import asyncio, sys
from swarm.cli import main as cli
from swarm.daemon import node

async def broken(self):
    await asyncio.sleep(0.5)
    raise RuntimeError("a loop broke")

node.Node._memory_loop = broken
sys.exit(cli.main(["start", "--bind", "127.0.0.1:%d", "--profile", "test"]))
"""


def test_a_node_whose_loop_fails_exits_instead_of_hanging(tmp_path: Path) -> None:
    env = {**os.environ, "SWARM_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    subprocess.run(swarm_cmd("init"), env=env, check=True, capture_output=True)
    done = subprocess.run(
        [sys.executable, "-c", BROKEN_LOOP % free_port()],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,  # before: the process lived on, its socket closed, until killed
    )
    assert done.returncode != 0
    assert "a loop broke" in done.stderr
