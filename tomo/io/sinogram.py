"""The sinogram exchange file (``.npz``) of ``/work/shared/docs/evaluation.md``.

Keys (a public contract; outside tools may write these files too):

========================  =====================================================================
``sinogram``              float32 [views, detectors] or [slices, views, detectors]: line
                          integrals of mu (1/mm) times length (mm), dimensionless
``angles``                float32 [views], radians (ASTRA's convention)
``geometry``              ``"parallel"`` or ``"fanbeam"``
``detector_spacing_mm``   bin width (fan beam: at the detector) [mm]
``pixel_spacing_mm``      reconstruction grid pixel size [mm]
``image_shape``           int [2]: reconstruction grid rows, columns
``source_origin_mm``,     fan beam only [mm]
``origin_detector_mm``
``i0``                    optional: photons per detector bin of the (simulated) scan
``hu_reference``          optional: ground truth in HU, float32 [H, W] or [slices, H, W]
``description``           optional: free text
========================  =====================================================================

The geometry keys are converted by :func:`geometry_to_fields` and :func:`geometry_from_fields`, so any file made with ASTRA's
``create_proj_geom``/``create_sino`` on a volume geometry in mm reads correctly.

Public API: :class:`SinogramFile`, :func:`save_sinogram`, :func:`load_sinogram`,
:class:`SinogramFormatError` (a ``ValueError``).
"""
from __future__ import annotations

import math
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from operators.geometry import FanBeam2D, ParallelBeam2D

__all__ = ["SinogramFile", "SinogramFormatError", "save_sinogram", "load_sinogram", "geometry_to_fields",
           "geometry_from_fields", "geometry_name", "REQUIRED_KEYS", "OPTIONAL_KEYS"]

#: keys every file has (fan beam adds ``source_origin_mm`` and ``origin_detector_mm``)
REQUIRED_KEYS = ("sinogram", "angles", "geometry", "detector_spacing_mm", "pixel_spacing_mm",
                 "image_shape")
FANBEAM_KEYS = ("source_origin_mm", "origin_detector_mm")
OPTIONAL_KEYS = ("i0", "hu_reference", "description")


#: the file's ``geometry`` value of each geometry class
GEOMETRY_NAMES = {ParallelBeam2D: "parallel", FanBeam2D: "fanbeam"}


def geometry_name(geometry: ParallelBeam2D | FanBeam2D) -> str:
    """The file's name of a geometry kind: ``"parallel"`` or ``"fanbeam"``."""
    try:
        return GEOMETRY_NAMES[type(geometry)]
    except KeyError:
        raise TypeError(f"the sinogram file holds 2D parallel or fan-beam geometries, got "
                        f"{type(geometry).__name__}") from None


def geometry_to_fields(geometry: ParallelBeam2D | FanBeam2D) -> dict:
    """The geometry keys of the sinogram exchange file (docs/evaluation.md), with the file's dtypes.

    The detector count is not a key of that file: it is the sinogram's last dimension.
    """
    fields = {
        "geometry": geometry_name(geometry),
        "angles": np.asarray(geometry.angles, dtype=np.float32),
        "detector_spacing_mm": float(geometry.detector_spacing_mm),
        "pixel_spacing_mm": float(geometry.pixel_spacing_mm),
        "image_shape": np.asarray(geometry.image_shape, dtype=np.int64),
    }
    if isinstance(geometry, FanBeam2D):
        fields["source_origin_mm"] = float(geometry.source_origin_mm)
        fields["origin_detector_mm"] = float(geometry.origin_detector_mm)
    return fields


def _as_str(value) -> str:
    arr = np.asarray(value)
    return str(arr.item()) if arr.ndim == 0 else str(value)


