"""The one exception hierarchy of swarm.

Two families, as h11 splits them: errors in what a user gave us (a task file, a flag, a config),
which carry a message naming where the problem is; and errors in what arrived from elsewhere (a
blob on disk, a peer's bytes), which are counted and contained. Programmer errors are assertions.
"""

from __future__ import annotations

import reprlib


class SwarmError(Exception):
    """Base of every error swarm raises on purpose."""


class UserInputError(SwarmError):
    """Something the user supplied is wrong; the message says what and where."""


class TaskFileError(UserInputError):
    """One or more lines of a task file are invalid; nothing of the file was added."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:20]
        more = len(problems) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more" if more else "")
        super().__init__(text)


class ConfigError(UserInputError):
    """A flag, environment variable or state directory is unusable."""


class NotRunningError(SwarmError):
    """No daemon answers on the control socket of this data directory."""


class ControlError(SwarmError):
    """The daemon refused or failed a control request."""


class CorruptBlobError(SwarmError):
    """A stored blob no longer hashes to its name."""


class MissingBlobError(SwarmError):
    """A blob named by a result is not held here."""


class StorageFullError(SwarmError):
    """The state directory's disk is full; nothing was half-written."""


class BadRecordError(SwarmError):
    """A ledger record could not be decoded; it is dropped and counted, never applied."""


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
