"""Every module of every package imports, and no package's modules import each other in a circle."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(
    path for path in ROOT.glob("packages/*/src/*") if (path / "__init__.py").is_file()
)
#: Modules that do something when imported (``__main__`` runs the command).
NOT_IMPORTED = {"__main__"}


def _modules(package: Path) -> list[str]:
    return sorted(path.stem for path in package.glob("*.py"))


def _imported(package: Path, module: str) -> set[str]:
    """Return the modules of ``package`` that ``module`` imports, anywhere in its source."""
    name = package.name
    tree = ast.parse((package / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module is None:
                found.update(alias.name for alias in node.names)  # from . import _x
            elif node.level == 1 and node.module is not None:
                found.add(node.module.split(".")[0])  # from ._x import y
            elif node.level == 0 and node.module is not None:
                parts = node.module.split(".")
                if parts[0] == name and len(parts) > 1:
                    found.add(parts[1])  # from timer_x._y import z
                elif parts == [name]:
                    found.update(alias.name for alias in node.names)  # from timer_x import _y
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == name and len(parts) > 1:
                    found.add(parts[1])  # import timer_x._y
    return found & set(_modules(package)) - {module}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one circle of ``graph`` as a path that ends where it starts, or ``None``."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            found = visit(target)
            if found is not None:
                return found
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        found = visit(node)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize("package", PACKAGES, ids=lambda path: path.name)
def test_no_import_circle(package):
    graph = {module: _imported(package, module) for module in _modules(package)}
    circle = _cycle(graph)
    assert circle is None, f"{package.name} imports in a circle: {' -> '.join(circle or [])}"


@pytest.mark.parametrize(
    "module",
    [
        f"{package.name}.{module}"
        for package in PACKAGES
        for module in _modules(package)
        if module not in NOT_IMPORTED
    ],
)
def test_every_module_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize(
    ("graph", "circle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b", "c"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_cycle_finder(graph, circle):
    assert _cycle(graph) == circle
