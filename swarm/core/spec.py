"""What a task asks for, normalized, and how its id is derived.

Theory of operation: a task file line becomes a `TaskSpec` whose fields are all normalized (memory in
bytes, env and requires as sorted pairs, cwd absolute), so that two lines meaning the same thing give
the same spec, and the task id (sha256 of the canonical encoding of the job and the spec) is stable
across machines and Python versions. Pure: no I/O.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import re
from dataclasses import MISSING, dataclass, fields
from json.encoder import encode_basestring as _json_str
from typing import Any

from swarm.errors import SpecError

# Defaults of DESIGN.md 2.2; part of the task-id contract, so changing one changes ids.
DEFAULT_CPUS = 1.0
DEFAULT_MEMORY_BYTES = 512 * 1024 * 1024
DEFAULT_GPUS = 0
DEFAULT_PRIORITY = 0
DEFAULT_RETRIES = 2
# A failed attempt's retry waits this long, doubled at each further failure, up to
# RETRY_BACKOFF_MAX_S: a task that fails at once is not run three times in a second.
DEFAULT_RETRY_BACKOFF_S = 1.0
RETRY_BACKOFF_MAX_S = 600.0

# A required label's value: one value, or a tuple of values of which any may match.
LabelValue = str | int | float | bool | tuple[str | int | float | bool, ...]


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of CPU cores (fractions allowed), memory in bytes and whole GPUs."""

    cpus: float
    memory_bytes: int
    gpus: int = 0

    def fits_in(self, free: Resources) -> bool:
        # A small epsilon so that ten tasks of 0.1 cpus fit in one core despite float sums.
        return (
            self.cpus <= free.cpus + 1e-9
            and self.memory_bytes <= free.memory_bytes
            and self.gpus <= free.gpus
        )

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpus + other.cpus, self.memory_bytes + other.memory_bytes, self.gpus + other.gpus
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpus - other.cpus, self.memory_bytes - other.memory_bytes, self.gpus - other.gpus
        )

    def to_wire(self) -> list[Any]:
        return [self.cpus, self.memory_bytes, self.gpus]

    @staticmethod
    def from_wire(raw: list[Any]) -> Resources:
        """From a record (a node's capacity in a peer's RESULT): SpecError unless numbers.
        Not converted from anything else: int(1e300) would make an int that no longer
        encodes, and the record's signature is checked by encoding it again."""
        return Resources(_num(raw[0], "cpus"), _whole(raw[1], "memory"), _whole(raw[2], "gpus"))


NO_RESOURCES = Resources(0.0, 0, 0)
SHARED_SHAPES_MAX = 4096  # distinct needs kept for sharing; a million tasks have a few


@functools.lru_cache(maxsize=SHARED_SHAPES_MAX)
def shared_resources(cpus: float, memory_bytes: int, gpus: int) -> Resources:
    """One Resources object for each need that many specs share (they are immutable): a
    million tasks of one size hold one, not a million."""
    return Resources(cpus, memory_bytes, gpus)


