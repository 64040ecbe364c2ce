"""CT acquisition geometries as plain, serialisable data (all lengths in mm, angles in radians).

Conventions are ASTRA's, so that a geometry converts to ASTRA with :meth:`to_astra` and a sinogram
file written with ASTRA's ``create_proj_geom`` + ``create_sino`` is read correctly:

* The image (volume) is centred on the rotation axis. Image row ``r`` and column ``c`` of an
  ``(H, W)`` image with pixel size ``p`` have their centre at
  ``x = (c + 0.5 - W / 2) * p`` and ``y = (H / 2 - r - 0.5) * p`` (row 0 is the top, at largest y).
* Parallel beam, angle ``theta``: rays travel along ``(sin theta, -cos theta)``; a point ``(x, y)``
  falls on the detector at ``t = x cos theta + y sin theta`` (mm); detector bin ``i`` of ``n`` has
  its centre at ``t_i = (i - (n - 1) / 2) * detector_spacing_mm + detector_offset_mm``.
* Fan beam (flat detector): the source sits at ``source_origin_mm * (sin theta, -cos theta)``, the
  detector centre at ``origin_detector_mm * (-sin theta, cos theta)``, detector direction
  ``(cos theta, sin theta)``; ``detector_spacing_mm`` is the bin width *on the detector*.
* ``detector_offset_mm`` (2D, default 0): the detector is shifted by this much along its own
  direction (mm at the detector), i.e. bin ``i`` has its centre at
  ``(i - (n - 1) / 2) * detector_spacing_mm + detector_offset_mm``; this is how a centre of
  rotation that does not project onto the detector centre is described. A non-zero offset turns
  :meth:`astra_proj_geom` into ASTRA's ``parallel_vec`` / ``fanflat_vec`` form.
* 3D: volume ``(D, H, W)`` = ASTRA's (slices z, rows y, columns x); projections are ASTRA's
  ``(detector_rows, views, detector_cols)``; ``detector_spacing_mm = (row, col)``.

Angles are stored at float32 precision (ASTRA computes with float32 angles and the sinogram
exchange file stores them as float32), so a geometry survives a round trip through that file
exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

import numpy as np

from .validation import positive_float, positive_int, positive_shape

__all__ = [
    "Geometry",
    "ParallelBeam2D",
    "FanBeam2D",
    "ParallelBeam3D",
    "ConeBeam3D",
    "geometry_from_dict",
    "geometry_from_json",
]


# ----- validation helpers ---------------------------------------------------------------------------
def _angles(value: Any) -> tuple:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"angles must be a 1D array of numbers (radians), got {value!r}") from exc
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"angles must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("angles is empty: a geometry needs at least one projection angle")
    if not np.all(np.isfinite(arr)):
        raise ValueError("angles contains NaN or Inf")
    # float32 precision: what ASTRA uses internally and what the sinogram file stores.
    return tuple(float(a) for a in arr.astype(np.float32))


# ----- base --------------------------------------------------------------------------------------
class Geometry:
    """Mixin with serialisation shared by all geometries (subclasses are frozen dataclasses)."""

    #: value of the ``"type"`` key in :meth:`to_dict`.
    type_name: str = ""
    #: number of spatial dimensions of the image (2 or 3).
    ndim: int = 0

    @property
    def num_views(self) -> int:
        """Number of projection angles."""
        return len(self.angles)

    @property
    def angles_array(self) -> np.ndarray:
        """The projection angles as a float64 array (radians, float32-representable values)."""
        return np.asarray(self.angles, dtype=np.float64)

    def to_dict(self) -> dict:
        """Plain-Python dict (JSON-serialisable) with a ``"type"`` key; inverse of :meth:`from_dict`."""
        d = {"type": self.type_name}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Geometry:
        """Build from :meth:`to_dict` output (the ``"type"`` key, if present, must match)."""
        if not isinstance(d, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict expects a mapping, got {type(d).__name__}")
        t = d.get("type", cls.type_name)
        if _TYPE_ALIASES.get(str(t)) is not cls:
            raise ValueError(f"{cls.__name__}.from_dict got a geometry of type {t!r}")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names - {"type"}
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown keys {sorted(unknown)}")
        missing = [f.name for f in fields(cls) if f.name not in d and f.default is MISSING]
        if missing:
            raise ValueError(f"{cls.__name__}.from_dict: missing keys {missing}")
        return cls(**{k: v for k, v in d.items() if k != "type"})

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys); used as the cache key of projection matrices."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> Geometry:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(s))

    def _key(self) -> str:
        return self.to_json()


# ----- 2D ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Beam2D(Geometry):
    """Fields and methods shared by the 2D geometries (not used directly)."""

    image_shape: tuple
    pixel_spacing_mm: float
    angles: tuple
    detector_count: int
    detector_spacing_mm: float

    ndim = 2

    def __post_init__(self):
        _set(self, "image_shape", positive_shape(self.image_shape, "image_shape", 2))
        _set(self, "pixel_spacing_mm", positive_float(self.pixel_spacing_mm, "pixel_spacing_mm"))
        _set(self, "angles", _angles(self.angles))
        _set(self, "detector_count", positive_int(self.detector_count, "detector_count"))
        _set(self, "detector_spacing_mm", positive_float(self.detector_spacing_mm, "detector_spacing_mm"))
        self._validate_extra()

    def _validate_extra(self):
        pass

    def _validate_offset(self):
        try:
            off = float(self.detector_offset_mm)
        except (TypeError, ValueError):
            raise ValueError(f"detector_offset_mm must be a number (mm), got {self.detector_offset_mm!r}") from None
        if not math.isfinite(off):
            raise ValueError(f"detector_offset_mm must be finite, got {off}")
        _set(self, "detector_offset_mm", off)

    def to_dict(self) -> dict:
        """As :meth:`Geometry.to_dict`; ``detector_offset_mm`` is left out when it is 0, so
        geometries without an offset serialise (and key the matrix cache) as before."""
        d = super().to_dict()
        if d.get("detector_offset_mm", 0.0) == 0.0:
            d.pop("detector_offset_mm", None)
        return d

    def detector_positions_mm(self) -> np.ndarray:
        """Centres of the detector bins along the detector (mm at the detector), offset included."""
        n = self.detector_count
        off = float(getattr(self, "detector_offset_mm", 0.0))
        return (np.arange(n) - (n - 1) / 2) * self.detector_spacing_mm + off

    def _vec_geometry(self, proj_geom: dict) -> dict:
        """ASTRA's ``*_vec`` form of ``proj_geom`` with the detector centre moved by the offset."""
        import astra

        off = float(getattr(self, "detector_offset_mm", 0.0))
        if off == 0.0:
            return proj_geom
        vec = astra.functions.geom_2vec(proj_geom)
        v = np.array(vec["Vectors"], dtype=np.float64)
        # columns 4:6 are the vector between neighbouring bins (length detector_spacing_mm)
        v[:, 2:4] += v[:, 4:6] * (off / self.detector_spacing_mm)
        return astra.create_proj_geom(vec["type"], self.detector_count, v)

    @property
    def sinogram_shape(self) -> tuple:
        """``(views, detector_count)``."""
        return (self.num_views, self.detector_count)

    @property
    def extent_mm(self) -> tuple:
        """Image size ``(height, width)`` in mm."""
        return (self.image_shape[0] * self.pixel_spacing_mm, self.image_shape[1] * self.pixel_spacing_mm)

    def astra_vol_geom(self) -> dict:
        """ASTRA 2D volume geometry with the physical window in mm, centred on the origin."""
        import astra

        h, w = self.image_shape
        hy, hx = h * self.pixel_spacing_mm / 2, w * self.pixel_spacing_mm / 2
        return astra.create_vol_geom(h, w, -hx, hx, -hy, hy)

    def to_astra(self) -> tuple:
        """``(vol_geom, proj_geom)`` ASTRA dicts in mm (volume window centred on the origin)."""
        return self.astra_vol_geom(), self.astra_proj_geom()


