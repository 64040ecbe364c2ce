"""``tomo reconstruct FILE.npz --method M --out OUT``: reconstruct a sinogram file to HU.

Methods and their options come from the registry :func:`tomo.methods.default_registry` (see
:mod:`tomo.methods.registry` for how another package adds a method, e.g. ``dps``/``dds`` with
``--steps``, ``--prior``, ``--seed``): every registered option becomes a flag here, and a flag
that does not belong to the chosen method is refused.

Outputs: ``OUT.npz`` with ``hu`` float32 [H, W] or [slices, H, W] (HU) and a PNG preview
``OUT.png`` beside it (window [-1000, 1000] HU; side by side with ``hu_reference`` and the
PSNR/SSIM when the file has one); or, with ``--dicom-reference SERIES``, a derived DICOM series
in the folder ``OUT``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tomo.cli.main import CommandError


#: one-line summary shown by ``tomo --help``
HELP = "reconstruct a sinogram file (.npz) to HU (npz + PNG, or DICOM)"

def _method_options():
    """All registered methods, and each distinct option flag with the methods that use it."""
    from tomo.methods.registry import available_methods

    methods = available_methods()
    flags: dict[str, tuple] = {}
    for name, entry in methods.items():
        for opt in entry.options:
            if opt.flag in flags:
                known, users = flags[opt.flag]
                if (known.dest, known.type, known.choices) != (opt.dest, opt.type, opt.choices):
                    raise RuntimeError(f"method {name!r} declares {opt.flag} differently from {users[0]!r}")
                users.append(name)
            else:
                flags[opt.flag] = (opt, [name])
    return methods, flags


def _arg_dest(flag: str) -> str:
    return "opt_" + flag.lstrip("-").replace("-", "_")


def register(subparsers) -> None:
    methods, flags = _method_options()
    listing = "; ".join(f"{n}: {m.help}" for n, m in methods.items())
    parser = subparsers.add_parser(
        "reconstruct", help=HELP,
        description="Reconstruct a sinogram exchange file (.npz, evaluation.md) on its grid and write HU: "
                    "OUT.npz ('hu' float32 [H, W] or [slices, H, W]) with a PNG preview OUT.png beside it, "
                    "or a derived DICOM series in the folder OUT with --dicom-reference.",
        epilog=f"Methods: {listing}. Example: tomo reconstruct scan.npz --method tv --out rec.npz",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, metavar="FILE.npz", help="sinogram exchange file")
    parser.add_argument("--method", default="fbp", choices=sorted(methods), help="reconstruction method (default fbp)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT",
                        help="OUT.npz (plus OUT.png), or a folder for --dicom-reference")
    group = parser.add_argument_group("method options (each applies only to the methods named)")
    for flag, (opt, users) in flags.items():
        kwargs = dict(type=opt.type, default=None, dest=_arg_dest(flag), metavar=flag.lstrip("-").upper().replace("-", "_"),
                      help=f"{opt.help} [{', '.join(users)}]")
        if opt.choices:
            kwargs["choices"] = opt.choices
        group.add_argument(flag, **kwargs)
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="slices reconstructed together (bounds memory; default per method)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="torch CPU threads (default 0: torch's choice; 1 is fastest on a busy 2-core machine)")
    parser.add_argument("--dicom-reference", type=Path, metavar="SERIES",
                        help="write a DICOM series into the folder OUT, deriving patient/study/positions "
                             "from this DICOM series (the one the sinogram was simulated from)")
    parser.add_argument("--series", metavar="UID", help="SeriesInstanceUID in --dicom-reference, if it holds several")
    parser.add_argument("--no-preview", action="store_true", help="do not write the PNG preview")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _chosen_options(args, entry, flags) -> dict:
    """Options the user gave, as the method's keywords; refuse flags of other methods."""
    options = {}
    allowed = {o.flag for o in entry.options}
    for flag, (opt, users) in flags.items():
        value = getattr(args, _arg_dest(flag))
        if value is None:
            continue
        if flag not in allowed:
            raise CommandError(f"{flag} does not apply to --method {entry.name} (it is for {', '.join(users)})")
        options[opt.dest] = value
    return options


def _check_outputs(args) -> tuple[Path, Path | None]:
    out: Path = args.out
    if out.resolve() == args.file.resolve():
        raise CommandError("--out is the input file; refusing to overwrite the input")
    if args.dicom_reference is not None:
        if out.suffix == ".npz":
            raise CommandError("with --dicom-reference, --out is a folder for the DICOM series, not an .npz")
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
        return out, None
    if out.suffix != ".npz":
        raise CommandError(f"--out must end in .npz (or give --dicom-reference for DICOM), got {out}")
    preview = None if args.no_preview else out.with_suffix(".png")
    for p in (out, preview):
        if p is not None and p.exists() and not args.overwrite:
            raise FileExistsError(f"{p} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder {out.parent} does not exist")
    return out, preview


