"""The layer order of pyproject.toml's import-linter contract, checked without import-linter.

CI runs ``lint-imports`` (a development tool, not a test dependency); this test reads the same
contract from pyproject.toml and checks it with the standard library, so a plain
``python -m pytest`` also catches an import that points up a layer. Every import counts,
including ones inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

if sys.version_info < (3, 11):
    pytest.skip("tomllib needs Python 3.11", allow_module_level=True)
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _contract() -> tuple[list[str], list[list[str]]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return config["root_packages"], [[m.strip() for m in layer.split("|")] for layer in layers]


ROOTS, LAYERS = _contract()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # may name sub-modules
    return found


def _layer_of(module: str) -> tuple[int, str] | None:
    """(index from the top, the layer's member package) of a module, or None outside the layers."""
    for index, members in enumerate(LAYERS):
        for member in members:
            if module == member or module.startswith(member + "."):
                return index, member
    return None


def _violations() -> list[str]:
    found = []
    for root in ROOTS:
        for path in sorted((ROOT / root).rglob("*.py")):
            importer = _module_name(path)
            here = _layer_of(importer)
            if here is None:
                continue
            for imported in sorted(_imports(path)):
                if here[1] == "operators" and imported.split(".")[0] == "tomo":
                    found.append(f"{importer} -> {imported} (operators imports nothing of tomo)")
                    continue
                there = _layer_of(imported)
                if there is None or there[1] == here[1]:
                    continue
                if there[0] <= here[0]:  # up a layer, or a sibling in an independent layer
                    found.append(f"{importer} -> {imported} ({here[1]} may not import {there[1]})")
    return found


def test_contract_read_from_pyproject():
    assert set(ROOTS) == {"tomo", "operators"}
    assert LAYERS[0] == ["tomo.cli"] and LAYERS[-1] == ["operators"]


def test_imports_point_down_the_layers():
    assert _violations() == []


def test_checker_sees_a_violation(tmp_path, monkeypatch):
    """The checker is not vacuous: an upward import in a copy of a low module is reported."""
    low = ROOT / "operators" / "units.py"
    fake_root = tmp_path / "repo"
    (fake_root / "operators").mkdir(parents=True)
    (fake_root / "operators" / "units.py").write_text(low.read_text() + "\nfrom tomo.io import volume\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    assert _violations() == [
        "operators.units -> tomo.io (operators imports nothing of tomo)",
        "operators.units -> tomo.io.volume (operators imports nothing of tomo)",
    ]


# ----- no import circles ---------------------------------------------------------------------------
def _import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the project it imports (every import, lazy ones included).

    A module's own packages are left out: ``from . import sibling`` names the package, which
    Python has always initialised before any of its modules, so that edge closes no loop."""
    paths = {_module_name(p): p for root in ROOTS for p in sorted((ROOT / root).rglob("*.py"))}

    def own_package(module: str, name: str) -> bool:
        return module == name or name.startswith(module + ".")

    return {
        name: {m for m in _imports(path) if m in paths and not own_package(m, name)} for name, path in paths.items()
    }


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_import_circles():
    assert _circles(_import_graph()) == []


def test_circle_finder_sees_a_circle():
    """Not vacuous: a two-module loop and a three-module loop are both found, a chain is not."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(_circles(graph)) == [["a", "b"], ["c", "d", "e"]]
