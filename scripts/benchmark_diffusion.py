#!/usr/bin/env python
"""Sparse-view / low-dose CT with the diffusion solvers against FBP and TV (evaluation.md protocol).

Two modes:

* ``benchmark`` (default): the standard configurations (parallel-30, parallel-8, fanbeam-60) on
  the dev/dicom slices (:mod:`tomo.evaluation`, as ``scripts/benchmark_quality.py``): FBP, TV
  (the project's tuned default), DDS and DPS of the method registry with the shipped prior;
  PSNR/SSIM on the [-1000, 1000] HU window, wall time per slice, network evaluations; writes the
  CT section of docs/benchmarks_diffusion.md and JSON.
* ``tune``: a grid over a registry method's options on *train* slices (never dev/) -- prints and
  saves a table; the chosen values become the defaults in ``tomo/methods/diffusion.py``.

DPS is slow on a CPU (1000 network forward+backward passes per slice): ``--dps-steps`` and
``--dps-slices`` restrict it, and the report states exactly what ran.

Examples::

    python scripts/benchmark_diffusion.py --slices 2 --dds-steps 10 --dps-steps 10 --report /tmp/b.md
    python scripts/benchmark_diffusion.py tune --config parallel-30 --grid cg_iterations=3,5,10 eta=0.5,0.85
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from tomo.evaluation.cases import (
    DEFAULT_DATA_ROOT,
    DIFFUSION_TUNE_SLICES,
    build_cases,
    build_operators,
    load_dev_slices,
    read_slices,
)
from tomo.evaluation.machine import machine_info
from tomo.evaluation.report import Summary, settings_table, summarise, write_json, write_section
from tomo.evaluation.runner import evaluate_registry
from tomo.evaluation.tuning import parse_grid, settings_grid
from tomo.methods.classical import DEFAULT_MODEL_ERROR
from tomo.methods.diffusion import DDS_DEFAULTS

REPO = Path(__file__).resolve().parents[1]

#: the settings `tomo reconstruct --method dds` uses, so that tuning rows without explicit options
#: measure what users get (the seed is the slice index)
DDS_USER_SETTINGS = {**{k: v for k, v in DDS_DEFAULTS.items() if k != "seed"}, "model_error": DEFAULT_MODEL_ERROR}

CONFIG_NAMES = ("parallel-30", "parallel-8", "fanbeam-60")
DIFFUSION = ("dds", "dps")


def tune(args) -> None:
    slices = read_slices(args.data, DIFFUSION_TUNE_SLICES[: args.slices or None])
    base = (
        dict(DDS_USER_SETTINGS)
        if args.method == "dds"
        else ({"model_error": DEFAULT_MODEL_ERROR} if args.method == "dps" else {})
    )
    fixed = {**base, **{k: v[0] for k, v in parse_grid(args.fixed).items()}}
    cases = {c: build_cases(slices, c, args.seed) for c in args.config}
    results = []
    for settings in settings_grid(parse_grid(args.grid), fixed):
        for config in args.config:
            records = evaluate_registry(args.method, cases[config], settings, prior=args.prior, verbose=False)
            r = summarise(records)[0]
            results.append(r.as_dict())
            print(
                f"{config:12s} {args.method} {settings}: PSNR {r.psnr:.2f} SSIM {r.ssim:.4f} "
                f"({r.seconds:.0f} s/slice, n={r.n}; each " + " ".join(f"{v:.2f}" for v in r.psnr_each) + ")",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def benchmark(args) -> None:
    slices = load_dev_slices(args.data, args.slices)
    settings = {
        "dds": dict(
            steps=args.dds_steps,
            cg_iterations=args.cg_iterations,
            eta=args.eta,
            weighted=args.weighted,
            model_error=args.model_error,
            bf16=args.bf16,
            samples=args.samples,
            spacing=args.spacing,
            init=args.init,
            start=args.start if args.init != "none" else 1.0,
        ),
        "dps": dict(
            steps=args.dps_steps,
            zeta=args.zeta if args.zeta is not None else 1000.0 / args.dps_steps,
            weighted=args.weighted,
            model_error=args.model_error,
            bf16=args.bf16,
        ),
    }
    records = []
    for config in args.config:
        cases = build_cases(slices, config, args.seed, progress=args.progress)
        build_operators(cases)  # the one-off system matrix stays out of the timings
        for m in args.methods:
            chosen = cases[: args.dps_slices] if m == "dps" and args.dps_slices else cases
            records += evaluate_registry(m, chosen, settings.get(m, {}), prior=args.prior)
    machine = machine_info()
    meta = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "data": str(args.data),
        "slices": [s.name for s in slices],
        "prior": str(args.prior or "data/prior (shipped)"),
        "prior_training": _prior_training(args.prior) if set(DIFFUSION) & set(args.methods) else None,
        "machine": machine.describe(),
        "machine_info": machine.as_dict(),
        "date": machine.date,
    }
    runs = summarise(records)
    if args.json:
        write_json(args.json, meta, runs, records)
    if args.report:
        write_section(args.report, "ct", report_markdown(meta, runs))
        print(f"wrote the CT section of {args.report}")


def _prior_training(path):
    from tomo.priors import load_prior

    return getattr(load_prior(path), "config", {}).get("training")


def report_markdown(meta: dict, runs: list[Summary]) -> str:
    lines = [
        "## CT: the evaluation protocol",
        "",
        f"Generated by `python scripts/{meta['command'].replace(' + ', '` + `python scripts/')}` on "
        f"{meta['date']} ({meta['machine']}).",
        f"Data: `{meta['data']}`, {len(meta['slices'])} slices; prior: `{meta['prior']}`.",
        "",
        "Protocol: `/work/shared/docs/evaluation.md` (fine-grid projection, transmission Poisson "
        "noise, 256 x 256 reconstruction, PSNR/SSIM on the [-1000, 1000] HU window, no per-image "
        "normalisation). Mean over the slices each method ran on (`n`).",
        "",
    ]
    lines += settings_table(runs) + ["", "Per-slice PSNR:", ""]
    for r in runs:
        init = r.settings.get("init", "")
        label = r.method + (f" (init={init})" if r.method == "dds" and init else "")
        if (r.settings.get("samples") or 1) > 1:
            label += f" mean of {r.settings['samples']}"
        lines.append(f"- {r.config} {label}: " + ", ".join(f"{v:.2f}" for v in r.psnr_each))
    return "\n".join(lines) + "\n"


def merge_reports(args) -> None:
    """One CT section from runs done in parallel processes (e.g. DPS apart from FBP/TV/DDS)."""
    loaded = [json.loads(Path(f).read_text()) for f in args.runs]
    order = {c: i for i, c in enumerate(CONFIG_NAMES)}
    runs = sorted((Summary.from_dict(r) for d in loaded for r in d["runs"]), key=lambda r: order.get(r.config, 99))
    meta = dict(loaded[0]["meta"])
    meta["command"] = " + ".join(d["meta"]["command"] for d in loaded)
    meta["date"] = " / ".join(sorted({d["meta"]["date"] for d in loaded}))
    meta["slices"] = max((d["meta"]["slices"] for d in loaded), key=len)
    write_section(args.report, "ct", report_markdown(meta, runs))
    print(f"wrote the CT section of {args.report} from {len(loaded)} runs")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    parser.set_defaults(mode="benchmark")
    p = parser
    p.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT, help="shared data folder (its dev/dicom is used)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of slice 0 (slice k: seed + k)")
    p.add_argument(
        "--weighted",
        type=lambda v: v.lower() == "true",
        default=True,
        help="transmission-Poisson data weights (true/false, default true; the registry's dds/dps support only true)",
    )
    p.add_argument(
        "--model-error",
        type=float,
        default=DEFAULT_MODEL_ERROR,
        help=f"std floor of the Poisson weights ({DEFAULT_MODEL_ERROR}, as tomo reconstruct; "
        "the registry's dds/dps support only this value)",
    )
    p.add_argument(
        "--init",
        default=DDS_DEFAULTS["init"],
        help=f"dds warm start from this registered method, or none ({DDS_DEFAULTS['init']})",
    )
    p.add_argument(
        "--start",
        type=float,
        default=None,
        help="dds warm start: fraction of the schedule (default: the registry's, per configuration: "
        "tomo.methods.diffusion.dds_start_default)",
    )
    p.add_argument("--samples", type=int, default=1, help="dds: posterior mean of this many samples")
    p.add_argument(
        "--spacing",
        default=DDS_DEFAULTS["spacing"],
        choices=["trailing", "leading", "linspace"],
        help="dds timestep spacing",
    )
    p.add_argument("--config", nargs="+", default=list(CONFIG_NAMES), choices=CONFIG_NAMES)
    p.add_argument("--methods", nargs="+", default=["fbp", "tv", "dds", "dps"], choices=["fbp", "tv", "dds", "dps"])
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
    t.add_argument("--grid", nargs="*", help="key=v1,v2 ... (the method's keyword options)")
    t.add_argument("--fixed", nargs="*", help="key=value fixed keyword options")
    t.add_argument("--slices", type=int, default=None, help="first N tuning slices")
    t.add_argument("--prior", default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", type=Path, default=None)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT, help="shared data folder (its train/ is used)")
    r = sub.add_parser("report", help="merge the --json files of several benchmark runs into the report")
    r.add_argument("runs", nargs="+", type=Path, help="JSON files written by benchmark runs (--json)")
    r.add_argument("--report", type=Path, default=REPO / "docs" / "benchmarks_diffusion.md")
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    {"tune": tune, "report": merge_reports}.get(args.mode, benchmark)(args)


if __name__ == "__main__":
    main()
