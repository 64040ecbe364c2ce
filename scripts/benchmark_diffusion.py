#!/usr/bin/env python
"""Sparse-view / low-dose CT with the diffusion solvers against FBP and TV (evaluation.md protocol).

Two modes:

* ``benchmark`` (default): the standard configurations (parallel-30, parallel-8, fanbeam-60) on
  the dev/dicom slices, exactly as ``scripts/benchmark_quality.py`` builds and scores them (its
  ``build_cases`` / ``evaluate_method`` are reused): FBP, TV (the project's tuned default), DDS
  and DPS with the shipped prior; PSNR/SSIM on the [-1000, 1000] HU window, wall time per slice,
  network evaluations; writes the CT section of docs/benchmarks_diffusion.md and JSON.
* ``tune``: a grid over solver hyper-parameters on *train* slices (never dev/) -- prints and
  saves a table; the chosen values become the defaults in ``tomo/methods/diffusion.py``.

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
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from tomo.methods.classical import DEFAULT_MODEL_ERROR  # noqa: E402
from tomo.methods.diffusion import DDS_DEFAULTS  # noqa: E402

#: the settings `tomo reconstruct --method dds` uses, so that benchmark and tuning rows without
#: explicit options measure what users get
DDS_USER_SETTINGS = {**{k: v for k, v in DDS_DEFAULTS.items() if k != "seed"}, "model_error": DEFAULT_MODEL_ERROR}

CONFIG_NAMES = ("parallel-30", "parallel-8", "fanbeam-60")

#: train/ slices used for tuning: 2 axial, 1 coronal, 1 sagittal from 4 different patients
#: (dev/ holds axial, coronal and sagittal slices too); never dev/.
TUNE_SLICES = (
    "train/dicom/covid-ny-sbu-A002304/axial/19001231-076.dcm",
    "train/dicom/covid-ny-sbu-A058062/axial/19001231-084.dcm",
    "train/dicom/covid-ny-sbu-A062055/coronal/19001228-41.dcm",
    "train/dicom/covid-ny-sbu-A027284/sagittal/19001231-081.dcm",
)


# ----- data and methods -------------------------------------------------------------------------------
# The protocol (simulation, cases, scoring) is scripts/benchmark_quality.py's: build_cases,
# evaluate_method, summarise. This script only adds the diffusion methods and the tuning mode.
from benchmark_quality import build_cases, evaluate_method, load_dev_slices, machine, registry_method  # noqa: E402,I001


def train_slices(paths=TUNE_SLICES):
    """``(name, hu [H, W], pixel spacing)`` of the tuning slices (train/ only)."""
    from tomo.io.volume import read_volume
    out = []
    for rel in paths:
        if not rel.startswith("train/"):
            raise SystemExit(f"tuning must use train/ slices only, got {rel}")
        vol = read_volume(SHARED / rel)
        out.append((rel, vol.hu[0], vol.pixel_spacing_mm))
    return out


def diffusion_method(method: str, prior, counts: list, *, progress=False, **settings):
    """A ``method(sinogram, geometry, i0) -> mu`` callable for ``evaluate_method``.

    ``settings`` are solver keywords plus ``weighted`` (Poisson weights, default True),
    ``model_error`` (their floor), ``bf16`` (network autocast), ``init``/``start`` (warm start
    from a registered classical method's reconstruction) and ``samples`` (posterior mean of that
    many samples). Network evaluations are appended to
    ``counts``. The seed is the running index of the call (one per slice).
    """
    from operators import CTProjector
    from tomo.methods.registry import ReconProblem
    from tomo.methods.diffusion import ct_problem
    from tomo.solvers import dds, dps, sample_or_mean
    from tomo.methods.diffusion import warm_start_image

    settings = dict(settings)
    samples = settings.pop("samples", 1)
    weighted = settings.pop("weighted", True)
    model_error = settings.pop("model_error", 0.0)
    init = settings.pop("init", None)
    if init in (None, "none"):
        init = None
        settings["start"] = 1.0
    if settings.pop("bf16", False):
        settings["autocast_dtype"] = torch.bfloat16
    solver = dds if method == "dds" else dps
    projectors = {}

    def run(sino, geometry, i0):
        key = id(geometry)
        if key not in projectors:
            projectors[key] = CTProjector(geometry)
        problem = ct_problem(prior, projectors[key], sino, i0=i0 if weighted else None, model_error=model_error)
        extra = {}
        if init is not None:
            recon = ReconProblem(geometry, sino.device, i0, False, projectors[key])
            extra["x_init"] = warm_start_image(init, sino[None], recon, problem)
        result = sample_or_mean(solver, prior, **problem.solver_args(), samples=samples, seed=len(counts),
                                progress=progress, **extra, **settings)
        # network evaluations per slice: every sample is a separate image through the network
        counts.append(result.network_evaluations * samples)
        return problem.to_physical(result.x)[0, 0]
    return run


def add_counts(records: list, counts: list) -> list:
    for r, n in zip(records, counts):
        r["network_evaluations"] = n
    return records


def summary_rows(records: list, settings: dict) -> list:
    rows = {}
    for r in records:
        rows.setdefault((r["config"], r["method"]), []).append(r)
    out = []
    for (config, method), rs in rows.items():
        out.append({"config": config, "method": method, "settings": settings.get(method, {}), "n": len(rs),
                    "psnr": float(np.mean([r["psnr"] for r in rs])), "ssim": float(np.mean([r["ssim"] for r in rs])),
                    "seconds_per_slice": float(np.mean([r["seconds"] for r in rs])),
                    "nfe": int(np.mean([r.get("network_evaluations", 0) for r in rs])),
                    "psnr_each": [r["psnr"] for r in rs], "slices": [r["slice"] for r in rs]})
    return out


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
                    parsed.append({"true": True, "false": False, "none": None}.get(v.lower(), v))
        grid[key] = parsed
    return grid


def tune(args) -> None:
    from tomo.priors import load_prior
    prior = load_prior(args.prior)
    slices = train_slices(TUNE_SLICES[: args.slices or None])
    grid = parse_grid(args.grid)
    base = dict(DDS_USER_SETTINGS) if args.method == "dds" else (
        {"model_error": DEFAULT_MODEL_ERROR} if args.method == "dps" else {})
    fixed = {**base, **{k: v[0] for k, v in parse_grid(args.fixed).items()}}
    keys = list(grid)
    cases = {c: build_cases(slices, c, args.seed) for c in args.config}
    results = []
    for values in itertools.product(*(grid[k] for k in keys)):
        settings = {**fixed, **dict(zip(keys, values))}
        for config in args.config:
            counts = []
            if args.method in ("dds", "dps"):
                fn = diffusion_method(args.method, prior, counts, **settings)
            else:
                fn = registry_method(args.method, cases[config], **settings)
            records = add_counts(evaluate_method(fn, cases[config], name=args.method, verbose=False), counts)
            r = summary_rows(records, {args.method: settings})[0]
            results.append(r)
            print(f"{config:12s} {args.method} {settings}: PSNR {r['psnr']:.2f} SSIM {r['ssim']:.4f} "
                  f"({r['seconds_per_slice']:.0f} s/slice, n={r['n']}; each "
                  + " ".join(f"{v:.2f}" for v in r["psnr_each"]) + ")", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def benchmark(args) -> None:
    from tomo.priors import load_prior
    slices = load_dev_slices(args.data)
    if args.slices:
        slices = slices[: args.slices]
    prior = load_prior(args.prior) if {"dds", "dps"} & set(args.methods) else None
    settings = {"dds": dict(steps=args.dds_steps, cg_iterations=args.cg_iterations, eta=args.eta,
                            weighted=args.weighted, model_error=args.model_error, bf16=args.bf16,
                            samples=args.samples, spacing=args.spacing),
                "dps": dict(steps=args.dps_steps, zeta=args.zeta if args.zeta is not None else 1000.0 / args.dps_steps,
                            weighted=args.weighted,
                            model_error=args.model_error, bf16=args.bf16)}
    settings["dds"].update(init=args.init, start=args.start if args.init != "none" else 1.0)
    records = []
    for config in args.config:
        cases = build_cases(slices, config, args.seed)
        for m in args.methods:
            counts = []
            if m in ("dds", "dps"):
                chosen = cases[: args.dps_slices] if m == "dps" and args.dps_slices else cases
                fn = diffusion_method(m, prior, counts, progress=args.progress, **settings[m])
            else:
                chosen, fn = cases, registry_method(m, cases)
            records += add_counts(evaluate_method(fn, chosen, name=m), counts)
    runs = summary_rows(records, settings)
    meta = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "data": str(args.data),
            "slices": [s[0] for s in slices], "prior": str(args.prior or "data/prior (shipped)"),
            "prior_training": getattr(prior, "config", {}).get("training") if prior is not None else None,
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "runs": runs, "records": records}, indent=1))
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
             f"Generated by `python scripts/{meta['command'].replace(' + ', '` + `python scripts/')}` on "
             f"{meta['date']} ({meta['machine']}).",
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
        init = r["settings"].get("init", "")
        label = r["method"] + (f" (init={init})" if r["method"] == "dds" and init else "")
        if (r["settings"].get("samples") or 1) > 1:
            label += f" mean of {r['settings']['samples']}"
        lines.append(f"- {r['config']} {label}: " + ", ".join(f"{v:.2f}" for v in r["psnr_each"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    parser.set_defaults(mode="benchmark")
    for p in (parser, ):
        p.add_argument("--data", type=Path, default=SHARED, help="shared data folder (its dev/dicom is used)")
        p.add_argument("--seed", type=int, default=0, help="noise seed of slice 0 (slice k: seed + k)")
        p.add_argument("--weighted", type=lambda v: v.lower() == "true", default=True,
                       help="transmission-Poisson data weights (true/false, default true)")
        p.add_argument("--model-error", type=float, default=DEFAULT_MODEL_ERROR,
                       help=f"std floor of the Poisson weights ({DEFAULT_MODEL_ERROR}, as tomo reconstruct)")
        p.add_argument("--init", default=DDS_DEFAULTS["init"],
                       help=f"dds warm start from this registered method, or none ({DDS_DEFAULTS['init']})")
        p.add_argument("--start", type=float, default=DDS_DEFAULTS["start"],
                       help=f"dds warm start: fraction of the schedule ({DDS_DEFAULTS['start']})")
        p.add_argument("--samples", type=int, default=1, help="dds: posterior mean of this many samples")
        p.add_argument("--spacing", default=DDS_DEFAULTS["spacing"], choices=["trailing", "leading", "linspace"],
                       help="dds timestep spacing")
        p.add_argument("--config", nargs="+", default=list(CONFIG_NAMES), choices=CONFIG_NAMES)
        p.add_argument("--methods", nargs="+", default=["fbp", "tv", "dds", "dps"],
                       choices=["fbp", "tv", "dds", "dps"])
        p.add_argument("--slices", type=int, default=None, help="first N slices only")
        p.add_argument("--prior", default=None, help="prior checkpoint (default: shipped data/prior)")
        p.add_argument("--dds-steps", type=int, default=DDS_DEFAULTS["steps"])
        p.add_argument("--cg-iterations", type=int, default=DDS_DEFAULTS["cg_iterations"])
        p.add_argument("--eta", type=float, default=DDS_DEFAULTS["eta"])
        p.add_argument("--dps-steps", type=int, default=1000)
        p.add_argument("--dps-slices", type=int, default=None, help="run DPS on the first N slices only")
        p.add_argument("--zeta", type=float, default=None, help="dps step size (default 1000 / --dps-steps)")
        p.add_argument("--report", type=Path, default=REPO / "docs" / "benchmarks_diffusion.md")
        p.add_argument("--json", type=Path, default=None)
        p.add_argument("--progress", action="store_true")
        p.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the prior network")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t = sub.add_parser("tune", help="hyper-parameter grid on train/ slices")
    t.add_argument("--method", default="dds", help="dds, dps or a registered classical method (fbp, tv, ...)")
    t.add_argument("--config", nargs="+", default=["parallel-30"], choices=CONFIG_NAMES)
    t.add_argument("--grid", nargs="*", help="key=v1,v2 ... (solver keyword arguments)")
    t.add_argument("--fixed", nargs="*", help="key=value fixed solver keyword arguments")
    t.add_argument("--slices", type=int, default=None, help="first N tuning slices")
    t.add_argument("--prior", default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", type=Path, default=None)
    t.add_argument("--threads", type=int, default=None)
    r = sub.add_parser("report", help="merge the --json files of several benchmark runs into the report")
    r.add_argument("runs", nargs="+", type=Path, help="JSON files written by benchmark runs (--json)")
    r.add_argument("--report", type=Path, default=REPO / "docs" / "benchmarks_diffusion.md")
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    {"tune": tune, "report": merge_reports}.get(args.mode, benchmark)(args)


def merge_reports(args) -> None:
    """One CT section from runs done in parallel processes (e.g. DPS apart from FBP/TV/DDS)."""
    loaded = [json.loads(Path(f).read_text()) for f in args.runs]
    order = {c: i for i, c in enumerate(CONFIG_NAMES)}
    runs = sorted((r for d in loaded for r in d["runs"]), key=lambda r: order.get(r["config"], 99))
    meta = dict(loaded[0]["meta"])
    meta["command"] = " + ".join(d["meta"]["command"] for d in loaded)
    meta["date"] = " / ".join(sorted({d["meta"]["date"] for d in loaded}))
    meta["slices"] = max((d["meta"]["slices"] for d in loaded), key=len)
    write_section(args.report, "ct", report_markdown(meta, runs))
    print(f"wrote the CT section of {args.report} from {len(loaded)} runs")


if __name__ == "__main__":
    main()
