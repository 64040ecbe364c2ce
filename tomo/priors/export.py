"""Copy a training run's prior (EMA weights, config, sample grid, loss curve, log) to a folder.

    python -m tomo.priors.export runs/prior data/prior [--force]

The training state (optimiser moments, raw weights) is not copied: the exported folder is
what :func:`tomo.priors.load_prior` needs, plus the artefacts the model card shows.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_write_bytes

#: files copied when present (the first two are required)
EXPORTED = (WEIGHTS_NAME, CONFIG_NAME, "samples.png", "loss.png", "log.csv")


def export_prior(run_dir, dest, force: bool = False) -> list[Path]:
    """Copy the prior of ``run_dir`` into ``dest`` (checked by loading it before and after).

    Raises
    ------
    FileExistsError
        ``dest`` already holds a prior and ``force`` is False.
    """
    from .prior import load_prior
    run_dir, dest = Path(run_dir), Path(dest)
    load_prior(run_dir)                                       # refuse to export a broken checkpoint
    if (dest / WEIGHTS_NAME).exists() and not force:
        raise FileExistsError(f"{dest} already holds a prior; pass force=True (--force) to replace it")
    written = []
    for name in EXPORTED:
        src = run_dir / name
        if src.is_file():
            atomic_write_bytes(dest / name, src.read_bytes())
            written.append(dest / name)
        elif name in (WEIGHTS_NAME, CONFIG_NAME):
            raise FileNotFoundError(f"{src} missing")
    load_prior(dest)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tomo.priors.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("dest")
    parser.add_argument("--force", action="store_true", help="replace a prior already in DEST")
    args = parser.parse_args(argv)
    try:
        for path in export_prior(args.run_dir, args.dest, args.force):
            print(f"wrote {path} ({path.stat().st_size / 2 ** 20:.2f} MB)")
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
