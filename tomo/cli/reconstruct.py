"""``tomo reconstruct FILE.npz --method M --out OUT``: reconstruct a sinogram file to HU.

Methods and their options come from the registry :func:`tomo.methods.default_registry` (see
:mod:`tomo.methods.registry` for how another package adds a method, e.g. ``dps``/``dds`` with
``--steps``, ``--prior``, ``--seed``): every registered option becomes a flag here, and a flag
that does not belong to the chosen method is refused.

Outputs: ``OUT.npz`` with ``hu`` float32 [H, W] or [slices, H, W] (HU) and a PNG preview
``OUT.png`` beside it (window [-1000, 1000] HU; side by side with ``hu_reference`` and the
PSNR/SSIM when the file has one); or, with ``--dicom-reference SERIES``, a derived DICOM series
in the folder ``OUT``.

Long series: the input is streamed, one chunk of ``--batch-size`` slices at a time; each finished
chunk is saved (atomically) in the partial-results folder ``OUT.partial`` beside the output, and
the output is assembled from it by streaming and renamed into place at the end. Memory is bounded
by one chunk, checked before starting (:func:`estimate_memory`). A killed run leaves no output
(or the complete one) and its partial results; ``--resume`` continues it without redoing the
finished chunks.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tomo.cli.main import CommandError
from tomo.cli.progress import library_bars


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
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs (and discard an earlier run's partial results)")
    parser.add_argument("--resume", action="store_true",
                        help="continue a stopped run from its partial results (OUT.partial), skipping the "
                             "slices already reconstructed")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no information lines")
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
    from tomo.io.sinogram import open_sinogram

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
    with open_sinogram(args.file) as source:
        batch = args.batch_size or entry.batch_size
        _check_memory(source, args.method, min(batch, source.num_slices), args.batch_size is None)
        reference_volume = _dicom_reference(args, source) if args.dicom_reference is not None else None
        if args.threads:
            import torch

            import operators
            torch.set_num_threads(args.threads)
            operators.set_threads(args.threads)       # the projector and FBP honour it too
        partial = PartialRun.open(_partial_folder(out), args, options, batch, source)
        t0 = time.time()
        _reconstruct_chunks(source, partial, args, options)
        seconds = time.time() - t0
        scores = partial.scores() if source.has_reference else None
        if scores is not None:
            n = source.num_slices
            print(f"PSNR {scores[0]:.2f} dB, SSIM {scores[1]:.4f} (mean over {n} slice{'s' if n > 1 else ''}, "
                  f"window [-1000, 1000] HU)")
        summary = f"{args.method} reconstruction, {_describe(source)}" + (f", options {options}" if options else "")
        if reference_volume is not None:
            files = _write_dicom(partial, source, reference_volume, out, summary, args)
            partial.remove()
            print(f"wrote {len(files)} DICOM files to {out} in {seconds:.1f} s ({summary})")
            return 0
        meta = dict(method=args.method, options=json.dumps(options, sort_keys=True), source=str(args.file),
                    pixel_spacing_mm=np.float64(source.geometry.pixel_spacing_mm), description=summary)
        if scores is not None:
            meta.update(psnr=np.float64(scores[0]), ssim=np.float64(scores[1]))
        shape = (source.num_slices, *source.geometry.image_shape) if source.is_volume else tuple(source.geometry.image_shape)
        _save_npz(out, partial, shape, meta, overwrite=args.overwrite)
        if preview is not None:
            _write_preview(preview, partial, source, args)
        partial.remove()
    print(f"wrote {out}" + (f" and {preview}" if preview else "") +
          f": hu {'x'.join(map(str, shape))} in {seconds:.1f} s ({summary})")
    return 0


# ----- memory --------------------------------------------------------------------------------------
#: images and sinograms a method keeps per slice (iterates, residuals, gradients, the network's
#: activations for the diffusion methods); a deliberate over-estimate: refusing early is cheap
_WORK_IMAGES = {"fbp": 4, "sirt": 8, "cgls": 8, "tv": 16, "dds": 64, "dps": 128}
_WORK_SINOGRAMS = 6


def estimate_memory(geometry, method: str, batch: int) -> int:
    """Bytes a reconstruction of ``batch`` slices needs besides the interpreter (an estimate).

    Parameters
    ----------
    geometry : ParallelBeam2D or FanBeam2D
    method : str
    batch : int
        Slices reconstructed together.

    Returns
    -------
    int
        float32 working images and sinograms of the batch, plus the cached system matrix when the
        operator would build one (:func:`operators.estimate_matrix_bytes`).
    """
    h, w = (int(v) for v in geometry.image_shape)
    views, det = geometry.num_views, geometry.detector_count
    work = 4 * batch * (_WORK_IMAGES.get(method, 16) * h * w + _WORK_SINOGRAMS * views * det)
    matrix = 0
    if h * w <= 2 ** 26:  # beyond that the operator never builds a matrix (and the estimate is slow)
        from operators import estimate_matrix_bytes, matrix_cache_info
        matrix = estimate_matrix_bytes(geometry)
        if matrix > matrix_cache_info().get("max_matrix_bytes", 2 ** 31):
            matrix = 0  # too large to cache: ASTRA computes each projection on the fly
    return work + matrix


def _check_memory(source, method: str, batch: int, default_batch: bool) -> None:
    from tomo.io.resources import check_memory

    g = source.geometry
    hint = ("use --batch-size 1" if batch > 1 else "the grid (image_shape) is too large for this machine")
    what = (f"reconstructing {batch} slice{'s' if batch > 1 else ''} at a time on a "
            f"{g.image_shape[0]} x {g.image_shape[1]} grid ({g.num_views} views x {g.detector_count} detectors, "
            f"--method {method})")
    check_memory(estimate_memory(g, method, batch), what, hint)


# ----- chunks ---------------------------------------------------------------------------------------
def _partial_folder(out: Path) -> Path:
    return out.parent / f"{out.name}.partial"


def _file_digest(path: Path) -> str:
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class PartialRun:
    """The partial-results folder ``OUT.partial`` of a run: one file per finished chunk of slices.

    Each chunk file is written atomically, so after a kill every chunk present is complete;
    ``manifest.json`` names the input (size and SHA-256), the method, its options and the chunk
    size, and ``--resume`` continues only a run that matches all of them.
    """

    VERSION = 1

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest

    @classmethod
    def open(cls, folder: Path, args, options: dict, batch: int, source) -> "PartialRun":
        from tomo.io.atomic import atomic_file

        manifest = {"version": cls.VERSION, "input_size": args.file.stat().st_size,
                    "input_sha256": _file_digest(args.file), "method": args.method,
                    "options": json.loads(json.dumps(options, sort_keys=True)), "chunk": batch,
                    "slices": source.num_slices}
        if folder.exists():
            if args.overwrite and not args.resume:
                _remove_partial(folder)
            elif not args.resume:
                raise FileExistsError(f"{folder} holds partial results of an earlier run: pass --resume to "
                                      "continue it, or --overwrite to start again")
            else:
                try:
                    old = json.loads((folder / "manifest.json").read_text())
                except (OSError, ValueError):
                    old = None
                if old != manifest:
                    raise CommandError(f"--resume: {folder} was made from another input, method, options or "
                                       "--batch-size; pass --overwrite (without --resume) to start again")
                return cls(folder, manifest)
        folder.mkdir()
        with atomic_file(folder / "manifest.json", "w") as fh:
            json.dump(manifest, fh, indent=1)
        return cls(folder, manifest)

    def chunk_path(self, start: int) -> Path:
        return self.folder / f"slices-{start:06d}.npz"

    def done(self, start: int) -> bool:
        return self.chunk_path(start).is_file()

    def save(self, start: int, hu: np.ndarray, psnr=None, ssim=None) -> None:
        from tomo.io.atomic import atomic_file

        arrays = {"hu": hu}
        if psnr is not None:
            arrays.update(psnr=np.atleast_1d(psnr).astype(np.float64), ssim=np.atleast_1d(ssim).astype(np.float64))
        with atomic_file(self.chunk_path(start), overwrite=True) as fh:
            np.savez(fh, **arrays)

    def starts(self) -> range:
        return range(0, self.manifest["slices"], self.manifest["chunk"])

    def read(self, start: int, key: str = "hu") -> np.ndarray:
        with np.load(self.chunk_path(start), allow_pickle=False) as d:
            return d[key]

    def scores(self) -> tuple[float, float]:
        p = np.concatenate([self.read(s, "psnr") for s in self.starts()])
        q = np.concatenate([self.read(s, "ssim") for s in self.starts()])
        return float(np.mean(p)), float(np.mean(q))

    def remove(self) -> None:
        _remove_partial(self.folder)


def _remove_partial(folder: Path) -> None:
    import shutil
    shutil.rmtree(folder, ignore_errors=True)


def _reconstruct_chunks(source, partial: PartialRun, args, options: dict) -> None:
    """Reconstruct every chunk of slices not already in ``partial``, streaming the input."""
    from operators.units import mu_to_hu
    from tomo.evaluation.scores import psnr, ssim
    from tomo.methods.registry import reconstruct
    from tomo.cli.progress import SliceProgress

    todo = [s for s in partial.starts() if not partial.done(s)]
    chunk = partial.manifest["chunk"]
    n = source.num_slices
    if len(todo) < len(partial.starts()):
        print(f"resuming: {len(partial.starts()) - len(todo)} of {len(partial.starts())} chunks of {chunk} "
              f"slices already done in {partial.folder}")
    bar = SliceProgress(n, f"tomo reconstruct --method {args.method}", enabled=not args.quiet,
                        done=n - sum(min(chunk, n - s) for s in todo))
    with bar:
        for start in todo:
            (_, sino, ref), = source.iter_slices(start, start + chunk, chunk)
            mu = reconstruct(sino, source.geometry, args.method, i0=source.i0, device=args.device,
                             batch_size=chunk, progress=library_bars(args), out_device="cpu", **options)
            hu = mu_to_hu(mu.numpy()).astype(np.float32)
            if ref is None:
                partial.save(start, hu)
            else:
                partial.save(start, hu, psnr(hu, ref), ssim(hu, ref))
            bar.update(hu.shape[0])


# ----- outputs --------------------------------------------------------------------------------------
def _save_npz(path: Path, partial: PartialRun, shape: tuple, meta: dict, overwrite: bool) -> None:
    """Stream the chunks into ``path`` atomically: a kill leaves no file or the complete one."""
    from tomo.io.atomic import atomic_file
    from tomo.io.npzfile import NpzStreamWriter

    with atomic_file(path, overwrite=overwrite) as fh, NpzStreamWriter(fh) as writer:
        with writer.array("hu", shape, np.float32) as put:
            for start in partial.starts():
                block = partial.read(start)
                put(block if len(shape) == 3 else block[0])
        for key, value in meta.items():
            writer.write(key, np.str_(value) if isinstance(value, str) else value)


def _write_preview(preview: Path, partial: PartialRun, source, args) -> None:
    from tomo.evaluation.scores import psnr, ssim
    from tomo.io.atomic import atomic_path

    n, chunk = source.num_slices, partial.manifest["chunk"]
    k = n // 2
    start = (k // chunk) * chunk
    hu = partial.read(start)[k - start]
    ref = None
    if source.has_reference:
        (_, _, ref), = source.iter_slices(k, k + 1, 1)
        ref = ref[0]
    title = f"{args.method.upper()} ({_describe(source)})" + (f", slice {k}" if n > 1 else "")
    with atomic_path(preview, overwrite=args.overwrite) as tmp:
        save_preview(tmp, hu, ref, title=title,
                     scores=None if ref is None else (float(psnr(hu, ref)), float(ssim(hu, ref))))


def _write_dicom(partial: PartialRun, source, reference_volume, out: Path, summary: str, args) -> list[Path]:
    from tomo.io.dicom_write import write_series

    hu3 = np.concatenate([partial.read(s) for s in partial.starts()])
    p = source.geometry.pixel_spacing_mm
    return write_series(hu3, out, reference_volume, pixel_spacing_mm=(p, p),
                        description=f"tomo {args.method.upper()} reconstruction",
                        derivation=f"{summary} (tomo reconstruct)", overwrite=args.overwrite)


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
