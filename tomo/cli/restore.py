"""``tomo restore IMAGE --task ...``: restore a CT image with the diffusion prior (degrading it first, or as measured).

IMAGE is a DICOM file or series folder (a slice of it), an ``.npz`` HU volume (``hu``,
``spacing_mm``) or a PNG (grey levels read as the [-1000, 1000] HU display window).

By default the slice is a clean reference: it is resized so that its longer side has ``--size``
pixels (default 256, near the prior's 1.5 mm pixels for a 512-pixel CT slice), degraded with the
task's operator plus white Gaussian noise of ``--noise-hu`` HU, restored with DDS (default) or
DPS and scored (PSNR/SSIM against the reference are printed).

With ``--measured`` IMAGE is the measurement itself (already blurred, low-resolution or with
missing pixels) and is restored as it is, with the operator given by the task's options: deblur
``--sigma-px`` (blur of IMAGE, in its pixels), superres ``--factor`` (IMAGE is the low-resolution
image; the result has ``factor`` times its size), inpaint/outpaint ``--mask FILE`` (PNG or
``.npy`` of IMAGE's size, non-zero = missing pixel) or else ``--box`` / ``--keep``. No noise is
added and there is no reference and no score. ``--size`` (default: keep) resizes the result
grid; a deblur ``--sigma-px`` is scaled with it.

Outputs in ``--output-dir``: PNGs of the input (degraded or measured; missing pixels as air),
the restored result and the reference (not with ``--measured``) in the [-1000, 1000] HU window, a
side-by-side figure ``STEM_TASK_figure.png`` of them (with the scores), and an ``.npz`` of the HU
images. With ``--samples N`` the result is the mean of N posterior samples and a further PNG
shows their pixel-wise standard deviation (0-200 HU, black to white).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from tomo.cli import CommandError
from tomo.cli.progress import library_bars

#: start of a TV warm start given by --init tv for a task without its own (inpaint: 0.1, tuned on
#: train/); the CT default of `tomo reconstruct`, not tuned for the image tasks
DEFAULT_WARM_START = 0.2

#: one-line summary shown by ``tomo --help``
HELP = "restore a CT image (deblur, super-resolve, in/outpaint) with the diffusion prior"


def register(subparsers) -> None:
    from tomo.methods.image_tasks import SOLVERS, TASKS

    p = subparsers.add_parser(
        "restore",
        help=HELP,
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", type=Path, metavar="IMAGE", help="DICOM file/folder, .npz HU volume or PNG")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--method", default="dds", choices=SOLVERS, help="diffusion solver (default dds)")
    p.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=Path("restore-output"),
        help="folder for the PNGs and .npz (default ./restore-output)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    src = p.add_argument_group("input")
    src.add_argument("--slice", type=int, default=None, help="slice index of a volume (default: the middle one)")
    src.add_argument(
        "--size",
        type=int,
        default=None,
        help="resize so the longer side has this many pixels (0: keep; default 256, with --measured: keep; "
        "with --measured --task superres: the result's side)",
    )
    src.add_argument(
        "--measured",
        action="store_true",
        help="IMAGE is already degraded (blurred, low-resolution, with missing pixels): restore it as it "
        "is, with the operator of the task's options, no added noise and no reference",
    )
    task = p.add_argument_group("degradation")
    task.add_argument(
        "--noise-hu", type=float, default=None, help="Gaussian noise std added, HU (default 10; not with --measured)"
    )
    task.add_argument("--sigma-px", type=float, default=2.0, help="deblur: Gaussian blur std, pixels (default 2)")
    task.add_argument("--factor", type=int, default=4, choices=(2, 4), help="superres: factor (default 4)")
    task.add_argument(
        "--box",
        type=int,
        nargs=4,
        metavar=("TOP", "LEFT", "HEIGHT", "WIDTH"),
        help="inpaint: missing box in pixels (default: centred, a quarter of each side)",
    )
    task.add_argument(
        "--keep", type=float, default=0.5, help="outpaint: kept centre fraction of each side (default 0.5)"
    )
    task.add_argument(
        "--mask",
        type=Path,
        metavar="FILE",
        help="inpaint/outpaint with --measured: the missing pixels, a PNG or .npy of IMAGE's size (non-zero = missing)",
    )
    from tomo.priors.prior import available_priors

    sol = p.add_argument_group("solver")
    sol.add_argument(
        "--prior",
        default=None,
        help=f"a shipped prior by name ({', '.join(available_priors())}) or a checkpoint folder (default: default)",
    )
    sol.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default dds 50, 25 for inpaint; dps 1000)"
    )
    sol.add_argument("--seed", type=int, default=0, help="noise and sampling seed (default 0)")
    sol.add_argument("--zeta", type=float, default=None, help="DPS step size (default 1000 / steps)")
    sol.add_argument(
        "--cg-iterations", type=int, default=None, help="DDS CG iterations per step (default: deblur 5, other tasks 1)"
    )
    sol.add_argument("--eta", type=float, default=None, help="DDS re-noising fraction (default 0.85)")
    sol.add_argument(
        "--denoise-hu",
        type=float,
        default=None,
        help="DDS: end with one more network evaluation that denoises the result as if it carried "
        "white noise of this many HU (default: deblur and superres 30, inpaint 10, outpaint 0; 0 = off)",
    )
    sol.add_argument(
        "--init",
        choices=("tv", "none"),
        default=None,
        help="warm start: 'tv' starts from the TV restoration noised to --start, 'none' from noise "
        "(default: tv for inpaint, none for the other tasks)",
    )
    sol.add_argument(
        "--start",
        type=float,
        default=None,
        help="with --init tv: the fraction of the schedule run from the TV image, in (0, 1) "
        "(default: inpaint 0.1, other tasks 0.2)",
    )
    sol.add_argument(
        "--samples",
        type=int,
        default=1,
        help="average this many posterior samples (default 1; also writes a spread map)",
    )
    sol.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast of the network (faster only on CPUs with native bf16: AVX512-BF16, AMX)",
    )
    sol.add_argument("--device", default="cpu", help="torch device (default cpu)")
    sol.add_argument("--quiet", action="store_true", help="no progress bar and no information lines")
    p.set_defaults(func=run)


# ----- input --------------------------------------------------------------------------------------
def read_hu_slice(path: Path, index: int | None) -> tuple[np.ndarray, str]:
    """One HU slice [H, W] (float32) and a description, from DICOM, ``.npz`` or PNG."""
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_file() and path.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as im:
            grey = np.asarray(im.convert("I;16") if im.mode in ("I;16", "I", "I;16B") else im.convert("L"))
        top = 65535.0 if grey.dtype == np.uint16 else 255.0
        hu = -1000.0 + 2000.0 * grey.astype(np.float32) / top
        return hu, f"PNG {grey.shape[1]}x{grey.shape[0]} read as the [-1000, 1000] HU window"
    from tomo.io.volume import read_volume

    volume = read_volume(path)
    n = volume.hu.shape[0]
    k = n // 2 if index is None else index
    if not -n <= k < n:
        raise CommandError(f"--slice {index} is out of range: the volume has {n} slices")
    return volume.hu[k].astype(np.float32), f"slice {k % n} of {n}, {volume.hu.shape[2]}x{volume.hu.shape[1]}"


def _multiple(args: argparse.Namespace) -> int:
    """What both sides of the restored image must divide by: the super-resolution factor."""
    return args.factor if args.task == "superres" else 1


def resize_for_task(hu: np.ndarray, size: int, multiple: int) -> np.ndarray:
    """Resize (anti-aliased) so the longer side is ``size`` and both sides divide by ``multiple``."""
    from tomo.methods.image_tasks import resize_to_task_grid

    if size < 0:
        raise CommandError(f"--size must be >= 0, got {size}")
    return resize_to_task_grid(hu, size, multiple)


# ----- output --------------------------------------------------------------------------------------
def save_png(hu: np.ndarray, path: Path) -> None:
    """8-bit PNG of a HU image in the [-1000, 1000] HU window."""
    from PIL import Image

    from tomo.evaluation.scores import window
    from tomo.io.atomic import atomic_path

    with atomic_path(path, overwrite=True) as tmp:  # run() refused existing outputs without --overwrite
        Image.fromarray(np.round(window(hu) * 255).astype(np.uint8)).save(tmp)


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The observed pixels (bool [H, W], True = observed) from a mask file whose non-zero pixels are
    missing; resized (nearest) to ``shape`` when the image was resized."""
    if not path.is_file():
        raise FileNotFoundError(f"no such mask file: {path}")
    if path.suffix.lower() == ".npy":
        missing = np.load(path, allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(path) as im:
            missing = np.asarray(im.convert("L"))
    if missing.ndim != 2:
        raise CommandError(f"--mask {path}: expected a 2-D image, got shape {missing.shape}")
    missing = missing != 0
    if missing.shape != shape:
        from skimage.transform import resize

        missing = resize(missing, shape, order=0, anti_aliasing=False) > 0.5
    if missing.all() or not missing.any():
        raise CommandError(f"--mask {path} marks {'every' if missing.all() else 'no'} pixel as missing")
    return ~missing


def measured_grid(hu: np.ndarray, args: argparse.Namespace) -> tuple[np.ndarray, float]:
    """A measured image resized for ``--size`` (the result's side; superres: / factor) and the scale."""
    if not args.size:
        return hu, 1.0
    if args.size < 0:
        raise CommandError(f"--size must be >= 0, got {args.size}")
    factor = args.factor if args.task == "superres" else 1
    if args.size % factor:
        raise CommandError(f"--size {args.size} with --measured superres must be a multiple of --factor {factor}")
    resized = resize_for_task(hu, args.size // factor, 1)
    return resized, max(resized.shape) / max(hu.shape)


def save_figure(path: Path, panels: list[tuple[np.ndarray, str]], title: str) -> None:
    """Side-by-side figure of HU images in the [-1000, 1000] HU window, one titled panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tomo.io.atomic import atomic_path

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), dpi=100, squeeze=False)
    for ax, (img, label) in zip(axes[0], panels):
        ax.imshow(img, cmap="gray", vmin=-1000, vmax=1000, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title}; window [-1000, 1000] HU", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:  # run() refused existing outputs without --overwrite
        fig.savefig(tmp, format="png")
    plt.close(fig)


def displayable_degraded(task: str, op, y_hu: np.ndarray) -> np.ndarray:
    """The measurement as an image: masked pixels shown as air (-1000 HU)."""
    if task in ("inpaint", "outpaint"):
        return np.where(op.mask.cpu().numpy(), y_hu, -1000.0).astype(np.float32)
    return y_hu


def warm_start_settings(args: argparse.Namespace, defaults: dict) -> dict:
    """``init`` and ``start`` from --init / --start over the task's defaults (refusing a --start
    without a warm start, or outside (0, 1))."""
    init = args.init or defaults.get("init") or "none"
    if init == "none":
        if args.start is not None:
            raise CommandError("--start needs a warm start: add --init tv")
        return {"init": None, "start": 1.0}
    start = args.start if args.start is not None else defaults.get("start", DEFAULT_WARM_START)
    if not 0.0 < start < 1.0:
        raise CommandError(f"--start must lie in (0, 1), got {start}")
    return {"init": "tv", "start": start}


def run(args: argparse.Namespace) -> int:
    import torch

    from tomo.evaluation.scores import psnr, ssim
    from tomo.methods.image_tasks import SOLVER_DEFAULTS, degrade, restore, task_operator
    from tomo.priors import load_prior

    if args.measured and args.noise_hu is not None:
        raise CommandError("--noise-hu adds noise to a clean image; with --measured the image is taken as it is")
    if args.mask is not None and (not args.measured or args.task not in ("inpaint", "outpaint")):
        raise CommandError("--mask gives the missing pixels of a --measured image, for --task inpaint or outpaint")
    noise_hu = 10.0 if args.noise_hu is None else args.noise_hu
    if noise_hu < 0:
        raise CommandError(f"--noise-hu must be >= 0, got {noise_hu}")
    if args.denoise_hu is not None and args.denoise_hu < 0:
        raise CommandError(f"--denoise-hu must be >= 0, got {args.denoise_hu}")
    stem = args.image.stem if args.image.is_file() else args.image.name
    out_dir: Path = args.output_dir
    kinds: tuple[str, ...] = ("measured" if args.measured else "degraded", "restored")
    kinds += (() if args.measured else ("reference",)) + (("spread",) if args.samples > 1 else ()) + ("figure",)
    names = {k: out_dir / f"{stem}_{args.task}_{k}.png" for k in kinds}
    names["npz"] = out_dir / f"{stem}_{args.task}.npz"
    from tomo.io.outputs import OutputPlan

    plan = OutputPlan([args.image, args.prior], overwrite=args.overwrite)
    plan.workdir(out_dir, "--output-dir")
    for kind, path in names.items():
        plan.file(path, kind if kind == "npz" else f"{kind} image")
    plan.claim()  # locked and checked against the inputs before any work (tomo.io.outputs)

    hu, what = read_hu_slice(args.image, args.slice)
    device = torch.device(args.device)
    sigma_px = args.sigma_px
    if args.measured:  # hu is the measurement y; the image to restore lives on the operator's input grid
        y_np, scale = measured_grid(hu, args)
        sigma_px *= scale
        shape = tuple(s * args.factor for s in y_np.shape) if args.task == "superres" else y_np.shape
        reference = None
    else:
        hu = resize_for_task(hu, 256 if args.size is None else args.size, _multiple(args))
        shape = hu.shape
    observed = read_mask(args.mask, shape) if args.mask is not None else None
    op = task_operator(
        args.task,
        shape,
        sigma_px=sigma_px,
        factor=args.factor,
        box=tuple(args.box) if args.box else None,
        keep=args.keep,
        mask=observed,
        device=device,
    )
    if args.measured:
        y = torch.from_numpy(np.ascontiguousarray(y_np, dtype=np.float32)).to(device)
    else:
        reference = torch.from_numpy(hu).to(device)
        y = degrade(op, reference, noise_hu, seed=args.seed)

    prior = load_prior(args.prior, device=device)
    kwargs: dict[str, Any] = dict(SOLVER_DEFAULTS[(args.method, args.task)])
    given = {
        "steps": args.steps,
        "cg_iterations": args.cg_iterations,
        "eta": args.eta,
        "zeta": args.zeta,
        "denoise_hu": args.denoise_hu,
    }
    not_applicable = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None and k not in kwargs]
    if not_applicable:
        raise CommandError(f"{', '.join(not_applicable)} does not apply to --method {args.method}")
    kwargs.update({k: v for k, v in given.items() if v is not None})
    kwargs.update(warm_start_settings(args, kwargs))
    if args.bf16:
        kwargs["autocast_dtype"] = torch.bfloat16
    source = "measured, restored as it is" if args.measured else f"noise {noise_hu:g} HU"
    print(f"{args.image} ({what}) -> {shape[1]}x{shape[0]}; task {args.task}, {source}; {args.method} {kwargs}")
    if args.samples < 1:
        raise CommandError(f"--samples must be >= 1, got {args.samples}")
    result = restore(
        prior, op, y, args.method, seed=args.seed, progress=library_bars(args), samples=args.samples, **kwargs
    )
    restored = result.hu[0, 0].cpu().numpy()
    degraded = displayable_degraded(args.task, op, y.cpu().numpy())

    out_dir.mkdir(parents=True, exist_ok=True)
    save_png(degraded, names[kinds[0]])
    save_png(restored, names["restored"])
    arrays: dict[str, Any] = dict(restored_hu=restored, task=args.task, method=args.method)
    arrays["measured" if args.measured else "degraded"] = degraded
    scores = None
    if not args.measured:
        save_png(hu, names["reference"])
        arrays["reference_hu"] = hu
        scores = (float(psnr(restored, hu)), float(ssim(restored, hu)))
    panels = [(degraded, "measured input" if args.measured else "degraded input")]
    if scores is not None and degraded.shape == hu.shape and args.task == "deblur":
        panels[0] = (degraded, f"degraded: {psnr(degraded, hu):.2f} dB, SSIM {ssim(degraded, hu):.3f}")
    panels.append(
        (restored, f"{args.method.upper()}" + ("" if scores is None else f": {scores[0]:.2f} dB, SSIM {scores[1]:.3f}"))
    )
    if not args.measured:
        panels.append((hu, "reference"))
    save_figure(names["figure"], panels, f"{stem}: {args.task}, {source}")
    if result.std_hu is not None:
        spread = result.std_hu[0, 0].cpu().numpy()
        save_png(spread * 10.0 - 1000.0, names["spread"])  # 0-200 HU spread shown black to white
        arrays["spread_hu"] = spread
    from tomo.io.atomic import atomic_file

    with atomic_file(names["npz"], overwrite=True) as fh:
        np.savez_compressed(fh, **arrays)
    if scores is None:
        print(f"restored ({result.network_evaluations} network evaluations; no reference to score against)")
    else:
        print(
            f"restored: PSNR {scores[0]:.2f} dB, SSIM {ssim(restored, hu):.4f} "
            f"([-1000, 1000] HU window; {result.network_evaluations} network evaluations)"
        )
    if scores is not None and degraded.shape == hu.shape and args.task == "deblur":
        print(f"degraded: PSNR {psnr(degraded, hu):.2f} dB, SSIM {ssim(degraded, hu):.4f}")
    for path in names.values():
        print(f"wrote {path}")
    return 0
