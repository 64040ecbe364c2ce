"""``tomo import``: measured scanner data into the sinogram exchange file.

Supported layout: the Helsinki Tomography Challenge 2022 ``.mat`` files (MATLAB v5, and v7.3
with h5py), read by :mod:`tomo.io.htc2022`. Several files of one scan (e.g. the limited-angle
subsets of ``tb``) can be merged into one file with ``--union``: views are pooled, duplicates (same
angle) kept once. The result is a fan-beam sinogram file with ``units = "mu_per_mm"``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tomo.cli import CommandError

HELP = "import measured sinograms (HTC2022 .mat files) into the sinogram file (.npz)"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import",
        help=HELP,
        description=(
            "Write the sinogram exchange file (.npz, docs/reconstruction.md) from measured data. "
            "Format: HTC2022 .mat (CtDataLimited/CtDataFull struct, MATLAB v5 or v7.3). "
            "The result is fan beam, in the file's angles, with units mu_per_mm (reconstructions "
            "are reported as attenuation in 1/mm, not HU)."
        ),
        epilog="example: tomo import ../shared/data/measured/htc2022/tb_subsample_90.mat --out tb90.npz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILE.mat", help="HTC2022 .mat file(s)")
    parser.add_argument("--out", required=True, type=Path, help="output .npz (with several inputs: needs --union)")
    parser.add_argument(
        "--union", action="store_true", help="merge all inputs (one scan) into one file; duplicate angles kept once"
    )
    parser.add_argument("--grid", type=int, default=256, help="reconstruction grid, pixels per side (default 256)")
    parser.add_argument("--fov", type=float, default=80.0, help="reconstruction field of view in mm (default 80)")
    parser.add_argument(
        "--detector-offset", type=float, default=0.0, help="detector shift (centre of rotation) in mm (default 0)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from tomo.io.htc2022 import htc2022_geometry, htc2022_sinogram_file, read_htc2022
    from tomo.io.sinogram import SinogramFile, save_sinogram

    if args.grid < 8 or not args.fov > 0:
        raise CommandError(f"--grid must be >= 8 and --fov > 0 mm, got {args.grid} and {args.fov}")
    if len(args.inputs) > 1 and not args.union:
        raise CommandError(
            "several inputs: pass --union to merge them into one file (one scan), or import them one by one"
        )
    scans = [read_htc2022(p) for p in args.inputs]
    if len(scans) == 1:
        content = htc2022_sinogram_file(scans[0], args.grid, args.fov, args.detector_offset)
    else:
        first = scans[0]
        for s in scans[1:]:
            same = (s.source_origin_mm, s.source_detector_mm, s.detector_spacing_mm, s.sinogram.shape[1])
            if same != (
                first.source_origin_mm,
                first.source_detector_mm,
                first.detector_spacing_mm,
                first.sinogram.shape[1],
            ):
                raise CommandError(f"{s.name}: geometry differs from {first.name}; --union merges files of one scan")
        angles = np.concatenate([s.angles_deg for s in scans])
        sino = np.concatenate([s.sinogram for s in scans])
        angles, keep = np.unique(angles, return_index=True)
        geometry = htc2022_geometry(first, args.grid, args.fov, args.detector_offset, angles_deg=angles)
        names = ", ".join(s.name for s in scans)
        content = SinogramFile(
            sino[keep],
            geometry,
            description=f"HTC2022 union of {names}: {angles.size} distinct views; arXiv:2209.12723, CC BY 4.0",
            units="mu_per_mm",
        )
    path = save_sinogram(args.out, content, overwrite=args.overwrite)
    g = content.geometry
    print(
        f"wrote {path}: {g.num_views} views x {g.detector_count} detectors, fan beam, {args.grid}x{args.grid} grid of {args.fov:g} mm, units mu_per_mm"
    )
    return 0
