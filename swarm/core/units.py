"""Placeholder until the units module lands: the byte formatter the status view uses."""

from __future__ import annotations

_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(n: int) -> str:
    """Binary units with one decimal: `512 B`, `1.5 KiB`, `512.0 MiB`, `15.6 GiB`."""
    sign = "-" if n < 0 else ""
    size = abs(n)
    if size < 1024:
        return f"{sign}{size} B"
    value = float(size)
    for unit in _BYTE_UNITS:
        value /= 1024
        if round(value, 1) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{sign}{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover
