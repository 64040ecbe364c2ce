"""Measured limited-angle data: the HTC2022 discs, imported, reconstructed and scored by MCC.

    python examples/htc2022_limited_angle.py [--data DIR] [--out DIR] [--quick]

1. imports every shared ``.mat`` file into the sinogram exchange file (``tomo import`` does the same
   from the shell) and reads it back (fan beam, ``units = mu_per_mm``);
2. reconstructs ``tb`` from the union of its subsets (549 of 721 views) with FBP as the reference,
   prints its disc diameter and segments it (Otsu);
3. reconstructs each ``tb`` limited-angle subset (30 to 90 degrees) with FBP and with TV for limited
   angle (``0 <= mu <= 0.035 /mm``, support = the disc fitted to the shadow edges), segments each
   (Otsu) and prints the Matthews correlation coefficient against the reference; on the full grid
   also with the learned segmenter ``disc-net`` (trained on simulated discs only;
   ``tomo.evaluation.disc_net``) when its weights are there;
4. reconstructs ``ta``, ``tc``, ``td`` (30 degrees) and saves a figure in ``--out``.

``--quick`` (used by the tests): 64 x 64 grid, 30 iterations, the 30- and 90-degree ``tb`` files only
(no ``disc-net``: it works on the 256 x 256 grid it was trained on).
Full numbers: ``scripts/benchmark_htc2022.py``, docs/benchmarks.md. Needs the shared data
(``../shared/data/measured/htc2022``); without it the script says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "measured" / "htc2022"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the HTC2022 .mat files")
    ap.add_argument(
        "--out", type=Path, default=None, help="folder for the .npz files and the figure (default: a temporary one)"
    )
    ap.add_argument("--quick", action="store_true", help="64 x 64, 30 iterations, two tb files (for tests)")
    args = ap.parse_args()
    files = sorted(args.data.glob("*.mat")) if args.data.is_dir() else []
    if not files:
        print(f"skipped: no HTC2022 .mat files in {args.data}")
        return 0

    import numpy as np
    import torch

    from tomo.evaluation.disc_net import DEFAULT_WEIGHTS
    from tomo.evaluation.htc2022 import matthews_corrcoef, otsu_segmentation, reconstruct_htc, union_scan
    from tomo.io.htc2022 import htc2022_geometry, htc2022_sinogram_file, read_htc2022
    from tomo.io.sinogram import load_sinogram, save_sinogram
    from tomo.recon.support import fit_disc

    torch.set_num_threads(1)
    grid, iterations = (64, 30) if args.quick else (256, 300)
    out = Path(tempfile.mkdtemp(prefix="htc2022_")) if args.out is None else args.out
    out.mkdir(parents=True, exist_ok=True)

    scans = {}
    for f in files:  # 1. import every file and read it back
        scan = read_htc2022(f)
        path = save_sinogram(out / f"{scan.name}.npz", htc2022_sinogram_file(scan, grid=grid), overwrite=True)
        back = load_sinogram(path)
        assert back.units == "mu_per_mm" and back.sinogram.shape == scan.sinogram.shape
        scans[scan.name] = scan
    print(f"imported {len(scans)} files into {out}")

    tb = [s for s in scans.values() if s.phantom == "tb"]
    union = union_scan(tb)  # 2. reference
    ref_mu, sec = reconstruct_htc(union, "fbp", grid=grid)
    ref = otsu_segmentation(ref_mu)
    g = htc2022_geometry(union, grid=grid)
    _x, _y, radius, _rms = fit_disc(union.sinogram, g)
    print(f"reference_views {union.sinogram.shape[0]}")
    print(f"reference_diameter_mm {2 * radius:.3f}")
    print(f"reference_seconds {sec:.2f}")

    chosen = sorted(tb, key=lambda s: s.arc_deg)
    if args.quick:
        chosen = [s for s in chosen if s.name in ("tb_subsample", "tb_subsample_90")]
    methods = ["fbp", "tv-la"]
    if not args.quick and (DEFAULT_WEIGHTS / "model.safetensors").is_file():
        methods.append("disc-net")
    print("file arc views method mcc seconds")
    for scan in chosen:  # 3. limited-angle subsets
        for method in methods:
            mu, sec = reconstruct_htc(scan, method, grid=grid, iterations=iterations)
            score = matthews_corrcoef(otsu_segmentation(mu), ref)
            print(f"mcc {scan.name} {scan.arc_deg:.0f} {scan.sinogram.shape[0]} {method} {score:.3f} {sec:.1f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [s for s in scans.values() if s.phantom in ("ta", "tc", "td")]
    fig, axes = plt.subplots(1, max(1, len(others)), figsize=(3 * max(1, len(others)), 3), squeeze=False)
    for ax, scan in zip(axes[0], others):  # 4. the other phantoms at 30 degrees
        mu, _ = reconstruct_htc(scan, "tv-la", grid=grid, iterations=iterations)
        ax.imshow(np.asarray(mu), cmap="gray", vmin=0, vmax=0.035)
        ax.set_title(f"{scan.phantom}, {scan.arc_deg:.0f} degrees")
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "htc2022_30deg.png", dpi=60)
    print(f"figure {out / 'htc2022_30deg.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
