"""Read CT series from DICOM into Hounsfield units.

Public API
----------
- :func:`find_series` -- scan a folder (recursively) or a file, group CT images by
  SeriesInstanceUID, report geometry and skipped files.
- :func:`read_series` -- read one CT series as a :class:`CTVolume` (HU, float32).
- :class:`DicomReadError` -- every refusal (a :class:`ValueError`).

Conventions
-----------
``hu`` is ``[slices, rows, cols]``; slices are ordered along the slice normal
``n = row_cosines x col_cosines`` (increasing ``dot(position, n)``), rows follow the column
direction cosines and columns the row direction cosines, exactly as stored. Pixel spacing is
``(row spacing, column spacing)`` in mm, i.e. DICOM PixelSpacing order. HU are computed in
float64 as ``stored * RescaleSlope + RescaleIntercept`` before the cast to float32; values
are not clipped (padding such as -3024 HU is kept as stored).
"""

from __future__ import annotations

import os
import warnings as _warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from .dicom_header import (
    CT_SOP_CLASSES,
    RETIRED_JPEG,
    DicomReadError,
    FileHeader,
    Frame,
    SkippedFile,
    dcmread_lenient,
    float_or,
    read_header,
    transfer_syntax_name,
)
from .resources import MemoryBudgetError, check_memory
from .volume_types import CTVolume

__all__ = [
    "SeriesInfo",
    "SeriesScan",
    "SkippedFile",
    "DicomReadError",
    "SeveralSeriesError",
    "find_series",
    "read_series",
    "CT_SOP_CLASSES",
]


# Tolerances (mm, degrees) for geometry checks; DICOM DS values carry ~6 significant digits.
_POSITION_TOL_MM = 1e-3
_SPACING_REL_TOL = 0.01
_TILT_TOL_DEG = 0.05
_ORIENTATION_TOL = 1e-4


@dataclass
class SeriesInfo:
    """Summary of one CT series found by :func:`find_series`.

    Attributes
    ----------
    uid, study_uid : str
        SeriesInstanceUID and StudyInstanceUID.
    description, modality : str
    n_slices : int
        Number of 2-D images (frames of multi-frame files count one each).
    rows, cols : int
        Image size in pixels (None when the series mixes sizes).
    pixel_spacing_mm : tuple of float or None
        (row spacing, column spacing) in mm.
    slice_spacing_mm : float or None
        Median distance between slice planes along the slice normal, mm (None for one slice).
    hu_range : tuple of float or None
        (min, max) HU, only when the scan was asked to read pixels.
    transfer_syntaxes : list of str
        Names of the transfer syntaxes used by the files.
    gantry_tilt_deg : float
        GantryDetectorTilt when present and non-zero, else the tilt measured from the
        positions (angle between slice steps and the slice normal), degrees.
    irregular_spacing : bool
        True when plane distances differ by more than 1 % of the median.
    warnings : list of str
        Conditions that do not stop reading (tilt, uneven spacing, lossy compression ...).
    problems : list of str
        Conditions that stop :func:`read_series` (mixed sizes, duplicate positions ...).
    files : list of Path
        The files of the series.
    """

    uid: str
    study_uid: str
    description: str
    modality: str
    n_slices: int
    rows: int | None
    cols: int | None
    pixel_spacing_mm: tuple[float, float] | None
    slice_spacing_mm: float | None
    hu_range: tuple[float, float] | None
    transfer_syntaxes: list[str]
    gantry_tilt_deg: float
    irregular_spacing: bool
    warnings: list[str]
    problems: list[str]
    files: list[Path]

    @property
    def readable(self) -> bool:
        """Whether :func:`read_series` will accept the series (no problems found)."""
        return not self.problems


class SeriesScan(list):
    """The list of :class:`SeriesInfo` from :func:`find_series`, plus the files skipped.

    Attributes
    ----------
    skipped : list of SkippedFile
    """

    def __init__(self, series: Iterable[SeriesInfo] = (), skipped: Sequence[SkippedFile] = ()):
        super().__init__(series)
        self.skipped: list[SkippedFile] = list(skipped)

    def skipped_reasons(self) -> Counter:
        """Counter of skip reasons (reason text -> number of files)."""
        return Counter(s.reason for s in self.skipped)


# ----------------------------------------------------------------------------- geometry


