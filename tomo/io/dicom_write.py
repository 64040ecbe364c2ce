"""Write a derived CT series (HU) as DICOM CT Image Storage, explicit VR little endian.

:func:`write_series` stores a reconstruction as a new series of the reference study (or of a
fresh anonymous study), with geometry consistent with the new pixel grid. Files are written
into a temporary sibling folder and renamed into place (:func:`tomo.io.atomic.atomic_folder`), so
an interrupted run leaves no half series behind.
"""

from __future__ import annotations

import datetime as _dt
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tomo.io.atomic import atomic_folder
from tomo.io.volume_types import CTVolume, spacing_pair

__all__ = ["write_series", "choose_rescale", "default_series_number", "window_values", "WINDOW_PRESETS"]

_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Attributes copied verbatim from the reference: Patient, General Study, Patient Study,
# Frame of Reference (positions stay in the reference's patient coordinates) and the
# acquisition attributes of the CT Image module that a derived image inherits.
_COPIED = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "OtherPatientIDs",
    "PatientComments",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "PatientPosition",
    "BodyPartExamined",
    "KVP",
    "AcquisitionNumber",
)
_INT16 = (-32768, 32767)


def choose_rescale(hu_min: float, hu_max: float, step: float = 1.0) -> tuple[float, float]:
    """Rescale (slope, intercept) so that ``round((hu - intercept) / slope)`` fits int16.

    With the default ``step`` of 1 HU: slope 1 / intercept -1024 (the usual CT convention)
    whenever the range fits. With another ``step`` (e.g. 0.1 HU for a standard-deviation map,
    whose values are small): slope ``step`` / intercept 0 whenever the range fits. Otherwise the
    smallest slope (6 significant digits) that spans the range.

    Parameters
    ----------
    hu_min, hu_max : float
        Range of the values to store, HU.
    step : float
        Preferred stored step, HU (> 0; its DICOM DS string should be exact, e.g. 1, 0.1).

    Returns
    -------
    slope, intercept : float
        Exactly representable as DICOM DS strings (what a reader will see).
    """
    if not (np.isfinite(hu_min) and np.isfinite(hu_max)) or hu_min > hu_max:
        raise ValueError(f"invalid HU range ({hu_min}, {hu_max})")
    if not (np.isfinite(step) and step > 0):
        raise ValueError(f"step must be a positive number of HU, got {step!r}")
    if step == 1.0:
        if hu_min - (-1024.0) >= _INT16[0] + 0.5 and hu_max - (-1024.0) <= _INT16[1] - 0.5:
            return 1.0, -1024.0
    elif hu_min / step >= _INT16[0] + 0.5 and hu_max / step <= _INT16[1] - 0.5:
        return float(step), 0.0
    span = hu_max - hu_min
    slope = float(f"{span / (_INT16[1] - _INT16[0] - 2):.6g}")
    while span / slope > _INT16[1] - _INT16[0] - 1:  # rounding of the 6-digit slope went down
        slope = float(f"{slope * 1.00001:.6g}")
    intercept = float(f"{hu_min - (_INT16[0] + 1) * slope:.10g}")
    return slope, intercept


#: display windows (centre, width) in HU, the usual radiology presets
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
#: what ``window="reference"`` falls back to when the reference carries no usable window
_FALLBACK_WINDOW = "soft-tissue"

#: a SeriesNumber block: a series and the series derived with it (its standard-deviation map at
#: ``offset=1``) share one block of ten numbers
_BLOCK = 10
_SLOTS = 90
#: sibling folders looked at for series numbers already taken (bounds the time on huge folders)
_MAX_SIBLINGS = 1000


