#!/usr/bin/env python
"""Reconstruction quality on dev/ following /work/shared/docs/evaluation.md.

Every dev/dicom slice (18: 3 patients x axial/coronal/sagittal x 2 studies) is simulated with the
protocol for each standard configuration, reconstructed by each registered method with its
defaults, and scored (PSNR, SSIM on the [-1000, 1000] HU window, no per-image normalisation).
Per-slice PSNR/SSIM/time is printed; the summary table goes to a Markdown file and everything to
JSON. The protocol is library code (:mod:`tomo.evaluation`): to score your own method on the same
cases, ``cases = build_cases(load_dev_slices(root), "parallel-30")`` then
``evaluate(my_fn, cases, name="mine")`` with ``my_fn(sinogram, case) -> mu``.

Reproduce the committed numbers:

    python scripts/benchmark_quality.py --json /tmp/bq.json --markdown docs/benchmarks_quality.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from operators import clear_matrix_cache
from tomo.evaluation.cases import DEFAULT_DATA_ROOT, build_cases, build_operators, load_dev_slices
from tomo.evaluation.machine import describe_machine, load_average
from tomo.evaluation.report import mean_table, per_case_tables, summarise, write_json
from tomo.evaluation.runner import evaluate_registry
from tomo.evaluation.simulation import CONFIGS
from tomo.methods import available_methods
from tomo.methods.classical import describe_defaults

#: the date the project reports under (see the task brief)
REPORT_DATE = "2026-11-26"


def report_markdown(meta: dict, summaries, records) -> str:
    lines = [
        "# Reconstruction quality benchmark (classical methods)",
        "",
        f"Date: {REPORT_DATE}. Machine: {meta['machine']}. Load average at start / end: "
        f"{meta['load_start']} / {meta['load_end']} (the machine is shared with a background diffusion-training "
        "job and other work, so the times are pessimistic and noisy).",
        "",
        f"Protocol: `/work/shared/docs/evaluation.md` on {meta['slices']} slices of `dev/dicom` (the full set is 18: "
        "3 patients x axial/coronal/sagittal x 2 studies), each simulated on its own "
        "fine grid (512-616 px) with the detector of the 256 x 256 reconstruction grid, transmission Poisson "
        f"noise (seed {meta['seed']} + slice index), scored on the 256 x 256 anti-aliased ground truth: PSNR and "
        "SSIM (data range 1) on the [-1000, 1000] HU window, whole image, no per-image normalisation.",
        "",
        "Methods use their defaults from `tomo/methods/registry.py` (tuned on train/ slices only, see "
        "`docs/reconstruction.md`): " + meta["defaults"] + ".",
        "",
        "Time: wall time per slice of the reconstruction call, one slice at a time, CPU; it excludes the "
        f"one-off build of the projector's sparse system matrix per geometry (mean {meta['matrix_seconds']:.1f} s; "
        "every dev slice has its own pixel spacing, hence its own geometry).",
        "",
        f"Reproduce: `{meta['command']}`",
        "",
        "## Mean over slices",
        "",
    ]
    return "\n".join(lines + mean_table(summaries) + per_case_tables(records)) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT, help="shared data folder")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated standard configurations")
    ap.add_argument("--methods", default="fbp,sirt,cgls,tv", help="comma-separated registered methods")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N slices (0 = all; reports must use all)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed of slice 0 (slice k uses seed + k)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on the busy 2-core machine)"
    )
    ap.add_argument("--json", type=Path, help="write per-slice records and the summary here")
    ap.add_argument("--markdown", type=Path, help="write the summary table here (e.g. docs/benchmarks_quality.md)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in available_methods()]
    if unknown:
        ap.error(f"unknown methods {unknown}; registered: {sorted(available_methods())}")
    load_start = load_average()
    slices = load_dev_slices(args.data, args.limit)
    print(f"{len(slices)} dev slices; {describe_machine()}", flush=True)
    records, matrix_seconds = [], []
    for config in args.configs.split(","):
        print(f"configuration {config}: {CONFIGS[config].describe()}", flush=True)
        cases = build_cases(slices, config, args.seed, args.device)
        matrix_seconds += build_operators(cases)  # outside the timings
        for m in methods:
            records += evaluate_registry(m, cases)
        clear_matrix_cache()
    summaries = summarise(records)
    print(f"\n{'configuration':14s} {'method':7s} slices  PSNR (std)      SSIM (std)        s/slice")
    for s in summaries:
        print(
            f"{s.config:14s} {s.method:7s} {s.n:4d}  {s.psnr:6.2f} ({s.psnr_std:.2f})  "
            f"{s.ssim:.4f} ({s.ssim_std:.4f})  {s.seconds:7.2f}"
        )
    meta = dict(
        machine=describe_machine(),
        load_start=load_start,
        load_end=load_average(),
        slices=len(slices),
        seed=args.seed,
        matrix_seconds=float(np.mean(matrix_seconds)),
        command="python scripts/benchmark_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        defaults=describe_defaults(),
    )
    if args.json:
        write_json(args.json, meta, summaries, records, summary_key="summary")
    if args.markdown:
        args.markdown.write_text(report_markdown(meta, summaries, records))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
