"""``tomo reconstruct``'s output plan: the paths ``--out`` stands for, checked before any work.

``OUT.npz`` (with ``OUT.png`` and ``OUT_std.png``), ``OUT.nii[.gz]`` (with ``OUT_std.nii[.gz]``
and the previews), or a DICOM folder ``OUT`` (with ``OUT_std``) beside ``--reference``; and the
reference volume and NIfTI slice spacing those outputs need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tomo.cli.main import CommandError

if TYPE_CHECKING:
    from tomo.cli.recon_partial import PartialRun
    from tomo.io.outputs import Claim, OutputPlan
    from tomo.io.sinogram import SinogramSource
    from tomo.io.volume import CTVolume


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


@dataclass
class Setup:
    """What rank 0 prepared before any reconstruction (the other ranks get ``shared()``)."""

    options: dict
    outputs: Outputs
    source: SinogramSource  # open
    reference: CTVolume | None
    slice_spacing: float | None
    partial: PartialRun
    todo: list[int]
    overwrite: bool  # --overwrite, or --resume of a run killed while writing its outputs
    claim: Claim  # the locks on every output, held until the run ends

    def shared(self) -> dict:
        return {"manifest": self.partial.manifest, "folder": str(self.partial.folder), "todo": self.todo}


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".npz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def plan_outputs(args) -> Outputs:
    """The output paths of ``--out``; refuse a wrong suffix (:func:`output_plan` checks the paths)."""
    from tomo.io.nifti import is_nifti_path

    out: Path = args.out
    stem = _stem(out)
    if is_nifti_path(out):
        require_nibabel()  # before the reconstruction, not after it
        suffix = out.name[len(stem) :]
        outputs = Outputs(
            "nifti",
            out,
            out.with_name(f"{stem}_std{suffix}"),
            out.with_name(f"{stem}.png"),
            out.with_name(f"{stem}_std.png"),
        )
    elif args.dicom_reference is not None or (out.suffix == "" and records_placement(args.file)):
        if out.suffix == ".npz":
            raise CommandError(
                "with --reference, --out is a folder for the DICOM series (or an .nii/.nii.gz file), not an .npz"
            )
        outputs = Outputs("dicom", out, out.with_name(f"{out.name}_std"), None, None)
    elif out.suffix == ".npz":
        outputs = Outputs("npz", out, None, out.with_suffix(".png"), out.with_name(f"{stem}_std.png"))
    else:
        raise CommandError(
            f"--out must end in .npz, .nii or .nii.gz, or name a folder for DICOM with --reference (or "
            f"without it, for a sinogram file that records where its slices lie, as tomo simulate writes it), got {out}"
        )
    if args.slice_spacing is not None and (outputs.kind != "nifti" or not args.slice_spacing > 0):
        raise CommandError("--slice-spacing takes a positive number of mm and applies to NIfTI output only")
    if args.no_preview:
        outputs.preview = outputs.std_preview = None
    return outputs


def records_placement(path: Path) -> bool:
    """Whether the sinogram file records where its slices lie (``positions_mm``, written by
    ``tomo simulate`` from a volume): then ``--out DIR`` writes a DICOM series without ``--reference``."""
    from tomo.io.sinogram import open_sinogram

    try:
        with open_sinogram(path) as source:
            return source.positions_mm is not None
    except (OSError, ValueError):
        return False  # reported with its reason when the run opens the file


def require_nibabel() -> None:
    from tomo.io.nifti import NiftiDependencyError

    try:
        import nibabel  # noqa: F401
    except ImportError:
        raise NiftiDependencyError(
            "NIfTI output needs nibabel: pip install tomo-ct[nifti] (or pip install "
            "'nibabel>=5'), or write --out OUT.npz"
        ) from None


def output_plan(outputs: Outputs, expects_std: bool, inputs: list, overwrite: bool) -> OutputPlan:
    """Every path the run writes (:mod:`tomo.io.outputs`): the image, its std, the previews and
    ``OUT.partial``, to be claimed (locked and checked against ``inputs``) before any work."""
    from tomo.cli.recon_partial import partial_folder
    from tomo.io.outputs import OutputPlan

    plan = OutputPlan(inputs, overwrite=overwrite)
    if outputs.kind == "dicom":
        plan.folder(outputs.main, "DICOM series")
        if expects_std and outputs.std is not None:
            plan.folder(outputs.std, "posterior std DICOM series")
    else:
        plan.file(outputs.main, "output")
        if expects_std and outputs.std is not None:
            plan.file(outputs.std, "posterior std volume")
    if outputs.preview is not None:
        plan.file(outputs.preview, "preview")
    if expects_std and outputs.std_preview is not None:
        plan.file(outputs.std_preview, "posterior std preview")
    plan.folder(partial_folder(outputs.main), "partial results", scratch=True)
    return plan


def read_reference(args, sf):
    """Read the reference volume and check it matches the sinogram's slices and field of view."""
    from tomo.io.dicom_read import SeveralSeriesError
    from tomo.io.volume import read_volume

    try:
        stack = getattr(args, "stack_series", False)
        vol = read_volume(args.dicom_reference, series_uid=args.series, stack_series=stack)
    except SeveralSeriesError as exc:  # name the command's options, not the Python arguments
        raise CommandError(exc.message("--series UID", "--stack-series")) from None
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


def nifti_slice_spacing(args, source, reference) -> float:
    """Distance between the NIfTI's slices, mm: --slice-spacing, else the reference's (``--reference``
    or the placement the sinogram file records)."""
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
        "the sinogram file does not record the distance between slices (no slice_spacing_mm or "
        "positions_mm: not written by tomo simulate from a volume): give --slice-spacing MM "
        "or --reference VOLUME (the series it was simulated from) for NIfTI output"
    )
