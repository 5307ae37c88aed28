"""swarm: batch work shared across machines with no master.

The Python API is imported on first use (`from swarm import SwarmExecutor`), so that the `swarm`
command, which imports this package, does not pay for it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swarm.cli.api import CallLostError, RemoteCallError, SwarmExecutor, results

__all__ = ["CallLostError", "RemoteCallError", "SwarmExecutor", "results"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from swarm.cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'swarm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
