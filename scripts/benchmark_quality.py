#!/usr/bin/env python
"""Reconstruction quality on dev/ following /work/shared/docs/evaluation.md.

Every dev/dicom slice (18: 3 patients x axial/coronal/sagittal x 2 studies) is simulated with the
protocol (:mod:`tomo.evaluation.simulation`: fine-grid projection, Poisson noise, anti-aliased 256 x 256
ground truth) for each standard configuration, reconstructed by each method, and scored (PSNR,
SSIM on the [-1000, 1000] HU window, no per-image normalisation). Per-slice PSNR/SSIM/time is
printed; the summary table goes to a Markdown file and everything to JSON.

Reusable by other method families (e.g. the diffusion solvers):

* ``--methods fbp,tv,dds`` runs any method of the registry :func:`tomo.methods.default_registry`
  (registered plugins included), with the registry's defaults;
* :func:`evaluate_method` scores an arbitrary callable
  ``method(sinogram [views, det] float32 tensor, geometry, i0) -> mu [H, W] tensor (1/mm)``
  on the same cases: ``cases = build_cases(load_dev_slices(root), "parallel-30")`` then
  ``evaluate_method(my_fn, cases, name="mine")``.

Reproduce the committed numbers:

    python scripts/benchmark_quality.py --json /tmp/bq.json --markdown docs/benchmarks_quality.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tomo.io.volume import read_volume  # noqa: E402
from tomo.io.sinogram import SinogramFile  # noqa: E402
from operators.units import mu_to_hu  # noqa: E402
from tomo.evaluation.scores import psnr, ssim  # noqa: E402
from tomo.methods.registry import ReconProblem, available_methods, reconstruct  # noqa: E402
from tomo.evaluation.simulation import CONFIGS, simulate_volume  # noqa: E402

#: the date the project reports under (see the task brief)
REPORT_DATE = "2026-11-26"

#: ``method(sinogram [V, D], geometry, i0) -> mu [H, W]`` (1/mm)
MethodFn = Callable[[torch.Tensor, object, "float | None"], torch.Tensor]


@dataclass
class Case:
    """One simulated slice: name, configuration, the sinogram file content, and a shared problem."""

    name: str
    config: str
    data: SinogramFile
    problem: ReconProblem


def load_dev_slices(data_root: Path) -> list[tuple[str, np.ndarray, tuple]]:
    """Every dev/dicom file as ``(name, hu [H, W], pixel spacing)``, sorted by path."""
    root = data_root / "dev" / "dicom"
    files = sorted(root.rglob("*.dcm"))
    if not files:
        raise SystemExit(f"no DICOM files under {root}")
    out = []
    for f in files:
        vol = read_volume(f)
        out.append((str(f.relative_to(root)), vol.hu[0], vol.pixel_spacing_mm))
    return out


def build_cases(slices, config: str, seed: int = 0, device: str = "cpu") -> list[Case]:
    """Simulate each slice (noise seed ``seed + index``) for one configuration."""
    cases = []
    for k, (name, hu, spacing) in enumerate(slices):
        sf = simulate_volume(hu, spacing, config, seed=seed + k, progress=False)
        cases.append(Case(name, config, sf, ReconProblem(sf.geometry, torch.device(device), sf.i0, False)))
    return cases


def evaluate_method(method: MethodFn, cases: list[Case], *, name: str, verbose: bool = True) -> list[dict]:
    """Score ``method`` on ``cases``; returns one record per slice (psnr, ssim, seconds)."""
    records = []
    for case in cases:
        sino = torch.from_numpy(case.data.sinogram).to(case.problem.device)
        t0 = time.perf_counter()
        mu = method(sino, case.data.geometry, case.data.i0)
        if isinstance(mu, torch.Tensor) and mu.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        mu = mu.detach().cpu().numpy() if isinstance(mu, torch.Tensor) else np.asarray(mu)
        hu = mu_to_hu(mu.astype(np.float32))
        ref = case.data.hu_reference
        rec = dict(config=case.config, method=name, slice=case.name, psnr=float(psnr(hu, ref)),
                   ssim=float(ssim(hu, ref)), seconds=seconds)
        records.append(rec)
        if verbose:
            print(f"  {case.config:12s} {name:6s} {case.name:55s} PSNR {rec['psnr']:6.2f}  SSIM {rec['ssim']:.4f}"
                  f"  {seconds:7.2f} s", flush=True)
    return records


def registry_method(name: str, cases: list[Case], **options) -> MethodFn:
    """A callable for a registered method that reuses each case's projector (built beforehand)."""
    problems = {id(c.data.geometry): c.problem for c in cases}

    def run(sino, geometry, i0):
        problem = problems[id(geometry)]
        return reconstruct(sino, geometry, name, i0=i0, device=problem.device, progress=False,
                           problem=problem, **options)
    return run