@dataclass(frozen=True, slots=True)
class PyCall:
    """A Python call (swarm/api.py): the function and its arguments, cloudpickled, held as blobs
    under their sha256; so a function sent 10,000 times, or a large argument, is stored once."""

    fn: str  # digest of the pickled function
    args: str  # digest of the pickled (args, kwargs); "" when they are `inline`
    name: str  # the function's module.qualname, for tables and CSV
    python: str  # "3.11": the version that pickled them, which the node must run
    inline: str = ""  # small arguments, pickled and base64-encoded, in the spec itself

    def to_wire(self) -> dict[str, str]:
        out = {"fn": self.fn, "args": self.args, "name": self.name, "python": self.python}
        if self.inline:
            out["inline"] = self.inline
        return out

    @staticmethod
    def from_wire(raw: Any) -> PyCall:
        if not isinstance(raw, dict) or not {"fn", "args", "name", "python"} <= set(raw):
            raise SpecError("call", "must be a map of fn, args, name and python")
        if set(raw) - {"fn", "args", "name", "python", "inline"}:
            raise SpecError("call", "has keys other than fn, args, name, python and inline")
        inline = raw.get("inline", "")
        if not _is_digest(raw["fn"]):
            raise SpecError("call", "fn must be a sha256 digest")
        if not (_is_digest(raw["args"]) if raw["args"] != "" else _is_base64(inline)):
            raise SpecError("call", "args must be a sha256 digest, or inline base64 (not both)")
        if raw["args"] != "" and inline != "":
            raise SpecError("call", "args must be a sha256 digest, or inline base64 (not both)")
        if len(inline) > INLINE_ARGS_CHARS_MAX:
            raise SpecError("call", f"inline arguments over {INLINE_ARGS_CHARS_MAX} characters")
        if not (_is_str(raw["name"]) and raw["name"] and len(raw["name"]) <= CALL_NAME_MAX):
            raise SpecError("call", f"name must be a string of 1 to {CALL_NAME_MAX} characters")
        if not (isinstance(raw["python"], str) and _PYTHON_RE.fullmatch(raw["python"])):
            raise SpecError("call", "python must be a version such as 3.11")
        return PyCall(raw["fn"], raw["args"], raw["name"], raw["python"], inline)


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and _DIGEST_CHARS.issuperset(value)


def _is_base64(value: Any) -> bool:
    if not (isinstance(value, str) and value != "" and _BASE64_RE.fullmatch(value)):
        return False
    try:
        base64.b64decode(value, validate=True)  # its padding too
    except ValueError:
        return False
    return True


