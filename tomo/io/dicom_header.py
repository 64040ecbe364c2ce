"""Parse one DICOM file's header and decide whether it is a usable CT image.

Used by :mod:`tomo.io.dicom_read`, which groups the files this module accepts into series and
decodes them. :func:`read_header` returns a :class:`FileHeader` (the header without pixel data,
one :class:`Frame` per 2-D image) or a :class:`SkippedFile` with a one-line reason.
:func:`not_ct_reason` is the CT decision (SOP class and Modality first, other modalities'
attributes only as corroboration; see its docstring and docs/dicom.md).
"""

from __future__ import annotations

import os
import warnings as _warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from .resources import format_bytes
from .volume_types import VolumeReadError

__all__ = [
    "CT_SOP_CLASSES",
    "RETIRED_JPEG",
    "DicomReadError",
    "FileHeader",
    "Frame",
    "SkippedFile",
    "dcmread_lenient",
    "float_or",
    "not_ct_reason",
    "read_header",
    "transfer_syntax_name",
]

#: CT Image Storage, Enhanced CT Image Storage, Legacy Converted Enhanced CT Image Storage
CT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}

# Retired JPEG syntaxes (processes 3-13, 15-29) that pydicom has no decoder for; the
# bitstreams found in practice are ordinary (often progressive) JPEG that libjpeg decodes.
RETIRED_JPEG = {f"1.2.840.10008.1.2.4.{k}" for k in (52, 53, 54, 55, 56, 58, 59, 60, 61, 62, 63, 64, 65, 66)}


class DicomReadError(VolumeReadError):
    """A DICOM file or series that cannot be read as CT in HU; the message says why."""


@dataclass
class SkippedFile:
    """A file passed over during a scan and the one-line reason."""

    path: Path
    reason: str


@dataclass
class Frame:
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
class FileHeader:
    path: Path
    header: Dataset
    transfer_syntax: str
    frames: list[Frame]
    notes: list[str]


# ----------------------------------------------------------------------------- header parsing


def transfer_syntax_name(uid: str) -> str:
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


def float_or(value, default: float) -> float:
    try:
        return float(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default


def _frames_of(ds: Dataset, path: Path) -> tuple[list[Frame], list[str]]:
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
            Frame(
                path=path,
                frame=k,
                position=_floats(pos, 3),
                orientation=_floats(ori, 6),
                pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
                slope=float_or(slope, 1.0),
                intercept=float_or(icpt, 0.0),
                rescale_type=str(rtype) if rtype else None,
                instance_number=int(ds.InstanceNumber)
                if str(ds.get("InstanceNumber", "")).strip().lstrip("-").isdigit()
                else None,
            )
        )
    return frames, notes


def dcmread_lenient(path: Path, **kwargs) -> Dataset:
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


#: Attributes of the MR Image module that the CT Image module lacks. The physical ones (a magnet,
#: radio frequency, echoes, a flip angle) describe an MR acquisition; the descriptive ones (sequence
#: names and variants) are the stray attributes real CT headers carry (e.g. ScanningSequence and
#: SequenceVariant on Siemens SOMATOM PLUS 4 and Emotion images), so they never decide alone.
_MR_PHYSICAL = (
    "MagneticFieldStrength",
    "ImagingFrequency",
    "EchoTime",
    "RepetitionTime",
    "InversionTime",
    "FlipAngle",
    "ImagedNucleus",
    "EchoTrainLength",
)
_MR_DESCRIPTIVE = ("ScanningSequence", "SequenceVariant", "MRAcquisitionType", "SequenceName", "EchoNumbers")
#: attributes of the PET and NM Image modules
_PT_NM = ("RadiopharmaceuticalInformationSequence", "EnergyWindowInformationSequence", "DecayCorrection")
#: attributes of an X-ray exposure (CT Image module and its acquisition): evidence of CT
_XRAY = (
    "KVP",
    "XRayTubeCurrent",
    "XRayTubeCurrentInuA",
    "Exposure",
    "ExposureInuAs",
    "ExposureTime",
    "CTDIvol",
    "DataCollectionDiameter",
    "DistanceSourceToDetector",
    "DistanceSourceToPatient",
    "FilterType",
    "GeneratorPower",
    "FocalSpots",
    "ConvolutionKernel",
    "SpiralPitchFactor",
    "TotalCollimationWidth",
)