@dataclass
class _Geometry:
    order: np.ndarray
    slice_spacing_mm: float | None
    gantry_tilt_deg: float
    irregular: bool
    warnings: list[str]
    problems: list[str]


def _analyse(headers: list[FileHeader]) -> tuple[list[Frame], _Geometry]:
    frames = [f for h in headers for f in h.frames]
    warn: list[str] = []
    problems: list[str] = []
    sizes = {(int(h.header.Rows), int(h.header.Columns)) for h in headers}
    if len(sizes) > 1:
        problems.append(f"mixed image sizes {sorted(sizes)} in one series")
    spacings = {f.pixel_spacing for f in frames}
    if len(spacings) > 1 and np.ptp(np.array(list(spacings)), axis=0).max() > 1e-4:
        problems.append(f"mixed pixel spacings {sorted(spacings)} in one series")
    modalities = {str(h.header.get("Modality", "")) for h in headers}
    if len(modalities) > 1:
        problems.append(f"mixed modalities {sorted(modalities)} in one series")
    order = np.arange(len(frames))
    tilt_header = max((abs(float_or(h.header.get("GantryDetectorTilt"), 0.0)) for h in headers), default=0.0)
    tilt_sign = next(
        (
            np.sign(float_or(h.header.get("GantryDetectorTilt"), 0.0))
            for h in headers
            if float_or(h.header.get("GantryDetectorTilt"), 0.0)
        ),
        1.0,
    )
    geo = _Geometry(order, None, float(tilt_sign * tilt_header), False, warn, problems)
    if any(f.orientation is None for f in frames) or any(f.position is None for f in frames):
        if len(frames) > 1:
            problems.append("ImagePositionPatient/ImageOrientationPatient missing: cannot order slices")
        else:
            warn.append("no ImagePositionPatient/ImageOrientationPatient: identity geometry assumed")
        return frames, geo
    ori = np.array([f.orientation for f in frames])
    if np.abs(ori - ori[0]).max() > _ORIENTATION_TOL:
        problems.append("mixed slice orientations in one series (e.g. axial and coronal images)")
        return frames, geo
    o = ori[0]
    normal = np.cross(o[:3], o[3:])
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        problems.append(f"ImageOrientationPatient {o.tolist()} is not two orthonormal vectors")
        return frames, geo
    pos = np.array([f.position for f in frames])
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    geo.order = order
    if len(frames) > 1:
        steps = np.diff(dist[order])
        if np.any(steps < _POSITION_TOL_MM):
            n_dup = int(np.sum(steps < _POSITION_TOL_MM)) + 1
            problems.append(
                f"{n_dup} images share a slice position (copies of the same image, e.g. one image in "
                "several transfer syntaxes, or several acquisitions under one series UID); "
                "read the files one at a time"
            )
            return frames, geo
        spacing = float(np.median(steps))
        geo.slice_spacing_mm = spacing
        if np.max(np.abs(steps - spacing)) > _SPACING_REL_TOL * spacing:
            geo.irregular = True
            warn.append(
                f"irregular slice spacing: plane distances {steps.min():.3f} to "
                f"{steps.max():.3f} mm (median {spacing:.3f} mm)"
            )
        delta = np.diff(pos[order], axis=0)
        cos = np.clip(np.abs(delta @ normal) / np.linalg.norm(delta, axis=1), 0.0, 1.0)
        measured = float(np.degrees(np.arccos(cos)).max())
        if measured > _TILT_TOL_DEG:
            if tilt_header == 0.0:
                geo.gantry_tilt_deg = measured
            warn.append(
                f"gantry tilt: slice positions step {measured:.2f} deg off the slice normal "
                f"(GantryDetectorTilt {tilt_sign * tilt_header:g} deg); the volume is sheared, "
                "use `positions` for true geometry"
            )
    if tilt_header > _TILT_TOL_DEG and not any(w.startswith("gantry tilt") for w in warn):
        warn.append(f"gantry tilt: GantryDetectorTilt {tilt_sign * tilt_header:g} deg")
    return frames, geo


# ----------------------------------------------------------------------------- scanning


def _iter_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or folder: {path}")
    return sorted(p for p in path.rglob("*") if p.is_file())


