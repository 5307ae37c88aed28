"""One tool, one measurement, in a fresh process of the bench's venv (run by bench/executors.py).

    python executors_tools.py TOOL MODE --out FILE [--calls N] [--chunksize C] [--home DIR] [--job J]

TOOL is one of pool, dask, ray, celery, swarm (swarm serves both of the bench's swarm rows: with
no daemon at --home it runs an embedded node, with one it uses it). MODE is:
- `throughput`: start the tool, warm it with two calls (so its workers are up: start-up is not
  counted), then time N calls of `benchmod.inc` from just before the first submit to the last
  result, results gathered in input order and checked.
- `cold`: import the tool, start what it needs, submit one call and wait for its result. The time
  of the result is written as `time.monotonic()`, which is the same clock in every process on
  Linux, so the parent can measure from just before it spawned this process.

The figures go to --out as one JSON object, written when this process is done; the parent reads
them after it exits. A tool that cannot be imported is reported as `unavailable`, not an error.
Every wait here has a bound (`RESULT_TIMEOUT_S`); the parent also kills this process group at its
own timeout. Only the standard library and the tool itself are imported, so the figures include
no cost of the bench's own.
"""

import time

FIRST_LINE_MONOTONIC = time.monotonic()  # before any other import: "from the first line"

import argparse  # noqa: E402 - the clock above must be read first
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

WARM_CALLS = (-1, -2)  # one per worker; never in range(N), so no tool can reuse a result
RESULT_TIMEOUT_S = 600.0  # the longest a map may take before the run is given up
CELERY_STOP_S = 15.0
SLOTS = 2

# A session runs calls of inc on the tool's workers and returns their values in input order.
Session = Callable[[list[int], int], list[int]]


@contextlib.contextmanager
def pool_session(args: argparse.Namespace) -> Iterator[Session]:
    from concurrent.futures import ProcessPoolExecutor

    import benchmod

    with ProcessPoolExecutor(SLOTS) as pool:
        yield lambda xs, chunksize: list(
            pool.map(benchmod.inc, xs, chunksize=chunksize, timeout=RESULT_TIMEOUT_S)
        )


@contextlib.contextmanager
def dask_session(args: argparse.Namespace) -> Iterator[Session]:
    import benchmod
    from dask.distributed import Client, LocalCluster, wait

    cluster = LocalCluster(
        n_workers=SLOTS,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",  # the scheduler and the workers listen on loopback only
        dashboard_address=None,
    )
    with cluster, Client(cluster) as client:

        def run(xs: list[int], chunksize: int) -> list[int]:
            futures = client.map(benchmod.inc, xs)
            wait(futures, timeout=RESULT_TIMEOUT_S)  # gather itself has no timeout
            return list(client.gather(futures))

        yield run


@contextlib.contextmanager
def ray_session(args: argparse.Namespace) -> Iterator[Session]:
    import benchmod
    import ray

    # The parent sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray then takes 127.0.0.1 as the node's
    # address and its servers listen on loopback only, as it does on a laptop.
    ray.init(
        num_cpus=SLOTS,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=os.environ["BENCH_RAY_TEMP_DIR"],
    )
    try:
        remote_inc = ray.remote(benchmod.inc)
        yield lambda xs, chunksize: list(
            ray.get([remote_inc.remote(x) for x in xs], timeout=RESULT_TIMEOUT_S)
        )
    finally:
        ray.shutdown()


def watch_worker(worker: subprocess.Popen[bytes], stopping: threading.Event) -> None:
    """A Celery worker that dies leaves its calls queued and `get` waiting for its whole
    timeout: end this run at once instead, with the worker's exit in the log."""
    code = worker.wait()
    if not stopping.is_set():
        print(
            f"the Celery worker exited ({code}) before the run ended", file=sys.stderr, flush=True
        )
        os._exit(3)


@contextlib.contextmanager
def celery_session(args: argparse.Namespace) -> Iterator[Session]:
    import bench_celery  # the app the bench wrote; it reads BENCH_REDIS_URL
    import celery
    import redis

    redis.Redis.from_url(os.environ["BENCH_REDIS_URL"]).flushdb()  # no queue left by a run before
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench_celery", "worker", "-c", str(SLOTS),
         "-P", "prefork", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "-n", f"bench{os.getpid()}@localhost"],
    )  # fmt: skip
    stopping = threading.Event()
    threading.Thread(target=watch_worker, args=(worker, stopping), daemon=True).start()
    try:

        def run(xs: list[int], chunksize: int) -> list[int]:
            group = celery.group(bench_celery.inc.s(x) for x in xs)
            return list(group.apply_async().get(timeout=RESULT_TIMEOUT_S))

        yield run
    finally:
        stopping.set()
        worker.send_signal(signal.SIGTERM)  # a warm shutdown: its pool processes end with it
        try:
            worker.wait(timeout=CELERY_STOP_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=CELERY_STOP_S)


@contextlib.contextmanager
def swarm_session(args: argparse.Namespace) -> Iterator[Session]:
    import benchmod

    from swarm import SwarmExecutor

    # With no daemon at home, the executor runs an embedded node for as long as it lives.
    with SwarmExecutor(job=args.job, home=args.home) as executor:
        yield lambda xs, chunksize: list(executor.map(benchmod.inc, xs, chunksize=chunksize))


SESSIONS: dict[str, Callable[[argparse.Namespace], contextlib.AbstractContextManager[Session]]] = {
    "pool": pool_session,
    "dask": dask_session,
    "ray": ray_session,
    "celery": celery_session,
    "swarm": swarm_session,
}


def throughput(session: Session, calls: int, chunksize: int) -> dict[str, Any]:
    session(list(WARM_CALLS), 1)
    started = time.monotonic()
    values = session(list(range(calls)), chunksize)
    elapsed_s = time.monotonic() - started
    if values != [x + 1 for x in range(calls)]:
        raise RuntimeError(f"wrong results: {len(values)} values, first {values[:5]}")
    return {"calls": calls, "elapsed_s": elapsed_s, "calls_per_s": calls / elapsed_s}


def cold(session: Session) -> dict[str, Any]:
    values = session([1], 1)
    result_at = time.monotonic()
    if values != [2]:
        raise RuntimeError(f"wrong result: {values}")
    return {"result_monotonic": result_at, "inside_s": result_at - FIRST_LINE_MONOTONIC}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    try:
        opened = SESSIONS[args.tool](args)
        with opened as session:
            if args.mode == "cold":
                return cold(session)
            return throughput(session, args.calls, args.chunksize)
    except ImportError as exc:
        return {"unavailable": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("tool", choices=sorted(SESSIONS))
    parser.add_argument("mode", choices=["throughput", "cold"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--chunksize", type=int, default=1)
    parser.add_argument("--home", help="swarm: the state dir (a daemon's, or a fresh one)")
    parser.add_argument("--job", help="swarm: the job name, unique per run")
    args = parser.parse_args()
    figures = measure(args)
    figures["first_line_monotonic"] = FIRST_LINE_MONOTONIC
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(figures, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
