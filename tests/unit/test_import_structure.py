"""The package structure, read from the source with ``ast``: who may import whom.

The library (``woodpecker/``) never imports the daemons (``workers/``): the frames both
speak live in ``woodpecker.wire``. Only the command-line modules that assemble the
daemons' commands (``woodpecker.cli``, ``woodpecker.admin``) may. And no two modules
import each other, directly or through others, counting imports inside functions (a
function-level import hides a cycle, it does not remove it). Imports under
``if TYPE_CHECKING:`` are annotations only, never executed, and do not count. No module
imports another's private (``_``-prefixed) names.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import woodpecker

ROOT = Path(woodpecker.__file__).resolve().parent.parent
PACKAGES = ("woodpecker", "workers", "shm")
ASSEMBLE_DAEMONS = {"woodpecker.cli", "woodpecker.admin"}


def modules(root: Path) -> dict[str, Path]:
    """Every module of ``PACKAGES`` under ``root``, by dotted name (a package by its own)."""
    found = {}
    for top in PACKAGES:
        for path in (root / top).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """All nodes, skipping the bodies of ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports at run time, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in known:
                    found.add(target)
                elif base in known:
                    found.add(base)
    found.discard(name)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_the_library_never_imports_the_daemons() -> None:
    graph = import_graph(ROOT)
    assert "woodpecker.wire" in graph
    reaching = {
        name: sorted(target for target in targets if target.split(".")[0] == "workers")
        for name, targets in graph.items()
        if name.split(".")[0] == "woodpecker" and name not in ASSEMBLE_DAEMONS
    }
    assert {name: t for name, t in reaching.items() if t} == {}
    assert "woodpecker.wire" in graph["workers.logstore"]
    assert "woodpecker.wire" in graph["woodpecker.producer"]


def test_no_import_cycle_between_modules() -> None:
    assert cycles(import_graph(ROOT)) == []


def private_imports(root: Path) -> dict[str, list[str]]:
    """``from x import _y`` of a project module's private name, by importing module."""
    found: dict[str, list[str]] = {}
    for name, path in modules(root).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                private = [a.name for a in node.names if a.name[:1] == "_" != a.name[1:2]]
                if private:
                    found.setdefault(name, []).extend(private)
    return found


def test_no_private_name_crosses_a_module_boundary() -> None:
    """A module uses another through its public names, so either can change inside."""
    assert private_imports(ROOT) == {}


ETCD_CLIENTS = {"pyetcd", "grpc"}


def etcd_client_users(root: Path) -> set[str]:
    """Modules that import an etcd client library, at any depth of their code."""
    found = set()
    for name, path in modules(root).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                tops = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops = {(node.module or "").split(".")[0]}
            else:
                continue
            if tops & ETCD_CLIENTS:
                found.add(name)
    return found


def test_only_woodpecker_meta_reaches_etcd() -> None:
    """Every etcd operation is a named method in ``woodpecker.meta``; nothing else holds
    an etcd client to build its own calls with."""
    users = etcd_client_users(ROOT)
    assert "woodpecker.meta.connection" in users
    assert {u for u in users if not u.startswith("woodpecker.meta.")} == set()


def test_the_walk_sees_function_level_imports_and_skips_type_checking(tmp_path: Path) -> None:
    """Control: a cycle closed only inside a function, and a daemon import, are both found."""
    files = {
        "woodpecker/__init__.py": "",
        "woodpecker/a.py": "from woodpecker import b\n",
        "woodpecker/b.py": "def late():\n    from woodpecker.a import x\n",
        "woodpecker/c.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from woodpecker import d\n"
        ),
        "woodpecker/d.py": "from . import c\nimport workers.logstore\n",
        "workers/__init__.py": "",
        "workers/logstore.py": "",
        "shm/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert cycles(graph) == [{"woodpecker.a", "woodpecker.b"}]
    assert graph["woodpecker.d"] == {"woodpecker.c", "workers.logstore"}
    assert graph["woodpecker.c"] == set()
    (tmp_path / "woodpecker/e.py").write_text("from woodpecker.a import _hidden, __all__, shown\n")
    assert private_imports(tmp_path) == {"woodpecker.e": ["_hidden"]}
    (tmp_path / "workers/f.py").write_text("def late():\n    from pyetcd import utils\n")
    assert etcd_client_users(tmp_path) == {"workers.f"}


def convention_breaks(root: Path) -> list[str]:
    """Imports under ``tests/`` that take a public name from ``woodpecker`` directly (not
    ``wp.Name``) or import a ``conftest``."""
    known = modules(root)
    found = []
    for path in sorted((root / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or node.level:
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            if node.module == "conftest":
                found.append(f"{where} imports conftest")
            elif node.module == "woodpecker":
                names = [a.name for a in node.names if f"woodpecker.{a.name}" not in known]
                if names:
                    found.append(f"{where} from woodpecker import {', '.join(names)}")
    return found


def test_tests_share_one_import_convention(tmp_path: Path) -> None:
    assert convention_breaks(ROOT) == []
    (tmp_path / "woodpecker").mkdir()
    (tmp_path / "woodpecker" / "wire.py").write_text("")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "from woodpecker import wire\nfrom woodpecker import Client\nfrom conftest import F\n"
    )
    assert convention_breaks(tmp_path) == [
        "tests/test_x.py:2 from woodpecker import Client",
        "tests/test_x.py:3 imports conftest",
    ]