def _group(path: Path) -> tuple[dict[str, list[FileHeader]], list[SkippedFile]]:
    groups: dict[str, list[FileHeader]] = {}
    skipped: list[SkippedFile] = []
    seen: dict[str, Path] = {}
    for p in _iter_files(Path(path)):
        result = read_header(p)
        if isinstance(result, SkippedFile):
            skipped.append(result)
            continue
        sop_uid = str(result.header.get("SOPInstanceUID", ""))
        if sop_uid and sop_uid in seen:  # byte-for-byte copies are common in exported folders
            skipped.append(SkippedFile(p, "duplicate of an image already found (same SOPInstanceUID)"))
            continue
        seen[sop_uid] = p
        uid = str(result.header.get("SeriesInstanceUID", "")) or f"(no SeriesInstanceUID) {p}"
        groups.setdefault(uid, []).append(result)
    return groups, skipped


def _is_hu_label(rescale_type: str) -> bool:
    # "HU" is the defined term; vendors also write e.g. "Houndsfield Unit"
    label = rescale_type.strip().upper()
    return label == "HU" or label.startswith(("HOUNSFIELD", "HOUNDSFIELD"))


def _info(uid: str, headers: list[FileHeader]) -> SeriesInfo:
    frames, geo = _analyse(headers)
    first = headers[0].header
    sizes = {(int(h.header.Rows), int(h.header.Columns)) for h in headers}
    rows, cols = next(iter(sizes)) if len(sizes) == 1 else (None, None)
    notes = sorted({n for h in headers for n in h.notes})
    rtypes = {f.rescale_type for f in frames if f.rescale_type and not _is_hu_label(f.rescale_type)}
    if rtypes:
        notes.append(f"RescaleType {sorted(rtypes)}, not HU: values may not be Hounsfield units")
    return SeriesInfo(
        uid=uid,
        study_uid=str(first.get("StudyInstanceUID", "")),
        description=str(first.get("SeriesDescription", "")),
        modality=str(first.get("Modality", "")),
        n_slices=len(frames),
        rows=rows,
        cols=cols,
        pixel_spacing_mm=frames[0].pixel_spacing,
        slice_spacing_mm=geo.slice_spacing_mm,
        hu_range=None,
        transfer_syntaxes=sorted({transfer_syntax_name(h.transfer_syntax) for h in headers}),
        gantry_tilt_deg=geo.gantry_tilt_deg,
        irregular_spacing=geo.irregular,
        warnings=geo.warnings + notes,
        problems=geo.problems,
        files=[h.path for h in headers],
    )


def find_series(path: str | os.PathLike, read_pixels: bool = False) -> SeriesScan:
    """Find the CT series in a folder (searched recursively) or a single file.

    Parameters
    ----------
    path : str or Path
        Folder or file.
    read_pixels : bool
        Also decode the pixel data to fill ``hu_range`` (slower).

    Returns
    -------
    SeriesScan
        A list of :class:`SeriesInfo` (sorted by description, then UID) with ``.skipped``, the
        files that are not usable CT images and why (not DICOM, not CT, no pixel data, ...).

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    """
    groups, skipped = _group(Path(path))
    infos = [_info(uid, hs) for uid, hs in groups.items()]
    if read_pixels:
        for info in infos:
            if not info.readable:
                continue
            try:
                vol = _read_group(groups[info.uid], info.uid)
            except DicomReadError as exc:
                info.problems.append(str(exc))
                continue
            info.hu_range = (float(vol.hu.min()), float(vol.hu.max()))
    infos.sort(key=lambda s: (s.description, s.uid))
    return SeriesScan(infos, skipped)


# ----------------------------------------------------------------------------- pixel decoding


def _decode(path: Path, transfer_syntax: str) -> np.ndarray:
    """Stored values of every frame, [frames, rows, cols], any integer dtype."""
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")  # header problems were reported by the scan
        try:
            ds = dcmread_lenient(path)
        except Exception as exc:
            raise DicomReadError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
        try:
            arr = ds.pixel_array
        except NotImplementedError as exc:
            if transfer_syntax not in RETIRED_JPEG:
                raise DicomReadError(
                    f"{path}: no decoder for transfer syntax {transfer_syntax_name(transfer_syntax)} "
                    f"({transfer_syntax}); install a pydicom pixel-data plugin for it"
                ) from exc
            arr = _decode_retired_jpeg(ds, path)
        except Exception as exc:
            raise DicomReadError(
                f"{path}: cannot decode pixel data ({transfer_syntax_name(transfer_syntax)}): {type(exc).__name__}: {exc}"
            ) from exc
    rows, cols = int(ds.Rows), int(ds.Columns)
    arr = np.asarray(arr).reshape(-1, rows, cols)
    if arr.shape[0] != int(ds.get("NumberOfFrames", 1) or 1):
        raise DicomReadError(f"{path}: decoded {arr.shape[0]} frames, header says {ds.get('NumberOfFrames', 1)}")
    return arr


