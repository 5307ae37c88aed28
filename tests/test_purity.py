"""The protocol cores are pure: no sockets, clocks, files, processes or global randomness.

Walks the import graph of each pure module (transitively, within the package) and fails on a
banned module. This is what keeps them runnable in the simulator and their tests deterministic.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "swarm"
# Every module of the core directory, found rather than listed: a new core module is checked
# from the moment it exists.
PURE = sorted(f"core.{p.stem}" for p in (PACKAGE / "core").glob("*.py") if p.stem != "__init__")
BANNED = {
    "asyncio", "socket", "time", "random", "subprocess", "sqlite3", "aiosqlite", "os",
    "threading", "selectors", "signal", "shutil", "tempfile", "datetime", "asyncio_dgram",
}  # fmt: skip


def imports_of(module: str, package: Path = PACKAGE) -> set[str]:
    """Modules imported at run time: an import under `if TYPE_CHECKING:` (a type, such as the
    injected random.Random) is not counted."""
    tree = ast.parse((package / f"{module.replace('.', '/')}.py").read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # `from swarm.core import gossip` imports the module swarm.core.gossip
            folder = package.parent / node.module.replace(".", "/")
            names.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if (folder / f"{alias.name}.py").exists()
            )
    return names


def closure(module: str) -> dict[str, str]:
    """Every module reachable from `module`, mapped to the package module that imports it."""
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        current = todo.pop()
        for name in imports_of(current):
            if name in seen:
                continue
            seen[name] = current
            path = PACKAGE.parent / f"{name.replace('.', '/')}.py"
            if name.startswith("swarm.") and path.exists():
                todo.append(name.removeprefix("swarm."))
    return seen


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io(module: str) -> None:
    reached = closure(module)
    banned = {name: by for name, by in reached.items() if name.split(".")[0] in BANNED}
    assert not banned, f"{module} reaches I/O modules: {banned}"


def test_the_check_itself_catches_an_io_module() -> None:
    assert "asyncio" in closure("daemon.node")


def test_a_type_only_import_is_not_counted(tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import random\nimport os\n"
    )
    assert imports_of("probe", tmp_path) == {"typing", "os"}
