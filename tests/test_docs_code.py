"""Every code block of README.md and docs/*.md runs, and every name the docs give resolves.

* ```python blocks run, in page order, in one namespace per page (as a reader pastes them into one
  session), in a temporary working folder, with the matplotlib Agg backend;
* ```bash and ```console blocks: each ``tomo ...`` command (also ``python -m tomo`` and
  ``torchrun ... -m tomo``) is parsed by the real ``tomo`` argument parser (so every sub-command,
  option and choice it names exists), ``python examples/...``/``scripts/...`` name existing files and
  ``pip install -e ".[extra]"`` names declared extras;
* ```text blocks are usage synopses: every ``--option`` of a ``tomo COMMAND`` line exists;
* in the prose, every dotted name in backticks that starts with ``tomo.`` or ``operators.``
  imports (module, then attributes).

A block preceded by ``<!-- needs: data -->`` (the shared real CT folder ``../shared/data``) or
``<!-- needs: gpu -->`` (CUDA) runs only where that is present and is skipped with that reason
otherwise. Blocks are kept tiny so this file stays fast.
"""

from __future__ import annotations

import configparser
import importlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DATA = ROOT.parent / "shared" / "data"

_BLOCK = re.compile(r"^```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
_NEEDS = re.compile(r"<!--\s*needs:\s*(?P<what>[\w, -]+?)\s*-->\s*$")
_KNOWN_NEEDS = {"data", "gpu"}
_NAME = re.compile(r"`((?:tomo|operators)(?:\.[A-Za-z_]\w*)+)")
_LANGS = {"python", "bash", "console", "text"}


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    body: str
    needs: frozenset[str]

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks() -> list[Block]:
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in _BLOCK.finditer(text):
            before = text[: m.start()].rstrip().splitlines()
            mark = _NEEDS.search(before[-1]) if before else None
            needs = frozenset(w.strip() for w in mark.group("what").split(",")) if mark else frozenset()
            line = text.count("\n", 0, m.start()) + 1
            out.append(Block(page, line, m.group("lang"), m.group("body"), needs))
    return out


BLOCKS = _blocks()


def test_every_block_has_a_language_and_known_needs():
    """An unlabelled block would be checked by nothing: each says python, bash, console or text."""
    bad = [f"{b.id} ```{b.lang}" for b in BLOCKS if b.lang not in _LANGS]
    assert not bad, f"label these blocks with one of {sorted(_LANGS)}: {bad}"
    unknown = [f"{b.id} needs {sorted(b.needs - _KNOWN_NEEDS)}" for b in BLOCKS if b.needs - _KNOWN_NEEDS]
    assert not unknown, f"known needs are {sorted(_KNOWN_NEEDS)}: {unknown}"
    assert sum(b.lang == "python" for b in BLOCKS) >= 10 and sum(b.lang == "bash" for b in BLOCKS) >= 10


def _skip_unless_available(block: Block) -> None:
    if "data" in block.needs and not (DATA / "dev").is_dir():
        pytest.skip(f"{block.id} needs the shared data folder {DATA}")
    if "gpu" in block.needs:
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"{block.id} needs a CUDA GPU")


# ----------------------------------------------------------------------------- python blocks

_NAMESPACES: dict[Path, dict] = {}


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "python"], ids=lambda b: b.id)
def test_python_block_runs(block, tmp_path_factory, monkeypatch):
    _skip_unless_available(block)
    import matplotlib

    matplotlib.use("Agg")
    namespace = _NAMESPACES.setdefault(block.page, {"__name__": "__docs__"})
    work = namespace.setdefault("__workdir__", tmp_path_factory.mktemp(block.page.stem))
    monkeypatch.chdir(work)
    code = compile(block.body, block.id, "exec")
    exec(code, namespace)  # the docs' own code, run as a reader would


# ----------------------------------------------------------------------------- shell blocks


def _commands(block: Block) -> list[tuple[int, list[str]]]:
    """(line, argv) of each simple command of a bash/console block (continuations joined)."""
    lines = block.body.splitlines()
    if block.lang == "console":  # prompts mark the commands; the rest is output
        lines = [ln[2:] if ln.startswith("$ ") else "" for ln in lines]
    out, pending, start = [], "", 0
    for k, ln in enumerate(lines):
        if not pending:
            start = k
        pending += ln.rstrip("\\") + " "
        if ln.endswith("\\"):
            continue
        words = shlex.split(pending, comments=True)
        pending = ""
        command: list[str] = []
        for w in [*words, "&&"]:
            if w in ("&&", "||", ";", "|"):
                if command:
                    out.append((block.line + 1 + start, command))
                command = []
            else:
                command.append(w)
    return out