def window_values(window, reference: CTVolume | None = None, hu=None) -> tuple[list[float], list[float], list[str]]:
    """The WindowCenter and WindowWidth values to write, and their explanation.

    Parameters
    ----------
    window : str or (float, float)
        ``"reference"``: the reference series' values (every pair it carries, e.g. a soft-tissue
        and a lung window), else the ``"soft-tissue"`` preset; a preset name of
        :data:`WINDOW_PRESETS` (``"soft-tissue"`` 40/400, ``"lung"`` -600/1500, ``"bone"``
        400/1800, ``"brain"`` 40/80 HU); ``"auto"``: the 1st to 99th percentile of ``hu`` (for
        maps that are not images of the body, e.g. a standard deviation in HU); or a
        ``(centre, width)`` pair in HU.
    reference : CTVolume, optional
    hu : array_like, optional
        The values written (needed for ``"auto"``), HU.

    Returns
    -------
    centres, widths : list of float
        HU; widths >= 1 (DICOM's minimum).
    explanations : list of str
        WindowCenterWidthExplanation of each pair (the preset's name, the reference's,
        ``REFERENCE``, ``AUTO`` or ``USER``).
    """
    if isinstance(window, str):
        name = window.strip().lower()
        if name == "reference":
            found = _reference_window(reference)
            if found is not None:
                return found
            name = _FALLBACK_WINDOW
        if name == "auto":
            if hu is None:
                raise ValueError('window="auto" needs the values (hu)')
            lo, hi = np.percentile(np.asarray(hu, dtype=np.float64), [1.0, 99.0])
            return [float((lo + hi) / 2)], [max(float(hi - lo), 1.0)], ["AUTO"]
        if name not in WINDOW_PRESETS:
            choices = ", ".join(["reference", *WINDOW_PRESETS, "auto"])
            raise ValueError(f"unknown window {window!r}: give one of {choices}, or (centre, width) in HU")
        centre, width = WINDOW_PRESETS[name]
        return [centre], [width], [name.upper().replace("-", " ")]
    try:
        centre, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be a name or (centre, width) in HU, got {window!r}") from None
    if not (np.isfinite(centre) and np.isfinite(width) and width >= 1.0):
        raise ValueError(f"window (centre, width) must be finite with width >= 1 HU, got {window!r}")
    return [centre], [width], ["USER"]


def _reference_window(reference: CTVolume | None) -> tuple[list[float], list[float], list[str]] | None:
    """The reference header's window pairs, or None when it carries none that are usable."""
    header = reference.header if reference is not None else None
    if header is None:
        return None
    try:
        centres = [float(v) for v in np.atleast_1d(np.asarray(header.get("WindowCenter"), dtype=object))]
        widths = [float(v) for v in np.atleast_1d(np.asarray(header.get("WindowWidth"), dtype=object))]
    except (TypeError, ValueError):
        return None
    if not centres or len(centres) != len(widths):
        return None
    if not all(np.isfinite(c) and np.isfinite(w) and w >= 1.0 for c, w in zip(centres, widths)):
        return None
    given = header.get("WindowCenterWidthExplanation")
    texts = [str(v)[:64] for v in np.atleast_1d(np.asarray(given, dtype=object))] if given not in (None, "") else []
    if len(texts) != len(centres):
        texts = ["REFERENCE"] * len(centres)
    return centres, widths, texts


def default_series_number(
    reference: CTVolume | None,
    offset: int = 0,
    *,
    description: str | None = None,
    taken: set[int] | frozenset[int] = frozenset(),
) -> int:
    """SeriesNumber of a derived series: ``1000 + the reference's (or 0) + 10 * slot + offset``.

    The slot is a fixed function of ``description`` (CRC-32 of the SeriesDescription, modulo
    90), so series of different methods (``"tomo TV reconstruction"``, ``"tomo DDS
    reconstruction"``) get different numbers even when written to unrelated folders; it moves
    on to the next slot while a number in ``taken`` (the numbers of the study's series already
    written beside the new one) falls in its block of ten. Without ``description`` the slot is 0
    (``1000 + the reference's``, the number before slots existed). A second series derived with
    the first (e.g. its standard-deviation map) passes the first's number plus one, or
    ``offset=1`` with the same arguments.

    Parameters
    ----------
    reference : CTVolume, optional
        Its header's SeriesNumber is the base.
    offset : int
        Added to the block's first number (0 for an image, 1 for its standard-deviation map).
    description : str, optional
        SeriesDescription of the new series.
    taken : set of int
        SeriesNumbers already used in the study (see :func:`write_series`).

    Returns
    -------
    int
    """
    ref_number = (
        reference.header.get("SeriesNumber") if reference is not None and reference.header is not None else None
    )
    try:
        base = 1000 + int(ref_number or 0)
    except (TypeError, ValueError):  # a malformed IS value: no base
        base = 1000
    slot = 0 if description is None else zlib.crc32(description.encode("utf-8")) % _SLOTS
    for step in range(_SLOTS):
        first = base + _BLOCK * ((slot + step) % _SLOTS)
        if not any(first <= t < first + _BLOCK for t in taken):
            return first + int(offset)
    return base + _BLOCK * slot + int(offset)  # every block taken: keep the method's own


