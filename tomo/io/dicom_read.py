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
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from .resources import MemoryBudgetError, check_memory, format_bytes
from .volume_types import CTVolume, VolumeReadError

__all__ = ["SeriesInfo", "SeriesScan", "SkippedFile", "DicomReadError", "find_series", "read_series", "CT_SOP_CLASSES"]

#: CT Image Storage, Enhanced CT Image Storage, Legacy Converted Enhanced CT Image Storage
CT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}

# Retired JPEG syntaxes (processes 3-13, 15-29) that pydicom has no decoder for; the
# bitstreams found in practice are ordinary (often progressive) JPEG that libjpeg decodes.
_RETIRED_JPEG = {f"1.2.840.10008.1.2.4.{k}" for k in (52, 53, 54, 55, 56, 58, 59, 60, 61, 62, 63, 64, 65, 66)}

# Tolerances (mm, degrees) for geometry checks; DICOM DS values carry ~6 significant digits.
_POSITION_TOL_MM = 1e-3
_SPACING_REL_TOL = 0.01
_TILT_TOL_DEG = 0.05
_ORIENTATION_TOL = 1e-4


class DicomReadError(VolumeReadError):
    """A DICOM file or series that cannot be read as CT in HU; the message says why."""


@dataclass
class SkippedFile:
    """A file passed over during a scan and the one-line reason."""

    path: Path
    reason: str


@dataclass
class _Frame:
    """One 2-D image: a classic single-frame file or one frame of a multi-frame file."""

    path: Path
    frame: int  # index within the file (0 for single-frame)
    position: np.ndarray | None  # ImagePositionPatient [3] mm
    orientation: np.ndarray | None  # ImageOrientationPatient [6]
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    rescale_type: str | None
    instance_number: int | None


@dataclass
class _FileHeader:
    path: Path
    header: Dataset
    transfer_syntax: str
    frames: list[_Frame]
    notes: list[str]


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


# ----------------------------------------------------------------------------- header parsing


def _ts_name(uid: str) -> str:
    try:
        name = UID(uid).name
    except Exception:  # noqa: BLE001 - a name lookup; pydicom never raises here in practice
        name = uid
    return name or uid


