"""Copy a training run's prior (EMA weights, config, sample grid, loss curve, log) to a folder.

    python -m tomo.priors.export runs/prior data/prior [--force]

The training state (optimiser moments, raw weights) is not copied: the exported folder is
what :func:`tomo.priors.load_prior` needs, plus the artefacts the model card shows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoint import (
    CONFIG_NAME,
    SHARD_GLOB,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    atomic_write_bytes,
    has_weights,
    weight_files,
)

#: files copied when present, besides the weights (one file or a shard index and its shards)
EXPORTED = (CONFIG_NAME, "samples.png", "loss.png", "log.csv")


def export_prior(run_dir, dest, force: bool = False) -> list[Path]:
    """Copy the prior of ``run_dir`` into ``dest`` (checked by loading it before and after).

    Raises
    ------
    FileExistsError
        ``dest`` already holds a prior and ``force`` is False.
    """
    from .prior import load_prior

    run_dir, dest = Path(run_dir), Path(dest)
    load_prior(run_dir)  # refuse to export a broken checkpoint
    if has_weights(dest) and not force:
        raise FileExistsError(f"{dest} already holds a prior; pass force=True (--force) to replace it")
    weights = weight_files(run_dir)
    # shards first, the index (which names them) last; then no weights of the other layout stay
    written = [_copy(src, dest) for src in weights[::-1]][::-1]
    stale = [dest / WEIGHTS_NAME] if weights[0].name == WEIGHTS_INDEX_NAME else [dest / WEIGHTS_INDEX_NAME]
    keep = {p.name for p in weights}
    stale += [p for p in dest.glob(SHARD_GLOB) if p.name not in keep]
    for old in stale:
        old.unlink(missing_ok=True)
    for name in EXPORTED:
        if (run_dir / name).is_file():
            written.append(_copy(run_dir / name, dest))
        elif name == CONFIG_NAME:
            raise FileNotFoundError(f"{run_dir / name} missing")
    load_prior(dest)
    return written


def _copy(src: Path, dest: Path) -> Path:
    atomic_write_bytes(dest / src.name, src.read_bytes())
    return dest / src.name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tomo.priors.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("dest")
    parser.add_argument("--force", action="store_true", help="replace a prior already in DEST")
    args = parser.parse_args(argv)
    try:
        for path in export_prior(args.run_dir, args.dest, args.force):
            print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MB)")
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
