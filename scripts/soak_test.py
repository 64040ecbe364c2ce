#!/usr/bin/env python
"""Soak test: many reconstructions in one process through the library API, memory must stay flat.

Runs ``--count`` reconstructions (default 200) with :func:`tomo.methods.reconstruct`, cycling
through parallel and fan beam, grids of 32-128 pixels and the methods FBP, SIRT, CGLS and TV
(iterative methods with few iterations: this checks resources, not quality). Every ``--every``
runs it records the resident memory (VmRSS), the ASTRA objects alive (``astra.data2d.info()``,
``astra.projector.info()``) and the operators' system-matrix cache
(:func:`operators.matrix_cache_info`), and at the end prints a JSON summary:

- ``rss_mib``: RSS at the start (after the first round of every geometry/size/method, which fills
  the caches), at the end, and the growth in between;
- ``astra_objects``: data and projector objects alive at each checkpoint (must not grow);
- ``matrix_cache``: entries and bytes against the cache's limit.

Exit status 1 when the RSS grew by more than ``--max-growth-mib`` after the warm-up, ASTRA objects
accumulated, or the matrix cache exceeded its limit.

Usage: python scripts/soak_test.py [--count 200] [--threads 1] [--json soak.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def astra_objects() -> dict:
    """Number of 2D data and projector objects ASTRA holds (parsed from its info printouts)."""
    import astra

    def count(info) -> int:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            info()
        rows = buf.getvalue().split("-" * 41)
        return len([line for line in rows[1].splitlines() if line.strip()]) if len(rows) > 2 else 0

    return {"data2d": count(astra.data2d.info), "projector": count(astra.projector.info)}


def cases(seed: int):
    """Endless cycle of (geometry, size, method, options) with a fixed order."""
    methods = [("fbp", {}), ("sirt", {"iterations": 20}), ("cgls", {"iterations": 10}), ("tv", {"iterations": 20})]
    sizes = [32, 64, 96, 128]
    combos = list(itertools.product(("parallel", "fanbeam"), sizes, methods))
    np.random.default_rng(seed).shuffle(combos)
    return itertools.cycle(combos), len(combos)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=200, help="reconstructions (default 200)")
    ap.add_argument("--every", type=int, default=20, help="checkpoint interval (default 20)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--max-growth-mib",
        type=float,
        default=50.0,
        help="largest RSS growth after the warm-up round that passes (default 50 MiB)",
    )
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args(argv)

    import torch

    from operators import matrix_cache_info, shepp_logan
    from operators.units import mu_to_hu
    from tomo.evaluation.simulation import protocol_geometry
    from tomo.methods import reconstruct

    torch.set_num_threads(args.threads)
    cycle, warmup = cases(args.seed)
    checkpoints, t0 = [], time.time()
    start_rss = None
    for k in range(1, args.count + 1):
        kind, size, (method, options) = next(cycle)
        geometry = protocol_geometry(kind, 24 if kind == "parallel" else 40, fov_mm=256.0, grid=size)
        from operators import CTProjector

        mu = shepp_logan((size, size), geometry.pixel_spacing_mm)
        sino = CTProjector(geometry)(mu[None, None])[0, 0]
        out = reconstruct(sino, geometry, method, progress=False, **options)
        assert out.shape == (size, size) and torch.isfinite(out).all(), (kind, size, method)
        _ = mu_to_hu(out.numpy())
        del mu, sino, out
        if k == warmup:
            gc.collect()
            start_rss = rss_mib()
        if k % args.every == 0 or k == args.count:
            gc.collect()
            cache = matrix_cache_info()
            checkpoints.append(
                {
                    "run": k,
                    "seconds": round(time.time() - t0, 1),
                    "rss_mib": round(rss_mib(), 1),
                    "astra": astra_objects(),
                    "cache_entries": len(cache["entries"]),
                    "cache_mib": round(cache["total_bytes"] / 2**20, 1),
                    "cache_limit_mib": round(cache["max_total_bytes"] / 2**20, 1),
                }
            )
            print(json.dumps(checkpoints[-1]), flush=True)
    end_rss = checkpoints[-1]["rss_mib"]
    start_rss = start_rss if start_rss is not None else checkpoints[0]["rss_mib"]
    after_warmup = [c for c in checkpoints if c["run"] >= warmup] or checkpoints[-1:]
    astra_counts = [c["astra"] for c in after_warmup]
    summary = {
        "count": args.count,
        "warmup_runs": warmup,
        "threads": args.threads,
        "seconds": checkpoints[-1]["seconds"],
        "rss_mib": {
            "after_warmup": round(start_rss, 1),
            "end": end_rss,
            "growth": round(end_rss - start_rss, 1),
            "max": max(c["rss_mib"] for c in checkpoints),
        },
        "astra_objects": {
            "max_data2d": max(a["data2d"] for a in astra_counts),
            "max_projector": max(a["projector"] for a in astra_counts),
            "end": checkpoints[-1]["astra"],
        },
        "matrix_cache": {
            "max_entries": max(c["cache_entries"] for c in checkpoints),
            "max_mib": max(c["cache_mib"] for c in checkpoints),
            "limit_mib": checkpoints[-1]["cache_limit_mib"],
        },
        "checkpoints": checkpoints,
    }
    problems = []
    if summary["rss_mib"]["growth"] > args.max_growth_mib:
        problems.append(f"RSS grew {summary['rss_mib']['growth']} MiB after the warm-up")
    if (
        len({(a["data2d"], a["projector"]) for a in astra_counts}) > 1
        and astra_counts[-1]["data2d"] + astra_counts[-1]["projector"]
        > astra_counts[0]["data2d"] + astra_counts[0]["projector"]
    ):
        problems.append(f"ASTRA objects accumulate: {astra_counts[0]} -> {astra_counts[-1]}")
    if summary["matrix_cache"]["max_mib"] > summary["matrix_cache"]["limit_mib"]:
        problems.append("matrix cache above its limit")
    summary["problems"] = problems
    text = json.dumps({k: v for k, v in summary.items() if k != "checkpoints"}, indent=1)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
