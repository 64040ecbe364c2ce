#!/usr/bin/env python
"""Image restoration on CT slices: diffusion solvers against a simple baseline per task.

Tasks (the defaults of ``tomo restore``; white Gaussian noise of ``--noise-hu`` HU, default 10):

* ``deblur``: Gaussian blur, sigma 2 px; baselines Wiener deconvolution (scikit-image, balance
  tuned) and TV deconvolution;
* ``superres``: x4 block averaging; baseline bicubic interpolation;
* ``inpaint``: centred missing box, a quarter of each side; baseline TV inpainting.

Reference: each DICOM slice resized (anti-aliased) to 256 pixels on its longer side, as in the
CT protocol. Scores: PSNR/SSIM on the [-1000, 1000] HU window. Baseline and solver
hyper-parameters are tuned on train/ slices (``tune`` mode), never on dev/: by default the
train/ct-1.5mm slices the shipped prior never saw (``--set ct``, :data:`CT_TUNE_SLICES`); ``--set
dicom`` gives the train/dicom slices of the earlier rounds, which the prior was trained on. Each
grid point is the method's current defaults with the grid's values replaced. Cases, baselines
and runner: :mod:`tomo.evaluation`.

Examples::

    python scripts/benchmark_tasks.py --slices 2 --dds-steps 10 --report /tmp/tasks.md
    python scripts/benchmark_tasks.py tune --task deblur --method tv --grid tv_weight=0.001,0.003,0.01
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from tomo.evaluation.baselines import BASELINE_DEFAULTS, BASELINES
from tomo.evaluation.cases import (
    CT_TUNE_SLICES,
    DEFAULT_DATA_ROOT,
    DIFFUSION_TUNE_SLICES,
    load_ct_tune_slices,
    load_dev_slices,
    read_slices,
)
from tomo.evaluation.machine import machine_info
from tomo.evaluation.report import Summary, settings_table, summarise, write_json, write_section
from tomo.evaluation.runner import evaluate_task, task_cases
from tomo.evaluation.tuning import parse_grid, settings_grid

REPO = Path(__file__).resolve().parents[1]
TASKS = ("deblur", "superres", "inpaint")
SOLVERS = ("dds", "dps")


def _load_prior(path, methods):
    if not set(SOLVERS) & set(methods):
        return None
    from tomo.priors import load_prior

    return load_prior(path)


def solver_settings(method: str, task: str, args) -> dict:
    """``tomo.methods.image_tasks.SOLVER_DEFAULTS`` with the command line's steps and bf16."""
    settings = current_defaults(method, task)
    steps = args.dds_steps if method == "dds" else args.dps_steps
    if steps:
        settings["steps"] = steps
    if args.bf16:
        settings["bf16"] = True
    return settings


def tuning_slices(args) -> list:
    """The train/ slices of ``tune``: ``--set ct`` (unseen by the shipped prior) or ``dicom``."""
    if args.set == "dicom":
        return read_slices(args.data, DIFFUSION_TUNE_SLICES[: args.slices or None])
    return load_ct_tune_slices(args.data, CT_TUNE_SLICES[: args.slices or None])


def current_defaults(method: str, task: str) -> dict:
    """What ``tomo restore`` / the benchmark run today: the start of every grid point."""
    if method in SOLVERS:
        from tomo.methods.image_tasks import SOLVER_DEFAULTS

        return dict(SOLVER_DEFAULTS[(method, task)])
    return dict(BASELINE_DEFAULTS.get((task, method), {}))


def tune(args) -> None:
    slices = tuning_slices(args)
    prior = _load_prior(args.prior, [args.method])
    cases = task_cases(slices, args.task, args.noise_hu)
    results = []
    for settings in settings_grid(parse_grid(args.grid), fixed=current_defaults(args.method, args.task)):
        r = summarise(evaluate_task(args.method, cases, settings, prior=prior, verbose=False))[0]
        results.append(r.as_dict())
        print(
            f"{args.task} {args.method} {settings}: PSNR {r.psnr:.2f} SSIM {r.ssim:.4f} "
            f"({r.seconds:.1f} s/slice, n={r.n})",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def benchmark(args) -> None:
    slices = load_dev_slices(args.data, args.slices)
    prior = _load_prior(args.prior, args.methods)
    records = []
    for task in args.tasks:
        cases = task_cases(slices, task, args.noise_hu)
        for m in list(BASELINES[task]) + [m for m in args.methods if m in SOLVERS]:
            if m in SOLVERS:
                chosen = cases[: args.dps_slices] if m == "dps" and args.dps_slices is not None else cases
                records += evaluate_task(m, chosen, solver_settings(m, task, args), prior=prior, progress=args.progress)
            else:
                records += evaluate_task(m, cases, BASELINE_DEFAULTS[(task, m)])
    machine = machine_info()
    meta = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "data": str(args.data),
        "slices": [s.name for s in slices],
        "prior": str(args.prior or "data/prior (shipped)"),
        "noise_hu": args.noise_hu,
        "machine": machine.describe(),
        "machine_info": machine.as_dict(),
        "date": machine.date,
    }
    runs = summarise(records)
    if args.json:
        write_json(args.json, meta, runs)
    if args.report:
        write_section(args.report, "tasks", report_markdown(meta, runs))
        print(f"wrote the tasks section of {args.report}")


def report_markdown(meta: dict, runs: list[Summary]) -> str:
    lines = [
        "## Image restoration tasks",
        "",
        f"Generated by `python scripts/{meta['command']}` on {meta['date']} ({meta['machine']}).",
        f"Data: `{meta['data']}`, {len(meta['slices'])} slices resized to 256 px; white Gaussian noise "
        f"{meta['noise_hu']:g} HU; prior `{meta['prior']}`. PSNR/SSIM on the [-1000, 1000] HU window.",
        "",
    ]
    return "\n".join(lines + settings_table(runs, first="task", empty="-")) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    parser.set_defaults(mode="benchmark")
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA_ROOT, help="shared data folder (its dev/dicom is used)"
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=["dds", "dps"], choices=["dds", "dps"])
    parser.add_argument("--slices", type=int, default=None)
    parser.add_argument("--prior", default=None)
    parser.add_argument("--noise-hu", type=float, default=10.0)
    parser.add_argument("--dds-steps", type=int, default=None)
    parser.add_argument("--dps-steps", type=int, default=None)
    parser.add_argument("--dps-slices", type=int, default=None)
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="markdown file whose 'tasks' section is (re)written, e.g. docs/benchmarks_diffusion.md "
        "(default: none; a run on a subset must not overwrite the committed tables)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the prior network")
    parser.add_argument("--threads", type=int, default=None)
    t = sub.add_parser("tune", help="grid over one method's settings (from its current defaults) on train/ slices")
    t.add_argument("--task", choices=TASKS, required=True)
    t.add_argument("--method", choices=["wiener", "tv", "bicubic", "dds", "dps"], required=True)
    t.add_argument("--grid", nargs="*")
    t.add_argument("--slices", type=int, default=None)
    t.add_argument(
        "--set",
        choices=("ct", "dicom"),
        default="ct",
        help="train/ slices: ct = train/ct-1.5mm, unseen by the shipped prior (default); dicom = "
        "train/dicom, the set of the earlier tuning rounds, which the prior was trained on",
    )
    t.add_argument("--prior", default=None)
    t.add_argument("--noise-hu", type=float, default=10.0)
    t.add_argument("--json", type=Path, default=None)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT, help="shared data folder (its train/ is used)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    (tune if args.mode == "tune" else benchmark)(args)


if __name__ == "__main__":
    main()
