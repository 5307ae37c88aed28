"""Reading a task file: JSON Lines (DESIGN.md 2.2) or plain lines of shell commands (`--lines`).

Every line is checked before anything is returned; all problems are collected, each naming the file,
the line and the field, and raised together as one TaskFileError, so a file with any bad line adds
nothing. Identical lines collapse into one task (ids are content hashes); how many did is told.

The file is read a line at a time and each line is bounded (`LINE_BYTES_MAX`), so a file that
is not a task file (/dev/zero, /dev/urandom, a binary piped in) is refused as soon as it shows,
never read whole into memory.
"""

from __future__ import annotations

import difflib
import io
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from swarm.core.spec import (
    DEFAULT_CPUS,
    DEFAULT_GPUS,
    DEFAULT_MEMORY_BYTES,
    DEFAULT_PRIORITY,
    DEFAULT_RETRIES,
    DEFAULT_RETRY_BACKOFF_S,
    RETRY_BACKOFF_MAX_S,
    SPEC_BYTES_MAX,
    LabelValue,
    Resources,
    TaskSpec,
    check,
    name_problem,
    normalize_requires,
    task_id,
)
from swarm.core.units import parse_size
from swarm.errors import SizeError, SpecError, TaskFileError

KEYS = (
    "cmd", "argv", "name", "cpus", "memory", "gpus", "priority", "timeout", "retries",
    "retry_backoff", "env", "cwd", "requires", "outputs",
)  # fmt: skip
CPUS_MAX = 4096.0
LINES_HINT = "; a file of shell commands, one per line, is read with --lines"
RETRIES_MAX = 1000
PROBLEMS_MAX = 1000  # stop collecting after this many; the file is rejected anyway
# A task's text is at most SPEC_BYTES_MAX; JSON's escapes (six bytes for one, at most) make its
# line longer than that, never this long. A longer line stops the reading: it is no task file.
LINE_BYTES_MAX = 16 * SPEC_BYTES_MAX
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, as some editors write


@dataclass(frozen=True, slots=True)
class NewTask:
    task_id: str
    name: str
    spec: TaskSpec
    line: int
    explicit_name: bool


@dataclass(frozen=True, slots=True)
class ParsedFile:
    tasks: list[NewTask]
    repeats: int  # lines left out because an earlier line is the same task


