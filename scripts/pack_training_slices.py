"""Pack a training set into small HU ``.npz`` volumes at the prior's pixel size.

Use this to move training data to another machine (a rented GPU, a cluster node) without the
original DICOM: every slice that ``tomo train`` would read from DATA is resampled to
``--pixel-size`` exactly as the trainer does (:func:`tomo.priors.training_data.resample`), rounded to
int16 HU (clipped to the window) and written as ``OUT/<group>/<n>.npz`` (``hu`` [1, H, W],
``spacing_mm`` (x, y, z)). The group folders keep the per-patient sampling balance. Training on
OUT then sees the same slices (to within 0.5 HU of rounding) at the same pixel size, because the
trainer skips resampling when the spacing already matches.

Example::

    python scripts/pack_training_slices.py ../shared/data/train/dicom --out /tmp/train15
    tomo train /tmp/train15 --out runs/prior ...
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tomo.priors.training_data import collect_slices, resample


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+", help="DICOM folders / .npz volumes, as for tomo train")
    parser.add_argument("--out", required=True, type=Path, help="new or empty output folder")
    parser.add_argument("--pixel-size", type=float, default=1.5, help="target pixel size, mm (1.5)")
    parser.add_argument("--hu-window", default="-1000,2000", help="HU clip window LO,HI (-1000,2000)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty; choose a new folder")
    window = tuple(float(v) for v in args.hu_window.split(","))
    records, report = collect_slices(args.data, window)
    print(report.summary())
    counts: dict[str, int] = {}
    for rec in records:
        hu = resample(rec.hu, rec.spacing_mm, args.pixel_size)
        hu = np.clip(np.rint(hu), *window).astype(np.int16)
        n = counts[rec.group] = counts.get(rec.group, 0) + 1
        folder = args.out / rec.group
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / f"{n:04d}.npz", hu=hu[None],
                            spacing_mm=np.array([args.pixel_size, args.pixel_size, 1.0]))
    print(f"wrote {len(records)} slices in {len(counts)} groups to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