def _with_values(ds: Dataset, keywords: Sequence[str]) -> list[str]:
    """The ``keywords`` that ``ds`` carries with a value: not empty, and not zero when numeric.

    Headers often carry foreign attributes empty or zero (a template filled by another
    modality's software); only a real value is evidence.
    """
    found = []
    for keyword in keywords:
        try:
            value = ds.get(keyword)
        except Exception:  # noqa: BLE001 - a damaged value is no evidence either way
            continue
        if value is None or (hasattr(value, "__len__") and len(value) == 0):
            continue
        try:
            if not isinstance(value, str) and float(value) == 0.0:
                continue
        except (TypeError, ValueError):
            pass
        found.append(keyword)
    return found


def not_ct_reason(ds: Dataset) -> str | None:
    """Why ``ds`` is not a CT image, or None when it is one.

    The labels decide first: a SOPClassUID or file meta MediaStorageSOPClassUID that names
    another storage class, or a Modality other than CT, refuses the file (absent labels are not
    counted, but a SOP class or a Modality must be there). Attributes of another modality's
    image module only corroborate, and only several of them together with no X-ray attribute
    (KVP, tube current, exposure ...):

    - labelled CT by both a CT SOP class and Modality CT: refused only as an MR acquisition in
      all but name, at least two physical MR attributes (field strength, imaging frequency,
      echo, repetition or inversion time, flip angle, nucleus, echo train) among at least three
      MR attributes; or at least two PET/NM attributes;
    - labelled CT by only one of them: refused with one physical MR attribute among at least
      two MR attributes, or one PET/NM attribute.

    A stray ScanningSequence or SequenceVariant, as real CT scanners write, never refuses a file.
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
                return f"not CT ({label} {transfer_syntax_name(uid)} is not a CT image class, though Modality is CT)"
            return f"not CT (modality {modality or '?'}, {transfer_syntax_name(uid)})"
    if modality and modality != "CT":
        return f"not CT (modality {modality}, {transfer_syntax_name(sop) if sop else 'no SOP class'})"
    if _with_values(ds, _XRAY):
        return None
    both_labels = bool(modality) and bool(sop or meta_sop)
    physical = _with_values(ds, _MR_PHYSICAL)
    mr = physical + _with_values(ds, _MR_DESCRIPTIVE)
    pet = _with_values(ds, _PT_NM)
    need_physical, need_mr, need_pet = (2, 3, 2) if both_labels else (1, 2, 1)
    why = "labelled CT" if both_labels else ("labelled CT only by its Modality" if modality else "no Modality")
    if len(physical) >= need_physical and len(mr) >= need_mr:
        return f"not CT ({why} but carries MR attributes: {', '.join(mr)}; no X-ray attributes)"
    if len(pet) >= need_pet:
        return f"not CT ({why} but carries PET/NM attributes: {', '.join(pet)}; no X-ray attributes)"
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


def read_header(path: Path) -> FileHeader | SkippedFile:
    """Parse one file's header; a SkippedFile says why it is not a usable CT image."""
    try:
        with _warnings.catch_warnings(record=True) as caught:
            _warnings.simplefilter("always")
            # defer_size: large values (pixel data) stay on disk, only their offsets are recorded
            ds = dcmread_lenient(path, defer_size=1024)
    except InvalidDicomError:
        return SkippedFile(path, "not a DICOM file")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt input
        return SkippedFile(path, f"corrupt DICOM ({type(exc).__name__})")
    if any(p in str(w.message).lower() for w in caught for p in _EOF_PHRASES):
        return SkippedFile(path, "truncated or corrupt file (ends inside a data element)")
    try:
        not_ct = not_ct_reason(ds)
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
    return FileHeader(path, ds, ts, frames, notes)


_LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.53",
    "1.2.840.10008.1.2.4.55",
}