def _floats(value, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _functional(ds: Dataset, frame: int, seq: str, attr: str):
    """Attribute ``attr`` of functional group ``seq`` for ``frame`` (per-frame wins over shared)."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is None or len(items) <= index:
            continue
        sub = items[index].get(seq)
        if sub is not None and len(sub) and attr in sub[0]:
            return sub[0].get(attr)
    return None


def _float_or(value, default: float) -> float:
    try:
        return float(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default


def _frames_of(ds: Dataset, path: Path) -> tuple[list[_Frame], list[str]]:
    notes: list[str] = []
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    frames = []
    for k in range(n_frames):
        if enhanced:
            pos = _functional(ds, k, "PlanePositionSequence", "ImagePositionPatient")
            ori = _functional(ds, k, "PlaneOrientationSequence", "ImageOrientationPatient")
            ps = _functional(ds, k, "PixelMeasuresSequence", "PixelSpacing")
            slope = _functional(ds, k, "PixelValueTransformationSequence", "RescaleSlope")
            icpt = _functional(ds, k, "PixelValueTransformationSequence", "RescaleIntercept")
            rtype = _functional(ds, k, "PixelValueTransformationSequence", "RescaleType")
        else:
            pos = ori = ps = slope = icpt = rtype = None
        # classic attributes, also a fallback for enhanced files that carry them at top level
        pos = pos if pos is not None else ds.get("ImagePositionPatient")
        ori = ori if ori is not None else ds.get("ImageOrientationPatient")
        ps = ps if ps is not None else ds.get("PixelSpacing")
        slope = slope if slope is not None else ds.get("RescaleSlope")
        icpt = icpt if icpt is not None else ds.get("RescaleIntercept")
        rtype = rtype if rtype is not None else ds.get("RescaleType")
        if k == 0 and (slope is None or icpt is None):
            notes.append("no RescaleSlope/RescaleIntercept: stored values taken as HU")
        spacing = _floats(ps, 2)
        frames.append(
            _Frame(
                path=path,
                frame=k,
                position=_floats(pos, 3),
                orientation=_floats(ori, 6),
                pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
                slope=_float_or(slope, 1.0),
                intercept=_float_or(icpt, 0.0),
                rescale_type=str(rtype) if rtype else None,
                instance_number=int(ds.InstanceNumber)
                if str(ds.get("InstanceNumber", "")).strip().lstrip("-").isdigit()
                else None,
            )
        )
    return frames, notes


def _dcmread(path: Path, **kwargs) -> Dataset:
    """dcmread that also accepts files without the 128-byte preamble, but not random files."""
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, force=True, **kwargs)
        if "SOPClassUID" not in ds or "Rows" not in ds:
            raise
        return ds


# pydicom reads past a premature end of file with only a warning; these phrases mark it
_EOF_PHRASES = ("end of file", "truncat", "expected explicit vr", "unexpected end")


_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


_DEFLATED = "1.2.840.10008.1.2.1.99"


def _pixel_data_problem(ds: Dataset, path: Path, transfer_syntax: str) -> str | None:
    """Why the (deferred) pixel data of ``ds`` is unusable, or None when it looks complete."""
    present = [t for t in _PIXEL_TAGS if t in ds]
    if not present:
        return "CT without pixel data"
    if transfer_syntax == _DEFLATED:  # offsets refer to the inflated stream, not the file
        return None
    raw = ds.get_item(present[0], keep_deferred=True)
    tell, length = getattr(raw, "value_tell", None), getattr(raw, "length", None)
    if tell is not None and length not in (None, 0xFFFFFFFF) and tell + length > os.path.getsize(path):
        return "truncated file (pixel data runs past the end of the file)"
    return None


#: attributes that only images of another modality carry (MR Image, PET/NM Image modules): a file
#: relabelled "CT" but holding them is refused
_FOREIGN_ATTRIBUTES = {
    "MR": ("EchoTime", "RepetitionTime", "ScanningSequence", "MagneticFieldStrength", "ImagingFrequency"),
    "PT/NM": ("RadiopharmaceuticalInformationSequence", "EnergyWindowInformationSequence", "DecayCorrection"),
}


def _not_ct_reason(ds: Dataset) -> str | None:
    """Why ``ds`` is not a CT image, or None when every label it carries says CT.

    The dataset's SOPClassUID, the file meta's MediaStorageSOPClassUID and the Modality must all
    agree on CT (absent ones are not counted, but at least one SOP class or Modality must be
    there), and no attribute of another modality's image module may be present.
    """
    sop = str(ds.get("SOPClassUID", "") or "").strip()
    meta = getattr(ds, "file_meta", None)
    meta_sop = str(meta.get("MediaStorageSOPClassUID", "") or "").strip() if meta is not None else ""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if not sop and not modality:
        return "truncated or corrupt file (no SOPClassUID or Modality)"
    for label, uid in (("SOP class", sop), ("file meta SOP class", meta_sop)):
        if uid and uid not in CT_SOP_CLASSES:
            if modality == "CT":  # relabelled or corrupt: the storage class decides
                return f"not CT ({label} {_ts_name(uid)} is not a CT image class, though Modality is CT)"
            return f"not CT (modality {modality or '?'}, {_ts_name(uid)})"
    if modality and modality != "CT":
        return f"not CT (modality {modality}, {_ts_name(sop) if sop else 'no SOP class'})"
    for other, keywords in _FOREIGN_ATTRIBUTES.items():
        found = [k for k in keywords if k in ds]
        if found:
            return f"not CT (labelled CT but carries {other} attributes: {', '.join(found)})"
    return None


def _int_attr(ds: Dataset, keyword: str, default: int) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        return default
    return int(value if not isinstance(value, (list, tuple)) else value[0])


#: transfer syntaxes whose pixel data is stored uncompressed (its size is exactly known)
_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", _DEFLATED}


def _size_problem(ds: Dataset, path: Path, transfer_syntax: str) -> str | None:
    """Why the image size the header promises is impossible, or None.

    Rows x Columns x NumberOfFrames x BitsAllocated must fit in the pixel data of an uncompressed
    file; a compressed frame takes at least one 8-byte item, so the frame count is bounded by
    the file size. This refuses absurd headers before anything is allocated.
    """
    rows, cols = _int_attr(ds, "Rows", 0), _int_attr(ds, "Columns", 0)
    frames = _int_attr(ds, "NumberOfFrames", 1)
    bits = _int_attr(ds, "BitsAllocated", 16)
    if rows < 1 or cols < 1 or frames < 1:
        return f"impossible image size (Rows {rows}, Columns {cols}, NumberOfFrames {frames})"
    if bits not in (1, 8, 16, 32, 64):
        return f"unsupported BitsAllocated {bits}"
    size = os.path.getsize(path)
    promised = rows * cols * frames * max(bits, 8) // 8
    if transfer_syntax in _NATIVE_SYNTAXES and transfer_syntax != _DEFLATED:
        raw = next((ds.get_item(t, keep_deferred=True) for t in _PIXEL_TAGS if t in ds), None)
        length = getattr(raw, "length", None)
        have = length if length not in (None, 0xFFFFFFFF) else size
        if raw is not None and promised > max(have, 1) * (8 if bits == 1 else 1):
            return (
                f"header promises {rows} x {cols} x {frames} frames of {bits} bits "
                f"({format_bytes(promised)}) but the pixel data holds {format_bytes(have)}"
            )
    elif frames * 8 > size:
        return f"header promises {frames} frames but the file has only {format_bytes(size)}"
    return None


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _read_header(path: Path) -> _FileHeader | SkippedFile:
    """Parse one file's header; a SkippedFile says why it is not a usable CT image."""
    try:
        with _warnings.catch_warnings(record=True) as caught:
            _warnings.simplefilter("always")
            # defer_size: large values (pixel data) stay on disk, only their offsets are recorded
            ds = _dcmread(path, defer_size=1024)
    except InvalidDicomError:
        return SkippedFile(path, "not a DICOM file")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt input
        return SkippedFile(path, f"corrupt DICOM ({type(exc).__name__})")
    if any(p in str(w.message).lower() for w in caught for p in _EOF_PHRASES):
        return SkippedFile(path, "truncated or corrupt file (ends inside a data element)")
    try:
        not_ct = _not_ct_reason(ds)
        if not_ct:
            return SkippedFile(path, not_ct)
        meta = getattr(ds, "file_meta", None)
        ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        if not ts:
            ts = "1.2.840.10008.1.2"  # no meta: DICOM default, implicit VR little endian
        if "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])]:
            return SkippedFile(path, "CT localizer (scout) image")
        missing = [k for k in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation") if k not in ds]
        if missing:
            return SkippedFile(path, f"truncated or corrupt CT header (no {', '.join(missing)})")
        photometric = str(ds.get("PhotometricInterpretation", ""))
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or not photometric.startswith("MONOCHROME"):
            return SkippedFile(path, f"not greyscale CT (PhotometricInterpretation {photometric or '?'})")
        problem = _size_problem(ds, path, ts)
        if problem:
            return SkippedFile(path, problem)
        frames, notes = _frames_of(ds, path)
    except Exception as exc:  # noqa: BLE001 - any failure to parse a damaged header skips the file
        return SkippedFile(path, f"corrupt DICOM header ({type(exc).__name__}: {_short(exc)})")
    problem = _pixel_data_problem(ds, path, ts)
    if problem:
        return SkippedFile(path, problem)
    for tag in _PIXEL_TAGS:
        if tag in ds:
            del ds[tag]
    if any(f.pixel_spacing is None for f in frames):
        return SkippedFile(path, "CT without PixelSpacing")
    if str(ds.get("LossyImageCompression", "")) == "01" or ts in _LOSSY_SYNTAXES:
        notes.append("lossy compression: HU are approximate")
    return _FileHeader(path, ds, ts, frames, notes)


_LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.53",
    "1.2.840.10008.1.2.4.55",
}


# ----------------------------------------------------------------------------- geometry


@dataclass
class _Geometry:
    order: np.ndarray
    slice_spacing_mm: float | None
    gantry_tilt_deg: float
    irregular: bool
    warnings: list[str]
    problems: list[str]


def _analyse(headers: list[_FileHeader]) -> tuple[list[_Frame], _Geometry]:
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
    tilt_header = max((abs(_float_or(h.header.get("GantryDetectorTilt"), 0.0)) for h in headers), default=0.0)
    tilt_sign = next(
        (
            np.sign(_float_or(h.header.get("GantryDetectorTilt"), 0.0))
            for h in headers
            if _float_or(h.header.get("GantryDetectorTilt"), 0.0)
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


def _group(path: Path) -> tuple[dict[str, list[_FileHeader]], list[SkippedFile]]:
    groups: dict[str, list[_FileHeader]] = {}
    skipped: list[SkippedFile] = []
    seen: dict[str, Path] = {}
    for p in _iter_files(Path(path)):
        result = _read_header(p)
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


def _info(uid: str, headers: list[_FileHeader]) -> SeriesInfo:
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
        transfer_syntaxes=sorted({_ts_name(h.transfer_syntax) for h in headers}),
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
            ds = _dcmread(path)
        except Exception as exc:
            raise DicomReadError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
        try:
            arr = ds.pixel_array
        except NotImplementedError as exc:
            if transfer_syntax not in _RETIRED_JPEG:
                raise DicomReadError(
                    f"{path}: no decoder for transfer syntax {_ts_name(transfer_syntax)} "
                    f"({transfer_syntax}); install a pydicom pixel-data plugin for it"
                ) from exc
            arr = _decode_retired_jpeg(ds, path)
        except Exception as exc:
            raise DicomReadError(
                f"{path}: cannot decode pixel data ({_ts_name(transfer_syntax)}): {type(exc).__name__}: {exc}"
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


def _read_group(headers: list[_FileHeader], uid: str) -> CTVolume:
    frames, geo = _analyse(headers)
    if geo.problems:
        raise DicomReadError(f"series {uid}: " + "; ".join(geo.problems))
    by_path = {h.path: h for h in headers}
    ordered = [frames[i] for i in geo.order]
    first = by_path[ordered[0].path]
    rows, cols = int(first.header.Rows), int(first.header.Columns)
    _check_volume_memory(len(ordered), rows, cols, max(len(h.frames) for h in headers), uid)
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


def _check_volume_memory(n: int, rows: int, cols: int, frames_per_file: int, uid: str) -> None:
    """Refuse a series whose HU volume cannot fit in memory (before allocating it)."""
    # float32 volume + one file's stored frames (at most 8 bytes a value) + a float64 slice
    needed = 4 * n * rows * cols + 8 * frames_per_file * rows * cols + 8 * rows * cols
    try:
        check_memory(
            needed, f"series {uid} ({n} images of {rows} x {cols})", "read fewer files (a sub-folder) or free memory"
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


def read_series(path: str | os.PathLike, series_uid: str | None = None) -> CTVolume:
    """Read one CT series as HU.

    Parameters
    ----------
    path : str or Path
        A folder (searched recursively) or a single DICOM file.
    series_uid : str, optional
        SeriesInstanceUID to read; needed when ``path`` holds several CT series.

    Returns
    -------
    CTVolume
        ``hu`` float32 [slices, rows, cols] ordered along the slice normal.

    Raises
    ------
    DicomReadError
        No CT series (the message gives the reasons files were skipped), several series and
        none chosen (the message lists them), an unknown ``series_uid``, a mixed or
        inconsistent series, or pixel data that cannot be decoded.
    FileNotFoundError
        When ``path`` does not exist.
    """
    groups, skipped = _group(Path(path))
    if not groups:
        why = _skip_summary(skipped) if skipped else "no files"
        raise DicomReadError(f"no readable CT series in {path} ({why})")
    if series_uid is None:
        if len(groups) > 1:
            listing = "; ".join(
                f"{uid} {str(hs[0].header.get('SeriesDescription', '')) or '(no description)'!r} "
                f"{sum(len(h.frames) for h in hs)} slices"
                for uid, hs in sorted(groups.items())
            )
            raise DicomReadError(f"{path} holds {len(groups)} CT series: {listing}; pick one with series_uid=...")
        series_uid = next(iter(groups))
    if series_uid not in groups:
        raise DicomReadError(f"series {series_uid} not found in {path}; present: {', '.join(sorted(groups))}")
    return _read_group(groups[series_uid], series_uid)


# ----------------------------------------------------------------------------- npz volumes
