#!/usr/bin/env python
"""Sparse-view / low-dose CT with the diffusion solvers against FBP and TV (evaluation.md protocol).

Two modes:

* ``benchmark`` (default): the standard configurations (parallel-30, parallel-8, fanbeam-60) on
  DICOM slices of ``--data`` (default ``../shared/data/dev/dicom``): FBP, TV (the project's tuned
  default), DDS and DPS with the shipped prior; PSNR/SSIM on the [-1000, 1000] HU window, wall
  time per slice, network evaluations; writes a markdown report (``--report``) and JSON.
* ``tune``: a grid over solver hyper-parameters on *train* slices (never dev/) -- prints and
  saves a table; the chosen values become the defaults in ``tomo/solvers/methods.py``.

DPS is slow on a CPU (1000 network forward+backward passes per slice): ``--dps-steps`` and
``--dps-slices`` restrict it, and the report states exactly what ran.

Examples::

    python scripts/benchmark_diffusion.py --slices 2 --dds-steps 10 --dps-steps 10 --report /tmp/b.md
    python scripts/benchmark_diffusion.py tune --config parallel-30 --grid cg_iterations=3,5,10 eta=0.5,0.85
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from tomo.metrics import mu_to_hu, psnr, ssim  # noqa: E402

CONFIG_NAMES = ("parallel-30", "parallel-8", "fanbeam-60")

#: train/ slices used for tuning: 2 axial, 1 coronal, 1 sagittal from 4 different patients
#: (dev/ holds axial, coronal and sagittal slices too); never dev/.
TUNE_SLICES = (
    "train/dicom/covid-ny-sbu-A002304/axial/19001231-076.dcm",
    "train/dicom/covid-ny-sbu-A058062/axial/19001231-084.dcm",
    "train/dicom/covid-ny-sbu-A062055/coronal/19001228-41.dcm",
    "train/dicom/covid-ny-sbu-A027284/sagittal/19001231-081.dcm",
)


# ----- data -----------------------------------------------------------------------------------------
@dataclass
class Slice:
    name: str
    hu: np.ndarray              # fine grid HU [N, N]
    spacing_mm: tuple


def dicom_slices(paths) -> list[Slice]:
    """One HU slice per DICOM file (the first slice of the file's series)."""
    from tomo.io.dicom import read_volume
    out = []
    for p in paths:
        vol = read_volume(p)
        out.append(Slice(str(Path(p).relative_to(SHARED)) if SHARED in Path(p).parents else str(p),
                         vol.hu[0], vol.pixel_spacing_mm))
    return out


def folder_slices(folder: Path) -> list[Slice]:
    """Every single-file DICOM slice under ``folder`` (sorted by path)."""
    files = sorted(p for p in Path(folder).rglob("*.dcm"))
    if not files:
        raise SystemExit(f"no DICOM files under {folder}")
    return dicom_slices(files)


# ----- methods --------------------------------------------------------------------------------------
@dataclass
class Outcome:
    hu: np.ndarray
    seconds: float
    network_evaluations: int = 0
    gradient_evaluations: int = 0


@dataclass
class Run:
    """Scores of one method on one configuration."""

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
                "seconds_per_slice": float(np.mean(self.seconds)), "nfe": int(np.mean(self.nfe)) if self.nfe else 0,
                "slices": self.slices, "psnr_each": self.psnr, "ssim_each": self.ssim}


def run_classical(method: str, sf, **options) -> Outcome:
    from tomo.recon import reconstruct
    t = time.perf_counter()
    mu = reconstruct(sf.sinogram, sf.geometry, method, i0=sf.i0, progress=False, **options)
    return Outcome(mu_to_hu(mu).numpy(), time.perf_counter() - t)