def geometry_from_fields(d: Mapping, detector_count: int | None = None) -> ParallelBeam2D:
    """Build a 2D geometry from the keys of a sinogram exchange file (evaluation.md).

    Parameters
    ----------
    d : mapping
        ``geometry`` (``"parallel"`` or ``"fanbeam"``), ``angles`` [views] (radians),
        ``detector_spacing_mm``, ``pixel_spacing_mm``, ``image_shape`` [2], and for fan beam
        ``source_origin_mm`` and ``origin_detector_mm``; values may be 0-d NumPy arrays as
        ``np.load`` returns them. If ``d`` has a ``sinogram`` key its last dimension gives the
        detector count and its view dimension must match ``angles``.
    detector_count : int, optional
        Needed when ``d`` has no ``sinogram``.

    Returns
    -------
    ParallelBeam2D or FanBeam2D
    """
    if not hasattr(d, "__getitem__") or not hasattr(d, "keys"):
        raise TypeError(f"expected a mapping (e.g. np.load(...) of a .npz), got {type(d).__name__}")
    keys = set(d.keys())
    required = ["geometry", "angles", "detector_spacing_mm", "pixel_spacing_mm", "image_shape"]
    missing = [k for k in required if k not in keys]
    if missing:
        raise ValueError(f"sinogram fields are missing {missing}")
    kind = _as_str(d["geometry"]).strip().lower()
    angles = np.asarray(d["angles"])
    if "sinogram" in keys:
        sino = np.asarray(d["sinogram"])
        if sino.ndim not in (2, 3):
            raise ValueError(f"sinogram must be [views, detectors] or [slices, views, detectors], got shape {sino.shape}")
        if sino.shape[-2] != angles.reshape(-1).size:
            raise ValueError(f"sinogram has {sino.shape[-2]} views but angles has {angles.reshape(-1).size} entries")
        if detector_count is not None and int(detector_count) != sino.shape[-1]:
            raise ValueError(f"detector_count={detector_count} does not match the sinogram's {sino.shape[-1]} bins")
        detector_count = sino.shape[-1]
    if detector_count is None:
        raise ValueError("detector count unknown: pass a 'sinogram' key or detector_count=")
    common = dict(image_shape=d["image_shape"], pixel_spacing_mm=d["pixel_spacing_mm"], angles=angles,
                  detector_count=detector_count, detector_spacing_mm=d["detector_spacing_mm"])
    if kind == "parallel":
        return ParallelBeam2D(**common)
    if kind == "fanbeam":
        for k in ("source_origin_mm", "origin_detector_mm"):
            if k not in keys:
                raise ValueError(f"fan-beam sinogram fields need {k!r}")
        return FanBeam2D(**common, source_origin_mm=d["source_origin_mm"],
                         origin_detector_mm=d["origin_detector_mm"])
    raise ValueError(f"unknown geometry {kind!r} in sinogram fields; expected 'parallel' or 'fanbeam'")


class SinogramFormatError(ValueError):
    """A sinogram file or array that does not follow the exchange format; the message says why."""


@dataclass
class SinogramFile:
    """The content of a sinogram exchange file.

    Attributes
    ----------
    sinogram : np.ndarray, float32 [views, detectors] or [slices, views, detectors]
        Line integrals (mu [1/mm] x length [mm], dimensionless).
    geometry : ParallelBeam2D or FanBeam2D
        Acquisition and reconstruction-grid geometry (mm, radians).
    i0 : float or None
        Photons per detector bin (transmission Poisson noise level), if known.
    hu_reference : np.ndarray or None, float32 [H, W] or [slices, H, W]
        Ground truth in HU on the reconstruction grid, for scoring.
    description : str or None
        Free text (provenance).
    """

    sinogram: np.ndarray
    geometry: ParallelBeam2D | FanBeam2D
    i0: float | None = None
    hu_reference: np.ndarray | None = None
    description: str | None = None
    extra_keys: tuple = field(default=(), repr=False)

    def __post_init__(self):
        _validate(self)

    @property
    def is_volume(self) -> bool:
        """True for a stack of slices ``[slices, views, detectors]``."""
        return self.sinogram.ndim == 3

    @property
    def num_slices(self) -> int:
        return self.sinogram.shape[0] if self.is_volume else 1

    def slices(self) -> np.ndarray:
        """The sinogram as ``[slices, views, detectors]`` (a view, no copy)."""
        return self.sinogram if self.is_volume else self.sinogram[None]

    def reference_slices(self) -> np.ndarray | None:
        """``hu_reference`` as ``[slices, H, W]`` or None."""
        if self.hu_reference is None:
            return None
        return self.hu_reference if self.hu_reference.ndim == 3 else self.hu_reference[None]


def _err(source, msg: str) -> SinogramFormatError:
    return SinogramFormatError(f"{source}: {msg}" if source else msg)


