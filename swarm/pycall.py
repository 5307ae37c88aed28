"""What a Python call's blobs hold: the pickled function, the pickled arguments, and the outcome
that its worker writes as the call's one result file (`VALUE_FILE`).

Theory of operation
-------------------
The client (swarm/cli/api.py) pickles the function and `(args, kwargs)` with cloudpickle, each into
one blob named by its sha256 (`PyCall.fn`, `PyCall.args` in the task's spec). A warm worker
(swarm/daemon/pyworker.py) loads both, runs the call, and writes its outcome with `returned` or
`raised`; the outcome travels and is replicated as any result file does, and `read_outcome`
gives it back to whoever asks, on any node, later.

An outcome is a pickled tuple. A raised exception is kept twice: pickled on its own (so that the
caller gets it as its own type) and as its type's name, its text and the remote traceback (so
that a caller who cannot unpickle it, say for lack of its module, still learns what happened).
"""

from __future__ import annotations

import pickle
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

VALUE_FILE = "value.pickle"  # the result file of a Python call: its outcome
PICKLE_PROTOCOL = 5
_RETURNED = "returned"
_RAISED = "raised"


def python_version() -> str:
    """This interpreter's version as a call records it, such as "3.11"."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def qualified_name(fn: Any) -> str:
    """`module.qualname` of a callable, for tables ("fits.fit_enet", "__main__.<lambda>")."""
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{module}.{name}"


def dumps_call(fn: Any) -> bytes:
    """The function's bytes. cloudpickle takes what cannot be imported by value (functions of
    `__main__`, lambdas, closures) and the rest by reference; a function of the user's own
    module (a file beside the script, or in the working dir) goes by value too, with its
    module, since the nodes do not have that file."""
    import cloudpickle  # imported on use: reading outcomes does not need it

    _send_users_modules_by_value(cloudpickle)
    data: bytes = cloudpickle.dumps(fn, protocol=PICKLE_PROTOCOL)
    return data


_looked_at: set[str] = set()  # modules already judged (users_own)


def _send_users_modules_by_value(cloudpickle: ModuleType) -> None:
    """Every module of the user's own that is imported goes by value: the function called, and
    the helpers it calls (a function of `__main__` that calls one of a file beside the script).
    Each module is judged once; the look is redone only when modules were imported since."""
    if len(_looked_at) >= len(sys.modules):
        return
    for name, module in list(sys.modules.items()):
        if name in _looked_at:
            continue
        _looked_at.add(name)
        if isinstance(module, ModuleType) and users_own(module):
            cloudpickle.register_pickle_by_value(module)


def users_own(module: ModuleType) -> bool:
    """Whether a module is one of the user's own files, which the nodes will not have: it lives
    under the script's dir or the working dir, and not under Python's own dirs (a venv there)."""
    name = module.__name__
    if name == "__main__" or name.split(".")[0] == "swarm" or name in sys.builtin_module_names:
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    where = Path(path).resolve()
    roots = {Path.cwd().resolve()}
    if sys.argv and sys.argv[0] not in ("", "-c", "-m"):
        roots.add(Path(sys.argv[0]).resolve().parent)
    pythons = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    if any(where.is_relative_to(p) for p in pythons):
        return False
    if {"site-packages", "dist-packages"} & set(where.parts):  # installed: `pip install --user`
        return False
    return any(where.is_relative_to(root) for root in roots)


def dumps_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    import cloudpickle

    data: bytes = cloudpickle.dumps((tuple(args), dict(kwargs)), protocol=PICKLE_PROTOCOL)
    return data


@dataclass(frozen=True, slots=True)
class Raised:
    """A call's exception as its worker saw it."""

    type_name: str  # module.qualname of its type
    text: str  # str() of it
    traceback: str  # the remote traceback, formatted
    pickled: bytes  # the exception itself (b"" if it would not pickle)

    def exception(self) -> BaseException | None:
        """The exception as its own type, or None if it cannot be unpickled here."""
        if not self.pickled:
            return None
        try:
            exc = pickle.loads(self.pickled)
        except Exception:
            return None
        return exc if isinstance(exc, BaseException) else None

    def summary(self) -> str:
        """One line, as a task's reason shows it: `ZeroDivisionError: division by zero`."""
        short = self.type_name.removeprefix("builtins.")
        first = self.text.splitlines()[0] if self.text else ""
        return f"{short}: {first}" if first else short


def returned(value: Any) -> bytes:
    """The outcome of a call that returned `value`; raises whatever pickling it raises."""
    import cloudpickle

    data: bytes = cloudpickle.dumps((_RETURNED, value), protocol=PICKLE_PROTOCOL)
    return data


def raised(exc: BaseException, tb_text: str | None = None) -> bytes:
    """The outcome of a call that raised `exc` (an exception that will not pickle is kept as its
    type, text and traceback)."""
    import cloudpickle

    if tb_text is None:
        tb_text = "".join(traceback.format_exception(exc))
    try:
        pickled = cloudpickle.dumps(exc, protocol=PICKLE_PROTOCOL)
        pickle.loads(pickled)  # some exceptions pickle but do not unpickle (required args)
    except Exception:
        pickled = b""
    kind = type(exc)
    raw = Raised(f"{kind.__module__}.{kind.__qualname__}", _text_of(exc), tb_text, pickled)
    return pickle.dumps(
        (_RAISED, raw.type_name, raw.text, raw.traceback, raw.pickled), protocol=PICKLE_PROTOCOL
    )


def _text_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as inner:  # a __str__ that raises
        return f"<str() of it raised {type(inner).__name__}>"


class OutcomeError(Exception):
    """An outcome that cannot be read back (corrupt, or its value needs a module missing here)."""


def read_outcome(data: bytes) -> tuple[bool, Any]:
    """(True, value) for a call that returned; (False, Raised) for one that raised.
    OutcomeError when the outcome cannot be read here, saying why."""
    try:
        outcome = pickle.loads(data)
    except Exception as exc:
        raise OutcomeError(f"the call's outcome cannot be unpickled here: {_text_of(exc)}") from exc
    if isinstance(outcome, tuple) and len(outcome) == 2 and outcome[0] == _RETURNED:
        return True, outcome[1]
    if (
        isinstance(outcome, tuple)
        and len(outcome) == 5
        and outcome[0] == _RAISED
        and all(isinstance(part, str) for part in outcome[1:4])
        and isinstance(outcome[4], bytes)
    ):
        return False, Raised(outcome[1], outcome[2], outcome[3], outcome[4])
    raise OutcomeError("the call's outcome is not one swarm wrote")


class Chunk:
    """Many calls of `fn` as one (`map`'s chunksize): its value is the list of theirs. Named as
    `fn` in tables (`swarm_name`)."""

    def __init__(self, fn: Any, name: str) -> None:
        self.fn = fn
        self.swarm_name = name

    def __call__(self, chunk: list[tuple[Any, ...]]) -> ChunkValues:
        return ChunkValues(self.fn(*args) for args in chunk)


class ChunkValues(list[Any]):
    """A chunk's values: `swarm.results` puts them in its list one by one."""