def run_diffusion(method: str, sf, prior, seed: int = 0, progress: bool = False, **settings) -> Outcome:
    """DDS or DPS on one simulated slice with the Poisson-weighted data term."""
    from operators import CTProjector
    from tomo.solvers import ct_problem, dds, dps
    t = time.perf_counter()
    problem = ct_problem(prior, CTProjector(sf.geometry), torch.from_numpy(sf.sinogram), i0=sf.i0)
    weighted = settings.pop("weighted", True)
    init = settings.pop("init", None)
    if settings.pop("bf16", False):
        settings["autocast_dtype"] = torch.bfloat16
    if init is not None:
        from tomo.recon import reconstruct
        mu = reconstruct(sf.sinogram, sf.geometry, init, i0=sf.i0, progress=False)
        settings["x_init"] = prior.hu_to_model(mu_to_hu(mu))[None, None]
    args = problem.solver_args()
    if not weighted:
        args["weights"] = None
    result = (dds if method == "dds" else dps)(prior, **args, seed=seed, progress=progress, **settings)
    hu = prior.model_to_hu(result.x)[0, 0].numpy()
    return Outcome(hu, time.perf_counter() - t, result.network_evaluations, result.gradient_evaluations)


def simulate(slice_: Slice, config: str, seed: int):
    from tomo.simulate import simulate_slice
    return simulate_slice(slice_.hu, slice_.spacing_mm, config, seed=seed, progress=False)


# ----- modes ---------------------------------------------------------------------------------------
def parse_grid(items) -> dict:
    grid = {}
    for item in items or ():
        key, _, values = item.partition("=")
        parsed = []
        for v in values.split(","):
            try:
                parsed.append(int(v))
            except ValueError:
                try:
                    parsed.append(float(v))
                except ValueError:
                    parsed.append({"true": True, "false": False}.get(v.lower(), v))
        grid[key] = parsed
    return grid