def _float_array(value, name: str, source) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise _err(source, f"{name} must be floating point (float32), got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise _err(source, f"{name} contains {bad} NaN or Inf values")
    return arr


def _validate(f: SinogramFile, source=None) -> None:
    if not isinstance(f.geometry, (ParallelBeam2D, FanBeam2D)):
        raise _err(source, f"geometry must be ParallelBeam2D or FanBeam2D, got {type(f.geometry).__name__}")
    sino = _float_array(f.sinogram, "sinogram", source)
    if sino.ndim not in (2, 3):
        raise _err(source, f"sinogram must be [views, detectors] or [slices, views, detectors], "
                           f"got shape {sino.shape}")
    if sino.shape[-2:] != f.geometry.sinogram_shape:
        raise _err(source, f"sinogram has {sino.shape[-2]} views x {sino.shape[-1]} detectors but the geometry "
                           f"has {f.geometry.num_views} angles x {f.geometry.detector_count} detectors")
    f.sinogram = np.ascontiguousarray(sino)
    if f.i0 is not None:
        try:
            i0 = float(np.asarray(f.i0).item())
        except (TypeError, ValueError):
            raise _err(source, f"i0 must be a single number of photons, got {f.i0!r}") from None
        if not (math.isfinite(i0) and i0 > 0):
            raise _err(source, f"i0 must be a finite number of photons > 0, got {i0}")
        f.i0 = i0
    if f.hu_reference is not None:
        ref = _float_array(f.hu_reference, "hu_reference", source)
        expected = ((sino.shape[0],) if sino.ndim == 3 else ()) + tuple(f.geometry.image_shape)
        if ref.shape != expected:
            raise _err(source, f"hu_reference must have shape {expected} (slices and image_shape), got {ref.shape}")
        f.hu_reference = np.ascontiguousarray(ref)
    if f.description is not None:
        f.description = str(np.asarray(f.description).item()) if np.ndim(f.description) == 0 else str(f.description)


def save_sinogram(path: str | os.PathLike, data: SinogramFile | np.ndarray, geometry=None, *,
                  i0: float | None = None, hu_reference: np.ndarray | None = None,
                  description: str | None = None, overwrite: bool = False) -> Path:
    """Write a sinogram exchange file.

    Parameters
    ----------
    path : path-like
        Destination; must end in ``.npz``. An existing file is refused unless ``overwrite``.
    data : SinogramFile or np.ndarray
        The file content, or the sinogram array (float [views, det] or [slices, views, det],
        line integrals) together with ``geometry`` and the optional fields.
    geometry : ParallelBeam2D or FanBeam2D
        Needed when ``data`` is an array.
    i0, hu_reference, description
        Optional fields (see :class:`SinogramFile`), used when ``data`` is an array.
    overwrite : bool
        Replace an existing file (atomically: written to a temporary file first).

    Returns
    -------
    Path of the written file.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"sinogram files end in .npz, got {path}")
    if isinstance(data, SinogramFile):
        if geometry is not None or i0 is not None or hu_reference is not None or description is not None:
            raise TypeError("pass either a SinogramFile or an array with geometry/i0/..., not both")
        f = data
        _validate(f)
    else:
        if geometry is None:
            raise TypeError("save_sinogram needs geometry= when data is an array")
        f = SinogramFile(np.asarray(data), geometry, i0=i0, hu_reference=hu_reference,
                         description=description)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist")
    arrays = dict(geometry_to_fields(f.geometry))
    arrays["geometry"] = np.str_(arrays["geometry"])
    arrays["sinogram"] = f.sinogram
    if f.i0 is not None:
        arrays["i0"] = np.float64(f.i0)
    if f.hu_reference is not None:
        arrays["hu_reference"] = f.hu_reference
    if f.description is not None:
        arrays["description"] = np.str_(f.description)
    fd, tmp = tempfile.mkstemp(suffix=".npz", prefix=f".{path.stem}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_sinogram(path: str | os.PathLike) -> SinogramFile:
    """Read and validate a sinogram exchange file.

    Raises
    ------
    FileNotFoundError
        No such file.
    SinogramFormatError (ValueError)
        Not an ``.npz`` archive, missing keys, wrong dtype or shape, angle count different from
        the number of views, unknown geometry, NaN/Inf values, bad optional fields.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sinogram file {path}")
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _err(path, f"not a readable .npz archive ({exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _err(path, "not an .npz archive (a single .npy array?)")
    with npz:
        keys = set(npz.files)
        missing = [k for k in REQUIRED_KEYS if k not in keys]
        if missing:
            raise _err(path, f"missing keys {missing} (required: {list(REQUIRED_KEYS)})")
        try:
            d = {k: npz[k] for k in keys}
        except ValueError as exc:  # object arrays need pickle: refused
            raise _err(path, f"holds an array that cannot be read without pickle ({exc})") from None
    kind = d["geometry"]
    if kind.dtype.kind not in "US" or kind.ndim != 0:
        raise _err(path, f"'geometry' must be the string 'parallel' or 'fanbeam', got {kind!r}")
    if kind.dtype.kind == "S":  # bytes written by some tools
        d["geometry"] = np.str_(kind.item().decode("ascii", errors="replace"))
    angles = np.asarray(d["angles"])
    if angles.dtype.kind != "f" or angles.ndim != 1:
        raise _err(path, f"'angles' must be a float32 vector [views] in radians, got dtype {angles.dtype} "
                         f"shape {angles.shape}")
    sino = _float_array(d["sinogram"], "sinogram", path)
    if sino.ndim not in (2, 3):
        raise _err(path, f"sinogram must be [views, detectors] or [slices, views, detectors], got shape {sino.shape}")
    try:
        geometry = geometry_from_fields({k: d[k] for k in keys if k != "sinogram"},
                                                 detector_count=sino.shape[-1]) \
            if sino.shape[-2] == angles.size else None
    except (ValueError, TypeError) as exc:
        raise _err(path, str(exc)) from None
    if geometry is None:
        raise _err(path, f"sinogram has {sino.shape[-2]} views but 'angles' has {angles.size} entries")
    extra = tuple(sorted(keys - set(REQUIRED_KEYS) - set(FANBEAM_KEYS) - set(OPTIONAL_KEYS)))
    desc = d.get("description")
    if desc is not None and (desc.dtype.kind not in "US" or desc.ndim != 0):
        raise _err(path, f"'description' must be a string, got dtype {desc.dtype} shape {desc.shape}")
    out = SinogramFile.__new__(SinogramFile)
    out.sinogram, out.geometry, out.extra_keys = sino, geometry, extra
    out.i0 = d.get("i0")
    out.hu_reference = d.get("hu_reference")
    out.description = None if desc is None else str(desc)
    _validate(out, source=path)
    return out