class _Bad(Exception):
    """One field of one line is wrong; caught per line and turned into a located message."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def parse_jsonl(data: bytes, source: str, job: str, base_dir: Path) -> list[NewTask]:
    """Parse JSON Lines. Relative `cwd` values are taken relative to `base_dir` (the file's dir)."""
    return read(io.BytesIO(data), source, job, base_dir).tasks


def parse_lines(data: bytes, source: str, job: str) -> list[NewTask]:
    """Parse a plain file of one shell command per line, as GNU parallel and xargs read them."""
    return read(io.BytesIO(data), source, job, lines=True).tasks


def read(
    stream: BinaryIO, source: str, job: str, base_dir: Path = Path(), *, lines: bool = False
) -> ParsedFile:
    """The tasks of a task file read from `stream`: JSON Lines, or with `lines` one shell command
    per line. TaskFileError with every problem found, each naming its line."""
    if lines:
        return _parse(stream, source, job, _command_line)
    return _parse(stream, source, job, lambda text: _spec_from_json(text, base_dir))


def _command_line(text: str) -> tuple[TaskSpec, str | None]:
    if "\x00" in text:
        raise _Bad("cmd", "contains a NUL byte")
    spec = TaskSpec(cmd=text, argv=None, need=Resources(DEFAULT_CPUS, DEFAULT_MEMORY_BYTES))
    return _checked(spec), None


class _LineTooLong(Exception):
    pass


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    """The lines of `stream`, without their ends (nor the first one's BOM); _LineTooLong at one
    over LINE_BYTES_MAX, before more of it is read."""
    first = True
    while True:
        # A few bytes past the bound: room for a BOM and a CRLF around a line at it.
        raw = stream.readline(LINE_BYTES_MAX + len(BOM) + 2)
        if not raw:
            return
        if first:
            raw, first = raw.removeprefix(BOM), False
        line = raw.removesuffix(b"\n").removesuffix(b"\r")
        if len(line) > LINE_BYTES_MAX:
            raise _LineTooLong
        yield line


def _parse(
    stream: BinaryIO, source: str, job: str, make: Callable[[str], tuple[TaskSpec, str | None]]
) -> ParsedFile:
    problems: list[str] = []
    tasks: dict[str, NewTask] = {}
    names: dict[str, NewTask] = {}
    repeats = 0
    number = 0
    try:
        for number, raw in enumerate(_lines(stream), start=1):
            if len(problems) >= PROBLEMS_MAX - 1:
                problems.append(f"{source}: stopped reading after {PROBLEMS_MAX - 1} problems")
                break
            if not raw.strip():
                continue
            where = f"{source}:{number}"
            try:
                text = raw.decode("utf-8")
                spec, explicit_name = make(text)
                tid = task_id(job, spec, explicit_name)
            except UnicodeDecodeError as exc:
                problems.append(f"{where}: not valid UTF-8 (byte {exc.start})")
                continue
            except UnicodeEncodeError:
                problems.append(f"{where}: json: a string holds a lone surrogate escape (\\udXXX)")
                continue
            except _Bad as bad:
                problems.append(f"{where}: {bad.field}: {bad.message}")
                continue
            if tid in tasks:
                repeats += 1  # an identical line: one task
                continue
            name = explicit_name if explicit_name is not None else str(number)
            task = NewTask(tid, name, spec, number, explicit_name is not None)
            clash = names.get(task.name)
            if clash is not None:
                problems.append(
                    f"{where}: name: {task.name!r} is already the name of line {clash.line}, "
                    "a different task"
                )
                continue
            tasks[tid] = names[task.name] = task
    except _LineTooLong:
        problems.append(
            f"{source}:{number + 1}: the line is longer than {LINE_BYTES_MAX >> 20} MiB, more than "
            f"any task can be (at most {SPEC_BYTES_MAX >> 10} KiB of text): stopped reading there"
        )
    if problems:
        raise TaskFileError(problems)
    if not tasks:
        raise TaskFileError([f"{source}: no tasks (the file is empty)"])
    return ParsedFile(list(tasks.values()), repeats)


def _spec_from_json(text: str, base_dir: Path) -> tuple[TaskSpec, str | None]:
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        hint = "" if text.lstrip()[:1] in ("{", "[", '"') else LINES_HINT
        raise _Bad("json", f"not valid JSON: {exc.msg} (column {exc.colno}){hint}") from exc
    except RecursionError as exc:
        raise _Bad("json", "nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer literal of thousands of digits
        raise _Bad("json", f"not valid JSON: {exc}") from exc
    if isinstance(obj, _DuplicateKeys):
        raise _Bad(obj.duplicate, "given twice on one line")
    if not isinstance(obj, dict):
        raise _Bad("json", f"expected an object {{...}}, got {type(obj).__name__}")
    for key, value in obj.items():
        if isinstance(value, _DuplicateKeys):
            raise _Bad(key, f"{value.duplicate!r} is given twice")
        try:
            is_text = _is_text(key) and _is_text(value)
        except RecursionError as exc:
            raise _Bad(key, "nested too deeply") from exc
        if not is_text:
            raise _Bad(key, "holds a lone surrogate escape (\\udXXX), which is not text")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]).lower(), KEYS, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _Bad(unknown[0], f"unknown key ({hint}known keys: {', '.join(KEYS)})")
    has_cmd, has_argv = "cmd" in obj, "argv" in obj
    if has_cmd == has_argv:
        raise _Bad("cmd", "exactly one of 'cmd' and 'argv' is required")
    spec = TaskSpec(
        cmd=_command(obj["cmd"]) if has_cmd else None,
        argv=_argv(obj["argv"]) if has_argv else None,
        need=Resources(
            _cpus(obj.get("cpus", DEFAULT_CPUS)),
            _memory(obj["memory"]) if "memory" in obj else DEFAULT_MEMORY_BYTES,
            _count("gpus", obj.get("gpus", DEFAULT_GPUS), 0, 1024),
        ),
        priority=_count("priority", obj.get("priority", DEFAULT_PRIORITY), -(2**31), 2**31 - 1),
        timeout_s=_timeout(obj["timeout"]) if obj.get("timeout") is not None else None,
        retries=_count("retries", obj.get("retries", DEFAULT_RETRIES), 0, RETRIES_MAX),
        retry_backoff_s=_backoff(obj.get("retry_backoff", DEFAULT_RETRY_BACKOFF_S)),
        env=_env(obj.get("env", {})),
        cwd=_cwd(obj["cwd"], base_dir) if obj.get("cwd") is not None else None,
        requires=_requires(obj.get("requires", {})),
        outputs=_outputs(obj.get("outputs", [])),
    )
    name = _name(obj["name"]) if "name" in obj else None
    return _checked(spec), name