def summarise(records: list[dict]) -> list[dict]:
    rows = {}
    for r in records:
        rows.setdefault((r["config"], r["method"]), []).append(r)
    out = []
    for (config, method), rs in rows.items():
        p, s, t = (np.array([r[k] for r in rs]) for k in ("psnr", "ssim", "seconds"))
        out.append(dict(config=config, method=method, slices=len(rs), psnr=float(p.mean()), psnr_std=float(p.std()),
                        ssim=float(s.mean()), ssim_std=float(s.std()), seconds=float(t.mean())))
    return out


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (StopIteration, OSError):
        model = platform.processor() or "unknown CPU"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({model}), {gpu}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def write_markdown(path: Path, summary: list[dict], records: list[dict], meta: dict) -> None:
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
        "| configuration | method | slices | PSNR [dB] (std) | SSIM (std) | time / slice [s] |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(f"| {r['config']} | {r['method']} | {r['slices']} | {r['psnr']:.2f} ({r['psnr_std']:.2f}) | "
                     f"{r['ssim']:.4f} ({r['ssim_std']:.4f}) | {r['seconds']:.2f} |")
    methods = list(dict.fromkeys(r["method"] for r in records))
    for config in dict.fromkeys(r["config"] for r in records):
        lines += ["", f"## Per slice: {config} (PSNR dB / SSIM)", "",
                  "| slice | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        by_slice = {}
        for r in records:
            if r["config"] == config:
                by_slice.setdefault(r["slice"], {})[r["method"]] = r
        for name, rs in by_slice.items():
            cells = [f"{rs[m]['psnr']:.2f} / {rs[m]['ssim']:.3f}" if m in rs else "-" for m in methods]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated standard configurations")
    ap.add_argument("--methods", default="fbp,sirt,cgls,tv", help="comma-separated registered methods")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N slices (0 = all; reports must use all)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed of slice 0 (slice k uses seed + k)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on the busy 2-core machine)")
    ap.add_argument("--json", type=Path, help="write per-slice records and the summary here")
    ap.add_argument("--markdown", type=Path, help="write the summary table here (e.g. docs/benchmarks_quality.md)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    registry = available_methods()
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in registry]
    if unknown:
        ap.error(f"unknown methods {unknown}; registered: {sorted(registry)}")
    load_start = " ".join(f"{v:.1f}" for v in os.getloadavg())
    slices = load_dev_slices(args.data)
    if args.limit:
        slices = slices[:args.limit]
    print(f"{len(slices)} dev slices; {machine()}", flush=True)
    records, matrix_seconds = [], []
    for config in args.configs.split(","):
        print(f"configuration {config}: {CONFIGS[config].describe()}", flush=True)
        cases = build_cases(slices, config, args.seed, args.device)
        for case in cases:  # build (and cache) each geometry's system matrix outside the timings
            t0 = time.perf_counter()
            case.problem.operator(torch.zeros(case.data.geometry.image_shape, device=case.problem.device))
            matrix_seconds.append(time.perf_counter() - t0)
        for m in methods:
            records += evaluate_method(registry_method(m, cases), cases, name=m)
        from operators import clear_matrix_cache
        clear_matrix_cache()
    summary = summarise(records)
    print(f"\n{'configuration':14s} {'method':7s} slices  PSNR (std)      SSIM (std)        s/slice")
    for r in summary:
        print(f"{r['config']:14s} {r['method']:7s} {r['slices']:4d}  {r['psnr']:6.2f} ({r['psnr_std']:.2f})  "
              f"{r['ssim']:.4f} ({r['ssim_std']:.4f})  {r['seconds']:7.2f}")
    from tomo.methods import classical as recon_methods
    meta = dict(machine=machine(), load_start=load_start, load_end=" ".join(f"{v:.1f}" for v in os.getloadavg()),
                slices=len(slices), seed=args.seed, matrix_seconds=float(np.mean(matrix_seconds)),
                command="python scripts/benchmark_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                defaults=recon_methods.describe_defaults())
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "summary": summary, "records": records}, indent=1))
    if args.markdown:
        write_markdown(args.markdown, summary, records, meta)
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
