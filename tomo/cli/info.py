"""``tomo info PATH``: describe the CT series under a folder/file, an ``.npz`` volume/sinogram, or a
NIfTI volume (``.nii``, ``.nii.gz``; needs nibabel: ``pip install tomo-ct[nifti]``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

#: one-line summary shown by ``tomo --help``
HELP = "list the CT series (or .npz / NIfTI contents) found at a path"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help=HELP,
        description="List the CT series under PATH (a DICOM folder, searched recursively, or file) "
        "with size, spacing, HU range, transfer syntaxes, tilt/irregular spacing, and every "
        "file skipped with the reason; or describe an .npz CT volume or sinogram file, or a NIfTI volume "
        "(.nii, .nii.gz: size, spacing, HU range, orientation; needs nibabel).",
    )
    parser.add_argument("path", type=Path, metavar="PATH")
    parser.add_argument("--no-pixels", action="store_true", help="skip decoding pixel data (faster; no HU range)")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print nothing; the exit code says whether PATH holds a readable CT series, "
        ".npz or NIfTI (0) or not (2), with the reason on stderr",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_file() and path.suffix.lower() == ".npz":
        print(describe_npz(path))
        return 0
    if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")):
        for line in describe_nifti(path):
            print(line)
        return 0
    from tomo.io.dicom_read import DicomReadError, find_series

    scan = find_series(path, read_pixels=not args.no_pixels)
    for line in describe_scan(scan):
        print(line)
    if not any(s.readable for s in scan):
        why = "; ".join(f"{n} {r}" for r, n in scan.skipped_reasons().most_common(3))
        if scan:
            why = "; ".join(p for s in scan for p in s.problems)[:300]
        raise DicomReadError(f"no readable CT series in {path}" + (f" ({why})" if why else " (no files)"))
    return 0


def _mm(value) -> str:
    return "-" if value is None else f"{value:.4g} mm"


def describe_scan(scan) -> list[str]:
    """Human-readable lines for a :class:`tomo.io.dicom_read.SeriesScan`."""
    lines = [f"{len(scan)} CT series"]
    for s in scan:
        size = f"{s.rows}x{s.cols}" if s.rows else "mixed sizes"
        ps = "-" if s.pixel_spacing_mm is None else "x".join(f"{v:.4g}" for v in s.pixel_spacing_mm) + " mm"
        hu = "" if s.hu_range is None else f", HU {s.hu_range[0]:.0f} to {s.hu_range[1]:.0f}"
        lines.append(f"- {s.uid}  {s.description or '(no description)'!r}  {s.modality}")
        lines.append(
            f"    {s.n_slices} slice{'s' if s.n_slices != 1 else ''} of {size}, pixel {ps}, slice spacing "
            f"{_mm(s.slice_spacing_mm)}{hu}"
        )
        lines.append(f"    transfer syntax: {', '.join(s.transfer_syntaxes)}")
        for w in s.warnings:
            lines.append(f"    warning: {w}")
        for p in s.problems:
            lines.append(f"    NOT READABLE: {p}")
        lines.append(f"    files: {len(s.files)} (first {s.files[0]})")
    if len(scan) > 1 and all(s.n_slices == 1 for s in scan):
        lines.append(
            f"{len(scan)} series of one slice each: `tomo simulate --stack-series` reads them as one scan "
            "(if they share frame of reference, orientation, size and pixel spacing)"
        )
    if scan.skipped:
        # every skipped file by name, under its reason (most common reason first)
        lines.append(f"skipped {len(scan.skipped)} file{'s' if len(scan.skipped) != 1 else ''}:")
        by_reason: dict[str, list[Path]] = {}
        for skipped in scan.skipped:
            by_reason.setdefault(skipped.reason, []).append(skipped.path)
        for reason, n in scan.skipped_reasons().most_common():
            lines.append(f"  {n:5d}  {reason}")
            lines.extend(f"           {path}" for path in by_reason[reason])
    return lines


def describe_npz(path: Path) -> str:
    """Keys, shapes and dtypes of an ``.npz``, with a summary for CT volumes and sinograms.

    Shapes come from the arrays' headers; value ranges are computed by streaming the arrays in
    blocks of slices, so a file larger than memory is described too.
    """
    from tomo.io.npzfile import NpzArchive

    with NpzArchive(path, error=ValueError) as data:
        if not data.files:
            raise ValueError(f"{path}: empty .npz (no arrays)")
        lines = [f"{path}: .npz with {len(data.files)} arrays"]
        for key, m in data.members.items():
            value = ""
            if 0 < int(np.prod(m.shape)) <= 4:
                value = f" = {np.array2string(data.read(key), precision=4)}"
            lines.append(f"  {key}: {m.dtype} {list(m.shape)}{value}")
        if "hu" in data and _numeric(data.members["hu"]):
            hu = data.members["hu"]
            lo, hi = _value_range(data, "hu")
            spacing = ""
            if "spacing_mm" in data and data.members["spacing_mm"].nbytes <= 1024:
                spacing = f", voxel (x, y, z) {np.array2string(data.read('spacing_mm'), precision=4)} mm"
            lines.append(
                f"CT volume: {hu.shape[0] if len(hu.shape) == 3 else 1} slices, HU {lo:.0f} to {hi:.0f}" + spacing
            )
        if "sinogram" in data and _numeric(data.members["sinogram"]):
            sino = data.members["sinogram"]
            geometry = "?"
            if "geometry" in data and data.members["geometry"].nbytes <= 1024:
                geometry = str(data.read("geometry"))
            lo, hi = _value_range(data, "sinogram")
            lines.append(
                f"sinogram: {geometry} beam, shape {list(sino.shape)} "
                f"([slices,] views, detectors), line integrals {lo:.4g} to {hi:.4g}"
            )
    return "\n".join(lines)


#: the patient axis (LPS index) a slice normal points along -> the plane's name
_PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}


def describe_nifti(path: Path) -> list[str]:
    """Human-readable lines for a NIfTI CT volume (:func:`tomo.io.nifti.read_nifti_volume`).

    Size [slices, rows, cols], voxel spacing (mm), HU range, the slice plane and orientation
    cosines, and the first slice's position, in DICOM patient coordinates (LPS, mm).
    """
    from tomo.io.nifti import read_nifti_volume  # nibabel is optional: a one-line error names the extra

    vol = read_nifti_volume(path)
    n, rows, cols = vol.hu.shape
    normal = vol.normal
    axis = int(np.argmax(np.abs(normal)))
    plane = _PLANES[axis] if abs(normal[axis]) > 0.9999 else f"oblique (closest: {_PLANES[axis]})"
    row_cos, col_cos = vol.orientation[:3], vol.orientation[3:]
    ps = vol.pixel_spacing_mm
    lines = [
        f"{path}: NIfTI volume, {n} slice{'s' if n != 1 else ''} of {rows}x{cols}",
        f"    pixel {ps[0]:.4g}x{ps[1]:.4g} mm (rows x columns), slice spacing {_mm(vol.slice_spacing_mm)}, "
        f"HU {float(vol.hu.min()):.0f} to {float(vol.hu.max()):.0f}",
        f"    orientation {plane}: row cosines {_cosines(row_cos)}, column cosines {_cosines(col_cos)} "
        f"(LPS); first slice at {_cosines(vol.positions[0], '.1f')} mm",
    ]
    if vol.gantry_tilt_deg:
        lines.append(f"    gantry tilt {vol.gantry_tilt_deg:.2f} deg")
    lines += [f"    warning: {w}" for w in vol.warnings]
    return lines


def _cosines(values, fmt: str = ".4g") -> str:
    return "(" + ", ".join(f"{round(float(v), 6) + 0.0:{fmt}}" for v in values) + ")"  # + 0.0: no "-0"


def _numeric(member) -> bool:
    return member.dtype.kind in "biuf" and int(np.prod(member.shape)) > 0


def _value_range(data, key: str) -> tuple[float, float]:
    """(min, max) of an array, read in blocks of its first axis (bounded memory)."""
    m = data.members[key]
    if len(m.shape) < 2:
        arr = data.read(key)
        return float(arr.min()), float(arr.max())
    row_bytes = max(m.nbytes // m.shape[0], 1)
    rows = max(1, (64 << 20) // row_bytes)  # about 64 MiB a block
    lo, hi = np.inf, -np.inf
    for _, block in data.iter_rows(key, rows=rows):
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return lo, hi