def _decode_retired_jpeg(ds: Dataset, path: Path) -> np.ndarray:
    """Decode retired JPEG syntaxes (e.g. 1.2.840.10008.1.2.4.53/55, progressive) with libjpeg."""
    try:
        from libjpeg import decode
        from pydicom.encaps import generate_frames
    except ImportError as exc:
        raise DicomReadError(f"{path}: retired JPEG syntax needs pylibjpeg-libjpeg") from exc
    n = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        out = np.stack([decode(f) for f in generate_frames(ds.PixelData, number_of_frames=n)])
    except Exception as exc:
        raise DicomReadError(f"{path}: cannot decode retired JPEG pixel data: {exc}") from exc
    if int(ds.get("PixelRepresentation", 0)) == 1:  # two's complement in BitsStored bits
        bits = int(ds.BitsStored)
        out = out.astype(np.int32)
        out = np.where(out >= 1 << (bits - 1), out - (1 << bits), out)
    return out


def _read_group(headers: list[FileHeader], uid: str, label: str | None = None) -> CTVolume:
    label = label or f"series {uid}"
    frames, geo = _analyse(headers)
    if geo.problems:
        raise DicomReadError(f"{label}: " + "; ".join(geo.problems))
    by_path = {h.path: h for h in headers}
    ordered = [frames[i] for i in geo.order]
    first = by_path[ordered[0].path]
    rows, cols = int(first.header.Rows), int(first.header.Columns)
    _check_volume_memory(len(ordered), rows, cols, max(len(h.frames) for h in headers), label)
    hu = np.empty((len(ordered), rows, cols), dtype=np.float32)
    slot = {(f.path, f.frame): k for k, f in enumerate(ordered)}
    for h in _progress(headers, "reading DICOM"):
        stored = _decode(h.path, h.transfer_syntax)
        for f in h.frames:
            # float64 so a large slope/intercept never loses precision before the cast
            hu[slot[(f.path, f.frame)]] = stored[f.frame].astype(np.float64) * f.slope + f.intercept
    if any(f.position is None or f.orientation is None for f in ordered):
        positions = np.zeros((len(ordered), 3))
        orientation = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    else:
        positions = np.array([f.position for f in ordered])
        orientation = tuple(float(v) for v in ordered[0].orientation)
    info = _info(uid, headers)
    return CTVolume(
        hu=hu,
        pixel_spacing_mm=ordered[0].pixel_spacing,
        slice_spacing_mm=geo.slice_spacing_mm,
        positions=positions,
        orientation=orientation,
        gantry_tilt_deg=geo.gantry_tilt_deg,
        irregular_spacing=geo.irregular,
        warnings=info.warnings,
        header=first.header,
        series_uid=uid,
        study_uid=info.study_uid,
        transfer_syntaxes=info.transfer_syntaxes,
        files=[f.path for f in ordered],
    )


def _check_volume_memory(n: int, rows: int, cols: int, frames_per_file: int, label: str) -> None:
    """Refuse a series whose HU volume cannot fit in memory (before allocating it)."""
    # float32 volume + one file's stored frames (at most 8 bytes a value) + a float64 slice
    needed = 4 * n * rows * cols + 8 * frames_per_file * rows * cols + 8 * rows * cols
    try:
        check_memory(
            needed, f"{label} ({n} images of {rows} x {cols})", "read fewer files (a sub-folder) or free memory"
        )
    except MemoryBudgetError as exc:
        raise DicomReadError(str(exc)) from None


def _progress(items: list, desc: str):
    if len(items) < 50:
        return items
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs would fill with updates)
    return tqdm(items, desc=desc, unit="file", leave=False, disable=None)


def _skip_summary(skipped: list[SkippedFile]) -> str:
    if len(skipped) == 1:
        return f"{skipped[0].path}: {skipped[0].reason}"
    counts = Counter(s.reason for s in skipped)
    return ", ".join(f"{n} {reason}" for reason, n in counts.most_common())


