"""HTC2022 limited-angle benchmark: MCC of FBP and TV per arc on ``tb``, times, figure (docs/benchmarks.md).

Usage (about 20-30 minutes on the shared 2-core machine)::

    nice -n 10 python scripts/benchmark_htc2022.py --data ../shared/data/measured/htc2022 \
        --json docs/htc2022_results.json --figure docs/images/htc2022_30deg.png

Reference: Otsu segmentation of the Hann FBP of the ``tb`` union (549 views); see
:mod:`tomo.evaluation.htc2022`. Also times TV on 181 views (all of ``tb_subsample_90``) against TV
on 30 views (every 6th of them), each with a cold projector cache (matrix build included), with the
SPDHG default and with plain PDHG (``--subsets 1``).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def _disc_diameter(mask: np.ndarray, pixel_mm: float) -> float:
    from scipy import ndimage

    filled = ndimage.binary_fill_holes(mask)
    return float(2 * np.sqrt(filled.sum() / np.pi) * pixel_mm)


def segmentation_residual(scan, mask: np.ndarray, grid: int) -> float:
    """``||rho A s - y|| / ||y||`` of a segmentation ``s`` (rho fitted by least squares).

    A check that needs no reference: a segmentation whose holes are where the data say has a
    smaller residual (beam hardening keeps it above 0 even for the true one).
    """
    from operators import CTProjector
    from tomo.io.htc2022 import htc2022_geometry

    with torch.no_grad():
        a_s = CTProjector(htc2022_geometry(scan, grid=grid))(torch.from_numpy(mask.astype(np.float32))).numpy()
    y = scan.sinogram
    rho = float((a_s * y).sum() / (a_s * a_s).sum())
    return float(np.linalg.norm(rho * a_s - y) / np.linalg.norm(y))


def simulated_scores(count: int, arcs=(30, 60, 90)) -> list[dict]:
    """MCC of disc-net on ``count`` simulated phantoms per kind and arc, seeds apart from training's.

    Training's simulation (scripts/train_disc_net.py) at fixed middle values (beam hardening
    ``k = 0.05``, noise 0.008, no offset) and random start angles, so this measures what the
    network learned of the object class, not of the measured data.
    """
    from operators import CTProjector
    from tomo.evaluation.disc_net import load_net, scanner_geometry, segment_probability
    from tomo.evaluation.disc_phantoms import PHANTOM_KINDS, random_disc_phantom
    from tomo.evaluation.htc2022 import matthews_corrcoef, otsu_segmentation

    net, rows = load_net(), []
    rng = np.random.default_rng(987_654_321)  # training draws from seeds 0 + 1000 k
    for kind in PHANTOM_KINDS:
        for arc in arcs:
            scores = []
            for _ in range(count):
                phantom = random_disc_phantom(rng, kind=kind)
                start = float(rng.uniform(0, 360))
                g = scanner_geometry(arc, start_deg=start)
                with torch.no_grad():
                    y = CTProjector(g, backend="astra")(
                        torch.from_numpy(phantom * float(rng.uniform(0.029, 0.034)))
                    ).numpy()
                y = y - 0.05 * y**2 + rng.normal(0.0, 0.008, y.shape)
                prob = segment_probability(y.astype(np.float32), g, net)
                scores.append(matthews_corrcoef(otsu_segmentation(prob), phantom > 0.5))
            rows.append(
                {
                    "kind": kind,
                    "arc": arc,
                    "n": count,
                    "mcc_mean": float(np.mean(scores)),
                    "mcc_min": float(np.min(scores)),
                }
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    from operators import CTProjector
    from operators.ct import clear_matrix_cache
    from tomo.evaluation.htc2022 import (
        HTC_TV_WEIGHT,
        HTC_UPPER,
        matthews_corrcoef,
        otsu_segmentation,
        reconstruct_htc,
        union_scan,
    )
    from tomo.io.htc2022 import htc2022_geometry, read_htc2022
    from tomo.methods import reconstruct
    from tomo.recon.support import fit_disc

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/measured/htc2022"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--grid", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--skip-timing", action="store_true", help="skip the 30- vs 181-view TV timing")
    ap.add_argument(
        "--simulated", type=int, default=0, help="also score disc-net on N simulated phantoms per kind and arc"
    )
    ap.add_argument(
        "--methods", default="fbp,tv,tv-la,disc-net", help="comma-separated methods of tomo.evaluation.htc2022.METHODS"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)  # shared 2-core machine: one thread is fastest (docs/operators.md)
    out: dict = {"grid": args.grid, "iterations": args.iterations, "upper": HTC_UPPER, "tv_weight": HTC_TV_WEIGHT}

    tb = [read_htc2022(p) for p in sorted(args.data.glob("tb_subsample*.mat"))]
    union = union_scan(tb)
    g_union = htc2022_geometry(union, grid=args.grid)
    ref_mu, t_ref = reconstruct_htc(union, "fbp", grid=args.grid)
    ref = otsu_segmentation(ref_mu)
    y = torch.from_numpy(union.sinogram)
    with torch.no_grad():
        reproj = CTProjector(g_union)(torch.from_numpy(ref_mu))
    residual = float((reproj - y).norm() / y.norm())
    xc, yc, r, rms = fit_disc(union.sinogram, g_union)
    out["reference"] = {
        "views": int(union.sinogram.shape[0]),
        "seconds": t_ref,
        "diameter_mm_segmentation": _disc_diameter(ref, g_union.pixel_spacing_mm),
        "diameter_mm_shadow_fit": 2 * r,
        "centre_mm": [xc, yc],
        "shadow_fit_rms_mm": rms,
        "reprojection_relative_residual": residual,
        "acrylic_mu_median": float(np.median(ref_mu[ref])),
    }

    # a second reference, to see how much the scores depend on the reference's method: TV for
    # limited angle (bounds, disc support) of the same 549 views
    ref_tv = otsu_segmentation(reconstruct_htc(union, "tv-la", grid=args.grid, iterations=600)[0])
    out["reference"]["mcc_fbp_vs_tv_reference"] = matthews_corrcoef(ref, ref_tv)
    out["reference"]["segmentation_residual"] = segmentation_residual(union, ref, args.grid)
    print("reference", out["reference"], flush=True)

    methods = args.methods.split(",")
    rows = []
    for scan in sorted(tb, key=lambda s: s.arc_deg):
        for method in methods:
            clear_matrix_cache()
            mu, sec = reconstruct_htc(scan, method, grid=args.grid, iterations=args.iterations)
            seg = otsu_segmentation(mu)
            score = matthews_corrcoef(seg, ref)
            rows.append(
                {
                    "file": scan.name,
                    "arc": round(scan.arc_deg),
                    "views": int(scan.sinogram.shape[0]),
                    "method": method,
                    "mcc": score,
                    "mcc_tv_reference": matthews_corrcoef(seg, ref_tv),
                    "segmentation_residual": segmentation_residual(scan, seg, args.grid),
                    "seconds": sec,
                }
            )
            print(rows[-1], flush=True)
    out["tb"] = rows

    others = {}
    for name in ("ta_subsample73", "tc_subsample", "td_subsample"):
        scan = read_htc2022(args.data / f"{name}.mat")
        others[scan.phantom] = {
            m: reconstruct_htc(scan, m, grid=args.grid, iterations=args.iterations)[0]
            for m in ("fbp", "tv-la", "disc-net")
            if m in methods
        }
        out.setdefault("others", {})[scan.phantom] = {
            m: segmentation_residual(scan, otsu_segmentation(img), args.grid) for m, img in others[scan.phantom].items()
        }
        print("reconstructed", name, "segmentation residuals", out["others"][scan.phantom], flush=True)
    if args.figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [("FBP", "fbp", False), ("TV (limited angle)", "tv-la", False), ("Otsu of TV", "tv-la", True)]
        panels += [("disc-net (Otsu)", "disc-net", True)] if "disc-net" in methods else []
        fig, axes = plt.subplots(len(panels), 3, figsize=(7.5, 2.5 * len(panels)), squeeze=False)
        for col, (ph, recs) in enumerate(others.items()):
            for row, (label, img) in enumerate(
                (label, otsu_segmentation(recs[m]) if seg else recs[m]) for label, m, seg in panels
            ):
                ax = axes[row, col]
                ax.imshow(img, cmap="gray", vmin=0, vmax=1 if img.dtype == bool else HTC_UPPER)
                ax.set_axis_off()
                ax.set_title(f"{ph} 30 deg: {label}", fontsize=8)
        fig.tight_layout()
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=60)

    if not args.skip_timing:
        scan = next(s for s in tb if s.name == "tb_subsample_90")
        timing = []
        for views_step in (6, 1):
            for subsets in (None, 1):
                g = htc2022_geometry(scan, grid=args.grid, angles_deg=scan.angles_deg[::views_step])
                ys = torch.from_numpy(np.ascontiguousarray(scan.sinogram[::views_step]))
                clear_matrix_cache()
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    reconstruct(ys, g, method="tv", progress=False, subsets=subsets)
                timing.append(
                    {
                        "views": g.num_views,
                        "subsets": "auto" if subsets is None else subsets,
                        "seconds": time.perf_counter() - t,
                    }
                )
                print(timing[-1], flush=True)
        out["tv_timing"] = timing
    if args.simulated:
        out["simulated"] = simulated_scores(args.simulated)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
