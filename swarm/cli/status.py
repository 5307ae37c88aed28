"""Draw the `swarm status` view from a status snapshot (see `swarm.core.snapshot` for its shape).

`render` is pure: it reads only the snapshot dict and the optional `now_ms`, never the clock,
the network or the disk, so the live view, a stopped node's ledger and a saved `--json` dump all
draw the same way and tests can pin the exact output. The view is, top to bottom:

* a header line: nodes, task totals across jobs, overall rate and ETA;
* a Nodes table (capacity used per node, hostname, user labels);
* a Jobs table (progress bar, counts, rate and ETA per job);
* a Running table (the oldest claims first, capped at `RUNNING_SHOWN_MAX` rows);
* a warning if pending tasks fit on no live node;
* a warning if records of the ledger file could not be read or were refused (their tasks are
  missing from the view).

The snapshot is read defensively (`.get` with defaults) because it may come from a `--json`
dump written by an older or newer version: keys are only ever added, never renamed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from swarm.core.snapshot import Snapshot
from swarm.core.labels import BUILTIN_LABELS
from swarm.core.units import format_bytes, format_count, format_duration, format_rate

__all__ = [
    "COMPACT_WIDTH",
    "RUNNING_SHOWN_MAX",
    "render",
]

RUNNING_SHOWN_MAX = 20
PROGRESS_BAR_WIDTH = 16
COMPACT_WIDTH = 110  # below this many columns the Jobs table has no progress bar
SHORT_ID_LEN = 8


# Node states that mean "not taking work". Anything else (alive, suspect, draining, ...) counts as
# alive, so a state added later shows up as alive rather than silently vanishing from the count.
DOWN_STATES = frozenset({"dead", "down", "stopped", "left", "gone", "lost", "unreachable"})
_STATE_STYLES = {"alive": "green", "suspect": "yellow", "draining": "yellow"}

_UNKNOWN = "—"


def render(
    snapshot: Snapshot,
    *,
    now_ms: int | None = None,
    width: int = 120,
    running_rows_max: int = RUNNING_SHOWN_MAX,
) -> RenderableType:
    """The whole `swarm status` view for `snapshot`.

    Elapsed times are measured to `now_ms`, which defaults to the snapshot's `generated_ms` so
    that rendering the same snapshot twice gives the same picture. Below COMPACT_WIDTH columns
    the Jobs table leaves out its progress bar (the percentage stays), so a job's name always
    fits; `running_rows_max` lets a short terminal show fewer running tasks.
    """
    if now_ms is None:
        generated = snapshot.get("generated_ms")
        now_ms = generated if isinstance(generated, int) else None
    nodes = _dicts(snapshot.get("nodes"))
    jobs = _dicts(snapshot.get("jobs"))
    running = _dicts(snapshot.get("running"))
    infeasible = snapshot.get("infeasible") or []
    infeasible_count = snapshot.get("infeasible_count")
    if not isinstance(infeasible_count, int):
        infeasible_count = len(infeasible)

    parts: list[RenderableType] = [_header(nodes, jobs), Text()]
    # Nodes gone a while fold into one line: a swarm of preemptible VMs leaves many behind.
    shown = [n for n in nodes if not _gone_long(n)]
    folded = len(nodes) - len(shown)
    parts += [_nodes_table(shown), Text()] if shown else [_note("no live nodes"), Text()]
    if folded:
        parts[-1:-1] = [_note(f"and {_plural(folded, 'node')} dead or gone for over 10 minutes")]
    if jobs:
        parts += [_jobs_table(jobs, compact=width < COMPACT_WIDTH), Text()]
    else:
        parts += [_note("no jobs yet — submit one with `swarm submit FILE`"), Text()]
    # The running list in the snapshot is itself capped, so the jobs' counts are the better total.
    running_total = max(len(running), sum(_int(job, "running") for job in jobs))
    if running_total:
        rows = max(1, min(running_rows_max, RUNNING_SHOWN_MAX))
        parts += [_running_table(running, running_total, now_ms, rows), Text()]
    failures = _dicts(snapshot.get("failures"))
    if failures:
        parts += [_failures_table(failures), Text()]
    if infeasible_count:
        parts.append(_infeasible_line(infeasible_count))
    parts += _left_out_lines(snapshot)
    while parts and isinstance(parts[-1], Text) and not parts[-1].plain:
        parts.pop()  # no trailing blank line
    return Group(*parts)


# --- sections ------------------------------------------------------------------------------------


def _header(nodes: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> Text:
    alive = sum(1 for node in nodes if _is_alive(node))
    text = Text()
    text.append(f"{_plural(len(nodes), 'node')} ({format_count(alive)} alive)", style="bold")
    text.append(" · ")
    totals = {key: sum(_int(job, key) for job in jobs) for key in _COUNT_KEYS}
    text.append(f"{_plural(sum(_int(job, 'total') for job in jobs), 'task')}: ", style="bold")
    for i, key in enumerate(_COUNT_KEYS):
        if i:
            text.append(", ")
        style = "red" if key == "failed" and totals[key] else ""
        text.append(f"{format_count(totals[key])} {key}", style=style)
    text.append(" · ")
    text.append(format_rate(sum(_float(job, "rate_per_s") for job in jobs)))
    text.append(" · ETA ")
    text.append(format_duration(_overall_eta(jobs)), style="bold")
    return text


_COUNT_KEYS = ("done", "running", "pending", "failed", "cancelled")


def _overall_eta(jobs: Iterable[dict[str, Any]]) -> float | None:
    """The slowest unfinished job's ETA, or None if any unfinished job has no estimate yet.

    Taking the max over only the known ETAs would claim "done in 1m" while a job that has not
    finished a single task yet (so has no rate) is still queued behind it.
    """
    longest = None
    for job in jobs:
        if _int(job, "pending") + _int(job, "running") == 0:
            continue
        eta = job.get("eta_s")
        if not isinstance(eta, int | float):
            return None
        longest = eta if longest is None else max(longest, eta)
    return longest


GONE_FOLD_S = 600.0  # a node dead or left this long is only counted, not listed


def _gone_long(node: Mapping[str, Any]) -> bool:
    return not _is_alive(node) and (_opt_float(node.get("last_change_s")) or 0.0) > GONE_FOLD_S


def _nodes_table(nodes: list[dict[str, Any]]) -> Table:
    with_gpus = any(
        _int(_mapping(node.get("capacity")), "gpus") or _int(_mapping(node.get("used")), "gpus")
        for node in nodes
    )
    table = _table("Nodes")
    table.add_column("node", no_wrap=True)
    table.add_column("host", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("state", overflow="fold")
    table.add_column("cpus", justify="right", no_wrap=True)
    table.add_column("memory", justify="right", no_wrap=True)
    if with_gpus:
        table.add_column("gpus", justify="right", no_wrap=True)
    table.add_column("running", justify="right", no_wrap=True)
    table.add_column("labels", overflow="fold")
    for node in nodes:
        capacity = _mapping(node.get("capacity"))
        used = _mapping(node.get("used"))
        labels = _mapping(node.get("labels"))
        state = str(node.get("state", "?"))
        paused = str(node.get("not_claiming") or "")  # only the node asked says this of itself
        shown = f"{state}, not claiming: {paused}" if paused and paused != state else state
        row: list[RenderableType] = [
            Text(_short(node.get("id"))),
            Text(str(labels.get("hostname", ""))),
            Text(shown, style="yellow" if paused else _state_style(state)),
            Text(f"{_num(used.get('cpus', 0))}/{_num(capacity.get('cpus', 0))}"),
            Text(
                f"{format_bytes(_int(used, 'memory_bytes'))}"
                f" / {format_bytes(_int(capacity, 'memory_bytes'))}"
            ),
        ]
        if with_gpus:
            row.append(Text(f"{_int(used, 'gpus')}/{_int(capacity, 'gpus')}"))
        row.append(Text(format_count(_int(node, "running"))))
        user_labels = sorted((k, v) for k, v in labels.items() if k not in BUILTIN_LABELS)
        row.append(Text(" ".join(f"{k}={v}" for k, v in user_labels), style="cyan"))
        table.add_row(*row)
    return table


def _jobs_table(jobs: list[dict[str, Any]], *, compact: bool = False) -> Table:
    table = _table("Jobs")
    table.add_column("job", overflow="fold", min_width=12)
    if not compact:
        table.add_column("progress", no_wrap=True, width=PROGRESS_BAR_WIDTH)
    table.add_column("done/total", justify="right", no_wrap=True)
    table.add_column("%", justify="right", no_wrap=True)
    # Narrow: short headings, and no cancelled column while nothing is cancelled.
    show_cancelled = not compact or any(_int(job, "cancelled") for job in jobs)
    names = (
        ["run", "pend", "fail", "canc"]
        if compact
        else ["running", "pending", "failed", "cancelled"]
    )
    for name in (names if show_cancelled else names[:3]) + ["rate", "ETA"]:
        table.add_column(name, justify="right", no_wrap=True)
    for job in jobs:
        total = _int(job, "total")
        failed = _int(job, "failed")
        # Failed and cancelled tasks are finished too: the bar shows how much is left to run,
        # and the percentage how much was done (the failed and cancelled have columns).
        finished = _int(job, "done") + failed + _int(job, "cancelled")
        bar = [] if compact else [_progress_bar(finished, total, failed)]
        table.add_row(
            Text(str(job.get("job", "?")), style="bold"),
            *bar,
            Text(f"{format_count(_int(job, 'done'))}/{format_count(total)}"),
            Text(_percent(_int(job, "done"), total)),
            Text(format_count(_int(job, "running"))),
            Text(format_count(_int(job, "pending"))),
            Text(format_count(failed), style="bold red" if failed else ""),
            *([Text(format_count(_int(job, "cancelled")))] if show_cancelled else []),
            Text(format_rate(_float(job, "rate_per_s"))),
            Text(format_duration(_opt_float(job.get("eta_s")))),
        )
    return table


def _failures_table(failures: list[dict[str, Any]]) -> Table:
    """The latest failed attempts: which, where, how, and the last line of their stderr."""
    table = _table("Latest failures")
    table.add_column("job/task", overflow="fold")
    table.add_column("node", no_wrap=True)
    table.add_column("exit", justify="right", no_wrap=True)
    table.add_column("last line of stderr (or why)", overflow="fold")
    for failure in failures:
        code = failure.get("exit_code")
        exit_text = "timeout" if failure.get("outcome") == "timeout" else str(code or "")
        said = str(failure.get("stderr_tail") or failure.get("reason") or "")
        table.add_row(
            Text(f"{failure.get('job', '?')}/{failure.get('name', '?')}"),
            Text(_short(failure.get("node"))),
            Text(exit_text, style="red"),
            Text(said),
        )
    return table


def _running_table(
    running: list[dict[str, Any]], running_total: int, now_ms: int | None, rows_max: int
) -> Table:
    # Oldest first: a straggler holding a job up is what one looks for here.
    ordered = sorted(
        running,
        key=lambda task: (_opt_float(task.get("started_ms")) or 0.0, str(task.get("task_id"))),
    )
    shown = ordered[:rows_max]
    hidden = running_total - len(shown)
    table = _table(f"Running ({format_count(running_total)})")
    if hidden > 0:
        table.caption = f"… and {format_count(hidden)} more"
        table.caption_justify = "left"
    table.add_column("job", overflow="fold")
    table.add_column("task", overflow="fold")
    table.add_column("node", no_wrap=True)
    table.add_column("epoch", justify="right", no_wrap=True)
    table.add_column("elapsed", justify="right", no_wrap=True)
    for task in shown:
        started = _opt_float(task.get("started_ms"))
        elapsed = None if started is None or now_ms is None else (now_ms - started) / 1000
        table.add_row(
            Text(str(task.get("job", "?"))),
            Text(str(task.get("name", task.get("task_id", "?")))),
            Text(_short(task.get("node"))),
            Text(str(task.get("epoch", ""))),
            Text(format_duration(elapsed)),
        )
    return table


def _infeasible_line(count: int) -> Text:
    if count == 1:
        message = (
            "1 pending task cannot run on any live node "
            "(it needs more CPU/memory/GPUs or labels than any node has)"
        )
    else:
        message = (
            f"{format_count(count)} pending tasks cannot run on any live node "
            "(they need more CPU/memory/GPUs or labels than any node has)"
        )
    return Text(message, style="yellow")


def _left_out_lines(snapshot: Mapping[str, Any]) -> list[Text]:
    """What the ledger file holds that the view leaves out, so no task vanishes unsaid."""
    lines = []
    unreadable, refused = _int(snapshot, "unreadable_records"), _int(snapshot, "refused_tasks")
    if unreadable:
        what = "1 record" if unreadable == 1 else f"{format_count(unreadable)} records"
        reason = str(snapshot.get("unreadable_reason") or "")
        lines.append(
            Text(
                f"{what} in the ledger could not be read"
                + (f" ({reason})" if reason else "")
                + f"; the tasks {'it describes are' if unreadable == 1 else 'they describe are'}"
                + " not shown",
                style="yellow",
            )
        )
    if refused:
        what = "1 task record" if refused == 1 else f"{format_count(refused)} task records"
        reason = str(snapshot.get("refused_reason") or "")
        lines.append(
            Text(
                f"{what} in the ledger {'was' if refused == 1 else 'were'} refused: "
                + (reason or "changed since submission")
                + f"; {'that task is' if refused == 1 else 'those tasks are'} not shown"
                + " and not run",
                style="yellow",
            )
        )
    return lines


# --- small pieces --------------------------------------------------------------------------------


def _table(title: str) -> Table:
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        header_style="bold dim",
        caption_style="dim",
        pad_edge=False,
    )


def _note(message: str) -> Text:
    return Text(message, style="dim italic")


def _progress_bar(finished: int, total: int, failed: int) -> RenderableType:
    if total <= 0:
        # ProgressBar draws total=0 as full, and total=None pulses off the clock: show nothing.
        return Text("")
    return ProgressBar(
        total=total,
        completed=finished,
        width=PROGRESS_BAR_WIDTH,
        complete_style="red" if failed else "bar.complete",
        finished_style="red" if failed else "bar.finished",
    )


def _percent(finished: int, total: int) -> str:
    if total <= 0:
        return _UNKNOWN
    # Floor, not round, so a job with one task left never reads 100.0%.
    tenths = finished * 1000 // total
    return f"{tenths // 10}.{tenths % 10}%"


def _is_alive(node: Mapping[str, Any]) -> bool:
    return str(node.get("state", "")).lower() not in DOWN_STATES


def _state_style(state: str) -> str:
    if state.lower() in DOWN_STATES:
        return "red"
    return _STATE_STYLES.get(state.lower(), "")


def _short(node_id: Any) -> str:
    return str(node_id or "?")[:SHORT_ID_LEN]


def _plural(n: int, noun: str) -> str:
    return f"{format_count(n)} {noun}{'' if n == 1 else 's'}"


def _num(value: Any) -> str:
    """A CPU amount: whole numbers without `.0`, fractions with up to two decimals."""
    number = _opt_float(value) or 0.0
    if number.is_integer():
        return str(int(number))
    return f"{number:.2f}".rstrip("0")


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value or [] if isinstance(item, dict)]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _opt_float(value: Any) -> float | None:
    # bool is an int subclass, but True is not a duration.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _float(row: Mapping[str, Any], key: str) -> float:
    return _opt_float(row.get(key)) or 0.0


def _int(row: Mapping[str, Any], key: str) -> int:
    value = _opt_float(row.get(key))
    return int(value) if value is not None and math.isfinite(value) else 0
