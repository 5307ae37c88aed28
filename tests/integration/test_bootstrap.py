"""What bootstrap/ ships for real machines: the systemd units (checked by systemd-analyze), the
cloud-init template, and the script that starts a demo swarm on this machine."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from swarm import statedir

from .conftest import REPO, Cli, free_port, wait_for

pytestmark = pytest.mark.integration

BOOTSTRAP = REPO / "bootstrap"


def swarm_wrapper(tmp_path: Path) -> Path:
    """An executable `swarm` for this checkout and interpreter (what ExecStart names)."""
    wrapper = tmp_path / "bin" / "swarm"
    wrapper.parent.mkdir(exist_ok=True)
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m swarm "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_the_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":  # bootstrap/test installs it there: it must run
            pytest.fail("systemd-analyze is missing on CI")
        pytest.skip("systemd-analyze is not installed (bootstrap/test installs it as root)")
    swarm = swarm_wrapper(tmp_path)
    units = []
    for unit in sorted((BOOTSTRAP / "systemd").glob("*.service")):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/usr/local/bin/swarm", str(swarm)))
        units.append(str(copy))
    assert len(units) == 2
    done = subprocess.run(
        [analyze, "verify", *units], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "swarm start $SWARM_ARGS" in (BOOTSTRAP / "systemd/swarm.service").read_text()


def test_the_cloud_init_template_is_user_data_with_its_blanks_marked() -> None:
    text = (BOOTSTRAP / "cloud-init.yaml").read_text()
    assert text.startswith("#cloud-config\n")
    assert "swarm init --key-file /etc/swarm/swarm.key" in text
    assert "systemctl enable --now swarm swarm-preemption-watch" in text
    assert text.count("FILL") >= 4  # the key, the seeds, the install, the units


def test_the_demo_script_starts_a_swarm_that_runs_a_job_and_stops_it(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    base = next(p for p in range(min(ports), 60000) if all(_free(p + i) for i in range(3)))
    env = {
        **os.environ,
        "DEMO_DIR": str(tmp_path / "demo"),
        "DEMO_PORT": str(base),
        "SWARM": str(swarm_wrapper(tmp_path)),
    }
    script = str(BOOTSTRAP / "demo-nodes")
    started = subprocess.run(
        [script, "start", "3"], env=env, capture_output=True, text=True, timeout=120
    )
    try:
        assert started.returncode == 0, started.stderr
        cli = Cli(home=tmp_path / "demo" / "node0", cwd=tmp_path)
        wait_for(
            "three alive members",
            lambda: (
                cli.status()["nodes"]
                and sum(n["state"] == "alive" for n in cli.status()["nodes"]) == 3
            ),
        )
        tasks = tmp_path / "demo.jsonl"
        tasks.write_text("".join(f'{{"cmd": "echo {i}"}}\n' for i in range(6)))
        cli.ok("submit", str(tasks))
        wait_for("the demo job to finish", lambda: cli.job("demo")["done"] == 6)
    finally:
        stopped = subprocess.run(
            [script, "stop"], env=env, capture_output=True, text=True, timeout=120
        )
    assert stopped.returncode == 0 and stopped.stdout.count("stopped") == 3, stopped.stdout
    for i in range(3):
        wait_for(f"node {i} to stop", lambda i=i: not _running(tmp_path / "demo" / f"node{i}"))


def _free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _running(home: Path) -> bool:
    return statedir.lock_held(statedir.StateDir(home))