@dataclass(frozen=True)
class ParallelBeam2D(_Beam2D):
    """2D parallel-beam geometry (ASTRA ``parallel``).

    Parameters
    ----------
    image_shape : (int, int)
        Reconstruction grid ``(H, W)`` in pixels.
    pixel_spacing_mm : float
        Square pixel side in mm.
    angles : 1D array-like of float
        Projection angles in radians (typically ``linspace(0, pi, V, endpoint=False)``).
    detector_count : int
        Number of detector bins.
    detector_spacing_mm : float
        Bin width in mm.
    detector_offset_mm : float
        Shift of the detector along its direction in mm (default 0; see the module docstring).
    """

    detector_offset_mm: float = 0.0

    type_name = "ParallelBeam2D"
    astra_type = "parallel"

    def _validate_extra(self):
        self._validate_offset()

    def astra_proj_geom(self) -> dict:
        """ASTRA ``parallel`` projection geometry (mm); ``parallel_vec`` with a detector offset."""
        import astra

        pg = astra.create_proj_geom("parallel", self.detector_spacing_mm, self.detector_count, self.angles_array)
        return self._vec_geometry(pg)


@dataclass(frozen=True)
class FanBeam2D(_Beam2D):
    """2D fan-beam geometry with a flat detector (ASTRA ``fanflat``).

    Parameters
    ----------
    image_shape, pixel_spacing_mm, angles, detector_count
        As for :class:`ParallelBeam2D` (angles usually cover a full turn, ``[0, 2 pi)``).
    detector_spacing_mm : float
        Bin width *at the detector* in mm (the width at the rotation axis is
        ``detector_spacing_mm * source_origin_mm / (source_origin_mm + origin_detector_mm)``).
    source_origin_mm : float
        Source to rotation-axis distance in mm; must exceed the half-diagonal of the image.
    origin_detector_mm : float
        Rotation-axis to detector distance in mm (>= 0).
    detector_offset_mm : float
        Shift of the detector along its direction in mm at the detector (default 0): the centre
        of rotation projects onto detector coordinate ``-detector_offset_mm``.
    """

    source_origin_mm: float = None
    origin_detector_mm: float = None
    detector_offset_mm: float = 0.0

    type_name = "FanBeam2D"
    astra_type = "fanflat"

    def _validate_extra(self):
        self._validate_offset()
        if self.source_origin_mm is None or self.origin_detector_mm is None:
            raise ValueError("FanBeam2D needs source_origin_mm and origin_detector_mm")
        _set(self, "source_origin_mm", positive_float(self.source_origin_mm, "source_origin_mm"))
        _set(self, "origin_detector_mm", positive_float(self.origin_detector_mm, "origin_detector_mm", allow_zero=True))
        half_diag = 0.5 * math.hypot(*self.extent_mm)
        if self.source_origin_mm <= half_diag:
            raise ValueError(
                f"source_origin_mm={self.source_origin_mm} mm puts the source inside the image "
                f"(half-diagonal {half_diag:.1f} mm); move it further out"
            )

    @property
    def magnification(self) -> float:
        """``(source_origin + origin_detector) / source_origin``."""
        return (self.source_origin_mm + self.origin_detector_mm) / self.source_origin_mm

    def astra_proj_geom(self) -> dict:
        """ASTRA ``fanflat`` projection geometry (mm); ``fanflat_vec`` with a detector offset."""
        import astra

        pg = astra.create_proj_geom(
            "fanflat",
            self.detector_spacing_mm,
            self.detector_count,
            self.angles_array,
            self.source_origin_mm,
            self.origin_detector_mm,
        )
        return self._vec_geometry(pg)


