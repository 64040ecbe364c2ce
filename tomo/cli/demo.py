"""``tomo demo``: sparse-view CT end to end on a real slice, classical against diffusion methods.

With no arguments it uses the real CT slice that ships with pydicom (``CT_small.dcm``: 128 x 128,
0.66 mm pixels, a crop around the spine), simulates a sparse-view scan with the evaluation
protocol (projection on the fine grid, transmission-Poisson noise, reconstruction on a grid half as
fine), reconstructs it with FBP, TV and the diffusion solvers (DDS, DPS) using the shipped prior,
prints a PSNR/SSIM/time table, and writes to the output folder:

- ``comparison.png``: reference, every reconstruction and its error map (window [-1000, 1000] HU);
- ``results.csv``: the table;
- ``scan.npz``: the simulated sinogram (the exchange format, with ``hu_reference``);
- ``dicom/``: the DDS reconstruction as a derived DICOM series of the source study.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from tomo.cli import CommandError
from tomo.cli.progress import library_bars

DEFAULT_METHODS = ("fbp", "tv", "dds", "dps")
#: DPS steps in the demo: None = the default of ``tomo reconstruct --method dps`` (its Jacobian-free
#: successor, docs/solvers.md). The lecture note's DPS over the full schedule (``--method dps
#: --guidance dps --steps 1000``) took 216 of the demo's 221 s and scored below TV (docs/benchmarks.md).
DEMO_DPS_STEPS: int | None = None


#: one-line summary shown by ``tomo --help``
HELP = "simulate a sparse-view scan of a real CT slice and compare FBP, TV, DDS and DPS"


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help=HELP, description=__doc__, formatter_class=_formatter())
    p.add_argument(
        "--source",
        default=None,
        help="DICOM file/series or OpenKBP-style .npz volume (default: pydicom's CT_small.dcm)",
    )
    p.add_argument("--slice", type=int, default=None, help="slice index of a multi-slice source (default: middle)")
    p.add_argument(
        "--config",
        default="parallel-30",
        help="acquisition: parallel-30, parallel-8 or fanbeam-60 (evaluation.md; default parallel-30)",
    )
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated methods to compare (default: fbp,tv,dds,dps)",
    )
    p.add_argument(
        "--dps-steps",
        type=int,
        default=DEMO_DPS_STEPS,
        help="DPS sampler steps (default: the default of tomo reconstruct --method dps)",
    )
    from tomo.priors.prior import available_priors

    p.add_argument(
        "--prior",
        default=None,
        help=f"diffusion prior: a shipped name ({', '.join(available_priors())}) or a checkpoint folder "
        "(default: default)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the scan noise and the samplers (default 0)")
    p.add_argument("--out", default="tomo-demo", help="output folder (default: ./tomo-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace the output folder's demo files")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no information lines")
    p.set_defaults(func=run)


def _formatter():
    import argparse

    return argparse.RawDescriptionHelpFormatter


def _load_source(source: str | None, index: int | None):
    """HU slice [H, W], pixel spacing [mm], the CTVolume (for DICOM output) and a label."""
    from tomo.io.volume import read_volume

    if source is None:
        from pydicom.data import get_testdata_file

        source = get_testdata_file("CT_small.dcm")
        if source is None:
            raise CommandError("pydicom's test file CT_small.dcm is missing; pass --source")
    volume = read_volume(source)
    k = volume.hu.shape[0] // 2 if index is None else index
    if not 0 <= k < volume.hu.shape[0]:
        raise CommandError(f"--slice {index} out of range: the source has {volume.hu.shape[0]} slices")
    row, col = volume.pixel_spacing_mm
    if abs(row - col) > 1e-3 * max(row, col):
        raise CommandError(f"the demo needs square pixels, the source has {row} x {col} mm")
    return volume.hu[k], float(row), volume, f"{Path(source).name} slice {k}"


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CommandError(f"output folder {out} is not empty; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)


def _method_options(name: str, args) -> dict:
    options = {}
    if name in ("dds", "dps"):
        options["seed"] = args.seed
        if args.prior is not None:
            options["prior"] = args.prior
    if name == "dps" and args.dps_steps is not None:
        options["steps"] = args.dps_steps
    return options


def _reconstruct_all(scan, methods, args):
    from operators.units import mu_to_hu
    from tomo.evaluation.scores import psnr, ssim
    from tomo.methods.registry import reconstruct

    rows, images = [], {}
    for name in methods:
        t0 = time.perf_counter()
        mu = reconstruct(
            scan.sinogram, scan.geometry, name, i0=scan.i0, progress=library_bars(args), **_method_options(name, args)
        )
        seconds = time.perf_counter() - t0
        hu = mu_to_hu(mu.detach().cpu().numpy())
        images[name] = hu
        rows.append(
            {
                "method": name,
                "psnr_db": float(psnr(hu, scan.hu_reference)),
                "ssim": float(ssim(hu, scan.hu_reference)),
                "seconds": seconds,
            }
        )
    return rows, images


def _print_table(rows, title: str) -> None:
    print(title)
    print(f"{'method':<8} {'PSNR [dB]':>10} {'SSIM':>7} {'time [s]':>9}")
    for r in rows:
        print(f"{r['method']:<8} {r['psnr_db']:>10.2f} {r['ssim']:>7.3f} {r['seconds']:>9.1f}")


def _write_csv(rows, path: Path) -> None:
    from tomo.io.atomic import atomic_file

    with atomic_file(path, "w", overwrite=True, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _write_figure(reference, images, rows, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(images)
    fig, axes = plt.subplots(2, len(names) + 1, figsize=(3 * (len(names) + 1), 6.4), squeeze=False)
    axes[0, 0].imshow(reference, cmap="gray", vmin=-1000, vmax=1000)
    axes[0, 0].set_title("reference")
    axes[1, 0].axis("off")
    axes[1, 0].text(0.0, 0.5, "error maps\n(recon - reference)\n[-300, 300] HU", fontsize=9, va="center")
    by_name = {r["method"]: r for r in rows}
    for j, name in enumerate(names, start=1):
        r = by_name[name]
        axes[0, j].imshow(images[name], cmap="gray", vmin=-1000, vmax=1000)
        axes[0, j].set_title(f"{name.upper()}\n{r['psnr_db']:.2f} dB, SSIM {r['ssim']:.3f}", fontsize=9)
        axes[1, j].imshow(images[name] - reference, cmap="RdBu_r", vmin=-300, vmax=300)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from tomo.io.atomic import atomic_path

    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _write_dicom(hu, scan, volume, method: str, out_dir: Path, overwrite: bool) -> list[Path]:
    from tomo.io.dicom_write import write_series

    grid = scan.geometry.image_shape
    spacing = scan.geometry.pixel_spacing_mm  # the reconstruction grid's pixel (FOV / grid)
    derivation = (
        f"tomo demo: {method.upper()} reconstruction of a simulated {scan.geometry.num_views}-view "
        f"{type(scan.geometry).__name__} scan, I0={scan.i0:g} photons/bin, {grid[0]}x{grid[1]} grid"
    )
    reference = volume if volume.header is not None else None
    return write_series(
        hu[None],
        out_dir,
        reference,
        pixel_spacing_mm=(spacing, spacing),
        description=f"tomo {method.upper()} demo",
        derivation=derivation,
        overwrite=overwrite,
    )


def run(args) -> int:
    from tomo.evaluation.simulation import simulate_slice
    from tomo.io.sinogram import save_sinogram

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise CommandError("--methods is empty")
    from tomo.methods.registry import get_method

    for name in methods:
        get_method(name)  # unknown names fail here, before any work or output
    if args.dps_steps is not None and args.dps_steps < 1:
        raise CommandError(f"--dps-steps must be >= 1, got {args.dps_steps}")
    out = Path(args.out)
    _prepare_out(out, args.overwrite)
    from tomo.io.outputs import OutputPlan

    plan = OutputPlan([args.source, args.prior], overwrite=args.overwrite)
    plan.workdir(out, "--out folder")
    for name in ("scan.npz", "results.csv", "comparison.png"):
        plan.file(out / name, name)
    plan.folder(out / "dicom", "DICOM series")
    plan.claim()  # locked and checked against the inputs before any work (tomo.io.outputs)
    hu, spacing, volume, label = _load_source(args.source, args.slice)
    t0 = time.perf_counter()
    scan = simulate_slice(hu, spacing, args.config, seed=args.seed, progress=library_bars(args))
    save_sinogram(out / "scan.npz", scan, overwrite=args.overwrite)
    title = (
        f"{label}: {args.config} ({scan.geometry.num_views} views, I0={scan.i0:g}), "
        f"{scan.geometry.image_shape[0]}x{scan.geometry.image_shape[1]} grid"
    )
    rows, images = _reconstruct_all(scan, methods, args)
    _print_table(rows, title)
    _write_csv(rows, out / "results.csv")
    _write_figure(scan.hu_reference, images, rows, out / "comparison.png", title)
    best = "dds" if "dds" in images else max(rows, key=lambda r: r["psnr_db"])["method"]
    files = _write_dicom(images[best], scan, volume, best, out / "dicom", args.overwrite)
    print(
        f"wrote {out / 'comparison.png'}, {out / 'results.csv'}, {out / 'scan.npz'} and "
        f"{len(files)} DICOM file(s) ({best.upper()}) in {out / 'dicom'}; total {time.perf_counter() - t0:.0f} s"
    )
    return 0