def _checked(spec: TaskSpec) -> TaskSpec:
    """The invariants every spec holds, whatever it came from (sizes among them)."""
    try:
        check(spec)
    except SpecError as exc:
        raise _Bad(exc.field, exc.problem) from exc
    return spec


def _is_text(value: Any) -> bool:
    """False if a string in `value` cannot be UTF-8 (a lone surrogate from a \\udXXX escape)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_is_text(k) and _is_text(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_text(v) for v in value)
    return True


class _DuplicateKeys(dict[str, Any]):
    """An object in which a key was repeated; reported under the field that holds it."""

    duplicate = ""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            marked = _DuplicateKeys(out)
            marked.duplicate = key
            return marked
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise _Bad("json", f"{name} is not a number JSON allows")


def _command(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad("cmd", "must be a non-empty string")
    if "\x00" in value:
        raise _Bad("cmd", "contains a NUL byte")
    return value


def _argv(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _Bad("argv", "must be a non-empty list of strings")
    for i, arg in enumerate(value):
        if not isinstance(arg, str):
            raise _Bad("argv", f"item {i} must be a string, got {type(arg).__name__}")
        if "\x00" in arg:
            raise _Bad("argv", f"item {i} contains a NUL byte")
    if not value[0]:
        raise _Bad("argv", "the program (item 0) is empty")
    return tuple(value)


def _name(value: Any) -> str:
    problem = name_problem(value)
    if problem is not None:
        raise _Bad("name", problem)
    assert isinstance(value, str)
    return value


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(field, f"must be a number, got {json.dumps(value)[:50]}")
    try:
        return float(value)
    except OverflowError as exc:
        raise _Bad(field, "is far too large") from exc


def _cpus(value: Any) -> float:
    cpus = _number("cpus", value)
    if not 0 < cpus <= CPUS_MAX:
        raise _Bad("cpus", f"must be more than 0 and at most {CPUS_MAX:g}, got {value}")
    return cpus


def _memory(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Bad("memory", f'must be a size like "2G" or a number of MiB, got {value!r}')
    try:
        size = parse_size(value, field="memory")
    except SizeError as exc:
        raise _Bad("memory", exc.problem) from exc
    if size <= 0:
        raise _Bad("memory", "must be more than 0")
    return size


def _count(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(field, f"must be a whole number, got {json.dumps(value)}")
    if not low <= value <= high:
        raise _Bad(field, f"must be between {low} and {high}, got {value}")
    return value


def _timeout(value: Any) -> float:
    seconds = _number("timeout", value)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise _Bad("timeout", f"must be a number of seconds above 0, got {value}")
    return seconds


def _backoff(value: Any) -> float:
    seconds = _number("retry_backoff", value)
    if not 0 <= seconds <= RETRY_BACKOFF_MAX_S:
        raise _Bad("retry_backoff", f"must be 0 to {RETRY_BACKOFF_MAX_S:g} seconds, got {value}")
    return seconds


def _env(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _Bad("env", 'must be an object of strings, like {"OMP_NUM_THREADS": "1"}')
    for key, item in value.items():
        if not key or "=" in key or "\x00" in key:
            raise _Bad("env", f"{key!r} is not a valid variable name")
        if not isinstance(item, str):
            raise _Bad("env", f"{key}: value must be a string, got {json.dumps(item)}")
        if "\x00" in item:
            raise _Bad("env", f"{key}: value contains a NUL byte")
    return tuple(sorted(value.items()))


def _cwd(value: Any, base_dir: Path) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise _Bad("cwd", "must be a non-empty path")
    return os.path.normpath(os.path.join(base_dir, value))


def _requires(value: Any) -> tuple[tuple[str, LabelValue], ...]:
    if not isinstance(value, dict):
        raise _Bad("requires", 'must be an object of labels, like {"zone": "eu"}')
    for key, item in value.items():
        if not key:
            raise _Bad("requires", "a label name is empty")
        items = item if isinstance(item, list) else [item]
        if not items or not all(isinstance(i, str | int | float | bool) for i in items):
            raise _Bad(
                "requires", f"{key}: must be a string, number, or list of them, got {item!r}"
            )
        if any(isinstance(i, float) and not math.isfinite(i) for i in items):
            raise _Bad("requires", f"{key}: must be finite")
    return normalize_requires(value)


def _outputs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise _Bad("outputs", 'must be a list of glob patterns, like ["out/*.csv"]')
    for pattern in value:
        parts = pattern.replace("\\", "/").split("/")
        if pattern.startswith("/") or ".." in parts or "\x00" in pattern:
            raise _Bad("outputs", f"{pattern!r}: must be relative to the working dir, without '..'")
    return tuple(value)
