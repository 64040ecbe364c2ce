"""``tomo reconstruct FILE.npz --method M --out OUT``: reconstruct a sinogram file to HU.

Methods and their options come from the registry :func:`tomo.methods.default_registry` (see
:mod:`tomo.methods.registry` for how another package adds a method, e.g. ``dps``/``dds`` with
``--steps``, ``--prior``, ``--seed``): every registered option becomes a flag here, and a flag
that does not belong to the chosen method is refused.

Outputs, chosen by ``--out``:

* ``OUT.npz``: ``hu`` float32 [H, W] or [slices, H, W] (HU) and a PNG preview ``OUT.png``
  beside it (window [-1000, 1000] HU; side by side with ``hu_reference`` and the PSNR/SSIM when
  the file has one);
* ``OUT.nii`` / ``OUT.nii.gz``: a NIfTI volume (:func:`tomo.io.nifti.write_nifti_volume`) on the
  reconstruction grid, placed and oriented like ``--reference`` when given, and the same preview;
* a folder ``OUT`` with ``--reference`` (alias ``--dicom-reference``): a derived DICOM series.

Posterior uncertainty: a sampling method run with ``--samples N`` (N >= 2) also gives the
pixel-wise posterior standard deviation in HU (``1000 / mu_water`` times the std of mu, mu_water =
0.0192 /mm, since HU is affine in mu): the key ``std_hu`` in the ``.npz``, ``OUT_std.nii[.gz]`` beside a NIfTI, a
second DICOM series in ``OUT_std`` (same study and geometry), and the figure ``OUT_std.png``.

Long series: the input is streamed, one chunk of ``--batch-size`` slices at a time; each finished
chunk is saved (atomically) in the partial-results folder ``OUT.partial`` beside the output, and
the output is assembled from it by streaming and renamed into place at the end. Memory is bounded
by one chunk, checked before starting (:func:`estimate_memory`). A killed run leaves no output
(or the complete one) and its partial results; ``--resume`` continues it without redoing the
finished chunks.

Several processes (``torchrun``, docs/cluster.md): when ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` are set, rank 0 checks the request and prepares
``OUT.partial``, every rank reconstructs its share of the chunks into it, and rank 0 writes the
output, the same bytes of image as a single process writes (each chunk is reconstructed alone,
its seed included). Only rank 0 prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tomo.cli.main import CommandError
from tomo.cli.progress import library_bars

if TYPE_CHECKING:
    from tomo.io.sinogram import SinogramSource
    from tomo.io.volume import CTVolume

#: one-line summary shown by ``tomo --help``
HELP = "reconstruct a sinogram file (.npz) to HU (npz + PNG, NIfTI, or DICOM)"

#: seconds a process waits for the others (the slowest share of chunks); TOMO_DIST_TIMEOUT_S overrides
DIST_TIMEOUT_S = 24 * 3600


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
        "reconstruct",
        help=HELP,
        description="Reconstruct a sinogram exchange file (.npz, evaluation.md) on its grid and write HU: "
        "OUT.npz ('hu' float32 [H, W] or [slices, H, W]) with a PNG preview OUT.png beside it, "
        "a NIfTI volume OUT.nii[.gz], or a derived DICOM series in the folder OUT with --reference. "
        "With --samples N >= 2 (dds, dps) the posterior standard deviation in HU is written too "
        "('std_hu', OUT_std.nii[.gz], the DICOM series OUT_std, OUT_std.png). "
        "Under torchrun the slices are shared among the processes (docs/cluster.md).",
        epilog=f"Methods: {listing}. Example: tomo reconstruct scan.npz --method tv --out rec.npz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", type=Path, metavar="FILE.npz", help="sinogram exchange file")
    parser.add_argument("--method", default="fbp", choices=sorted(methods), help="reconstruction method (default fbp)")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="OUT",
        help="OUT.npz (plus OUT.png), OUT.nii or OUT.nii.gz, or a folder for a DICOM series (with --reference)",
    )
    group = parser.add_argument_group("method options (each applies only to the methods named)")
    for flag, (opt, users) in flags.items():
        kwargs = dict(
            type=opt.type,
            default=None,
            dest=_arg_dest(flag),
            metavar=flag.lstrip("-").upper().replace("-", "_"),
            help=f"{opt.help} [{', '.join(users)}]",
        )
        if opt.choices:
            kwargs["choices"] = opt.choices
        group.add_argument(flag, **kwargs)
    parser.add_argument(
        "--batch-size", type=int, metavar="N", help="slices reconstructed together (bounds memory; default per method)"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu (default) or cuda (under torchrun: each process its LOCAL_RANK's GPU)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="CPU threads of the network, the projector and FBP (default 0: torch's choice, one per "
        "core; 1 is fastest on a busy 2-core machine)",
    )
    parser.add_argument(
        "--reference",
        "--dicom-reference",
        type=Path,
        metavar="VOLUME",
        dest="dicom_reference",
        help="the volume the sinogram was simulated from (DICOM series or file, or NIfTI): with "
        "--out DIR a DICOM series is written into the folder DIR, deriving patient/study/"
        "positions from it; with --out OUT.nii[.gz] its position and orientation are kept",
    )
    parser.add_argument("--series", metavar="UID", help="SeriesInstanceUID in --reference, if it holds several")
    parser.add_argument(
        "--slice-spacing",
        type=float,
        metavar="MM",
        help="NIfTI output: distance between slices in mm (default: the reference's; the "
        "sinogram file does not record it)",
    )
    parser.add_argument("--no-preview", action="store_true", help="do not write the PNG previews")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (and discard an earlier run's partial results)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped run from its partial results (OUT.partial), skipping the slices already reconstructed",
    )
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


# ----- output paths ---------------------------------------------------------------------------------
@dataclass
class Outputs:
    """Where a run writes.

    Attributes
    ----------
    kind : str
        ``"npz"``, ``"nifti"`` or ``"dicom"``.
    main : Path
        The image: ``.npz`` file, ``.nii[.gz]`` file or DICOM folder.
    std : Path or None
        The posterior standard deviation beside it (NIfTI file or DICOM folder); None for
        ``.npz`` (it holds ``std_hu``).
    preview, std_preview : Path or None
        PNG figures (none for DICOM or with ``--no-preview``).
    """

    kind: str
    main: Path
    std: Path | None
    preview: Path | None
    std_preview: Path | None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".npz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _plan_outputs(args, expects_std: bool) -> Outputs:
    """The output paths of ``--out``; refuse the input, a wrong suffix, or existing outputs."""
    from tomo.io.nifti import is_nifti_path

    out: Path = args.out
    if out.resolve() == args.file.resolve():
        raise CommandError("--out is the input file; refusing to overwrite the input")
    stem = _stem(out)
    if is_nifti_path(out):
        _require_nibabel()  # before the reconstruction, not after it
        suffix = out.name[len(stem) :]
        outputs = Outputs(
            "nifti",
            out,
            out.with_name(f"{stem}_std{suffix}"),
            out.with_name(f"{stem}.png"),
            out.with_name(f"{stem}_std.png"),
        )
    elif args.dicom_reference is not None:
        if out.suffix == ".npz":
            raise CommandError(
                "with --reference, --out is a folder for the DICOM series (or an .nii/.nii.gz file), not an .npz"
            )
        outputs = Outputs("dicom", out, out.with_name(f"{out.name}_std"), None, None)
    elif out.suffix == ".npz":
        outputs = Outputs("npz", out, None, out.with_suffix(".png"), out.with_name(f"{stem}_std.png"))
    else:
        raise CommandError(f"--out must end in .npz, .nii or .nii.gz (or give --reference for DICOM), got {out}")
    if args.slice_spacing is not None and (outputs.kind != "nifti" or not args.slice_spacing > 0):
        raise CommandError("--slice-spacing takes a positive number of mm and applies to NIfTI output only")
    if args.no_preview:
        outputs.preview = outputs.std_preview = None
    _refuse_existing(outputs, expects_std, args.overwrite)
    return outputs


def _require_nibabel() -> None:
    from tomo.io.nifti import NiftiDependencyError

    try:
        import nibabel  # noqa: F401
    except ImportError:
        raise NiftiDependencyError(
            "NIfTI output needs nibabel: pip install tomo-ct[nifti] (or pip install "
            "'nibabel>=5'), or write --out OUT.npz"
        ) from None


def _refuse_existing(outputs: Outputs, expects_std: bool, overwrite: bool) -> None:
    paths = [outputs.main, outputs.preview] + ([outputs.std, outputs.std_preview] if expects_std else [])
    for path in paths:
        if path is None or overwrite:
            continue
        if outputs.kind == "dicom" and path.is_dir():
            if any(path.iterdir()):
                raise FileExistsError(f"{path} exists and is not empty; pass --overwrite to replace it")
        elif path.exists():
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    if not outputs.main.parent.is_dir():
        raise FileNotFoundError(f"folder {outputs.main.parent} does not exist")


def save_preview(
    path: Path,
    hu: np.ndarray,
    reference: np.ndarray | None = None,
    title: str = "",
    scores: tuple[float, float] | None = None,
) -> None:
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


def save_std_preview(path: Path, hu: np.ndarray, std_hu: np.ndarray, title: str = "") -> None:
    """PNG of one slice's posterior standard deviation (colour bar in HU) beside the image.

    Parameters
    ----------
    path : Path
    hu, std_hu : np.ndarray [H, W]
        The image (posterior mean) and its pixel-wise standard deviation, HU.
    title : str
        Title of the image panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = float(np.percentile(std_hu, 99.5)) or float(std_hu.max()) or 1.0  # a few hot pixels do not set the scale
    fig, axes = plt.subplots(1, 2, figsize=(2 * 4.2 + 0.8, 4.6))
    axes[0].imshow(hu, cmap="gray", vmin=-1000, vmax=1000, interpolation="nearest")
    axes[0].set_title(title or "reconstruction (posterior mean)", fontsize=9)
    shown = axes[1].imshow(std_hu, cmap="magma", vmin=0.0, vmax=top, interpolation="nearest")
    axes[1].set_title(f"posterior standard deviation (median {float(np.median(std_hu)):.1f} HU)", fontsize=9)
    for ax in axes:
        ax.axis("off")
    bar = fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    bar.set_label("HU", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _describe(sf) -> str:
    g = sf.geometry
    from operators.geometry import ParallelBeam2D

    beam = "parallel beam" if isinstance(g, ParallelBeam2D) else "fan beam"
    dose = "I0 unknown" if sf.i0 is None else f"I0={sf.i0:.0e}"
    return f"{beam} {g.num_views} views, {dose}"


# ----- the run --------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    ranks = Ranks.from_environment(args.device)
    try:
        with _silent_unless(ranks.is_main):
            return _run(args, ranks)
    finally:
        ranks.close()


@dataclass
class _Setup:
    """What rank 0 prepared before any reconstruction (the other ranks get ``shared()``)."""

    options: dict
    outputs: Outputs
    source: SinogramSource  # open
    reference: CTVolume | None
    slice_spacing: float | None
    partial: PartialRun
    todo: list[int]

    def shared(self) -> dict:
        return {"manifest": self.partial.manifest, "folder": str(self.partial.folder), "todo": self.todo}


def _run(args: argparse.Namespace, ranks: Ranks) -> int:
    methods, flags = _method_options()
    entry = methods[args.method]
    setup, source, partial = None, None, None
    if ranks.is_main:
        shared = None
        try:
            setup = _prepare(args, entry, flags, ranks)
            shared = setup.shared()
        finally:
            ranks.share(shared)  # None tells the other ranks that the request was refused
        source, partial, options = setup.source, setup.partial, setup.options
    else:
        shared = ranks.share(None)
        if shared is None:
            raise SystemExit(2)  # rank 0 refused the request and printed why
        options = _chosen_options(args, entry, flags)
    t0 = time.time()
    try:
        failure = None
        try:
            if source is None:  # ranks other than 0: a failure here is reported like one in the work
                source, partial = _join(args, ranks, shared)
            with _threads(args):
                _reconstruct_chunks(source, partial, args, options, shared["todo"], ranks)
        except Exception as exc:  # noqa: BLE001  (reported to rank 0, which then writes nothing; raised below)
            failure = exc
        reports = ranks.gather(
            {
                "chunks": len(shared["todo"][ranks.rank :: ranks.world]),
                "seconds": time.time() - t0,
                "error": None if failure is None else f"{type(failure).__name__}: {failure}",
            }
        )
        if failure is not None:
            raise failure
        if not ranks.is_main:
            return 0
        _check_reports(reports, partial)
        return _finish(args, setup, time.time() - t0)
    finally:
        if source is not None:
            source.close()


def _check_reports(reports: list[dict], partial: PartialRun) -> None:
    """Rank 0: refuse to write when another rank failed; say how the work was shared."""
    for rank, report in enumerate(reports):
        if report["error"]:
            raise CommandError(
                f"rank {rank} failed ({report['error'].splitlines()[0]}); the finished chunks are "
                f"kept in {partial.folder}: rerun the same command with --resume"
            )
    if len(reports) > 1:
        print(
            "chunks per process: "
            + ", ".join(f"rank {r} {x['chunks']} in {x['seconds']:.1f} s" for r, x in enumerate(reports))
        )


def _prepare(args, entry, flags, ranks: Ranks) -> _Setup:
    """Check the request, open the input and the partial results, list the chunks left (rank 0)."""
    from tomo.io.sinogram import open_sinogram

    options = _chosen_options(args, entry, flags)
    if args.batch_size is not None and args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads < 0:
        raise CommandError(f"--threads must be >= 0, got {args.threads}")
    if not args.file.is_file():
        raise FileNotFoundError(f"no sinogram file {args.file}")
    outputs = _plan_outputs(args, expects_std=int(options.get("samples") or 1) >= 2)
    source = open_sinogram(args.file)
    try:
        batch = args.batch_size or entry.batch_size
        _check_memory(source, args.method, min(batch, source.num_slices), args.batch_size is None, ranks.local_world)
        reference = _read_reference(args, source) if args.dicom_reference is not None else None
        spacing = _nifti_slice_spacing(args, source, reference) if outputs.kind == "nifti" else None
        partial = PartialRun.open(_partial_folder(outputs.main), args, options, batch, source)
        todo = [s for s in partial.starts() if not partial.done(s)]
        if len(todo) < len(partial.starts()):
            print(
                f"resuming: {len(partial.starts()) - len(todo)} of {len(partial.starts())} chunks of "
                f"{partial.manifest['chunk']} slices already done in {partial.folder}"
            )
        if ranks.world > 1:
            print(f"{ranks.world} processes share {len(todo)} chunks of {partial.manifest['chunk']} slices")
    except BaseException:
        source.close()
        raise
    return _Setup(options, outputs, source, reference, spacing, partial, todo)


def _join(args, ranks: Ranks, shared: dict):
    """A rank other than 0: open the input and the partial results rank 0 prepared."""
    from tomo.io.sinogram import open_sinogram

    source = open_sinogram(args.file)
    try:
        chunk = shared["manifest"]["chunk"]
        _check_memory(source, args.method, min(chunk, source.num_slices), False, ranks.local_world)
        return source, PartialRun.join(Path(shared["folder"]), shared["manifest"])
    except BaseException:
        source.close()
        raise


def _threads(args):
    """``--threads N`` for torch, the projector and FBP while the slices are reconstructed; 0 (the
    default): torch's choice for all three (one thread per core), the fastest on an idle machine
    (docs/benchmarks.md, section 7); both settings are restored afterwards."""
    from operators.settings import all_threads

    return all_threads(args.threads or None)


def _finish(args, setup: _Setup, seconds: float) -> int:
    """Rank 0, every chunk done: scores, the outputs, then the partial results go."""
    source, partial, outputs = setup.source, setup.partial, setup.outputs
    scores = partial.scores() if source.has_reference else None
    if scores is not None:
        n = source.num_slices
        print(
            f"PSNR {scores[0]:.2f} dB, SSIM {scores[1]:.4f} (mean over {n} slice{'s' if n > 1 else ''}, "
            f"window [-1000, 1000] HU)"
        )
    summary = f"{args.method} reconstruction, {_describe(source)}" + (
        f", options {setup.options}" if setup.options else ""
    )
    has_std = partial.has_std()
    if outputs.kind == "dicom":
        written = _write_dicom(setup, summary, args, has_std)
    elif outputs.kind == "nifti":
        written = _write_nifti(setup, args.overwrite, has_std)
    else:
        meta = dict(
            method=args.method,
            options=json.dumps(setup.options, sort_keys=True),
            source=str(args.file),
            pixel_spacing_mm=np.float64(source.geometry.pixel_spacing_mm),
            description=summary,
        )
        if scores is not None:
            meta.update(psnr=np.float64(scores[0]), ssim=np.float64(scores[1]))
        _save_npz(outputs.main, partial, _hu_shape(source), meta, overwrite=args.overwrite)
        written = [f"{outputs.main} (hu{', std_hu' if has_std else ''} {'x'.join(map(str, _hu_shape(source)))})"]
    written += _write_previews(outputs, partial, source, args, has_std)
    partial.remove()
    print(f"wrote {', '.join(written)} in {seconds:.1f} s ({summary})")
    return 0


def _hu_shape(source) -> tuple:
    return (source.num_slices, *source.geometry.image_shape) if source.is_volume else tuple(source.geometry.image_shape)


def std_mu_to_hu(std_mu: np.ndarray) -> np.ndarray:
    """Standard deviation of mu [1/mm] -> standard deviation in HU (float32, same shape).

    ``HU = 1000 (mu / mu_water - 1)`` is affine in mu, so a spread scales by the slope
    ``1000 / mu_water`` alone (mu_water = :data:`operators.units.MU_WATER_PER_MM`).
    """
    from operators.units import MU_WATER_PER_MM

    return np.asarray(std_mu, dtype=np.float32) * np.float32(1000.0 / MU_WATER_PER_MM)


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
    if h * w <= 2**26:  # beyond that the operator never builds a matrix (and the estimate is slow)
        from operators import estimate_matrix_bytes, matrix_cache_info

        matrix = estimate_matrix_bytes(geometry)
        if matrix > matrix_cache_info().get("max_matrix_bytes", 2**31):
            matrix = 0  # too large to cache: ASTRA computes each projection on the fly
    return work + matrix


def _check_memory(source, method: str, batch: int, default_batch: bool, processes: int = 1) -> None:
    from tomo.io.resources import check_memory

    g = source.geometry
    hint = "use --batch-size 1" if batch > 1 else "the grid (image_shape) is too large for this machine"
    if processes > 1:
        hint += " or fewer processes per node"
    what = (
        f"reconstructing {batch} slice{'s' if batch > 1 else ''} at a time on a "
        f"{g.image_shape[0]} x {g.image_shape[1]} grid ({g.num_views} views x {g.detector_count} detectors, "
        f"--method {method})" + (f" in each of {processes} processes on this node" if processes > 1 else "")
    )
    check_memory(processes * estimate_memory(g, method, batch), what, hint)  # the node's processes share its memory


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

    Each chunk file (``hu``, and ``std_hu``, ``psnr``, ``ssim`` when there are) is written
    atomically, so after a kill every chunk present is complete; ``manifest.json`` names the
    input (size and SHA-256), the method, its options and the chunk size, and ``--resume``
    continues only a run that matches all of them. Several processes may fill one folder (each
    its own chunks).
    """

    VERSION = 2  # 2: chunks carry std_hu

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest

    @classmethod
    def open(cls, folder: Path, args, options: dict, batch: int, source) -> PartialRun:
        from tomo.io.atomic import atomic_file

        manifest = {
            "version": cls.VERSION,
            "input_size": args.file.stat().st_size,
            "input_sha256": _file_digest(args.file),
            "method": args.method,
            "options": json.loads(json.dumps(options, sort_keys=True)),
            "chunk": batch,
            "slices": source.num_slices,
        }
        if folder.exists():
            if args.overwrite and not args.resume:
                _remove_partial(folder)
            elif not args.resume:
                raise FileExistsError(
                    f"{folder} holds partial results of an earlier run: pass --resume to "
                    "continue it, or --overwrite to start again"
                )
            else:
                try:
                    old = json.loads((folder / "manifest.json").read_text())
                except (OSError, ValueError):
                    old = None
                if old != manifest:
                    raise CommandError(
                        f"--resume: {folder} was made from another input, method, options, "
                        "--batch-size or tomo version; pass --overwrite (without --resume) to "
                        "start again"
                    )
                return cls(folder, manifest)
        folder.mkdir()
        with atomic_file(folder / "manifest.json", "w") as fh:
            json.dump(manifest, fh, indent=1)
        return cls(folder, manifest)

    @classmethod
    def join(cls, folder: Path, manifest: dict) -> PartialRun:
        """The folder another process (rank 0) opened; refuse one this process cannot see."""
        try:
            seen = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            seen = None
        if seen != manifest:
            raise CommandError(
                f"cannot read {folder / 'manifest.json'} as rank 0 wrote it: the output folder must "
                "be on a file system every node shares"
            )
        return cls(folder, manifest)

    def chunk_path(self, start: int) -> Path:
        return self.folder / f"slices-{start:06d}.npz"

    def done(self, start: int) -> bool:
        return self.chunk_path(start).is_file()

    def save(self, start: int, hu: np.ndarray, psnr=None, ssim=None, std: np.ndarray | None = None) -> None:
        """Store one chunk: ``hu`` [n, H, W] HU, optional scores [n], optional ``std`` [n, H, W] HU."""
        from tomo.io.atomic import atomic_file

        arrays = {"hu": hu}
        if psnr is not None:
            arrays.update(psnr=np.atleast_1d(psnr).astype(np.float64), ssim=np.atleast_1d(ssim).astype(np.float64))
        if std is not None:
            arrays["std_hu"] = np.asarray(std, dtype=np.float32)
        with atomic_file(self.chunk_path(start), overwrite=True) as fh:
            np.savez(fh, **arrays)

    def starts(self) -> range:
        return range(0, self.manifest["slices"], self.manifest["chunk"])

    def slices_done(self) -> int:
        """Slices in the chunk files present (by all processes)."""
        n, chunk = self.manifest["slices"], self.manifest["chunk"]
        return sum(min(chunk, n - s) for s in self.starts() if self.done(s))

    def read(self, start: int, key: str = "hu") -> np.ndarray:
        with np.load(self.chunk_path(start), allow_pickle=False) as d:
            return d[key]

    def has_std(self) -> bool:
        """Whether the chunks hold a posterior standard deviation (all or none of them do)."""
        with np.load(self.chunk_path(0), allow_pickle=False) as d:
            return "std_hu" in d.files

    def volume(self, key: str = "hu") -> np.ndarray:
        """All slices of ``key`` [slices, H, W], in order."""
        return np.concatenate([self.read(s, key) for s in self.starts()])

    def scores(self) -> tuple[float, float]:
        p = np.concatenate([self.read(s, "psnr") for s in self.starts()])
        q = np.concatenate([self.read(s, "ssim") for s in self.starts()])
        return float(np.mean(p)), float(np.mean(q))

    def remove(self) -> None:
        _remove_partial(self.folder)


def _remove_partial(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _reconstruct_chunks(source, partial: PartialRun, args, options: dict, todo: list[int], ranks: Ranks) -> None:
    """Reconstruct this rank's share of the chunks ``todo`` (not yet in ``partial``), streaming the input."""
    from operators.units import mu_to_hu
    from tomo.cli.progress import SliceProgress
    from tomo.evaluation.scores import psnr, ssim
    from tomo.methods.registry import reconstruct

    chunk, n = partial.manifest["chunk"], source.num_slices
    device = ranks.device(args.device)
    bar = SliceProgress(
        n,
        f"tomo reconstruct --method {args.method}",
        enabled=ranks.is_main and not args.quiet,
        done=n - sum(min(chunk, n - s) for s in todo),
    )
    with bar:
        for start in todo[ranks.rank :: ranks.world]:
            ((_, sino, ref),) = source.iter_slices(start, start + chunk, chunk)
            mu, std = reconstruct(
                sino,
                source.geometry,
                args.method,
                i0=source.i0,
                device=device,
                batch_size=chunk,
                progress=library_bars(args) and ranks.is_main,
                out_device="cpu",
                return_std=True,
                **options,
            )
            hu = mu_to_hu(mu.numpy()).astype(np.float32)
            std_hu = None if std is None else std_mu_to_hu(std.numpy())
            if ref is None:
                partial.save(start, hu, std=std_hu)
            else:
                partial.save(start, hu, psnr(hu, ref), ssim(hu, ref), std=std_hu)
            if ranks.world > 1:
                bar.set_done(partial.slices_done())  # the other processes' chunks count too
            else:
                bar.update(hu.shape[0])


# ----- several processes ----------------------------------------------------------------------------
class Ranks:
    """This process's place among the processes of one run; a plain run is rank 0 of 1.

    Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set) the
    process group is joined: gloo on CPU, NCCL (with gloo for the small messages) with
    ``--device cuda``, each process on GPU ``LOCAL_RANK``. Only a few small Python objects are
    exchanged (the plan, and each rank's outcome); the images go through ``OUT.partial``.
    """

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, local_world: int = 1, joined: bool = False):
        self.rank, self.world, self.local_rank, self.local_world, self.joined = (
            rank,
            world,
            local_rank,
            local_world,
            joined,
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str) -> Ranks:
        env = os.environ
        if not all(env.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
            return cls()
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
            local_rank, local_world = int(env.get("LOCAL_RANK", "0")), int(env.get("LOCAL_WORLD_SIZE", "1"))
            timeout = float(env.get("TOMO_DIST_TIMEOUT_S", DIST_TIMEOUT_S))
        except ValueError as exc:
            raise CommandError(
                f"RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and TOMO_DIST_TIMEOUT_S must be "
                f"numbers ({exc}); torchrun sets the first four"
            ) from None
        import datetime

        import torch
        import torch.distributed as dist

        cuda = str(device).startswith("cuda")
        if cuda:
            count = torch.cuda.device_count()
            if local_rank >= count:
                raise CommandError(
                    f"--device cuda: process LOCAL_RANK={local_rank} but this node has {count} GPU(s); "
                    f"start at most {count} processes per node (--nproc_per_node)"
                )
            torch.cuda.set_device(local_rank)
        try:
            dist.init_process_group(
                "cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout)
            )
        except Exception as exc:  # noqa: BLE001  (torch raises several types; each becomes one line)
            raise CommandError(
                f"rank {rank} could not join the other processes ({type(exc).__name__}: {exc}); "
                "check MASTER_ADDR/MASTER_PORT (torchrun --rdzv-endpoint)"
            ) from None
        return cls(rank, world, local_rank, local_world, joined=True)

    def device(self, device: str) -> str:
        """``--device`` for this process: plain ``cuda`` becomes this process's GPU."""
        return f"cuda:{self.local_rank}" if self.joined and device == "cuda" else device

    def share(self, obj):
        """Rank 0's ``obj``, on every rank (a small picklable object)."""
        if not self.joined:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank (waits for the slowest)."""
        if not self.joined:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.joined:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


@contextlib.contextmanager
def _silent_unless(speak: bool):
    """Information lines (stdout) of ranks other than 0 go nowhere; errors (stderr) stay."""
    if speak:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


# ----- outputs --------------------------------------------------------------------------------------
def _save_npz(path: Path, partial: PartialRun, shape: tuple, meta: dict, overwrite: bool) -> None:
    """Stream the chunks into ``path`` atomically: a kill leaves no file or the complete one."""
    from tomo.io.atomic import atomic_file
    from tomo.io.npzfile import NpzStreamWriter

    keys = ("hu", "std_hu") if partial.has_std() else ("hu",)
    with atomic_file(path, overwrite=overwrite) as fh, NpzStreamWriter(fh) as writer:
        for key in keys:
            with writer.array(key, shape, np.float32) as put:
                for start in partial.starts():
                    block = partial.read(start, key)
                    put(block if len(shape) == 3 else block[0])
        for key, value in meta.items():
            writer.write(key, np.str_(value) if isinstance(value, str) else value)


def _write_previews(outputs: Outputs, partial: PartialRun, source, args, has_std: bool) -> list[str]:
    """The middle slice's PNG (beside the reference and its scores) and its std figure."""
    from tomo.evaluation.scores import psnr, ssim
    from tomo.io.atomic import atomic_path

    n, chunk = source.num_slices, partial.manifest["chunk"]
    k = n // 2
    start = (k // chunk) * chunk
    hu = partial.read(start)[k - start]
    title = f"{args.method.upper()} ({_describe(source)})" + (f", slice {k}" if n > 1 else "")
    written = []
    if outputs.preview is not None:
        ref = None
        if source.has_reference:
            ((_, _, ref),) = source.iter_slices(k, k + 1, 1)
            ref = ref[0]
        with atomic_path(outputs.preview, overwrite=args.overwrite) as tmp:
            save_preview(
                tmp, hu, ref, title=title, scores=None if ref is None else (float(psnr(hu, ref)), float(ssim(hu, ref)))
            )
        written.append(str(outputs.preview))
    if has_std and outputs.std_preview is not None:
        with atomic_path(outputs.std_preview, overwrite=args.overwrite) as tmp:
            save_std_preview(tmp, hu, partial.read(start, "std_hu")[k - start], title=title)
        written.append(str(outputs.std_preview))
    return written


def _write_nifti(setup: _Setup, overwrite: bool, has_std: bool) -> list[str]:
    from tomo.io.nifti import write_nifti_volume

    p = setup.source.geometry.pixel_spacing_mm
    written = []
    for key, path in (("hu", setup.outputs.main), ("std_hu", setup.outputs.std)):
        if key == "hu" or has_std:
            write_nifti_volume(
                path, setup.partial.volume(key), (p, p), setup.slice_spacing, setup.reference, overwrite=overwrite
            )
            written.append(str(path))
    return written


def _write_dicom(setup: _Setup, summary: str, args, has_std: bool) -> list[str]:
    """The image series in ``OUT`` and, with a std, its standard-deviation series in ``OUT_std``."""
    import pydicom
    from pydicom.uid import generate_uid

    from tomo.io.dicom_write import default_series_number, write_series

    p = setup.source.geometry.pixel_spacing_mm
    name = args.method.upper()
    study = (generate_uid(), generate_uid())  # the two series' study when the reference has none (NIfTI)
    common = dict(pixel_spacing_mm=(p, p), overwrite=args.overwrite, study_uids=study)
    files = write_series(
        setup.partial.volume("hu"),
        setup.outputs.main,
        setup.reference,
        description=f"tomo {name} reconstruction",
        derivation=f"{summary} (tomo reconstruct)",
        **common,
    )
    written = [f"{len(files)} DICOM files to {setup.outputs.main}"]
    if has_std:
        image_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
        samples = setup.options.get("samples")
        std_files = write_series(
            setup.partial.volume("std_hu"),
            setup.outputs.std,
            setup.reference,
            description=f"tomo {name} posterior std (HU)",
            derivation=(
                f"pixel-wise posterior standard deviation in HU over {samples} samples of the {name} "
                f"reconstruction in series {image_uid}; {summary} (tomo reconstruct)"
            ),
            series_number=default_series_number(setup.reference, 1),
            hu_step=0.1,
            **common,
        )
        written.append(f"{len(std_files)} DICOM files (posterior std) to {setup.outputs.std}")
    return written


def _read_reference(args, sf):
    """Read the reference volume and check it matches the sinogram's slices and field of view."""
    from tomo.io.volume import read_volume

    vol = read_volume(args.dicom_reference, series_uid=args.series)
    if vol.hu.shape[0] != sf.num_slices:
        raise CommandError(
            f"--reference has {vol.hu.shape[0]} slices but the sinogram {sf.num_slices}; "
            f"give the series (or the single file) the sinogram was simulated from"
        )
    rows, cols = vol.hu.shape[1:]
    ref_fov = max(rows * vol.pixel_spacing_mm[0], cols * vol.pixel_spacing_mm[1])
    fov = sf.geometry.image_shape[0] * sf.geometry.pixel_spacing_mm
    if abs(ref_fov - fov) > 0.01 * fov:
        raise CommandError(f"field of view mismatch: reconstruction {fov:.1f} mm, --reference {ref_fov:.1f} mm")
    return vol


def _nifti_slice_spacing(args, source, reference) -> float:
    """Distance between the NIfTI's slices, mm: --slice-spacing, else the reference's."""
    if args.slice_spacing is not None:
        return float(args.slice_spacing)
    if reference is not None:
        if reference.slice_spacing_mm:
            return float(reference.slice_spacing_mm)
        thickness = reference.header.get("SliceThickness") if reference.header is not None else None
        if thickness:
            return float(thickness)
    if source.num_slices == 1:
        return float(source.geometry.pixel_spacing_mm)  # one slice, nothing known: a cubic voxel
    raise CommandError(
        "the sinogram file does not record the distance between slices: give --slice-spacing MM "
        "or --reference VOLUME (the series it was simulated from) for NIfTI output"
    )
