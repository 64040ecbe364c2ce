#!/usr/bin/env python
"""A block of consecutive slices reconstructed slice by slice, or as one volume (TV along z).

Simulates every slice of ``--volume`` (an ``.npz`` volume of the data README's layout, slices
``--first`` to ``--first + --count``) with the protocol of docs/evaluation.md, reconstructs the
block with the registry's dds for each ``--setting`` (``key=value,...``; ``dds_tv_z=W`` couples
the slices: the whole block is one batch) and prints, per setting, the mean PSNR / SSIM over the
slices, the slice-to-slice consistency (:func:`tomo.evaluation.scores.z_difference_rmse`, HU) and
the wall time per slice. Tune on train/ volumes; report on dev/ct-native.

Example::

    python scripts/benchmark_volume.py --volume ../shared/data/dev/ct-native/CMB-CRC_CMB-CRC-MSB-01068.npz \\
        --config parallel-8 --setting "" "dds_tv_z=3e-4"
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from operators.units import mu_to_hu
from tomo.evaluation.scores import psnr, ssim, z_difference_rmse
from tomo.evaluation.simulation import simulate_volume
from tomo.evaluation.tuning import append_json_line, parse_settings
from tomo.methods.registry import ReconProblem, default_registry


def reconstruct_block(sino: np.ndarray, problem: ReconProblem, settings: dict, batch: int) -> np.ndarray:
    """dds of every slice ``[S, views, detectors]`` in batches of ``batch``; HU [S, H, W]."""
    entry = default_registry().get_method("dds")
    out = []
    with torch.no_grad():
        for k in range(0, sino.shape[0], batch):
            part = torch.from_numpy(sino[k : k + batch])
            out.append(entry.run(part, problem, **{"seed": k, **settings}).numpy())
    return mu_to_hu(np.concatenate(out))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volume", type=Path, required=True, help=".npz volume (hu [S, H, W], spacing_mm)")
    parser.add_argument("--first", type=int, default=0, help="first slice of the block")
    parser.add_argument("--count", type=int, default=32, help="slices in the block")
    parser.add_argument("--config", default="parallel-8", help="standard configuration")
    parser.add_argument("--setting", nargs="*", default=[""], help="dds options, key=value,... ('' = defaults)")
    parser.add_argument("--batch", type=int, default=4, help="batch of the slice-by-slice runs (no dds_tv_z)")
    parser.add_argument(
        "--upsample", type=int, default=1, help="upsample slices this many times first (coarse train/ct-1.5mm: 2)"
    )
    parser.add_argument("--json", type=Path, help="append the rows here (JSON lines)")
    args = parser.parse_args(argv)
    with np.load(args.volume) as z:
        hu = z["hu"][args.first : args.first + args.count].astype(np.float32)
        spacing = float(z["spacing_mm"][0])
    if args.upsample > 1:  # project on a grid finer than the reconstruction grid (no inverse crime)
        from skimage.transform import rescale

        hu = rescale(hu, (1, args.upsample, args.upsample), order=1, mode="edge", preserve_range=True)
        hu, spacing = hu.astype(np.float32), spacing / args.upsample
    sf = simulate_volume(hu, (spacing, spacing), args.config, seed=0, progress=False)
    problem = ReconProblem(sf.geometry, torch.device("cpu"), sf.i0, False)
    problem.operator(torch.zeros(sf.geometry.image_shape))  # build the projector outside the timings
    truth = sf.hu_reference
    for text in args.setting:
        settings = parse_settings(text)
        batch = hu.shape[0] if settings.get("dds_tv_z") else args.batch
        t0 = time.perf_counter()
        rec = reconstruct_block(sf.sinogram, problem, settings, batch)
        seconds = (time.perf_counter() - t0) / hu.shape[0]
        row = {
            "volume": args.volume.name,
            "slices": [args.first, args.first + hu.shape[0]],
            "config": args.config,
            "settings": settings,
            "psnr": round(float(np.mean([psnr(r, t) for r, t in zip(rec, truth)])), 2),
            "ssim": round(float(np.mean([ssim(r, t) for r, t in zip(rec, truth)])), 4),
            "z_difference_rmse_hu": round(z_difference_rmse(rec, truth), 1),
            "seconds_per_slice": round(seconds, 1),
        }
        append_json_line(args.json, row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
