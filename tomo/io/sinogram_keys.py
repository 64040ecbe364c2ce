"""The keys of the sinogram exchange file and their conversions (see :mod:`tomo.io.sinogram`).

The file's key names, the geometry <-> key conversion (:func:`geometry_to_fields`,
:func:`geometry_from_fields`), the checks shared by every key (:class:`SinogramFormatError`), and
the measured-data keys: raw intensities with flat and dark fields (:func:`line_integrals`) and the
units of the reconstruction. :mod:`tomo.io.sinogram` holds the file itself (read, write, stream).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from operators.geometry import FanBeam2D, ParallelBeam2D

__all__ = [
    "REQUIRED_KEYS",
    "FANBEAM_KEYS",
    "OPTIONAL_KEYS",
    "MEASURED_KEYS",
    "UNITS",
    "GEOMETRY_NAMES",
    "SinogramFormatError",
    "geometry_name",
    "geometry_to_fields",
    "geometry_from_fields",
    "line_integrals",
]

#: keys every file has (fan beam adds ``source_origin_mm`` and ``origin_detector_mm``)
REQUIRED_KEYS = ("sinogram", "angles", "geometry", "detector_spacing_mm", "pixel_spacing_mm", "image_shape")
FANBEAM_KEYS = ("source_origin_mm", "origin_detector_mm")
OPTIONAL_KEYS = ("i0", "hu_reference", "description")
#: optional keys of measured (scanner) data
MEASURED_KEYS = ("detector_offset_mm", "flat", "dark", "units")
#: values of ``units``: HU for calibrated human CT (the default), attenuation in 1/mm otherwise
UNITS = ("hu", "mu_per_mm")


#: the file's ``geometry`` value of each geometry class
GEOMETRY_NAMES = {ParallelBeam2D: "parallel", FanBeam2D: "fanbeam"}


def geometry_name(geometry: ParallelBeam2D | FanBeam2D) -> str:
    """The file's name of a geometry kind: ``"parallel"`` or ``"fanbeam"``."""
    try:
        return GEOMETRY_NAMES[type(geometry)]
    except KeyError:
        raise TypeError(
            f"the sinogram file holds 2D parallel or fan-beam geometries, got {type(geometry).__name__}"
        ) from None


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
    if geometry.detector_offset_mm != 0.0:  # optional key: files without an offset are unchanged
        fields["detector_offset_mm"] = float(geometry.detector_offset_mm)
    return fields


def _as_str(value) -> str:
    arr = np.asarray(value)
    return str(arr.item()) if arr.ndim == 0 else str(value)


def geometry_from_fields(d: Mapping, detector_count: int | None = None) -> ParallelBeam2D | FanBeam2D:
    """Build a 2D geometry from the keys of a sinogram exchange file (evaluation.md).

    Parameters
    ----------
    d : mapping
        ``geometry`` (``"parallel"`` or ``"fanbeam"``), ``angles`` [views] (radians),
        ``detector_spacing_mm``, ``pixel_spacing_mm``, ``image_shape`` [2], and for fan beam
        ``source_origin_mm`` and ``origin_detector_mm``; optionally ``detector_offset_mm``
        (default 0); values may be 0-d NumPy arrays as
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
            raise ValueError(
                f"sinogram must be [views, detectors] or [slices, views, detectors], got shape {sino.shape}"
            )
        if sino.shape[-2] != angles.reshape(-1).size:
            raise ValueError(f"sinogram has {sino.shape[-2]} views but angles has {angles.reshape(-1).size} entries")
        if detector_count is not None and int(detector_count) != sino.shape[-1]:
            raise ValueError(f"detector_count={detector_count} does not match the sinogram's {sino.shape[-1]} bins")
        detector_count = sino.shape[-1]
    if detector_count is None:
        raise ValueError("detector count unknown: pass a 'sinogram' key or detector_count=")
    common = dict(
        image_shape=d["image_shape"],
        pixel_spacing_mm=d["pixel_spacing_mm"],
        angles=angles,
        detector_count=detector_count,
        detector_spacing_mm=d["detector_spacing_mm"],
        detector_offset_mm=d["detector_offset_mm"] if "detector_offset_mm" in keys else 0.0,
    )
    if kind == "parallel":
        return ParallelBeam2D(**common)
    if kind == "fanbeam":
        for k in ("source_origin_mm", "origin_detector_mm"):
            if k not in keys:
                raise ValueError(f"fan-beam sinogram fields need {k!r}")
        return FanBeam2D(**common, source_origin_mm=d["source_origin_mm"], origin_detector_mm=d["origin_detector_mm"])
    raise ValueError(f"unknown geometry {kind!r} in sinogram fields; expected 'parallel' or 'fanbeam'")


class SinogramFormatError(ValueError):
    """A sinogram file or array that does not follow the exchange format; the message says why."""


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


def _check_units(value, source) -> str:
    text = _as_str(value).strip().lower() if value is not None else "hu"
    if text not in UNITS:
        raise _err(source, f"units must be one of {UNITS} ('hu' for calibrated human CT), got {text!r}")
    return text


def line_integrals(intensities, flat, dark=None, source=None) -> np.ndarray:
    """Raw detector intensities to line integrals: ``-log((I - dark) / (flat - dark))``.

    Parameters
    ----------
    intensities : array, float [..., views, detectors]
        Measured intensities ``I`` (counts or detector units).
    flat : array, float: scalar, [detectors] or [views, detectors]
        Intensity without the object (same units).
    dark : array, optional
        Intensity without X-rays (same units and shapes as ``flat``); 0 by default.
    source : str or Path, optional
        Named in error messages.

    Returns
    -------
    np.ndarray, float32, the shape of ``intensities``
        Line integrals (dimensionless).

    Raises
    ------
    SinogramFormatError
        Non-finite values, shapes that do not broadcast, or any ``flat - dark <= 0`` or
        ``I - dark <= 0`` (the count of such bins is given: mask or replace dead pixels first).
    """
    i = np.asarray(_float_array(intensities, "sinogram (intensities)", source), dtype=np.float64)
    f = np.asarray(_float_array(flat, "flat", source), dtype=np.float64)
    dk = np.zeros(()) if dark is None else np.asarray(_float_array(dark, "dark", source), dtype=np.float64)
    for name, arr in (("flat", f), ("dark", dk)):
        if arr.ndim > 2 or (arr.ndim >= 1 and arr.shape != i.shape[-arr.ndim :]):
            raise _err(
                source,
                f"{name} must be a scalar, [detectors] or [views, detectors] matching the sinogram {list(i.shape)}, got {list(arr.shape)}",
            )
    open_beam = f - dk
    signal = i - dk
    bad_flat, bad = int((open_beam <= 0).sum()), int((signal <= 0).sum())
    if bad_flat:
        raise _err(
            source,
            f"flat - dark is <= 0 in {bad_flat} bins: no open-beam signal there; fix or mask those detector bins",
        )
    if bad:
        raise _err(
            source,
            f"intensity - dark is <= 0 in {bad} of {signal.size} bins: the log is undefined; replace those readings (e.g. by a neighbour's) before converting",
        )
    return (-np.log(signal / open_beam)).astype(np.float32)
