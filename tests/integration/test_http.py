"""The HTTP API over real HTTP: a daemon started with --http serves its status, a job's tasks, a
task's output and its metrics (parsed with prometheus_client's own parser), and the dashboard,
rendered in headless Chromium where it is installed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from swarm.daemon.http import is_loopback

from .conftest import Cli, free_port, write_tasks

pytestmark = pytest.mark.integration

METRICS = {
    "swarm_tasks", "swarm_members", "swarm_attempts", "swarm_duplicate_attempts",
    "swarm_evictions", "swarm_lease_expiries", "swarm_gossip_bytes", "swarm_packets_dropped",
    "swarm_task_run_seconds",
}  # fmt: skip


def get(url: str) -> tuple[int, str, bytes]:
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with no_proxy.open(url, timeout=10) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read()


@pytest.fixture
def served(cli: Cli, daemon: Any) -> str:
    port = free_port()
    daemon("--cpus", "2", "--http", f"127.0.0.1:{port}")
    tasks = write_tasks(
        cli.cwd / "web.jsonl",
        [
            {"name": "hello", "cmd": "echo hi there"},
            {"name": "broken", "cmd": "echo it broke >&2; exit 4", "retries": 0},
        ],
    )
    assert cli("submit", str(tasks), "--wait").returncode == 1  # one task failed, as meant
    return f"http://127.0.0.1:{port}"


def test_status_jobs_and_output_are_served_read_only(served: str, cli: Cli) -> None:
    code, kind, body = get(f"{served}/status")
    assert code == 200 and kind.startswith("application/json")
    status = json.loads(body)
    assert [j["job"] for j in status["jobs"]] == ["web"] and status["jobs"][0]["done"] == 1
    assert status["failures"][0]["name"] == "broken"
    assert status["failures"][0]["stderr_tail"] == "it broke"
    code, _, body = get(f"{served}/jobs/web")
    page = json.loads(body)
    assert (page["total"], page["offset"]) == (2, 0)
    tasks = {t["name"]: t for t in page["tasks"]}
    second = json.loads(get(f"{served}/jobs/web?offset=1&limit=5")[2])
    assert [t["name"] for t in second["tasks"]] == [list(tasks)[1]]
    assert get(f"{served}/jobs/web?limit=x")[0] == 400
    assert tasks["hello"]["state"] == "done" and tasks["broken"]["state"] == "failed"
    assert tasks["broken"]["attempts"][0]["exit_code"] == 4
    assert get(f"{served}/jobs/web/hello/stdout")[2] == b"hi there\n"
    assert get(f"{served}/jobs/web/broken/stderr")[2] == b"it broke\n"
    points = json.loads(get(f"{served}/history")[2])
    assert [count for _, count in points] == [1, 2]  # tasks finished over time
    assert get(f"{served}/jobs/nope")[0] == 404
    assert get(f"{served}/jobs/web/nope/stdout")[0] == 404
    request = urllib.request.Request(f"{served}/status", method="POST", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10)
    with refused.value:
        assert refused.value.code == 405  # read-only


def test_the_history_of_a_task_that_failed_then_passed_counts_it_once(
    cli: Cli, daemon: Any
) -> None:
    port = free_port()
    daemon("--cpus", "1", "--http", f"127.0.0.1:{port}")
    marker = cli.cwd / "failed-once"  # each attempt runs in a dir of its own: a path outside
    flaky = f"test -f {marker} && echo second || {{ touch {marker}; exit 1; }}"
    tasks = write_tasks(cli.cwd / "flaky.jsonl", [{"name": "flaky", "cmd": flaky, "retries": 0}])
    assert cli("submit", str(tasks), "--wait").returncode == 1  # it failed, for good
    cli.ok("retry", "flaky")
    cli.wait_for("the retried task to pass", lambda: cli.job("flaky")["done"] == 1)
    points = json.loads(get(f"http://127.0.0.1:{port}/history")[2])
    assert len(points) == 2  # its two ends: the failure, then the success
    assert [count for _, count in points] == [1, 1]  # one task finished, not two


def test_metrics_are_in_the_prometheus_text_format(served: str) -> None:
    code, kind, body = get(f"{served}/metrics")
    assert code == 200 and kind.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert set(families) >= METRICS, METRICS - set(families)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("swarm_tasks", (("job", "web"), ("state", "done")))] == 1
    assert samples[("swarm_tasks", (("job", "web"), ("state", "failed")))] == 1
    assert samples[("swarm_attempts_total", (("outcome", "failed"),))] == 1
    assert samples[("swarm_task_run_seconds_count", ())] == 1
    assert families["swarm_task_run_seconds"].type == "histogram"


def test_the_dashboard_renders_in_headless_chromium(served: str, tmp_path: Path) -> None:
    code, kind, page = get(f"{served}/")
    assert code == 200 and kind.startswith("text/html") and b"<canvas" in page
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI") == "true":  # bootstrap/test installs it there
            pytest.fail("chromium is missing on CI")
        pytest.skip("chromium is not installed (bootstrap/test installs Debian's, as root)")
    shot = tmp_path / "dashboard.png"
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=4000"]
    dom = subprocess.run(
        [chromium, *args, "--dump-dom", f"{served}/"], capture_output=True, text=True, timeout=90
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    # What the page's script drew from /status: the job, its counts, the failure's stderr.
    assert ">web<" in dom.stdout and ">1/2<" in dom.stdout, dom.stdout[-3000:]
    assert "<td>it broke</td>" in dom.stdout and '<div id="error"></div>' in dom.stdout
    subprocess.run(
        [chromium, *args, f"--screenshot={shot}", "--window-size=1100,900", f"{served}/"],
        capture_output=True,
        timeout=90,
    )
    assert shot.exists() and shot.stat().st_size > 10_000


def test_requests_it_cannot_parse_do_not_fill_the_log(cli: Cli, daemon: Any) -> None:
    # aiohttp logs an 11-line traceback for each: 500 of them were 5,500 lines in 0.3 s.
    port = free_port()
    node = daemon("--cpus", "1", "--http", f"127.0.0.1:{port}")
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /\x00 HTTP/1.1\r\n\r\n")
            assert conn.recv(64).split(b" ")[1] == b"400"
    assert get(f"http://127.0.0.1:{port}/status")[0] == 200
    log = node.log.read_text()
    assert 1 <= log.count("Error handling request") <= 2, log[-3000:]
    assert len(log.splitlines()) < 60, log[-3000:]


def test_only_loopback_counts_as_private() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
