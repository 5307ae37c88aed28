"""The HTTP API (`swarm start --http HOST:PORT`): read-only views of this node's replica of the
swarm, for dashboards, scripts and Prometheus.

Theory of operation: an aiohttp server in the daemon's own event loop and TaskGroup, so it reads
the node's state directly and stops with it. Every route only reads: nothing here writes a
record or fetches from a peer, and there is no authentication (binding anything but loopback is
warned about). The routes answer from what the control operations already compute (`Operations`):
`/status` is `swarm status --json`'s document, and a task's output what `swarm logs` shows (only
if this node holds it):

    GET /                               the dashboard (one page, dashboard.html)
    GET /status                         the status snapshot (application/json)
    GET /history                        tasks finished over time, for the dashboard's plot
    GET /jobs/<job>?offset=&limit=      its tasks (a page): state, command, each attempt's node, times
    GET /jobs/<job>/<task>/stdout       a task's latest attempt's output, if held here (text/plain)
    GET /jobs/<job>/<task>/stderr
    GET /metrics                        Prometheus text format (metrics.py)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources as package_files
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from swarm.core.ledger import State, TaskView
from swarm.daemon.loopguard import RateLimited
from swarm.daemon.metrics import registry_for
from swarm.daemon.store import EMPTY_DIGEST
from swarm.errors import SwarmError, UserError

if TYPE_CHECKING:
    from swarm.daemon.node import Node
    from swarm.daemon.operations import Operations

log = logging.getLogger("swarm.daemon.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HISTORY_POINTS_MAX = 200  # of GET /history
STATUS_CACHE_S = 1.0  # GET /status answers from a snapshot at most this old
REQUESTS_AT_ONCE_MAX = 16  # being served; beyond, a request is answered 503 at once
JOB_PAGE_MAX = 10_000  # tasks in one reply of GET /jobs/JOB


def _limit_server_log() -> None:
    """aiohttp logs a traceback for each request it cannot parse: held to one of each kind per
    period, so a stranger who reaches the port cannot fill the node's log and disk."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, RateLimited) for f in server_log.filters):
        server_log.addFilter(RateLimited())


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class HttpApi:
    def __init__(self, node: Node, ops: Operations) -> None:
        self.node = node
        self.ops = ops
        self.registry = registry_for(node)
        self._busy = asyncio.Semaphore(REQUESTS_AT_ONCE_MAX)
        self.app = web.Application(middlewares=[self._bounded])
        self.app.add_routes(
            [
                web.get("/", self.dashboard),
                web.get("/status", self.status),
                web.get("/history", self.history),
                web.get("/metrics", self.metrics),
                web.get("/jobs/{job}", self.job),
                web.get("/jobs/{job}/{task}/{stream:stdout|stderr}", self.output),
            ]
        )
        self._runner: web.AppRunner | None = None
        self._snapshot: tuple[float, object] | None = None  # (made at, its JSON body)

    async def start(self, host: str, port: int) -> None:
        """Serve on host:port (ConfigError-like SwarmError if it cannot bind)."""
        if not is_loopback(host):
            log.warning(
                "the HTTP API on %s:%d has no authentication: anyone who reaches it can read "
                "the swarm's tasks and their output",
                host,
                port,
            )
        self._runner = web.AppRunner(self.app, access_log=None)
        _limit_server_log()
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise SwarmError(f"cannot serve HTTP on {host}:{port}: {exc.strerror}") from exc
        log.info("HTTP API on http://%s:%d/", host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _bounded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """At most REQUESTS_AT_ONCE_MAX requests are served at once; more are told to come back
        (503): whoever reaches the port cannot pile work on the daemon's loop."""
        if self._busy.locked():
            raise web.HTTPServiceUnavailable(text="busy: try again\n", headers={"Retry-After": "1"})
        async with self._busy:
            return await handler(request)

    # -- routes ---------------------------------------------------------------------------------

    async def dashboard(self, request: web.Request) -> web.Response:
        page = package_files.files("swarm.daemon").joinpath("dashboard.html").read_text()
        return web.Response(text=page, content_type="text/html")

    async def status(self, request: web.Request) -> web.Response:
        """The status snapshot, made at most once a second however many pages poll it (one
        costs O(tasks) on the event loop)."""
        now = time.monotonic()
        if self._snapshot is None or now - self._snapshot[0] >= STATUS_CACHE_S:
            self._snapshot = (now, web.json_response(await self.ops.snapshot()).body)
        return web.Response(body=self._snapshot[1], content_type="application/json")

    async def history(self, request: web.Request) -> web.Response:
        """Tasks finished (done or failed) over time, as [wall ms, how many by then] points:
        the dashboard's plot starts from it. From the ledger's recent finish times (each job
        keeps its latest few thousand), at most HISTORY_POINTS_MAX points."""
        ledger = self.node.ledger
        ends = sorted(ms for samples in ledger.finished_ms.values() for ms in samples)
        finished = sum(
            counts.get(State.DONE, 0) + counts.get(State.FAILED, 0)
            for counts in ledger.job_counts.values()
        )
        # Finished before the oldest end kept. A task that failed, was retried and then done
        # has two ends: counted by ends, the line would end above `finished`, so it is capped
        # there (the plot's last point is then the true count).
        base = max(0, finished - len(ends))
        step = -(-len(ends) // HISTORY_POINTS_MAX) or 1  # ceil: at most HISTORY_POINTS_MAX
        points = [
            [ms, min(finished, base + i + 1)] for i, ms in enumerate(ends) if (i + 1) % step == 0
        ]
        if ends and (not points or points[-1][0] != ends[-1]):
            points.append([ends[-1], min(finished, base + len(ends))])
        return web.json_response(points)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)  # on the loop: it reads the node's state
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def job(self, request: web.Request) -> web.Response:
        """A page of the job's tasks (`?offset=N&limit=M`, at most JOB_PAGE_MAX): a job of a
        million tasks is not built into one reply on the event loop."""
        job = request.match_info["job"]
        ledger = self.node.ledger
        if job not in ledger.jobs:
            raise web.HTTPNotFound(text=f"no job {job!r}\n")
        try:
            offset = max(0, int(request.query.get("offset", "0")))
            limit = min(JOB_PAGE_MAX, max(0, int(request.query.get("limit", str(JOB_PAGE_MAX)))))
        except ValueError as exc:
            raise web.HTTPBadRequest(text="offset and limit must be whole numbers\n") from exc
        ids = ledger.jobs[job]
        page = [ledger.tasks[t] for t in ids[offset : offset + limit]]
        tasks = [task_row(v) for v in page if v.spec is not None]
        return web.json_response({"job": job, "total": len(ids), "offset": offset, "tasks": tasks})

    async def output(self, request: web.Request) -> web.StreamResponse:
        job, task, stream = (request.match_info[k] for k in ("job", "task", "stream"))
        try:  # only what this node holds: a read-only route fetches nothing from peers
            reply = await self.ops.logs(f"{job}/{task}", None, fetch=False)
        except UserError as exc:
            raise web.HTTPNotFound(text=f"{exc}\n") from exc
        digest = reply["stdout"] if stream == "stdout" else reply["stderr"]
        if digest is None:
            where = f" (it ran on node {reply['node'][:8]})" if reply["node"] else ""
            text = f"no {stream} of {job}/{task} is held on this node{where}\n"
            raise web.HTTPNotFound(text=text)
        if digest == EMPTY_DIGEST:
            return web.Response(text="", content_type="text/plain")
        store = self.node.store
        # Verified first (a thread hashes it), then sent from the file: any size, little memory.
        if not await asyncio.to_thread(store.verify, digest):
            await self.node.transfer.report(reply["task_id"], digest)  # set aside: fetched anew
            raise web.HTTPServiceUnavailable(text=f"its {stream} held here is corrupt\n")
        return web.FileResponse(store.path(digest), headers={"Content-Type": "text/plain"})


def task_row(view: TaskView) -> dict[str, object]:
    """A task as GET /jobs/<job> gives it: its state, and each attempt with node and times."""
    attempts = [
        {
            "attempt": a.result.attempt,
            "epoch": a.result.epoch,
            "node": a.version.origin,
            "outcome": str(a.result.outcome),
            "exit_code": a.result.exit_code,
            "started_ms": a.result.started_ms,
            "ended_ms": a.result.ended_ms,
            "wall_s": a.result.wall_s,
            "reason": a.result.reason,
        }
        for a in view.ordered_attempts()
    ]
    claim = view.active_claim()
    return {
        "task_id": view.task_id,
        "name": view.name,
        "state": "" if view.state is None else str(view.state),
        "command": view.spec.command_text() if view.spec else "",
        "running_on": "" if claim is None else claim[1],
        "attempts": attempts,
    }