def save_preview(path: Path, hu: np.ndarray, reference: np.ndarray | None = None, title: str = "",
                 scores: tuple[float, float] | None = None) -> None:
    """PNG of one slice in the [-1000, 1000] HU window, beside the reference when given."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(hu, title or "reconstruction")]
    if reference is not None:
        label = "reference" if scores is None else f"reference (PSNR {scores[0]:.2f} dB, SSIM {scores[1]:.3f})"
        panels.append((reference, label))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, (img, label) in zip(axes[0], panels):
        ax.imshow(img, cmap="gray", vmin=-1000, vmax=1000, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _describe(sf) -> str:
    g = sf.geometry
    from operators.geometry import ParallelBeam2D
    beam = "parallel beam" if isinstance(g, ParallelBeam2D) else "fan beam"
    dose = "I0 unknown" if sf.i0 is None else f"I0={sf.i0:.0e}"
    return f"{beam} {g.num_views} views, {dose}"


def run(args: argparse.Namespace) -> int:
    import torch

    from tomo.io.sinogram import load_sinogram
    from operators.units import mu_to_hu
    from tomo.evaluation.scores import psnr, ssim
    from tomo.methods.registry import reconstruct

    methods, flags = _method_options()
    entry = methods[args.method]
    options = _chosen_options(args, entry, flags)
    if args.batch_size is not None and args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads < 0:
        raise CommandError(f"--threads must be >= 0, got {args.threads}")
    if not args.file.is_file():
        raise FileNotFoundError(f"no sinogram file {args.file}")
    out, preview = _check_outputs(args)
    sf = load_sinogram(args.file)
    reference_volume = _dicom_reference(args, sf) if args.dicom_reference is not None else None
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.time()
    mu = reconstruct(sf.sinogram, sf.geometry, args.method, i0=sf.i0, device=args.device,
                     batch_size=args.batch_size, progress=not args.quiet, out_device="cpu", **options)
    seconds = time.time() - t0
    hu = mu_to_hu(mu.numpy()).astype(np.float32)
    hu3 = hu if hu.ndim == 3 else hu[None]
    scores = None
    ref3 = sf.reference_slices()
    if ref3 is not None:
        p, s = np.atleast_1d(psnr(hu3, ref3)), np.atleast_1d(ssim(hu3, ref3))
        scores = (float(np.mean(p)), float(np.mean(s)))
        print(f"PSNR {scores[0]:.2f} dB, SSIM {scores[1]:.4f} (mean over {len(p)} slice{'s' if len(p) > 1 else ''}, "
              f"window [-1000, 1000] HU)")
    summary = f"{args.method} reconstruction, {_describe(sf)}" + (f", options {options}" if options else "")

    if reference_volume is not None:
        from tomo.io.dicom_write import write_series
        p = sf.geometry.pixel_spacing_mm
        files = write_series(hu3, out, reference_volume, pixel_spacing_mm=(p, p),
                             description=f"tomo {args.method.upper()} reconstruction",
                             derivation=f"{summary} (tomo reconstruct)", overwrite=args.overwrite)
        print(f"wrote {len(files)} DICOM files to {out} in {seconds:.1f} s ({summary})")
        return 0

    meta = dict(method=args.method, options=json.dumps(options, sort_keys=True), source=str(args.file),
                pixel_spacing_mm=np.float64(sf.geometry.pixel_spacing_mm), description=summary)
    if scores is not None:
        meta.update(psnr=np.float64(scores[0]), ssim=np.float64(scores[1]))
    _save_npz(out, hu, meta)
    if preview is not None:
        k = hu3.shape[0] // 2
        save_preview(preview, hu3[k], None if ref3 is None else ref3[k],
                     title=f"{args.method.upper()} ({_describe(sf)})" + (f", slice {k}" if hu3.shape[0] > 1 else ""),
                     scores=None if ref3 is None else (float(psnr(hu3[k], ref3[k])), float(ssim(hu3[k], ref3[k]))))
    print(f"wrote {out}" + (f" and {preview}" if preview else "") +
          f": hu {'x'.join(map(str, hu.shape))} in {seconds:.1f} s ({summary})")
    return 0


def _save_npz(path: Path, hu: np.ndarray, meta: dict) -> None:
    """Write atomically (temporary file, then rename) so a failure never leaves a partial file."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(suffix=".npz", prefix=f".{path.stem}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, hu=hu, **{k: (np.str_(v) if isinstance(v, str) else v) for k, v in meta.items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _dicom_reference(args, sf):
    """Read the reference series and check it matches the sinogram's slices and field of view."""
    from tomo.io.dicom_read import read_series

    vol = read_series(args.dicom_reference, series_uid=args.series)
    if vol.hu.shape[0] != sf.num_slices:
        raise CommandError(f"--dicom-reference has {vol.hu.shape[0]} slices but the sinogram {sf.num_slices}; "
                           f"give the series (or the single file) the sinogram was simulated from")
    rows, cols = vol.hu.shape[1:]
    ref_fov = max(rows * vol.pixel_spacing_mm[0], cols * vol.pixel_spacing_mm[1])
    fov = sf.geometry.image_shape[0] * sf.geometry.pixel_spacing_mm
    if abs(ref_fov - fov) > 0.01 * fov:
        raise CommandError(f"field of view mismatch: reconstruction {fov:.1f} mm, --dicom-reference {ref_fov:.1f} mm")
    return vol
