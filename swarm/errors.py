"""The one exception hierarchy of swarm.

Two families under `SwarmError`, as h11 splits LocalProtocolError from RemoteProtocolError:

- `UserError`: what the user gave is wrong (a task file, a flag, a config, a control request). Its
  message is one clear sentence naming what and where; the CLI prints it and exits 2, and nothing
  of the input was half-applied.
- `RemoteError`: what a peer or the daemon sent or said is wrong, or it cannot be reached. Bytes
  from a peer that fail are counted and dropped; the CLI prints what the daemon said.

The rest (a full disk, a blob or ledger file that no longer reads, a task's runaway outputs) are
this node's own troubles and stay directly under `SwarmError`. Programmer errors are assertions.
"""

from __future__ import annotations

import reprlib


class SwarmError(Exception):
    """Base of every error swarm raises on purpose."""


# -- what the user gave ---------------------------------------------------------------------------


class UserError(SwarmError):
    """Something the user supplied is wrong; the message says what and where."""


# The older name, kept because many raise sites (and other branches) use it: the same class.
UserInputError = UserError


class TaskFileError(UserError):
    """One or more lines of a task file are invalid; nothing of the file was added."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:20]
        more = len(problems) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more" if more else "")
        super().__init__(text)


class ConfigError(UserError):
    """A flag, environment variable or state directory is unusable."""


class IdentityClashError(ConfigError):
    """Another process writes records in this node's name (its state dir was copied), or this
    node's ledger was restored from an older copy: the daemon stops rather than write over
    them."""


class SizeError(ConfigError):
    """A size that is not one (a flag's such as `--memory`, or a task's `memory`): `field` names
    where it was given, `problem` says what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class SpecError(UserError, ValueError):
    """One field of a task spec is wrong: `field` names it (as the task file spells it), `problem`
    says what is wrong with it. Also a ValueError, because a spec that arrives from a peer or the
    ledger file is bad data to its readers, which refuse it as they refuse any malformed value."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# -- what a peer or the daemon sent ---------------------------------------------------------------


class RemoteError(SwarmError):
    """What a peer or the daemon sent or said is wrong, or it could not be reached."""


class NotRunningError(RemoteError):
    """No daemon answers on the control socket of this data directory."""


class ControlError(RemoteError):
    """The control connection failed: the daemon refused or failed a request, or either side
    sent a frame that cannot be read."""


class BadRecordError(RemoteError):
    """A ledger record could not be decoded; it is dropped and counted, never applied."""


# -- this node's own state ------------------------------------------------------------------------


class CorruptBlobError(SwarmError):
    """A stored blob no longer hashes to its name."""


class MissingBlobError(SwarmError):
    """A blob named by a result is not held here."""


class StorageFullError(SwarmError):
    """The state directory's disk is full; nothing was half-written."""


class OutputLimitError(SwarmError):
    """An attempt's outputs went past a bound (files, bytes or time); the attempt fails."""


class CorruptLedgerError(SwarmError):
    """The ledger file is not a readable SQLite database of swarm's; the message says what to do."""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 60, 60, 40


def shown(value: object) -> str:
    """A value from outside, as an error message quotes it: a few levels and a line at most.
    (The builtin repr of a structure nested a thousand deep, which msgpack decodes, raises
    RecursionError, and would escape the handler that was building the message.)"""
    try:
        return _SHORT.repr(value)
    except ValueError:  # an int of more digits than Python converts to text
        return f"<{type(value).__name__}>"
