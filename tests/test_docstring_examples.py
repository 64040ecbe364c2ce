"""The ``>>>`` examples in the docstrings of ``operators`` and ``tomo`` run and print what they show.

Every module whose source holds ``>>>`` is found automatically, so a new example is tested as soon
as it is written. Examples that cannot run in a second on a CPU (they need a GPU, real data or a
long computation) carry ``# doctest: +SKIP``; a module whose examples are all skipped is reported
as a skipped test, not as a pass.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("operators", "tomo")

#: modules whose examples are illustrations, not runnable code, and why (fix them, then remove here)
NOT_RUNNABLE = {
    "tomo.priors": "the package docstring sketches the API with names it never defines "
    "(hu_tensor, x_t, t); mark those lines +SKIP or make them self-contained",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules_with_examples() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if ">>>" in path.read_text(encoding="utf-8"):
                names.append(_module_name(path))
    return names


MODULES = _modules_with_examples()


def test_examples_are_found():
    assert "operators.units" in MODULES  # the search itself works


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    if name in NOT_RUNNABLE:
        pytest.skip(f"{name}: {NOT_RUNNABLE[name]}")
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in finder.find(module, name):
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{name}: docstring examples fail:\n" + "".join(report)
    if results.attempted == 0:
        pytest.skip(f"{name}: every example is marked +SKIP (needs data, a GPU or a long run)")
