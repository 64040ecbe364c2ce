#!/usr/bin/env python
"""Smoke check and timing of every reconstruction method on a device (CUDA by default).

SLICE.npz: an HU volume at 1.5 mm as written by scripts/pack_training_slices.py (first slice used).
Simulates parallel-30 (evaluation protocol) and prints one JSON line per method: PSNR/SSIM against
the slice and the wall time of the second call (the first builds the matrix and loads the prior).
This is a functional/timing check, not an evaluation: use a held-out slice for quality numbers.

Usage: python scripts/check_methods_device.py [cuda|cpu] [SLICE.npz]
"""

import argparse
import json

import numpy as np

from tomo.evaluation.cases import Slice, build_cases
from tomo.evaluation.runner import evaluate_registry

#: (method, options) per device: every method on CUDA; a quick subset on a CPU
RUNS = {
    "cuda": [("fbp", {}), ("tv", {}), ("dds", {}), ("dds", {"samples": 4}), ("dps", {"steps": 1000})],
    "cpu": [("fbp", {}), ("dds", {"steps": 2})],
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("device", nargs="?", default="cuda", choices=sorted(RUNS))
    ap.add_argument(
        "slice",
        nargs="?",
        default="runs/train_packed_1.5mm/thorax-philips-01/0070.npz",
        help="npz with 'hu' [slices, H, W] at 1.5 mm pixels (first slice used)",
    )
    args = ap.parse_args(argv)
    hu = np.load(args.slice)["hu"][0].astype(np.float32)
    (case,) = build_cases([Slice(args.slice, hu, (1.5, 1.5))], "parallel-30", device=args.device)
    for method, options in RUNS[args.device]:
        # first call includes set-up (matrix, prior load); DPS is timed on its only call
        for _ in range(2 if method != "dps" else 1):
            (record,) = evaluate_registry(method, [case], options, verbose=False)
        print(
            json.dumps(
                dict(
                    method=method,
                    options=options,
                    device=args.device,
                    psnr=round(record.psnr, 2),
                    ssim=round(record.ssim, 4),
                    seconds=round(record.seconds, 2),
                    grid=list(case.geometry.image_shape),
                )
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
