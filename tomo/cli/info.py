"""``tomo info PATH``: describe the CT series under a folder/file, or an ``.npz`` volume/sinogram."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np



#: one-line summary shown by ``tomo --help``
HELP = "list the CT series (or .npz contents) found at a path"

def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help=HELP,
        description="List the CT series under PATH (a DICOM folder, searched recursively, or file) "
                    "with size, spacing, HU range, transfer syntaxes, tilt/irregular spacing and the "
                    "files skipped; or describe an .npz CT volume or sinogram file.")
    parser.add_argument("path", type=Path, metavar="PATH")
    parser.add_argument("--no-pixels", action="store_true",
                        help="skip decoding pixel data (faster; no HU range)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_file() and path.suffix.lower() == ".npz":
        print(describe_npz(path))
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
        lines.append(f"    {s.n_slices} slice{'s' if s.n_slices != 1 else ''} of {size}, pixel {ps}, slice spacing "
                     f"{_mm(s.slice_spacing_mm)}{hu}")
        lines.append(f"    transfer syntax: {', '.join(s.transfer_syntaxes)}")
        for w in s.warnings:
            lines.append(f"    warning: {w}")
        for p in s.problems:
            lines.append(f"    NOT READABLE: {p}")
        lines.append(f"    files: {len(s.files)} (first {s.files[0]})")
    if scan.skipped:
        lines.append(f"skipped {len(scan.skipped)} files:")
        for reason, n in scan.skipped_reasons().most_common():
            lines.append(f"  {n:5d}  {reason}")
    return lines


def describe_npz(path: Path) -> str:
    """Keys, shapes and dtypes of an ``.npz``, with a summary for CT volumes and sinograms."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npz ({exc})") from exc
    with data:
        lines = [f"{path}: .npz with {len(data.files)} arrays"]
        arrays = {}
        for key in data.files:
            try:
                arr = data[key]
            except ValueError as exc:  # object arrays need pickle, which we never enable
                lines.append(f"  {key}: unreadable without pickle ({exc})")
                continue
            arrays[key] = arr
            value = f" = {np.array2string(arr, precision=4)}" if arr.size <= 4 else ""
            lines.append(f"  {key}: {arr.dtype} {list(arr.shape)}{value}")
        if "hu" in arrays:
            hu = arrays["hu"]
            lines.append(f"CT volume: {hu.shape[0] if hu.ndim == 3 else 1} slices, HU "
                         f"{float(hu.min()):.0f} to {float(hu.max()):.0f}"
                         + (f", voxel (x, y, z) {np.array2string(arrays['spacing_mm'], precision=4)} mm"
                            if "spacing_mm" in arrays else ""))
        if "sinogram" in arrays:
            sino = arrays["sinogram"]
            geometry = str(arrays["geometry"]) if "geometry" in arrays else "?"
            lines.append(f"sinogram: {geometry} beam, shape {list(sino.shape)} "
                         "([slices,] views, detectors), line integrals "
                         f"{float(sino.min()):.4g} to {float(sino.max()):.4g}")
        if not data.files:
            raise ValueError(f"{path}: empty .npz")
    return "\n".join(lines)
