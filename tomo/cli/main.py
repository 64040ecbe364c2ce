"""tomo: CT reconstruction from DICOM and sinograms, with classical and diffusion-prior methods.

Each sub-command lives in its own module ``tomo.cli.<name>`` exposing ``HELP`` (its one-line
summary) and ``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking
the parsed arguments and returning an exit code).

Start-up time: only the sub-command being run is registered in full (its ``register`` may import
torch to list methods or configurations); the others are listed by their ``HELP`` alone, so
``tomo --help`` and ``tomo info`` never import torch.

Exit codes: 0 success; 2 a refused input or option (one line on stderr, no traceback); 1 an
unexpected internal error (one line; ``TOMO_TRACEBACK=1`` prints the traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from tomo.cli import CommandError

#: sub-command modules, in the order ``tomo --help`` lists them
COMMANDS: tuple[str, ...] = ("info", "simulate", "import", "reconstruct", "train", "restore", "demo")
#: sub-commands whose module has another name (``import`` is a Python keyword)
MODULES: dict[str, str] = {"import": "import_htc"}

#: errors that are the user's input or environment, printed as one line with exit code 2
USER_ERRORS = (CommandError, ValueError, TypeError, OSError)


def _selected_command(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not an option)."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``tomo`` parser: the sub-command in ``argv`` in full, the others by name and help only.

    Parameters
    ----------
    argv : list of str, optional
        The command line (without the program name). None registers every sub-command in full.
    """
    parser = argparse.ArgumentParser(
        prog="tomo", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from tomo import __version__

    parser.add_argument("--version", action="version", version=f"tomo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None if argv is None else _selected_command(argv)
    for name in COMMANDS:
        module = importlib.import_module(f"tomo.cli.{MODULES.get(name, name)}")
        if argv is None or name == chosen:
            module.register(subparsers)
            _add_quiet(subparsers.choices[name])
        else:
            subparsers.add_parser(name, help=module.HELP)
    return parser


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    """Give every sub-command ``--quiet`` (no progress bars, no info lines; errors still printed)."""
    if "--quiet" not in parser._option_string_actions:
        parser.add_argument(
            "--quiet", action="store_true", help="no progress bars and no information lines (errors are still printed)"
        )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _safe_streams()
    command = _selected_command(argv) or ""
    try:  # Ctrl-C while torch imports (build_parser) is one line too, not a traceback
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        command = args.command
        return _run_command(args)
    except KeyboardInterrupt:
        _error(command, "interrupted")
        return 130
    finally:
        from tomo.io.outputs import release_all

        release_all()  # the output locks a command took as plain statements


def _run_command(args: argparse.Namespace) -> int:
    quiet = bool(getattr(args, "quiet", False))
    if quiet and hasattr(args, "progress"):  # sub-commands with a --no-progress flag (train)
        args.progress = False
    try:
        with _quiet_stdout(quiet):
            return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        _error(args.command, _one_line(exc))
        return 2
    except MemoryError as exc:
        _error(
            args.command,
            f"out of memory ({_one_line(exc) or 'allocation failed'}); "
            "use fewer slices, a smaller grid or --batch-size 1",
        )
        return 2
    except KeyboardInterrupt:
        _error(args.command, "interrupted")
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("TOMO_TRACEBACK"):
            raise
        _error(
            args.command,
            f"internal error ({type(exc).__name__}: {_one_line(exc)}); "
            "rerun with TOMO_TRACEBACK=1 and report the traceback",
        )
        return 1


def _safe_streams() -> None:
    """File names are bytes on Linux: one that is not UTF-8 (decoded to lone surrogates) must not
    make a print fail, so stdout and stderr escape what they cannot encode."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="backslashreplace")


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (file names are kept; newlines become '; ')."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{os.fsdecode(exc.filename)}: {exc.strerror}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _error(command: str, message: str) -> None:
    from tomo.io.outputs import shown

    prefix = f"tomo {command}" if command else "tomo"
    print(f"{prefix}: error: {shown(message)}", file=sys.stderr)


@contextlib.contextmanager
def _quiet_stdout(quiet: bool):
    """With ``--quiet`` the information lines (stdout) go nowhere; stderr is kept for errors."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w", errors="backslashreplace") as sink, contextlib.redirect_stdout(sink):
        yield


if __name__ == "__main__":
    # Import through the package so CommandError is the same class sub-commands raise.
    from tomo.cli.main import main as _main

    sys.exit(_main())