_DIGEST_CHARS = frozenset("0123456789abcdef")
_PYTHON_RE = re.compile(r"[0-9]{1,2}\.[0-9]{1,3}")
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")
CALL_NAME_MAX = 512
# Arguments that pickle to at most this many bytes travel in the task's spec (no blob to store,
# announce and fetch); bigger ones are blobs. Base64 makes 4 characters of every 3 bytes.
INLINE_ARGS_BYTES_MAX = 3 * 1024
INLINE_ARGS_CHARS_MAX = 4 * INLINE_ARGS_BYTES_MAX // 3 + 4
# A call that printed nothing and whose outcome is at most this big has it carried in its RESULT
# record (ledger.ResultRecord.value), not in blobs: most values are a few numbers, and a blob
# costs a file, two fsyncs and copies to peers. A peer's RESULT with a bigger one is refused.
INLINE_OUTCOME_BYTES_MAX = 2048


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A normalized task. Exactly one of `cmd`, `argv` and `call` is set."""

    cmd: str | None
    argv: tuple[str, ...] | None
    need: Resources
    priority: int = DEFAULT_PRIORITY
    timeout_s: float | None = None
    retries: int = DEFAULT_RETRIES
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    requires: tuple[tuple[str, LabelValue], ...] = ()
    outputs: tuple[str, ...] = ()
    call: PyCall | None = None
    retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S

    def retry_wait_s(self, failures: int) -> float:
        """How long a retry waits after the `failures`th failure (exponential, capped)."""
        if failures < 1 or self.retry_backoff_s <= 0:
            return 0.0
        return min(self.retry_backoff_s * 2.0 ** min(failures - 1, 30), RETRY_BACKOFF_MAX_S)

    def command_text(self) -> str:
        """The command as one line, for tables and CSV (a Python call: its function's name)."""
        if self.cmd is not None:
            return self.cmd
        if self.call is not None:
            return f"python: {self.call.name}"
        assert self.argv is not None
        return " ".join(_shell_quote(a) for a in self.argv)

    def to_wire(self) -> dict[str, Any]:
        """The canonical plain form: only non-default fields, so old ids survive new fields."""
        out: dict[str, Any] = {}
        if self.cmd is not None:
            out["cmd"] = self.cmd
        if self.argv is not None:
            out["argv"] = list(self.argv)
        out["cpus"] = self.need.cpus
        out["memory"] = self.need.memory_bytes
        if self.need.gpus:
            out["gpus"] = self.need.gpus
        if self.priority != DEFAULT_PRIORITY:
            out["priority"] = self.priority
        if self.timeout_s is not None:
            out["timeout"] = self.timeout_s
        if self.retries != DEFAULT_RETRIES:
            out["retries"] = self.retries
        if self.env:
            out["env"] = dict(self.env)
        if self.cwd is not None:
            out["cwd"] = self.cwd
        if self.requires:
            out["requires"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.requires}
        if self.outputs:
            out["outputs"] = list(self.outputs)
        if self.call is not None:
            out["call"] = self.call.to_wire()
        if self.retry_backoff_s != DEFAULT_RETRY_BACKOFF_S:
            out["retry_backoff"] = self.retry_backoff_s
        return out

    @staticmethod
    def from_wire(raw: Any) -> TaskSpec:
        """A spec from the database, a peer or a client: checked as strictly as a task file
        line, since a bad one reaching the executor could take the daemon down. SpecError (a
        ValueError) naming the field."""
        if not isinstance(raw, dict):
            raise SpecError("spec", "must be a map")
        # Most tasks: a command and defaults. (A null command goes the whole way, whose error
        # for it is that exactly one of cmd and argv is set.)
        if raw.keys() <= _PLAIN_KEYS and raw.get("cmd") is not None:
            need = shared_resources(
                _num(raw.get("cpus"), "cpus"), _whole(raw.get("memory"), "memory"), 0
            )
            # The rules of check() that a command and its need can break, in its order: the
            # fields left out are the defaults, which keep the others (a million specs are
            # read at a start).
            cmd = _check_cmd(raw["cmd"])
            _check_need(need)
            _check_arg_size("cmd", cmd)
            return _command_spec(cmd, need)
        unknown = set(raw) - _WIRE_KEYS
        if unknown:  # sorted as text: keys of mixed types do not compare
            raise SpecError("spec", f"unknown keys {sorted(map(repr, unknown))}")
        argv, timeout, env, requires = (
            raw.get("argv"),
            raw.get("timeout"),
            raw.get("env", {}),
            raw.get("requires", {}),
        )
        if argv is not None and not isinstance(argv, list):
            raise SpecError("argv", "must be a list")
        if not isinstance(env, dict):
            raise SpecError("env", "must be a map")
        if not isinstance(requires, dict):
            raise SpecError("requires", "must be a map")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise SpecError("env", "must map names to strings")  # before they are sorted
        outputs = raw.get("outputs", [])
        if not isinstance(outputs, list):
            raise SpecError("outputs", "must be a list")
        spec = TaskSpec(
            cmd=raw.get("cmd"),
            argv=tuple(argv) if argv is not None else None,
            need=shared_resources(
                _num(raw.get("cpus"), "cpus"),
                _whole(raw.get("memory"), "memory"),
                _whole(raw.get("gpus", 0), "gpus"),
            ),
            priority=_whole(raw.get("priority", DEFAULT_PRIORITY), "priority"),
            timeout_s=_num(timeout, "timeout") if timeout is not None else None,
            retries=_whole(raw.get("retries", DEFAULT_RETRIES), "retries"),
            env=tuple(sorted(env.items())),
            cwd=raw.get("cwd"),
            requires=normalize_requires(requires),
            outputs=tuple(outputs),
            call=PyCall.from_wire(raw["call"]) if "call" in raw else None,
            retry_backoff_s=_num(
                raw.get("retry_backoff", DEFAULT_RETRY_BACKOFF_S), "retry_backoff"
            ),
        )
        check(spec)
        return spec


_PLAIN_KEYS = frozenset({"cmd", "cpus", "memory"})

# Every field of a TaskSpec with its default, and how to set it on a new one past the frozen
# dataclass's __setattr__: a command spec made this way costs half of TaskSpec(cmd, None,
# need), whose __init__ calls object.__setattr__ once a field (a million are made at a start).
_SPEC_DEFAULTS = tuple(
    (getattr(TaskSpec, f.name).__set__, f.default)
    for f in fields(TaskSpec)
    if f.default is not MISSING
)
# The fields with no default; a field added with a default_factory would have to be set here.
assert [f.name for f in fields(TaskSpec) if f.default is MISSING] == ["cmd", "argv", "need"]
_SET_CMD, _SET_ARGV, _SET_NEED = (
    getattr(TaskSpec, name).__set__ for name in ("cmd", "argv", "need")
)


def _command_spec(cmd: str, need: Resources) -> TaskSpec:
    """TaskSpec(cmd, None, need): a command, its need, and every other field at its default."""
    spec = object.__new__(TaskSpec)
    _SET_CMD(spec, cmd)
    _SET_ARGV(spec, None)
    _SET_NEED(spec, need)
    for set_field, default in _SPEC_DEFAULTS:
        set_field(spec, default)
    return spec


_WIRE_KEYS = frozenset(
    {"cmd", "argv", "cpus", "memory", "gpus", "priority", "timeout", "retries", "env", "cwd",
     "requires", "outputs", "call", "retry_backoff"}
)  # fmt: skip
CPUS_MAX = 4096.0
MEMORY_BYTES_MAX = 2**63 - 1
GPUS_MAX = 1024
PRIORITY_ABS_MAX = 2**31
RETRIES_MAX = 1000
# The kernel refuses to exec a command with any one argument or environment string longer than
# MAX_ARG_STRLEN (128 KiB, with its NUL): such a task could never start, so it is never accepted.
ARG_BYTES_MAX = 128 * 1024 - 1
# A whole task's text (command or arguments, environment, paths, patterns, labels). It keeps every
# TASK record far below what one peer frame carries (wire.RECORD_BODY_BYTES_MAX). Large inputs
# belong in files that the task reads.
SPEC_BYTES_MAX = 256 * 1024
# Each argument, variable, pattern or label counts for this much besides its text: exec takes a
# pointer for each, and the record a few bytes. A million empty arguments are not a small task.
ITEM_OVERHEAD_BYTES = 8


def _num(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(field, f"expected a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError as exc:  # a huge int: callers expect ValueError, the documented error
        raise SpecError(field, "expected a finite number") from exc
    if not math.isfinite(number):
        raise SpecError(field, "expected a finite number")
    return number


def _whole(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field, f"expected a whole number, got {type(value).__name__}")
    return value


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and "\x00" not in value


def _is_label_value(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int | bool)


# A name becomes a directory name: at most NAME_MAX of Linux and macOS, in bytes, not characters
# (a name of 200 characters of 4 bytes each could be submitted, then never written).
NAME_BYTES_MAX = 255


def name_problem(name: Any) -> str | None:
    """Why `name` cannot name a task or a job (it becomes a directory name), or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if not _is_text(name):
        return "holds a lone surrogate escape, which is not text"
    size = len(name.encode("utf-8"))
    if size > NAME_BYTES_MAX:
        return (
            f"is {size} bytes long in UTF-8, over the limit of {NAME_BYTES_MAX} bytes "
            "(it names a directory)"
        )
    if "/" in name or "\x00" in name or name in (".", ".."):
        return "is used as a directory name: no '/', NUL, '.' or '..'"
    return None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check(spec: TaskSpec) -> None:
    """The invariants every spec holds, whatever it came from. SpecError naming the field."""
    if sum(x is not None for x in (spec.cmd, spec.argv, spec.call)) != 1:
        raise SpecError("cmd", "exactly one of cmd and argv")
    if spec.call is not None and spec.outputs:
        raise SpecError("outputs", "a Python call returns its value: it declares no outputs")
    if spec.cmd is not None:
        _check_cmd(spec.cmd)
    if spec.argv is not None and not (
        spec.argv and all(_is_str(a) for a in spec.argv) and spec.argv[0]
    ):
        raise SpecError("argv", "must be a non-empty list of strings without NUL")
    _check_need(spec.need)
    if not -PRIORITY_ABS_MAX <= spec.priority < PRIORITY_ABS_MAX:
        raise SpecError("priority", "out of range")
    if spec.timeout_s is not None and not (spec.timeout_s > 0 and math.isfinite(spec.timeout_s)):
        raise SpecError("timeout", "must be a number of seconds above 0")
    if not 0 <= spec.retries <= RETRIES_MAX:
        raise SpecError("retries", f"must be between 0 and {RETRIES_MAX}")
    if not 0 <= spec.retry_backoff_s <= RETRY_BACKOFF_MAX_S:
        raise SpecError("retry_backoff", f"must be between 0 and {RETRY_BACKOFF_MAX_S:g} seconds")
    for key, value in spec.env:
        if not (_is_str(key) and key and "=" not in key and _is_str(value)):
            raise SpecError("env", f"{key!r} is not a valid variable and string value")
    if spec.cwd is not None and not (_is_str(spec.cwd) and spec.cwd.startswith("/")):
        raise SpecError("cwd", "must be an absolute path")
    for key, wanted in spec.requires:
        values = wanted if isinstance(wanted, tuple) else (wanted,)
        if not (_is_str(key) and key and values and all(_is_label_value(v) for v in values)):
            raise SpecError("requires", f"{key!r} must be a string, number or list of them")
        for label in values:
            problem = comparison_problem(label)
            if problem is not None:
                raise SpecError("requires", f"{key}: {problem}")
    for pattern in spec.outputs:
        if not (_is_str(pattern) and pattern) or pattern.startswith("/"):
            raise SpecError("outputs", "must be relative glob patterns")
        if ".." in pattern.replace("\\", "/").split("/"):
            raise SpecError("outputs", "must not contain '..'")
    _check_size(spec)


def _check_cmd(cmd: Any) -> str:
    if not (_is_str(cmd) and cmd.strip()):
        raise SpecError("cmd", "must be a non-empty string without NUL")
    return str(cmd)


def _check_need(need: Resources) -> None:
    if not (0 < need.cpus <= CPUS_MAX and math.isfinite(need.cpus)):
        raise SpecError("cpus", f"must be above 0 and at most {CPUS_MAX:g}")
    if not 0 < need.memory_bytes <= MEMORY_BYTES_MAX:
        raise SpecError("memory", "must be above 0 and fit in 63 bits")
    if not 0 <= need.gpus <= GPUS_MAX:
        raise SpecError("gpus", f"must be between 0 and {GPUS_MAX}")


def _utf8_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _check_arg_size(field: str, arg: str) -> int:
    """The bytes of one argument, which exec takes only up to the kernel's limit. (A spec of one
    argument within it is also within SPEC_BYTES_MAX.)"""
    size = _utf8_bytes(arg)
    if size > ARG_BYTES_MAX:
        raise SpecError(
            field,
            f"an argument of {size} bytes is over the kernel's limit of "
            f"{ARG_BYTES_MAX} bytes for one argument; put large inputs in a file the task reads",
        )
    return size


def _check_size(spec: TaskSpec) -> None:
    """A task that could never be exec'd, or too large to replicate, names its biggest field."""
    args = (spec.cmd,) if spec.cmd is not None else spec.argv or ()
    field = "cmd" if spec.cmd is not None else "argv"
    sizes = {field: 0, "env": 0, "cwd": 0, "requires": 0, "outputs": 0}
    for arg in args:
        sizes[field] += _check_arg_size(field, arg) + ITEM_OVERHEAD_BYTES
    for key, value in spec.env:
        size = _utf8_bytes(key) + 1 + _utf8_bytes(value)
        if size > ARG_BYTES_MAX:
            raise SpecError(
                "env",
                f"{key[:40]} is {size} bytes, over the kernel's limit of {ARG_BYTES_MAX} "
                "bytes for one environment string",
            )
        sizes["env"] += size + ITEM_OVERHEAD_BYTES
    sizes["cwd"] = _utf8_bytes(spec.cwd or "")
    sizes["outputs"] = sum(_utf8_bytes(p) + ITEM_OVERHEAD_BYTES for p in spec.outputs)
    sizes["requires"] = sum(
        _utf8_bytes(k) + len(str(v)) + ITEM_OVERHEAD_BYTES for k, v in spec.requires
    )
    total = sum(sizes.values())
    if total > SPEC_BYTES_MAX:
        biggest = max(sizes, key=lambda name: sizes[name])
        raise SpecError(
            biggest,
            f"the task's text is {total} bytes, over the limit of {SPEC_BYTES_MAX} "
            "bytes for one task; put large inputs in a file the task reads",
        )


# What a required label's text may start with to compare, rather than equal (policy.py). Longest
# first, so ">=4" reads as ">=" and 4, not ">" and "=4".
ORDER_COMPARATORS = (">=", "<=", ">", "<")


def comparison_problem(value: LabelValue) -> str | None:
    """Why a required label's value cannot be matched, or None. A comparison such as ">=4" needs
    a finite number after its operator: with anything else no node would ever match, and the
    task would stay pending for good."""
    if not isinstance(value, str):
        return None
    for op in ORDER_COMPARATORS:
        if value.startswith(op):
            bound = value[len(op) :].strip()
            try:
                number = float(bound)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                return f"{value!r} compares with {op}, but {bound!r} is not a finite number"
            return None
    return None


def normalize_requires(raw: dict[str, Any]) -> tuple[tuple[str, LabelValue], ...]:
    """Sorted pairs, lists as tuples: hashable, and equal for equal meanings. A value that is
    neither a label value nor a list of them raises SpecError (a map would be unhashable)."""
    pairs = []
    for key, value in raw.items():
        if isinstance(value, list):
            value = tuple(value)
        values = value if isinstance(value, tuple) else (value,)
        if not isinstance(key, str) or not all(_is_label_value(v) for v in values):
            raise SpecError("requires", f"{key!r} must be a string, number or list of them")
        pairs.append((key, value))
    return tuple(sorted(pairs))


def task_id(job: str, spec: TaskSpec, explicit_name: str | None) -> str:
    """Content hash of job + spec (+ the name, when the user chose one).

    A defaulted name (the line number) is left out, so identical lines in one job are one task and a
    re-submitted file whose lines moved adds nothing.
    """
    wire = spec.to_wire()
    canonical = _plain_canonical(job, wire, explicit_name)
    if canonical is None:
        body = {"job": job, "spec": wire}
        if explicit_name is not None:
            body["name"] = explicit_name
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _plain_canonical(job: str, wire: dict[str, Any], explicit_name: str | None) -> str | None:
    """The text json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) makes of
    the id's body when the spec is a command and its need (most tasks), written out directly at
    a third of its cost; None for any other spec. The keys are in sorted order, strings are
    escaped by json's own function and numbers written by their types' repr, as json does."""
    cmd, cpus, memory = wire.get("cmd"), wire.get("cpus"), wire.get("memory")
    if not (
        len(wire) == len(_PLAIN_KEYS)
        and type(cmd) is str
        and type(cpus) is float
        and math.isfinite(cpus)
        and type(memory) is int
        and type(job) is str
    ):
        return None
    spec = f'"spec":{{"cmd":{_json_str(cmd)},"cpus":{cpus!r},"memory":{memory!r}}}}}'
    if explicit_name is None:
        return f'{{"job":{_json_str(job)},{spec}'
    if type(explicit_name) is not str:
        return None
    return f'{{"job":{_json_str(job)},"name":{_json_str(explicit_name)},{spec}'


_SAFE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_")


def _shell_quote(arg: str) -> str:
    if arg and all(c in _SAFE_CHARS for c in arg):
        return arg
    return "'" + arg.replace("'", "'\"'\"'") + "'"
