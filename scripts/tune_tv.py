#!/usr/bin/env python
"""Tune the defaults of the classical methods on train/ slices ONLY (never dev/).

For each standard configuration of evaluation.md (parallel-30, parallel-8, fanbeam-60) and a
fixed set of train/dicom slices, the protocol simulation (:mod:`tomo.evaluation.simulation`) is run and

* TV: a grid of weights (batched: one solver run per slice scans all weights), unweighted
  and with Poisson data weights for several model-error floors, scored at several iteration
  counts;
* SIRT and CGLS: scored along one long run at checkpoints (the iteration count is their
  regulariser);
* FBP: every filter.

Scores are the project's (PSNR/SSIM on the [-1000, 1000] HU window, mean over slices). The
table and the best settings are printed and written as JSON; docs/reconstruction.md records the
run and tomo/methods/registry.py holds the chosen defaults.

Reproduce the runs recorded in docs/reconstruction.md (each 10-30 min on the shared 2-core
machine):

    python scripts/tune_tv.py --cgls-model-error 0.03 --json /tmp/tune_a.json
    python scripts/tune_tv.py --weights 3e-4,5e-4,1e-3,2e-3 --model-errors 0.05,0.08,0.12 \
        --weighting poisson --checkpoints 300 --sirt-checkpoints 150 --cgls-checkpoints 10 \
        --cgls-model-error 0.03 --json /tmp/tune_b.json
    python scripts/tune_tv.py --weights 5e-4,1.875e-3 --model-errors 0.05 --weighting poisson \
        --checkpoints 300 --sirt-checkpoints 150 --cgls-checkpoints 10,20,30,40 --json /tmp/tune_c.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from operators import FILTERS
from operators.units import mu_to_hu
from tomo.evaluation.cases import DEFAULT_DATA_ROOT, TV_TUNE_SLICES, build_cases, load_train_slices
from tomo.evaluation.scores import psnr, ssim
from tomo.evaluation.simulation import CONFIGS
from tomo.methods.classical import DEFAULT_MODEL_ERROR, TV_START_FILTER, poisson_weights
from tomo.recon import cgls, fbp_reconstruct, sirt, tv_pdhg


def _scores(mu: torch.Tensor, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hu = mu_to_hu(mu.detach().cpu().reshape((-1,) + ref.shape).numpy())
    refs = np.broadcast_to(ref, hu.shape)
    return np.atleast_1d(psnr(hu, refs)), np.atleast_1d(ssim(hu, refs))


def tune_config(name: str, slices, args) -> list[dict]:
    """All score records for one configuration: dicts with method, params, iteration, slice, psnr, ssim."""
    records = []
    weights = [float(w) for w in args.weights.split(",")]
    checkpoints = set(int(c) for c in args.checkpoints.split(","))
    sirt_cp = set(int(c) for c in args.sirt_checkpoints.split(","))
    cgls_cp = set(int(c) for c in args.cgls_checkpoints.split(","))

    def add(method, params, iteration, slice_name, p, s):
        records.append(
            dict(
                config=name,
                method=method,
                params=params,
                iteration=iteration,
                slice=slice_name,
                psnr=float(p),
                ssim=float(s),
            )
        )

    for case in build_cases(slices, name, seed=args.seed):
        t0 = time.time()
        k, slice_name, sf, op = case.index, case.name, case.data, case.problem.operator
        y = torch.from_numpy(sf.sinogram)
        ref = sf.hu_reference
        for filt in FILTERS:
            p, s = _scores(fbp_reconstruct(y, sf.geometry, filter=filt), ref)
            add("fbp", {"filter": filt}, 0, slice_name, p[0], s[0])

        def recorder(method, params, cps, per_item_params=None, ref=ref, slice_name=slice_name):
            def callback(it, x):
                if it in cps:
                    p, s = _scores(x, ref)
                    for j in range(len(p)):
                        add(method, per_item_params[j] if per_item_params else params, it, slice_name, p[j], s[j])

            return callback

        sirt(op, y, iterations=max(sirt_cp), progress=False, callback=recorder("sirt", {}, sirt_cp))
        for weighting in ("none", "poisson"):
            w = poisson_weights(y, sf.i0, args.cgls_model_error) if weighting == "poisson" else None
            params = {"weighting": weighting} | ({"model_error": args.cgls_model_error} if w is not None else {})
            cgls(op, y, iterations=max(cgls_cp), weights=w, progress=False, callback=recorder("cgls", params, cgls_cp))
        x0 = fbp_reconstruct(y, sf.geometry, filter=TV_START_FILTER).clamp_min(0.0)
        yb = y.expand((len(weights),) + tuple(y.shape)).contiguous()
        weightings = [("none", None)] if "none" in args.weighting.split(",") else []
        if "poisson" in args.weighting.split(","):
            weightings += [("poisson", float(e)) for e in args.model_errors.split(",")]
        for weighting, model_error in weightings:
            wts = None if weighting == "none" else poisson_weights(yb, sf.i0, model_error)
            items = [
                {"weight": w, "weighting": weighting} | ({} if model_error is None else {"model_error": model_error})
                for w in weights
            ]
            tv_pdhg(
                op,
                yb,
                weight=weights,
                weights=wts,
                x0=x0,
                iterations=max(checkpoints),
                progress=False,
                callback=recorder("tv", None, checkpoints, items),
            )
        print(f"  {name} slice {k + 1}/{len(slices)} {slice_name}: {time.time() - t0:.0f} s", flush=True)
    return records


def summarise(records: list[dict]) -> dict:
    """Mean PSNR/SSIM over slices per (config, method, params, iteration), and the best per method."""
    groups: dict[tuple, list] = {}
    for r in records:
        key = (r["config"], r["method"], json.dumps(r["params"], sort_keys=True), r["iteration"])
        groups.setdefault(key, []).append(r)
    table = [
        dict(
            config=c,
            method=m,
            params=json.loads(p),
            iteration=i,
            slices=len(v),
            psnr=float(np.mean([x["psnr"] for x in v])),
            ssim=float(np.mean([x["ssim"] for x in v])),
        )
        for (c, m, p, i), v in sorted(groups.items())
    ]
    best = {}
    for row in table:
        key = f"{row['config']}/{row['method']}"
        if key not in best or row["psnr"] > best[key]["psnr"]:
            best[key] = row
    return {"table": table, "best": best}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", type=Path, default=DEFAULT_DATA_ROOT, help="shared data folder (train/dicom is read; dev/ never)"
    )
    ap.add_argument(
        "--slices", type=int, default=len(TV_TUNE_SLICES), help=f"number of train slices (max {len(TV_TUNE_SLICES)})"
    )
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configurations")
    ap.add_argument("--weights", default="1e-4,2e-4,3e-4,5e-4,1e-3,2e-3,3e-3", help="TV weights to scan")
    ap.add_argument("--weighting", default="none,poisson", help="TV data weightings to scan")
    ap.add_argument(
        "--model-errors",
        default="0.02,0.03,0.05",
        help="model-error floors of the Poisson weights to scan (TV; CGLS uses the default)",
    )
    ap.add_argument("--checkpoints", default="100,200,300,400", help="TV iterations scored")
    ap.add_argument("--sirt-checkpoints", default="25,50,100,150,200,300,400")
    ap.add_argument("--cgls-checkpoints", default="5,10,15,20,30,40,60")
    ap.add_argument(
        "--cgls-model-error",
        type=float,
        default=DEFAULT_MODEL_ERROR,
        help="model-error floor of CGLS's Poisson weights (default: the library default)",
    )
    ap.add_argument("--seed", type=int, default=1000, help="noise seed of the first slice (then +1 per slice)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy 2-core machine)")
    ap.add_argument("--json", type=Path, help="write all records and the summary here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        slices = load_train_slices(args.data, TV_TUNE_SLICES[: args.slices])
    except FileNotFoundError as e:
        ap.error(str(e))
    print(f"{len(slices)} train slices: " + ", ".join(s[0] for s in slices), flush=True)
    records = []
    t0 = time.time()
    for name in args.configs.split(","):
        print(f"configuration {name} ({CONFIGS[name].describe()})", flush=True)
        records += tune_config(name, slices, args)
    summary = summarise(records)
    for row in summary["table"]:
        print(
            f"{row['config']:12s} {row['method']:5s} {json.dumps(row['params'], sort_keys=True):45s} "
            f"it {row['iteration']:4d}  PSNR {row['psnr']:6.2f}  SSIM {row['ssim']:.4f}"
        )
    print("best by mean PSNR:")
    for key, row in summary["best"].items():
        print(
            f"  {key:20s} {json.dumps(row['params'], sort_keys=True)} it {row['iteration']}: "
            f"PSNR {row['psnr']:.2f} SSIM {row['ssim']:.4f}"
        )
    print(f"total {time.time() - t0:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "slices": [s[0] for s in slices],
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "records": records,
                    **summary,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
