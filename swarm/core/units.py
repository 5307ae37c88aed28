"""How people write sizes, counts, durations and rates, and how they are read back: one place for
the status view, the CLI's messages, the daemon's log lines and the task file's `memory` field.

Theory of operation: pure functions of their argument, so a figure reads the same wherever it is
shown. Sizes given by users (flags and the task file's `memory` field) go through `parse_size`: a
bare number means MiB and units are binary, so that "512", 512 and "512M" are the same request;
`format_bytes` writes binary units too, so what a user reads can be given back as it reads.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from swarm.errors import SizeError

__all__ = ["format_bytes", "format_count", "format_duration", "format_rate", "parse_size"]

_UNKNOWN = "—"
_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_MIB = 1024**2
# Sizes are stored as SQLite/msgpack int64; refuse anything that would not round-trip.
_MAX_SIZE = 2**63 - 1
_UNITS = {"": _MIB, "b": 1, "k": 1024, "m": _MIB, "g": 1024**3, "t": 1024**4, "p": 1024**5}
# A bare number is MiB; a unit may be written K, KB or KiB (all binary), case-insensitively.
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtp])(?:i?b)?|(b))?", re.IGNORECASE)
_SIZE_FORMS = (
    "a number of MiB (512 or 1.5) or a number with a binary unit B, K, M, G, T or P "
    "(512M, 2G, 2GiB, 1.5G)"
)


def format_duration(seconds: float | None) -> str:
    """`45s`, `3m 20s`, `1h 05m`, `2d 03h`; `—` when unknown. Negative durations read as 0s."""
    if seconds is None or not math.isfinite(seconds):
        return _UNKNOWN
    # Round once up front so 59.6s reads "1m 00s", not "60s".
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def format_bytes(n: int) -> str:
    """Binary units with one decimal: `512 B`, `1.5 KiB`, `512.0 MiB`, `15.6 GiB`."""
    sign = "-" if n < 0 else ""
    size = abs(n)
    if size < 1024:
        return f"{sign}{size} B"
    value = float(size)
    for unit in _BYTE_UNITS:
        value /= 1024
        # Move up a unit if rounding would print e.g. "1024.0 MiB" instead of "1.0 GiB".
        if round(value, 1) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{sign}{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_count(n: int) -> str:
    """Thousands separators: `12,345`."""
    return f"{n:,}"


def format_rate(per_s: float) -> str:
    """Tasks per second: `12.3/s`; two decimals below 0.1/s so slow jobs don't read as 0.0/s."""
    if not math.isfinite(per_s) or per_s <= 0:
        return "0/s"
    if per_s < 0.1:
        return f"{per_s:.2f}/s"
    return f"{per_s:.1f}/s"


def parse_size(text: str | int | float, *, field: str) -> int:
    """Bytes from a user's size: a bare number is MiB, units are binary (1G = 1024**3).

    Raises SizeError (a ConfigError) naming `field` and the accepted forms when the value is
    not a size.
    """

    def bad(why: str) -> SizeError:
        return SizeError(field, f"{why}; expected {_SIZE_FORMS}")

    amount: Fraction
    # bool is an int subclass, and "memory: true" in a task file is a mistake, not 1 MiB.
    if isinstance(text, bool):
        raise bad(f"{text!r} is not a size")
    if isinstance(text, int):
        amount = Fraction(text) * _MIB
    elif isinstance(text, float):
        if not math.isfinite(text):
            raise bad(f"{text!r} is not a size")
        amount = Fraction(text) * _MIB
    elif isinstance(text, str):
        match = _SIZE_RE.fullmatch(text.strip())
        if match is None:
            raise bad(f"{text!r} is not a size" if text.strip() else "an empty value is not a size")
        number, unit, byte_unit = match.groups()
        # Fraction keeps "1.1T" exact where a float would drift by a few bytes.
        amount = Fraction(number) * _UNITS[(unit or byte_unit or "").lower()]
    else:
        # Values from a decoded task file may be anything; say so rather than crash.
        raise bad(f"{text!r} is not a size")
    if amount < 0:
        raise bad(f"{text!r} is negative")
    size = round(amount)
    if size > _MAX_SIZE:
        raise bad(f"{text!r} is too large")
    return size