def tune(args) -> None:
    from tomo.priors import load_prior
    prior = load_prior(args.prior)
    slices = dicom_slices([SHARED / p for p in TUNE_SLICES[: args.slices or None]])
    if any("/dev/" in f"/{s.name}" for s in slices):
        raise SystemExit("tuning must not use dev/ slices")
    grid = parse_grid(args.grid)
    keys = list(grid)
    results = []
    sims = {(s.name, c): simulate(s, c, k) for c in args.config for k, s in enumerate(slices)}
    for values in itertools.product(*(grid[k] for k in keys)):
        settings = {**parse_grid(args.fixed), **dict(zip(keys, values))}
        settings = {k: v[0] if isinstance(v, list) else v for k, v in settings.items()}
        for config in args.config:
            run = Run(args.method, config, settings)
            for s in slices:
                sf = sims[(s.name, config)]
                run.add(s.name, run_diffusion(args.method, sf, prior, seed=args.seed, **dict(settings)),
                        sf.hu_reference)
            results.append(run.summary())
            r = results[-1]
            print(f"{config:12s} {args.method} {settings}: PSNR {r['psnr']:.2f} SSIM {r['ssim']:.4f} "
                  f"({r['seconds_per_slice']:.0f} s/slice, n={r['n']})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def benchmark(args) -> None:
    from tomo.priors import load_prior
    if "/dev/" not in f"{Path(args.data).resolve()}/":
        print(f"note: --data {args.data} is not under dev/", file=sys.stderr)
    slices = folder_slices(Path(args.data))
    if args.slices:
        slices = slices[: args.slices]
    prior = load_prior(args.prior) if {"dds", "dps"} & set(args.methods) else None
    runs = []
    for config in args.config:
        by_method = {m: Run(m, config, {}) for m in args.methods}
        for k, s in enumerate(slices):
            sf = simulate(s, config, seed=k)
            for m in args.methods:
                if m == "dps" and args.dps_slices is not None and k >= args.dps_slices:
                    continue
                if m in ("fbp", "tv"):
                    out = run_classical(m, sf)
                elif m == "dds":
                    by_method[m].settings = dict(steps=args.dds_steps, cg_iterations=args.cg_iterations,
                                                 eta=args.eta, bf16=args.bf16)
                    out = run_diffusion("dds", sf, prior, seed=k, progress=args.progress,
                                        **dict(by_method[m].settings))
                else:
                    by_method[m].settings = dict(steps=args.dps_steps, zeta=args.zeta, bf16=args.bf16)
                    out = run_diffusion("dps", sf, prior, seed=k, progress=args.progress,
                                        **dict(by_method[m].settings))
                by_method[m].add(s.name, out, sf.hu_reference)
                print(f"{config:12s} {s.name:60s} {m:4s} PSNR {by_method[m].psnr[-1]:6.2f} "
                      f"SSIM {by_method[m].ssim[-1]:.4f} {out.seconds:7.1f} s", flush=True)
        runs += [r.summary() for r in by_method.values() if r.psnr]
    meta = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "data": str(args.data),
            "slices": [s.name for s in slices], "prior": str(args.prior or "data/prior (shipped)"),
            "prior_training": getattr(prior, "config", {}).get("training") if prior is not None else None,
            "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} threads",
            "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    if args.report:
        write_section(args.report, "ct", report_markdown(meta, runs))
        print(f"wrote the CT section of {args.report}")


def write_section(path: Path, key: str, text: str) -> None:
    """Replace (or append) the block between ``<!-- key:begin -->`` and ``<!-- key:end -->`` in ``path``.

    The CT benchmark, the task benchmark and the hand-written tuning notes share
    docs/benchmarks_diffusion.md; each script rewrites only its own block.
    """
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = Path(path).read_text() if Path(path).exists() else "# Diffusion solvers: benchmarks\n\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) + 1:]
    else:
        new = old.rstrip() + "\n\n" + block
    Path(path).write_text(new)


def report_markdown(meta: dict, runs: list) -> str:
    lines = ["## CT: the evaluation protocol", "",
             f"Generated by `python scripts/{meta['command']}` on {meta['date']} ({meta['machine']}).",
             f"Data: `{meta['data']}`, {len(meta['slices'])} slices; prior: `{meta['prior']}`.", "",
             "Protocol: `/work/shared/docs/evaluation.md` (fine-grid projection, transmission Poisson "
             "noise, 256 x 256 reconstruction, PSNR/SSIM on the [-1000, 1000] HU window, no per-image "
             "normalisation). Mean over the slices each method ran on (`n`).", "",
             "| config | method | settings | n | PSNR [dB] | SSIM | s / slice | network evals |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "default"
        lines.append(f"| {r['config']} | {r['method']} | {settings} | {r['n']} | {r['psnr']:.2f} | "
                     f"{r['ssim']:.4f} | {r['seconds_per_slice']:.1f} | {r['nfe']} |")
    lines += ["", "Per-slice PSNR:", ""]
    for r in runs:
        lines.append(f"- {r['config']} {r['method']}: " + ", ".join(f"{v:.2f}" for v in r["psnr_each"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    parser.set_defaults(mode="benchmark")
    for p in (parser, ):
        p.add_argument("--data", type=Path, default=SHARED / "dev" / "dicom")
        p.add_argument("--config", nargs="+", default=list(CONFIG_NAMES), choices=CONFIG_NAMES)
        p.add_argument("--methods", nargs="+", default=["fbp", "tv", "dds", "dps"],
                       choices=["fbp", "tv", "dds", "dps"])
        p.add_argument("--slices", type=int, default=None, help="first N slices only")
        p.add_argument("--prior", default=None, help="prior checkpoint (default: shipped data/prior)")
        p.add_argument("--dds-steps", type=int, default=50)
        p.add_argument("--cg-iterations", type=int, default=5)
        p.add_argument("--eta", type=float, default=0.85)
        p.add_argument("--dps-steps", type=int, default=1000)
        p.add_argument("--dps-slices", type=int, default=None, help="run DPS on the first N slices only")
        p.add_argument("--zeta", type=float, default=1.0)
        p.add_argument("--report", type=Path, default=REPO / "docs" / "benchmarks_diffusion.md")
        p.add_argument("--json", type=Path, default=None)
        p.add_argument("--progress", action="store_true")
        p.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the prior network")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t = sub.add_parser("tune", help="hyper-parameter grid on train/ slices")
    t.add_argument("--method", choices=["dds", "dps"], default="dds")
    t.add_argument("--config", nargs="+", default=["parallel-30"], choices=CONFIG_NAMES)
    t.add_argument("--grid", nargs="*", help="key=v1,v2 ... (solver keyword arguments)")
    t.add_argument("--fixed", nargs="*", help="key=value fixed solver keyword arguments")
    t.add_argument("--slices", type=int, default=None, help="first N tuning slices")
    t.add_argument("--prior", default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", type=Path, default=None)
    t.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    (tune if args.mode == "tune" else benchmark)(args)


if __name__ == "__main__":
    main()