def _tomo_argv(argv: list[str]) -> list[str] | None:
    """The arguments given to ``tomo`` by a command line, or None when it does not run tomo."""
    while argv and re.fullmatch(r"\w+=\S*", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if argv[:1] == ["nice"]:
        argv = argv[1:]
        if argv[:1] == ["-n"]:
            argv = argv[2:]
    if argv[:1] == ["tomo"]:
        return argv[1:]
    if "-m" in argv and argv[0] in ("python", "python3", "torchrun"):
        k = argv.index("-m")
        if argv[k + 1 : k + 2] in (["tomo"], ["tomo.cli.main"]):
            return argv[k + 2 :]
    return None


def _extras() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return set(cfg["options.extras_require"]) if cfg.has_section("options.extras_require") else set()


def _check_command(argv: list[str], where: str, capsys) -> None:
    from tomo.cli.main import build_parser

    tomo = _tomo_argv(argv)
    if tomo is not None:
        try:
            build_parser(tomo).parse_args(tomo)
        except SystemExit as exc:
            err = capsys.readouterr().err.strip().splitlines()
            assert exc.code == 0, f"{where}: `tomo {shlex.join(tomo)}` does not parse: {err[-1] if err else exc}"
        return
    if argv[0] in ("python", "python3", "nice") or argv[0].endswith((".py", ".sh")):
        scripts = [a for a in argv if a.endswith((".py", ".sh"))]
        for s in scripts:
            assert (ROOT / s).is_file(), f"{where}: {s} does not exist"
    if argv[:2] == ["pip", "install"]:
        for word in argv[2:]:
            m = re.fullmatch(r"\.\[([\w,-]+)\]", word)
            if m:
                missing = set(m.group(1).split(",")) - _extras()
                assert not missing, f"{where}: extras {sorted(missing)} are not declared in setup.cfg"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in ("bash", "console")], ids=lambda b: b.id)
def test_shell_block_commands_parse(block, capsys):
    _skip_unless_available(block)
    commands = _commands(block)
    assert commands, f"{block.id}: a shell block without a command"
    for line, argv in commands:
        _check_command(argv, f"{block.page.relative_to(ROOT)}:{line}", capsys)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "text"], ids=lambda b: b.id)
def test_synopsis_options_exist(block):
    from tomo.cli.main import build_parser

    command = None
    for ln in block.body.splitlines():
        m = re.match(r"\s*tomo (\w+)", ln)
        if m:
            command = m.group(1)
        if command is None:
            continue
        sub = build_parser([command])._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", ln):
            assert flag in sub._option_string_actions, f"{block.id}: tomo {command} has no option {flag}"


# ----------------------------------------------------------------------------- names in the prose


def _resolves(name: str) -> bool:
    """Whether ``a.b.c`` names something: the longest importable module, then attributes, or
    Python's own reading (attributes first: ``operators.settings`` is an object of the package)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part, None)
        if obj is not None:
            return True
        break
    try:
        obj = importlib.import_module(parts[0])
        for k, part in enumerate(parts[1:], start=2):
            obj = getattr(obj, part) if hasattr(obj, part) else importlib.import_module(".".join(parts[:k]))
    except ImportError:
        return False
    return True


def test_dotted_names_in_the_docs_import():
    bad = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in _NAME.finditer(text):
            if not _resolves(m.group(1)):
                bad.append(f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1} {m.group(1)}")
    assert not bad, f"names in the docs that do not import: {bad}"


# ----------------------------------------------------------------------------- figures

_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def test_images_the_docs_show_exist_and_committed_figures_stay_small():
    """Every ``![...](path)`` of the README and docs names a file; figures under docs/images/ are
    < 300 kB (the README figure is made by ``scripts/make_readme_figure.py``)."""
    missing = []
    for page in PAGES:
        for m in _IMAGE.finditer(page.read_text(encoding="utf-8")):
            target = m.group(1)
            if not target.startswith(("http://", "https://")) and not (page.parent / target).is_file():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert not missing, f"images that do not exist: {missing}"
    figures = sorted((ROOT / "docs" / "images").glob("*.png"))
    assert figures, "docs/images/ holds the README's figure"
    big = [f"{f.name}: {f.stat().st_size // 1024} kB" for f in figures if f.stat().st_size >= 300 * 1024]
    assert not big, f"figures over 300 kB: {big}"
    readme, index = (ROOT / "README.md").read_text(), (ROOT / "docs" / "index.md").read_text()
    assert "docs/images/reconstructions.png" in readme and "images/reconstructions.png" in index