# ----- 3D ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Beam3D(Geometry):
    """Fields and methods shared by the 3D geometries (not used directly)."""

    volume_shape: tuple
    voxel_spacing_mm: float
    angles: tuple
    detector_rows: int
    detector_cols: int
    detector_spacing_mm: tuple

    ndim = 3

    def __post_init__(self):
        _set(self, "volume_shape", positive_shape(self.volume_shape, "volume_shape", 3))
        _set(self, "voxel_spacing_mm", positive_float(self.voxel_spacing_mm, "voxel_spacing_mm"))
        _set(self, "angles", _angles(self.angles))
        _set(self, "detector_rows", positive_int(self.detector_rows, "detector_rows"))
        _set(self, "detector_cols", positive_int(self.detector_cols, "detector_cols"))
        try:
            sp = list(np.asarray(self.detector_spacing_mm, dtype=object).reshape(-1))
        except Exception:  # noqa: BLE001
            sp = []
        if len(sp) != 2:
            raise ValueError(f"detector_spacing_mm must be (row, col) in mm, got {self.detector_spacing_mm!r}")
        _set(
            self,
            "detector_spacing_mm",
            (positive_float(sp[0], "detector_spacing_mm[0]"), positive_float(sp[1], "detector_spacing_mm[1]")),
        )
        self._validate_extra()

    def _validate_extra(self):
        pass

    @property
    def image_shape(self) -> tuple:
        """Alias of ``volume_shape`` (the operator's ``in_shape``)."""
        return self.volume_shape

    @property
    def projection_shape(self) -> tuple:
        """ASTRA's ``(detector_rows, views, detector_cols)``."""
        return (self.detector_rows, self.num_views, self.detector_cols)

    def astra_vol_geom(self) -> dict:
        """ASTRA 3D volume geometry with the physical window in mm, centred on the origin."""
        import astra

        d, h, w = self.volume_shape
        s = self.voxel_spacing_mm / 2
        return astra.create_vol_geom(h, w, d, -w * s, w * s, -h * s, h * s, -d * s, d * s)

    def to_astra(self) -> tuple:
        """``(vol_geom, proj_geom)`` ASTRA dicts in mm (volume centred on the origin)."""
        return self.astra_vol_geom(), self.astra_proj_geom()


