"""What a task asks for, normalized, and how its id is derived.

Theory of operation: a task file line becomes a `TaskSpec` whose fields are all normalized (memory in
bytes, env and requires as sorted pairs, cwd absolute), so that two lines meaning the same thing give
the same spec, and the task id (sha256 of the canonical encoding of the job and the spec) is stable
across machines and Python versions. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

# Defaults of DESIGN.md 2.2; part of the task-id contract, so changing one changes ids.
DEFAULT_CPUS = 1.0
DEFAULT_MEMORY_BYTES = 512 * 1024 * 1024
DEFAULT_GPUS = 0
DEFAULT_PRIORITY = 0
DEFAULT_RETRIES = 2

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
        return Resources(float(raw[0]), int(raw[1]), int(raw[2]))


NO_RESOURCES = Resources(0.0, 0, 0)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A normalized task. Exactly one of `cmd` and `argv` is set."""

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

    def command_text(self) -> str:
        """The command as one line, for tables and CSV."""
        if self.cmd is not None:
            return self.cmd
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
        return out

    @staticmethod
    def from_wire(raw: dict[str, Any]) -> TaskSpec:
        argv = raw.get("argv")
        timeout = raw.get("timeout")
        return TaskSpec(
            cmd=raw.get("cmd"),
            argv=tuple(argv) if argv is not None else None,
            need=Resources(float(raw["cpus"]), int(raw["memory"]), int(raw.get("gpus", 0))),
            priority=int(raw.get("priority", DEFAULT_PRIORITY)),
            timeout_s=float(timeout) if timeout is not None else None,
            retries=int(raw.get("retries", DEFAULT_RETRIES)),
            env=tuple(sorted(raw.get("env", {}).items())),
            cwd=raw.get("cwd"),
            requires=normalize_requires(raw.get("requires", {})),
            outputs=tuple(raw.get("outputs", ())),
        )


def normalize_requires(raw: dict[str, Any]) -> tuple[tuple[str, LabelValue], ...]:
    """Sorted pairs, lists as tuples: hashable, and equal for equal meanings."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in raw.items()))


def task_id(job: str, spec: TaskSpec, explicit_name: str | None) -> str:
    """Content hash of job + spec (+ the name, when the user chose one).

    A defaulted name (the line number) is left out, so identical lines in one job are one task and a
    re-submitted file whose lines moved adds nothing.
    """
    body = {"job": job, "spec": spec.to_wire()}
    if explicit_name is not None:
        body["name"] = explicit_name
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


_SAFE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_")


def _shell_quote(arg: str) -> str:
    if arg and all(c in _SAFE_CHARS for c in arg):
        return arg
    return "'" + arg.replace("'", "'\"'\"'") + "'"