class SeveralSeriesError(DicomReadError):
    """A folder holds several CT series and none was chosen.

    Attributes
    ----------
    path : Path
    series : list of (str, str, int)
        (SeriesInstanceUID, SeriesDescription, number of images) of each series, by UID.
    """

    def __init__(self, path: str | os.PathLike, series: list[tuple[str, str, int]]):
        self.path = Path(path)
        self.series = series
        super().__init__(self.message())

    @property
    def single_slices(self) -> bool:
        """Whether every series holds one image (they may be one scan: see ``stack_series``)."""
        return all(n == 1 for _, _, n in self.series)

    def message(self, choose: str = "series_uid=UID", stack: str = "stack_series=True") -> str:
        """The one-line message, naming the option that picks a series and the one that stacks.

        The command line passes its own option names (``--series UID``, ``--stack-series``).
        """
        shown = [
            f"{uid} {desc or '(no description)'!r} {n} slice{'s' if n != 1 else ''}" for uid, desc, n in self.series[:8]
        ]
        if len(self.series) > 8:
            shown.append(f"... and {len(self.series) - 8} more")
        text = f"{self.path} holds {len(self.series)} CT series: {'; '.join(shown)}; pick one with {choose}"
        if self.single_slices:
            text += f", or read these series of one slice each as one scan with {stack}"
        return text


def read_series(path: str | os.PathLike, series_uid: str | None = None, *, stack_series: bool = False) -> CTVolume:
    """Read one CT series as HU.

    Parameters
    ----------
    path : str or Path
        A folder (searched recursively) or a single DICOM file.
    series_uid : str, optional
        SeriesInstanceUID to read; needed when ``path`` holds several CT series.
    stack_series : bool
        Read every CT series under ``path`` as one scan: for exports that store each slice as a
        series of its own. The images must share one frame of reference, orientation, size and
        pixel spacing and lie at distinct positions (else :class:`DicomReadError` says which
        differs); they are ordered along the slice normal as in any series. The volume's
        ``series_uid`` is None and its warnings name the number of series stacked.

    Returns
    -------
    CTVolume
        ``hu`` float32 [slices, rows, cols] ordered along the slice normal.

    Raises
    ------
    DicomReadError
        No CT series (the message gives the reasons files were skipped), an unknown
        ``series_uid``, a mixed or inconsistent series (or stack), or pixel data that cannot be
        decoded.
    SeveralSeriesError
        Several series and none chosen (a :class:`DicomReadError` whose message lists them).
    FileNotFoundError
        When ``path`` does not exist.
    """
    groups, skipped = _group(Path(path))
    if not groups:
        why = _skip_summary(skipped) if skipped else "no files"
        raise DicomReadError(f"no readable CT series in {path} ({why})")
    if stack_series:
        if series_uid is not None:
            raise DicomReadError("give series_uid or stack_series, not both")
        return _read_stack(Path(path), groups)
    if series_uid is None:
        if len(groups) > 1:
            listing = [
                (uid, str(hs[0].header.get("SeriesDescription", "")), sum(len(h.frames) for h in hs))
                for uid, hs in sorted(groups.items())
            ]
            raise SeveralSeriesError(path, listing)
        series_uid = next(iter(groups))
    if series_uid not in groups:
        raise DicomReadError(f"series {series_uid} not found in {path}; present: {', '.join(sorted(groups))}")
    return _read_group(groups[series_uid], series_uid)


def _read_stack(path: Path, groups: dict[str, list[FileHeader]]) -> CTVolume:
    """Every series of ``groups`` read as one scan (see ``stack_series`` of :func:`read_series`)."""
    if len(groups) == 1:
        uid = next(iter(groups))
        return _read_group(groups[uid], uid)
    headers = [h for hs in groups.values() for h in hs]
    frames = {str(h.header.get("FrameOfReferenceUID", "")) for h in headers}
    if len(frames) > 1:
        raise DicomReadError(
            f"cannot stack the {len(groups)} CT series in {path}: they lie in {len(frames)} frames of reference "
            "(FrameOfReferenceUID), so their positions cannot be compared; read them one at a time"
        )
    vol = _read_group(headers, "stack", f"the {len(groups)} series in {path} stacked")
    vol.series_uid = None
    vol.warnings.append(f"{len(groups)} series stacked into one scan of {vol.hu.shape[0]} slices")
    return vol


# ----------------------------------------------------------------------------- npz volumes
