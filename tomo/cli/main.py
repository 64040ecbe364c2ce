"""tomo: CT reconstruction from DICOM and sinograms, with classical and diffusion-prior methods.

Each sub-command lives in its own module ``tomo.cli.<name>`` exposing
``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking the parsed
arguments and returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: sub-command modules, in the order ``tomo --help`` lists them
COMMANDS: tuple[str, ...] = ("info", "simulate", "reconstruct", "train", "restore", "demo")


from tomo.cli import CommandError  # noqa: F401  (re-exported: sub-commands raise it)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tomo", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from tomo import __version__
    parser.add_argument("--version", action="version", version=f"tomo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"tomo.cli.{name}").register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (CommandError, ValueError, TypeError, FileNotFoundError, FileExistsError) as exc:
        print(f"tomo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tomo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Import through the package so CommandError is the same class sub-commands raise.
    from tomo.cli.main import main as _main
    sys.exit(_main())