@dataclass(frozen=True)
class ParallelBeam3D(_Beam3D):
    """3D parallel-beam geometry (ASTRA ``parallel3d``; rotation about the z axis).

    Parameters
    ----------
    volume_shape : (int, int, int)
        ``(D, H, W)`` voxels = ASTRA's (slices z, rows y, columns x).
    voxel_spacing_mm : float
        Cubic voxel side in mm.
    angles : 1D array-like of float
        Radians.
    detector_rows, detector_cols : int
        Detector size in pixels.
    detector_spacing_mm : (float, float)
        ``(row, col)`` pixel pitch in mm (row = along z, col = along the in-plane detector axis).
    """

    type_name = "ParallelBeam3D"
    astra_type = "parallel3d"

    def astra_proj_geom(self) -> dict:
        """ASTRA ``parallel3d`` projection geometry (mm)."""
        import astra

        row, col = self.detector_spacing_mm
        return astra.create_proj_geom("parallel3d", col, row, self.detector_rows, self.detector_cols, self.angles_array)


@dataclass(frozen=True)
class ConeBeam3D(_Beam3D):
    """3D circular cone-beam geometry with a flat detector (ASTRA ``cone``).

    Parameters as :class:`ParallelBeam3D` plus ``source_origin_mm`` and ``origin_detector_mm``
    (mm); ``detector_spacing_mm`` is the pitch at the detector.
    """

    source_origin_mm: float = None
    origin_detector_mm: float = None

    type_name = "ConeBeam3D"
    astra_type = "cone"

    def _validate_extra(self):
        if self.source_origin_mm is None or self.origin_detector_mm is None:
            raise ValueError("ConeBeam3D needs source_origin_mm and origin_detector_mm")
        _set(self, "source_origin_mm", positive_float(self.source_origin_mm, "source_origin_mm"))
        _set(self, "origin_detector_mm", positive_float(self.origin_detector_mm, "origin_detector_mm", allow_zero=True))
        _d, h, w = self.volume_shape
        half_diag = 0.5 * self.voxel_spacing_mm * math.hypot(h, w)
        if self.source_origin_mm <= half_diag:
            raise ValueError(
                f"source_origin_mm={self.source_origin_mm} mm puts the source inside the volume "
                f"(in-plane half-diagonal {half_diag:.1f} mm)"
            )

    def astra_proj_geom(self) -> dict:
        """ASTRA ``cone`` projection geometry (mm)."""
        import astra

        row, col = self.detector_spacing_mm
        return astra.create_proj_geom(
            "cone",
            col,
            row,
            self.detector_rows,
            self.detector_cols,
            self.angles_array,
            self.source_origin_mm,
            self.origin_detector_mm,
        )


def _set(obj, name, value):
    object.__setattr__(obj, name, value)


# ----- dispatch ----------------------------------------------------------------------------------
_TYPE_ALIASES = {
    "ParallelBeam2D": ParallelBeam2D,
    "parallel2d": ParallelBeam2D,
    "parallel": ParallelBeam2D,
    "FanBeam2D": FanBeam2D,
    "fanbeam2d": FanBeam2D,
    "fanbeam": FanBeam2D,
    "fanflat": FanBeam2D,
    "ParallelBeam3D": ParallelBeam3D,
    "parallel3d": ParallelBeam3D,
    "ConeBeam3D": ConeBeam3D,
    "cone3d": ConeBeam3D,
    "cone": ConeBeam3D,
}


def geometry_from_dict(d: Mapping) -> Geometry:
    """Build any geometry from a dict with a ``"type"`` key (output of ``Geometry.to_dict``)."""
    if not isinstance(d, Mapping):
        raise TypeError(f"geometry_from_dict expects a mapping, got {type(d).__name__}")
    if "type" not in d:
        raise ValueError(
            f"geometry dict has no 'type' key; expected one of {sorted(set(c.type_name for c in _TYPE_ALIASES.values()))}"
        )
    cls = _TYPE_ALIASES.get(str(d["type"]))
    if cls is None:
        raise ValueError(
            f"unknown geometry type {d['type']!r}; expected one of "
            f"{sorted(set(c.type_name for c in _TYPE_ALIASES.values()))}"
        )
    return cls.from_dict(d)


def geometry_from_json(s: str) -> Geometry:
    """Inverse of ``Geometry.to_json`` for any geometry type."""
    return geometry_from_dict(json.loads(s))
