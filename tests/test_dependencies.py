"""Every package the code imports is declared in setup.cfg, checked from the source itself.

A package installed by hand on a developer's or CI machine hides a missing declaration until a new
user's fresh install fails (hypothesis was missing that way). This test reads every import of the
project's code, tests, examples and scripts, maps each third-party module to the distribution that
provides it here, and requires that distribution to be declared in ``install_requires`` or in an
extra of setup.cfg. ``.ci/run`` also runs the README's test command in a fresh virtual
environment; this test names the culprit in any environment.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("tomo", "operators", "tests", "examples", "scripts")
FIRST_PARTY = {"tomo", "operators", "tests", "conftest", "memory_cap", "volume_scan"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(line: str) -> str:
    return _normalise(re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0])


def declared() -> dict[str, set[str]]:
    """Distribution names declared in setup.cfg: ``{"install": {...}, "test": {...}, ...}``."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    groups = {"install": config.get("options", "install_requires", fallback="")}
    if config.has_section("options.extras_require"):
        groups.update(config.items("options.extras_require"))
    return {name: {_requirement_name(r) for r in text.splitlines() if r.strip()} for name, text in groups.items()}


def imported_modules(paths) -> dict[str, set[str]]:
    """Top-level module name -> the files that import it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def undeclared(modules: dict[str, set[str]], allowed: set[str]) -> list[str]:
    """Third-party modules whose distribution is not in ``allowed``, as readable lines."""
    providers = importlib.metadata.packages_distributions()
    problems = []
    for module, files in sorted(modules.items()):
        if module in sys.stdlib_module_names or module in FIRST_PARTY or module == "__future__":
            continue
        dists = {_normalise(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported by {sorted(files)[0]}) is not installed here: declare it")
        elif not dists & allowed:
            problems.append(f"{module} (from {sorted(dists)}, imported by {sorted(files)[0]}) is not declared")
    return problems


def _files():
    return [p for source in SOURCES for p in sorted((ROOT / source).rglob("*.py"))]


def test_every_import_is_declared():
    groups = declared()
    allowed = set().union(*groups.values())
    assert undeclared(imported_modules(_files()), allowed) == []


def test_test_dependencies_are_in_the_test_extra():
    """The README's test command installs ``.[test]``: what the tests import must come with it."""
    groups = declared()
    allowed = groups["install"] | groups["test"]
    tests = [p for p in sorted((ROOT / "tests").rglob("*.py"))]
    assert undeclared(imported_modules(tests), allowed) == []


def test_checker_sees_a_missing_declaration():
    """Not vacuous: hypothesis (installed here, as the tests need it) is reported when undeclared."""
    modules = {"hypothesis": {"tests/test_fuzz_cli.py"}, "numpy": {"tomo/x.py"}, "json": {"tomo/x.py"}}
    problems = undeclared(modules, allowed={"numpy"})
    assert len(problems) == 1 and problems[0].startswith("hypothesis (from ['hypothesis']")