def _numbers_beside(out: Path, study_uid: str) -> set[int]:
    """SeriesNumbers of the series of study ``study_uid`` in the folders beside ``out``.

    One header a folder (its first ``.dcm`` file); ``out`` itself (about to be replaced) and
    hidden folders (unfinished writes) are left out.
    """
    numbers: set[int] = set()
    parent = out.parent
    if not parent.is_dir():
        return numbers
    try:
        siblings = sorted(d for d in parent.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:
        return numbers
    for folder in siblings[:_MAX_SIBLINGS]:
        if folder.resolve() == out.resolve():
            continue
        try:
            first = min((f for f in folder.iterdir() if f.suffix.lower() == ".dcm" and f.is_file()), default=None)
            if first is None:
                continue
            ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesNumber"])
            if str(ds.get("StudyInstanceUID", "")) == study_uid and ds.get("SeriesNumber") not in (None, ""):
                numbers.add(int(ds.SeriesNumber))
        except Exception:  # noqa: BLE001 - a folder we cannot read takes no number
            continue
    return numbers


def _as_volume(hu) -> np.ndarray:
    arr = np.asarray(hu)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"hu must be [slices, rows, cols] or [rows, cols], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"hu must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"hu contains {int(np.sum(~np.isfinite(arr)))} NaN/Inf values")
    return arr


