#!/usr/bin/env python
"""Image restoration on CT slices: diffusion solvers against a simple baseline per task.

Tasks (the defaults of ``tomo restore``; white Gaussian noise of ``--noise-hu`` HU, default 10):

* ``deblur``: Gaussian blur, sigma 2 px; baselines Wiener deconvolution (scikit-image, balance
  tuned) and TV deconvolution;
* ``superres``: x4 block averaging; baseline bicubic interpolation;
* ``inpaint``: centred missing box, a quarter of each side; baseline TV inpainting.

Reference: each DICOM slice resized (anti-aliased) to 256 pixels on its longer side, as in the
CT protocol. Scores: PSNR/SSIM on the [-1000, 1000] HU window. Baseline and solver
hyper-parameters are tuned on train/ slices (``tune`` mode), never on dev/.

Examples::

    python scripts/benchmark_tasks.py --slices 2 --dds-steps 10 --report /tmp/tasks.md
    python scripts/benchmark_tasks.py tune --task deblur --method tv --grid tv_weight=0.001,0.003,0.01
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchmark_diffusion import SHARED, parse_grid, train_slices, write_section  # noqa: E402
from benchmark_quality import load_dev_slices, machine  # noqa: E402
from operators.units import MU_WATER_PER_MM  # noqa: E402
from tomo.evaluation.scores import psnr, ssim  # noqa: E402

TASKS = ("deblur", "superres", "inpaint")
BASELINES = {"deblur": ("wiener", "tv"), "superres": ("bicubic",), "inpaint": ("tv",)}
#: baseline hyper-parameters, tuned on the train/ slices of TUNE_SLICES (see docs/benchmarks_diffusion.md)
#: (4 slices, noise 10 HU: Wiener balance 0.001-0.1 -> 28.65-29.03 dB, best 0.005; TV deblur weight
#: 3e-4-1e-2 -> 28.73-29.26 dB, 1e-3 best SSIM; TV inpainting 1e-3-1e-2 at 1000 iterations
#: -> 32.3-34.8 dB, 3e-3 best SSIM; fewer iterations leave the hole unfilled)
BASELINE_DEFAULTS = {("deblur", "wiener"): {"balance": 0.005}, ("deblur", "tv"): {"tv_weight": 0.001},
                     ("inpaint", "tv"): {"tv_weight": 0.003, "iterations": 1000, "tol": 0.0},
                     ("superres", "bicubic"): {}}


@dataclass
class Outcome:
    hu: np.ndarray
    seconds: float
    network_evaluations: int = 0
    gradient_evaluations: int = 0


@dataclass
class Run:
    """Scores of one method on one task."""

    method: str
    config: str
    settings: dict
    psnr: list = field(default_factory=list)
    ssim: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    nfe: list = field(default_factory=list)
    slices: list = field(default_factory=list)

    def add(self, name: str, out: Outcome, ref: np.ndarray) -> None:
        self.slices.append(name)
        self.psnr.append(float(psnr(out.hu, ref)))
        self.ssim.append(float(ssim(out.hu, ref)))
        self.seconds.append(out.seconds)
        self.nfe.append(out.network_evaluations)

    def summary(self) -> dict:
        return {"method": self.method, "config": self.config, "settings": self.settings, "n": len(self.psnr),
                "psnr": float(np.mean(self.psnr)), "ssim": float(np.mean(self.ssim)),
                "seconds_per_slice": float(np.mean(self.seconds)), "nfe": int(np.mean(self.nfe)),
                "slices": self.slices, "psnr_each": self.psnr, "ssim_each": self.ssim}


def reference_256(hu: np.ndarray, size: int = 256) -> np.ndarray:
    from tomo.cli.restore import resize_for_task
    from operators.units import HU_MAX, HU_MIN
    return resize_for_task(np.clip(hu, HU_MIN, HU_MAX).astype(np.float32), size, 4)


# ----- baselines (all in HU) ---------------------------------------------------------------------------
def wiener_deblur(y_hu: torch.Tensor, op, balance: float) -> np.ndarray:
    """Wiener-Hunt deconvolution (scikit-image) with the operator's own kernel.

    Works on ``u = (HU + 1000) / 1000`` (air 0, water 1), with the data shifted exactly as the
    zero-padded operator sees them (``A u = (y + 1000 A 1) / 1000``).
    """
    from skimage.restoration import wiener
    with torch.no_grad():
        y_u = (y_hu + 1000.0 * op(torch.ones(op.in_shape, dtype=y_hu.dtype))) / 1000.0
    u = wiener(y_u.numpy().astype(np.float64), op.kernel.cpu().numpy(), balance, clip=False)
    return u * 1000.0 - 1000.0


def tv_restore(y_hu: torch.Tensor, op, tv_weight: float, iterations: int = 300, tol: float = 1e-5) -> np.ndarray:
    """TV-regularised least squares in attenuation units (mu >= 0), as tomo.recon.tv_pdhg defines it."""
    from tomo.recon import tv_pdhg
    with torch.no_grad():
        ones = torch.ones(op.in_shape, dtype=y_hu.dtype)
        y_mu = MU_WATER_PER_MM * (op(ones) + y_hu / 1000.0)
    mu = tv_pdhg(op, y_mu, weight=tv_weight, iterations=iterations, tol=tol, progress=False)
    return (1000.0 * (mu / MU_WATER_PER_MM - 1.0)).numpy()


def bicubic(y_hu: np.ndarray, shape) -> np.ndarray:
    from skimage.transform import resize
    return resize(y_hu, shape, order=3, anti_aliasing=False, preserve_range=True)


def run_baseline(task: str, name: str, op, y: torch.Tensor, shape, **settings) -> Outcome:
    t = time.perf_counter()
    if name == "wiener":
        hu = wiener_deblur(y, op, **settings)
    elif name == "tv":
        hu = tv_restore(y, op, **settings)
    elif name == "bicubic":
        hu = bicubic(y.numpy(), shape)
    else:
        raise ValueError(name)
    return Outcome(np.asarray(hu, dtype=np.float32), time.perf_counter() - t)


def run_solver(method: str, prior, op, y: torch.Tensor, seed: int, progress: bool = False, **settings) -> Outcome:
    from tomo.methods.image_tasks import restore
    settings = dict(settings)
    if settings.pop("bf16", False):
        settings["autocast_dtype"] = torch.bfloat16
    t = time.perf_counter()
    out = restore(prior, op, y, method, seed=seed, progress=progress, **settings)
    return Outcome(out.hu[0, 0].numpy(), time.perf_counter() - t, out.network_evaluations,
                   out.gradient_evaluations)


def degrade_slice(task: str, ref: np.ndarray, noise_hu: float, seed: int):
    from tomo.methods.image_tasks import degrade, task_operator
    op = task_operator(task, ref.shape)
    return op, degrade(op, torch.from_numpy(ref), noise_hu, seed=seed)


# ----- modes -----------------------------------------------------------------------------------------
def tune(args) -> None:
    slices = train_slices()[: args.slices or None]
    prior = None
    if args.method in ("dds", "dps"):
        from tomo.priors import load_prior
        prior = load_prior(args.prior)
    grid = parse_grid(args.grid)
    keys = list(grid)
    data = []
    for k, (name, hu, _) in enumerate(slices):
        ref = reference_256(hu)
        op, y = degrade_slice(args.task, ref, args.noise_hu, seed=k)
        data.append((name, ref, op, y))
    results = []
    for values in itertools.product(*(grid[k] for k in keys)):
        settings = dict(zip(keys, values))
        run = Run(args.method, args.task, settings)
        for k, (name, ref, op, y) in enumerate(data):
            if prior is None:
                out = run_baseline(args.task, args.method, op, y, ref.shape, **settings)
            else:
                out = run_solver(args.method, prior, op, y, seed=k, **settings)
            run.add(name, out, ref)
        r = run.summary()
        results.append(r)
        print(f"{args.task} {args.method} {settings}: PSNR {r['psnr']:.2f} SSIM {r['ssim']:.4f} "
              f"({r['seconds_per_slice']:.1f} s/slice, n={r['n']})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def benchmark(args) -> None:
    slices = load_dev_slices(args.data)
    if args.slices:
        slices = slices[: args.slices]
    from tomo.priors import load_prior
    prior = load_prior(args.prior) if {"dds", "dps"} & set(args.methods) else None
    runs = []
    for task in args.tasks:
        methods = list(BASELINES[task]) + [m for m in args.methods if m in ("dds", "dps")]
        by_method = {m: Run(m, task, {}) for m in methods}
        for k, (name, hu, _) in enumerate(slices):
            ref = reference_256(hu)
            op, y = degrade_slice(task, ref, args.noise_hu, seed=k)
            for m in methods:
                if m == "dps" and args.dps_slices is not None and k >= args.dps_slices:
                    continue
                if m in ("dds", "dps"):
                    from tomo.methods.image_tasks import SOLVER_DEFAULTS
                    settings = dict(SOLVER_DEFAULTS[(m, task)])
                    if args.dds_steps and m == "dds":
                        settings["steps"] = args.dds_steps
                    if args.dps_steps and m == "dps":
                        settings["steps"] = args.dps_steps
                    if args.bf16:
                        settings["bf16"] = True
                    out = run_solver(m, prior, op, y, seed=k, progress=args.progress, **settings)
                else:
                    settings = BASELINE_DEFAULTS[(task, m)]
                    out = run_baseline(task, m, op, y, ref.shape, **settings)
                by_method[m].settings = settings
                by_method[m].add(name, out, ref)
                print(f"{task:9s} {name:60s} {m:8s} PSNR {by_method[m].psnr[-1]:6.2f} "
                      f"SSIM {by_method[m].ssim[-1]:.4f} {out.seconds:7.1f} s", flush=True)
        runs += [r.summary() for r in by_method.values() if r.psnr]
    meta = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "data": str(args.data),
            "slices": [s[0] for s in slices], "prior": str(args.prior or "data/prior (shipped)"),
            "noise_hu": args.noise_hu,
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    if args.report:
        write_section(args.report, "tasks", report_markdown(meta, runs))
        print(f"wrote the tasks section of {args.report}")


def report_markdown(meta: dict, runs: list) -> str:
    lines = ["## Image restoration tasks", "",
             f"Generated by `python scripts/{meta['command']}` on {meta['date']} ({meta['machine']}).",
             f"Data: `{meta['data']}`, {len(meta['slices'])} slices resized to 256 px; white Gaussian noise "
             f"{meta['noise_hu']:g} HU; prior `{meta['prior']}`. PSNR/SSIM on the [-1000, 1000] HU window.", "",
             "| task | method | settings | n | PSNR [dB] | SSIM | s / slice | network evals |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "-"
        lines.append(f"| {r['config']} | {r['method']} | {settings} | {r['n']} | {r['psnr']:.2f} | "
                     f"{r['ssim']:.4f} | {r['seconds_per_slice']:.1f} | {r['nfe']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    parser.set_defaults(mode="benchmark")
    parser.add_argument("--data", type=Path, default=SHARED, help="shared data folder (its dev/dicom is used)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=["dds", "dps"], choices=["dds", "dps"])
    parser.add_argument("--slices", type=int, default=None)
    parser.add_argument("--prior", default=None)
    parser.add_argument("--noise-hu", type=float, default=10.0)
    parser.add_argument("--dds-steps", type=int, default=None)
    parser.add_argument("--dps-steps", type=int, default=None)
    parser.add_argument("--dps-slices", type=int, default=None)
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "benchmarks_diffusion.md",
                        help="markdown file whose 'tasks' section is (re)written")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the prior network")
    parser.add_argument("--threads", type=int, default=None)
    t = sub.add_parser("tune", help="grid over one method's settings on train/ slices")
    t.add_argument("--task", choices=TASKS, required=True)
    t.add_argument("--method", choices=["wiener", "tv", "bicubic", "dds", "dps"], required=True)
    t.add_argument("--grid", nargs="*")
    t.add_argument("--slices", type=int, default=None)
    t.add_argument("--prior", default=None)
    t.add_argument("--noise-hu", type=float, default=10.0)
    t.add_argument("--json", type=Path, default=None)
    t.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    (tune if args.mode == "tune" else benchmark)(args)


if __name__ == "__main__":
    main()
