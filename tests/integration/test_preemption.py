"""`swarm preemption-watch` against a fake metadata service on 127.0.0.1, for each cloud: no
notice, then a notice, and the node drains, leaves and stops."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from .conftest import Cli, Daemon, export_rows, wait_for, write_tasks

pytestmark = pytest.mark.integration


class Metadata(http.server.BaseHTTPRequestHandler):
    """GCE's `instance/preempted` and AWS's token and `spot/instance-action`, with a notice
    that comes when the test says so."""

    notice: ClassVar[threading.Event] = threading.Event()
    no_tokens: ClassVar[threading.Event] = threading.Event()  # the token request is refused
    asked: ClassVar[list[tuple[str, str, dict[str, str]]]] = []

    def do_GET(self) -> None:
        self.asked.append(("GET", self.path, dict(self.headers)))
        if self.path.endswith("/instance/preempted"):
            if self.headers.get("Metadata-Flavor") != "Google":
                self._send(403, b"missing Metadata-Flavor")
            else:
                self._send(200, b"TRUE" if self.notice.is_set() else b"FALSE")
        elif self.path.endswith("/spot/instance-action"):
            if self.headers.get("X-aws-ec2-metadata-token") != "tok":
                self._send(401, b"")
            elif self.notice.is_set():
                self._send(200, json.dumps({"action": "terminate", "time": "soon"}).encode())
            else:
                self._send(404, b"")
        else:
            self._send(404, b"")

    def do_PUT(self) -> None:
        self.asked.append(("PUT", self.path, dict(self.headers)))
        if self.no_tokens.is_set():
            self._send(403, b"")
        else:
            self._send(200, b"tok" if self.path == "/latest/api/token" else b"")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def metadata() -> Iterator[str]:
    Metadata.notice.clear()
    Metadata.no_tokens.clear()
    Metadata.asked.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("cloud", "path"),
    [
        ("gce", "/computeMetadata/v1/instance/preempted"),
        ("aws", "/latest/meta-data/spot/instance-action"),
    ],
)
def test_a_notice_drains_the_node_which_leaves_and_stops(
    cli: Cli, daemon: Any, metadata: str, cloud: str, path: str
) -> None:
    node: Daemon = daemon("--cpus", "1")
    tasks = write_tasks(cli.cwd / "long.jsonl", [{"name": "long", "cmd": "sleep 60"}])
    cli.ok("submit", str(tasks))
    wait_for("the task to run", lambda: cli.job("long")["running"] == 1)
    command = ["preemption-watch", "--cloud", cloud, "--metadata-url", metadata + path]
    # A proxy in the environment is not used for the metadata service (this one refuses all).
    no_proxy = {"http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    watcher = cli.spawn(*command, "--interval", "0.1", "--grace", "0.5", env=no_proxy)
    try:
        wait_for("the watcher to look", lambda: len(Metadata.asked) >= 2)
        assert watcher.poll() is None  # no notice yet: it watches on
        Metadata.notice.set()
        said, problems = watcher.communicate(timeout=60)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, problems
    assert "preemption notice" in said and "drained" in said, said
    assert node.proc is not None and node.proc.wait(timeout=30) == 0  # left the swarm, stopped
    (attempt,) = [r for r in export_rows(cli, "--attempts") if r["name"] == "long"]
    assert attempt["outcome"] == "interrupted"  # the grace ran out: it runs again elsewhere
    if cloud == "aws":
        assert any(method == "PUT" for method, _, _ in Metadata.asked)  # IMDSv2's token


def test_a_service_that_refuses_is_said_to_and_the_watch_goes_on(cli: Cli, metadata: str) -> None:
    """An IMDSv2-only instance whose token request fails: the watcher says why it is blind."""
    Metadata.no_tokens.set()
    path = "/latest/meta-data/spot/instance-action"
    command = ["preemption-watch", "--cloud", "aws", "--metadata-url", metadata + path]
    watcher = cli.spawn(*command, "--interval", "0.1")
    try:
        wait_for("a few looks", lambda: sum(m == "GET" for m, _, _ in Metadata.asked) >= 3)
        assert watcher.poll() is None  # it watches on
    finally:
        watcher.kill()
        _, said = watcher.communicate(timeout=30)
    assert "the metadata service refuses: HTTP 401" in said and "IMDSv2" in said, said