def _unit_frame(orientation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    o = np.asarray(orientation, dtype=float).ravel()
    if o.shape != (6,) or not np.all(np.isfinite(o)):
        raise ValueError(f"orientation must be 6 direction cosines, got {orientation!r}")
    row, col = o[:3], o[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise ValueError(f"orientation {o.tolist()} is not two orthonormal unit vectors")
    return row, col, np.cross(row, col)


def _positions(n, rows, cols, spacing, orientation, reference, positions, slice_spacing_mm):
    """ImagePositionPatient [n, 3] of the new grid (see :func:`write_series`)."""
    row_dir, col_dir, normal = _unit_frame(orientation)
    if positions is not None:
        pos = np.asarray(positions, dtype=float)
        if pos.shape != (n, 3) or not np.all(np.isfinite(pos)):
            raise ValueError(f"positions must be finite [{n}, 3] mm, got shape {pos.shape}")
        return pos
    if reference is not None:
        ref_pos = np.asarray(reference.positions, dtype=float)
        if ref_pos.shape[0] != n:
            raise ValueError(f"hu has {n} slices but the reference {ref_pos.shape[0]}; pass positions")
        _, ref_rows, ref_cols = reference.hu.shape
        ref_row_dir, ref_col_dir, _ = _unit_frame(reference.orientation)
        ref_ps = reference.pixel_spacing_mm
        # keep each slice's field-of-view centre; for the same field of view this keeps the
        # outer pixel corner and moves the first pixel centre by half the spacing change
        centre = ref_pos + (ref_cols - 1) / 2 * ref_ps[1] * ref_row_dir + (ref_rows - 1) / 2 * ref_ps[0] * ref_col_dir
    else:
        if n > 1 and slice_spacing_mm is None:
            raise ValueError("without a reference or positions, several slices need slice_spacing_mm")
        step = 0.0 if slice_spacing_mm is None else float(slice_spacing_mm)
        centre = np.outer(np.arange(n) * step, normal)  # image centre on the axis through 0
    return centre - (cols - 1) / 2 * spacing[1] * row_dir - (rows - 1) / 2 * spacing[0] * col_dir


def _ds_str(x: float) -> str:
    """DS value (at most 16 characters)."""
    for digits in (10, 9, 8, 7, 6):
        s = f"{x:.{digits}g}"
        if len(s) <= 16:
            return s
    raise ValueError(f"cannot write {x} as a DICOM decimal string")


def _base_dataset(reference: CTVolume | None, now: _dt.datetime, study_uids: tuple[str, str] | None) -> Dataset:
    ds = Dataset()
    header = reference.header if reference is not None else None
    if header is not None:
        for keyword in _COPIED:
            if keyword in header:
                ds[keyword] = header[keyword]
    if reference is not None and reference.study_uid and "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = reference.study_uid
    if header is None:
        ds.PatientName = "ANONYMOUS"
        ds.PatientID = "ANONYMOUS"
        ds.PatientIdentityRemoved = "YES"
        ds.StudyDate, ds.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    study_uid, frame_uid = study_uids if study_uids is not None else (generate_uid(), generate_uid())
    defaults = {
        "StudyInstanceUID": study_uid,
        "FrameOfReferenceUID": frame_uid,
        "PatientBirthDate": "",
        "PatientSex": "",
        "ReferringPhysicianName": "",
        "StudyID": "",
        "AccessionNumber": "",
        "StudyDate": "",
        "StudyTime": "",
        "PositionReferenceIndicator": "",
        "PatientPosition": "",
        "KVP": "",
        "AcquisitionNumber": "",
    }
    for keyword, value in defaults.items():
        if keyword not in ds:
            setattr(ds, keyword, value)
    return ds


def _check_output(out: Path, reference: CTVolume | None, overwrite: bool) -> None:
    sources = [Path(f).resolve() for f in (reference.files if reference is not None else [])]
    target = out.resolve()
    if any(target == s or target in s.parents for s in sources):
        raise ValueError(f"refusing to write into {out}: it holds the reference series (inputs are never overwritten)")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {out} is not empty (use overwrite=True / --overwrite)")
        strays = [p.name for p in out.iterdir() if not (p.is_file() and p.suffix.lower() == ".dcm")]
        if strays:
            raise FileExistsError(
                f"will not replace {out}: it holds more than .dcm files ({', '.join(sorted(strays)[:3])} ...)"
            )


def write_series(
    hu,
    out_dir: str | os.PathLike,
    reference: CTVolume | None = None,
    *,
    pixel_spacing_mm,
    positions=None,
    orientation: Sequence[float] | None = None,
    description: str,
    derivation: str,
    overwrite: bool = False,
    slice_spacing_mm: float | None = None,
    series_number: int | None = None,
    study_uids: tuple[str, str] | None = None,
    hu_step: float = 1.0,
    window: str | tuple[float, float] = "reference",
) -> list[Path]:
    """Write HU slices as a new derived CT series.

    Parameters
    ----------
    hu : array_like
        [slices, rows, cols] (or [rows, cols]) in HU, finite.
    out_dir : str or Path
        Folder to create (must be absent or empty unless ``overwrite``); files are
        ``CT000001.dcm`` ... in slice order.
    reference : CTVolume, optional
        Series the images derive from: patient, study and frame-of-reference modules are
        copied from its header, and default positions follow its slices. Without it a fresh
        study of patient "ANONYMOUS" is made.
    pixel_spacing_mm : float or (float, float)
        (row spacing, column spacing) of ``hu``, mm.
    positions : array_like, optional
        [slices, 3] ImagePositionPatient (centre of the first pixel), mm. Default: each
        reference slice's field-of-view centre is kept (a 256x256 image of a 512x512 slice
        with doubled spacing covers the same field, its first pixel centre moved by half a
        new pixel minus half an old one); without a reference the image centre lies on the
        axis through the origin, slices ``slice_spacing_mm`` apart.
    orientation : 6 floats, optional
        ImageOrientationPatient; default the reference's, else axial (1,0,0,0,1,0).
    description : str
        SeriesDescription.
    derivation : str
        DerivationDescription: the method and acquisition, e.g.
        ``"DDS reconstruction, parallel beam 30 views, I0=1e6"``.
    overwrite : bool
        Replace a non-empty ``out_dir`` that holds only ``.dcm`` files.
    slice_spacing_mm : float, optional
        Slice spacing without reference or positions (needed for several slices).
    series_number : int, optional
        SeriesNumber; default :func:`default_series_number` of ``description``, moved past the
        numbers of the study's series in the folders beside ``out_dir``: ``1000 + the
        reference's + 10 * slot``, so a TV and a DDS series of one study differ.
    study_uids : (str, str), optional
        (StudyInstanceUID, FrameOfReferenceUID) used when the reference has none (no reference,
        or one not read from DICOM): give the same pair to series that belong together (an
        image and its standard-deviation map) so viewers file them under one study and frame.
        Default: a fresh pair.
    hu_step : float
        Preferred stored step, HU (:func:`choose_rescale`): 1 for images, e.g. 0.1 for a
        standard-deviation map.
    window : str or (float, float)
        Display window written as WindowCenter / WindowWidth (:func:`window_values`):
        ``"reference"`` (default: the reference's window, else soft tissue 40/400 HU), a preset
        (``"soft-tissue"``, ``"lung"``, ``"bone"``, ``"brain"``), ``"auto"`` (1st to 99th
        percentile of ``hu``, for a standard-deviation map) or ``(centre, width)`` in HU.

    Returns
    -------
    list of Path
        The written files, in slice order.

    Raises
    ------
    ValueError, TypeError
        Bad shapes, values, geometry, or an output folder that holds the reference.
    FileExistsError
        A non-empty output folder without ``overwrite``.
    """
    vol = _as_volume(hu)
    n, rows, cols = vol.shape
    if rows > 65535 or cols > 65535:
        raise ValueError(f"image size {rows}x{cols} exceeds DICOM's 65535")
    spacing = spacing_pair(pixel_spacing_mm, "pixel_spacing_mm")
    if not isinstance(description, str) or not isinstance(derivation, str) or not derivation.strip():
        raise TypeError("description and derivation must be strings (derivation non-empty)")
    if orientation is None:
        orientation = reference.orientation if reference is not None else _AXIAL
    row_dir, col_dir, normal = _unit_frame(orientation)
    pos = _positions(n, rows, cols, spacing, orientation, reference, positions, slice_spacing_mm)
    out = Path(out_dir)
    _check_output(out, reference, overwrite)

    centres, widths, explanations = window_values(window, reference, vol)
    slope, intercept = choose_rescale(float(vol.min()), float(vol.max()), hu_step)
    stored = np.clip(np.rint((vol - intercept) / slope), *_INT16).astype("<i2")

    now = _dt.datetime.now()
    base = _base_dataset(reference, now, study_uids)
    base.Modality = "CT"
    base.SeriesInstanceUID = generate_uid()
    if series_number is None:
        taken = _numbers_beside(out, str(base.StudyInstanceUID))
        series_number = default_series_number(reference, description=description[:64], taken=taken)
    base.SeriesNumber = series_number
    base.SeriesDescription = description[:64]
    base.SeriesDate = base.ContentDate = base.InstanceCreationDate = now.strftime("%Y%m%d")
    base.SeriesTime = base.ContentTime = base.InstanceCreationTime = now.strftime("%H%M%S")
    base.Manufacturer = "tomo"
    base.SoftwareVersions = _tomo_version()
    base.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    base.DerivationDescription = derivation[:1024]
    base.BurnedInAnnotation = "NO"
    base.ImageOrientationPatient = [_ds_str(v) for v in (*row_dir, *col_dir)]
    base.PixelSpacing = [_ds_str(spacing[0]), _ds_str(spacing[1])]
    plane = pos @ normal
    steps = np.diff(np.sort(plane))
    thickness = None
    if reference is not None and reference.header is not None and reference.header.get("SliceThickness"):
        thickness = float(reference.header.SliceThickness)
    elif n > 1:
        thickness = float(np.median(steps))
    elif slice_spacing_mm is not None:
        thickness = float(slice_spacing_mm)
    base.SliceThickness = _ds_str(thickness) if thickness else ""
    if n > 1 and np.ptp(steps) <= 0.01 * np.median(steps):
        base.SpacingBetweenSlices = _ds_str(float(np.median(steps)))
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows, base.Columns = rows, cols
    base.BitsAllocated, base.BitsStored, base.HighBit, base.PixelRepresentation = 16, 16, 15, 1
    base.RescaleIntercept = _ds_str(intercept)
    base.RescaleSlope = _ds_str(slope)
    base.RescaleType = "HU"
    base.WindowCenter = [_ds_str(c) for c in centres] if len(centres) > 1 else _ds_str(centres[0])
    base.WindowWidth = [_ds_str(w) for w in widths] if len(widths) > 1 else _ds_str(widths[0])
    base.WindowCenterWidthExplanation = explanations if len(explanations) > 1 else explanations[0]
    base.SOPClassUID = CTImageStorage

    names = [f"CT{k + 1:06d}.dcm" for k in range(n)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out, overwrite=overwrite) as tmp:
        for k in range(n):
            ds = _slice_dataset(base, k, pos[k], plane[k], stored[k])
            ds.save_as(tmp / names[k], enforce_file_format=True)
    return [out / name for name in names]


def _slice_dataset(base: Dataset, k: int, position: np.ndarray, location: float, pixels: np.ndarray) -> Dataset:
    ds = Dataset()
    ds.update(base)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds_str(v) for v in position]
    ds.SliceLocation = _ds_str(location)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "TOMO"
    ds.file_meta = meta
    return ds


def _tomo_version() -> str:
    try:
        from tomo import __version__

        return f"tomo {__version__}"
    except ImportError:  # pragma: no cover
        return "tomo"
